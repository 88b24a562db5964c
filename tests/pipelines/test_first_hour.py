"""A new user's first commands: without data, the hint is a command that works on the embedded data (the
recipe sized for it, as `make demo` runs it); a batch too large for the embedded data says the same; a run
that fails prints its error once."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from pipelines import cli
from pradot.data import DatasetError

REPO = Path(__file__).resolve().parents[2]


def test_the_missing_data_hint_is_the_demo_command(capsys):
    def no_data(argv):
        raise DatasetError("no data root given for dataset kind 'mvtec_loco' and PRADOT_DATA_ROOT is not set")

    assert cli.run_entry(no_data, []) == cli.EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert cli.SYNTHETIC_COMMAND in err and "-P data_root=/path/to/data" in err
    # the command the hint gives is the one `make demo` runs (the recipe sized for the embedded data)
    makefile = (REPO / "Makefile").read_text()
    assert '-P dataset=synthetic -P overrides="experiment=cpu_demo"' in makefile
    assert cli.SYNTHETIC_COMMAND.endswith('-P dataset=synthetic -P overrides="experiment=cpu_demo"')


def test_a_batch_too_large_for_the_embedded_data_gives_the_recipe_and_is_printed_once(tmp_path):
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}", "TQDM_DISABLE": "1"}
    env.pop("MLFLOW_RUN_ID", None)
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "pipelines" / "train.py"),
            "experiment=ci",
            f"data.root={tmp_path / 'data'}",
            f"cache.dir={tmp_path / 'cache'}",
            "model.batch_ratio=100",
        ],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == cli.EXIT_BAD_INPUT, proc.stderr[-3000:]
    (line,) = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
    assert "the batch size 100" in line and f"For the embedded data: {cli.SYNTHETIC_COMMAND}" in line
    assert proc.stderr.count("the batch size 100") == 1  # the run log keeps its own copy; the console one line
    assert "Traceback" not in proc.stderr


def test_nested_run_logs_print_each_line_once_and_keep_it_in_both_files(capsys):
    """A run inside a run (reproduce's members, promote inside reproduce) has one console: each log line is
    printed once, and written to both runs' logs; a record marked file-only reaches the files only."""
    import logging

    from pipelines.tracking import FILE_ONLY, run_log

    log = logging.getLogger("pipelines.test_first_hour")
    with run_log() as outer, run_log() as inner:
        log.info("one line")
        log.error("run failed: only in the logs", extra={FILE_ONLY: True})
        texts = [path.read_text() for path in (outer, inner)]  # read in the blocks: their folders go with them
    err = capsys.readouterr().err
    assert err.count("[pradot] one line") == 1 and "only in the logs" not in err
    for text in texts:
        assert "one line" in text and "run failed: only in the logs" in text
    assert not outer.exists() and not inner.exists()
    with run_log():
        log.info("again")
    assert capsys.readouterr().err.count("[pradot] again") == 1  # the console handler went with its block
