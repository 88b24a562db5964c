"""Names are data where the pipelines write them: CSV reports, log lines, MLflow tags and artifact paths, and
the command an MLproject entry point runs. Each test feeds hostile names and reads the output back the way
its reader would (csv module, the log's record layout, the tracking store, shell + Hydra)."""

import csv
import io
import logging
import os
import re
import shlex
from pathlib import Path

import pytest

from pipelines.names import CONTINUATION, csv_cell, file_name, printable, tag_value

HOSTILE = "a$b_c\n<x>/../.."
NAMES = [HOSTILE, "=HYPERLINK(1)", "-1+2", "@SUM(A1)", "esc\x1b[2Jx", os.fsdecode(b"caf\xe9"), 'x,y"z', "plain"]


def _read_csv(text: str) -> list[list[str]]:
    text.encode("utf-8")  # strict UTF-8: every cell was written
    return list(csv.reader(io.StringIO(text)))


def test_names_in_csv_reports_read_back_as_text_cells():
    from pipelines.fewshot.run import _csv
    from pipelines.promote.compare import to_csv

    rows = _read_csv(to_csv(["image_auroc"], [{"model": x, "image_auroc": 0.5} for x in NAMES]))
    assert rows[0] == ["model", "image_auroc"]
    assert rows[1:] == [[csv_cell(x), "0.500000"] for x in NAMES]
    rows = _read_csv(_csv([{"variant": x, "shots": 1, "image_auroc": 0.5} for x in NAMES]))
    assert [r[0] for r in rows[1:]] == [csv_cell(x) for x in NAMES] and [r[1] for r in rows[1:]] == ["1"] * len(NAMES)
    from pipelines.sweep.outcome import TrialRecord, table

    records = [TrialRecord("t", "ERROR", "failed", 1, 1, {}, {}, failure="trial", error=f"{x}: bad") for x in NAMES]
    buf = io.StringIO()
    table(records).to_csv(buf, index=False)
    rows = _read_csv(buf.getvalue())
    assert [r[rows[0].index("error")] for r in rows[1:]] == [csv_cell(f"{x}: bad") for x in NAMES]
    for x in NAMES:  # what a spreadsheet sees: never a formula, one line, the name otherwise unchanged
        assert not csv_cell(x).startswith(("=", "+", "-", "@")) and "\n" not in csv_cell(x)
        assert csv_cell(x).removeprefix("'") == printable(x)


def test_names_in_log_lines_cannot_forge_a_record_or_drive_the_terminal(capsys):
    from pipelines.tracking import run_log

    forged = "2026-01-01 00:00:00,000 ERROR pipelines.predict: forged\r\x1b[2J"
    name = HOSTILE + "\n" + forged + os.fsdecode(b"\xff")
    with run_log() as path:
        logging.getLogger("pipelines.test").warning("skipped %s: unreadable", name)
        text = path.read_text(encoding="utf-8")  # strict: valid UTF-8
    console = capsys.readouterr().err
    record = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ ")
    lines = [line for line in text.splitlines() if "skipped" in line or "forged" in line or "<x>" in line]
    assert [bool(record.match(line)) for line in lines] == [True, False, False]
    assert lines[0].endswith("WARNING pipelines.test: skipped a$b_c")
    assert lines[1:] == [f"{CONTINUATION}<x>/../..", f"{CONTINUATION}{forged[:-5]}\\x0d\\x1b[2J\\xff: unreadable"]
    assert "\x1b" not in text + console and "\r" not in text + console
    shown = [line for line in console.splitlines() if "skipped" in line or "forged" in line]
    assert shown[0] == "[pradot] skipped a$b_c" and shown[1].startswith(CONTINUATION + "2026-01-01")


def test_names_in_mlflow_tags_params_and_artifact_paths(store, tmp_path):
    import mlflow
    from matplotlib.figure import Figure

    from pipelines.figures import log_figure

    long = os.fsdecode(b"caf\xe9") + "\n=x" + "y" * 9000
    mlflow.set_experiment("e")
    with mlflow.start_run() as run:
        mlflow.set_tag("pradot.note", tag_value(long))
        mlflow.log_param("support", tag_value(long, 6000))
        log_figure(f"maps_{HOSTILE}_pradot", Figure)
    data = store.get_run(run.info.run_id).data
    assert data.tags["pradot.note"] == tag_value(long) and len(tag_value(long)) == 5000
    assert data.tags["pradot.note"].startswith("caf\\xe9\\x0a=xyyy") and data.tags["pradot.note"].endswith(" ...")
    assert data.params["support"] == tag_value(long, 6000)
    (fig,) = [a.path for a in store.list_artifacts(run.info.run_id, "figures")]
    assert fig == f"figures/{file_name(f'maps_{HOSTILE}_pradot', '.png')}"
    local = Path(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path=fig, dst_path=tmp_path))
    assert local.is_file() and local == tmp_path / Path(fig).name  # reachable through its runs:/ URI


def test_names_reach_the_entry_point_as_given_through_mlflow_run(tmp_path, monkeypatch):
    """``mlflow run -P category=... -P data_root=...`` (MLflow's own command builder, the shell's word
    splitting, argv -> Hydra): the composed values are the names exactly (the path made absolute against
    workdir); ``$``, quotes, backquotes and ``${...}`` are never expanded."""
    from mlflow.projects import _project_spec

    from pipelines import checks, config
    from pipelines.paths import _absolute

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SECRET", "leaked")
    shell = "a$b_c'\"; echo $(id) `id` * ${SECRET} ${oc.env:SECRET} \\${x} \\"
    point = _project_spec.load_project(str(Path(__file__).resolve().parents[2])).get_entry_point("main")
    for name in (shell, HOSTILE, "${oc.env:SECRET}"):
        argv = shlex.split(point.compute_command({"category": name, "data_root": name}, str(tmp_path)))
        cfg = config.compose("train", config.parse_overrides(argv[2:]))
        assert cfg.category == name and cfg.data_root == _absolute(name, str(tmp_path))
        assert "leaked" not in config.resolved_yaml(cfg)
    with pytest.raises(config.ConfigError, match="400 bytes long"):  # one folder: 255 bytes, not characters
        checks.path_component("category", "ü" * 200)


def test_names_in_printed_commands_are_one_shell_word():
    """The ``serve it`` command a summary prints for a registered name the shell would split or expand."""
    from pipelines.multiclass import MulticlassRun
    from pipelines.names import shell_word

    for name in ("pradot-x", "a b; touch x $(id) `id` 'q\"", "a$b_c"):
        run = MulticlassRun("r", "0", "sqlite:///m.db", name, "3", "pradot", "| table |")
        (line,) = [x for x in run.summary().splitlines() if "mlflow models serve" in x]
        argv = shlex.split(line.split(":", 1)[1])
        assert argv[:5] == ["mlflow", "models", "serve", "-m", f"models:/{name}/3"]
    assert shell_word("models:/pradot-x/3") == "models:/pradot-x/3"  # plain URIs are printed as they are
