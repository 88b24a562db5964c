"""Every MLproject entry point, as `mlflow run` builds its command with the default parameters (MLflow's own
project loader), composes a configuration: an unset parameter never reaches Hydra as a bare or empty item, and
relative paths are resolved against the folder `mlflow run` was started in (the `workdir` path parameter)."""

import shlex
from pathlib import Path

import pytest

from pipelines import config

REPO = Path(__file__).resolve().parents[2]

#: script -> the conf root its entry point composes
ROOTS = {
    "pipelines/train.py": "train",
    "pipelines/promote.py": "promote",
    "pipelines/reproduce.py": "reproduce",
    "pipelines/baseline.py": "baseline",
    "pipelines/fewshot.py": "fewshot",
    "pipelines/sweep.py": "sweep",
    "pipelines/predict.py": "predict",
    "pipelines/export.py": "export",
    "pipelines/multiclass.py": "multiclass",
}


def _project():
    from mlflow.projects import _project_spec

    return _project_spec.load_project(str(REPO))


def _entry_points():
    return sorted(_project()._entry_points)


@pytest.mark.parametrize("name", _entry_points())
def test_every_entry_point_composes_with_its_default_parameters(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where the user runs `mlflow run <project>`
    entry = _project().get_entry_point(name)
    argv = shlex.split(entry.compute_command({}, str(tmp_path)))
    assert argv[0] == "python"
    if argv[1] == "-m":  # benchmarks: argparse of their own
        assert argv[2].startswith("benchmarks.")
        return
    script = argv[1]
    assert script in ROOTS, f"{name}: {script} has no conf root in this test; add it"
    assert "workdir" in entry.parameters and entry.parameters["workdir"].type == "path", (
        f"entry point {name} must pass workdir (type path) so relative paths resolve where mlflow run was started"
    )
    overrides = config.parse_overrides(argv[2:])
    if ROOTS[script] == "sweep":
        from pipelines.sweep.space import alias_overrides

        overrides = alias_overrides(overrides)
    cfg = config.compose(ROOTS[script], overrides)
    assert cfg.workdir == str(tmp_path)


def test_every_script_the_mlproject_runs_exists():
    for name in _entry_points():
        argv = shlex.split(_project().get_entry_point(name).compute_command({}, "/tmp"))
        if argv[1] != "-m":
            assert (REPO / argv[1]).is_file(), f"entry point {name} runs {argv[1]}, which does not exist"
