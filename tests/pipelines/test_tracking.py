"""MLflow runs in one place (pipelines/tracking.py): entry runs, resolved params. On a tmp SQLite store
(the ``store`` fixture of tests/pipelines/conftest.py), in this process."""

import pytest

from pipelines import tracking


def test_entry_run_logs_and_fails_with_its_log(store, tmp_path):
    import mlflow

    with tracking.entry_run("ok", "e", entry_point="main") as run:
        tracking.log_resolved_params({"model.alpha": 0.3, "seed": 0})
    r = store.get_run(run.run_id)
    assert r.info.status == "FINISHED" and r.data.tags["pradot.entry_point"] == "main"
    assert r.data.params == {"model.alpha": "0.3", "seed": "0"}
    with pytest.raises(ZeroDivisionError):
        with tracking.entry_run("bad", "e", entry_point="main") as run:
            with tracking.entry_run("child", "e", entry_point="main", nested=True) as child:
                pass
            raise ZeroDivisionError
    r = store.get_run(run.run_id)
    assert r.info.status == "FAILED"
    assert store.get_run(child.run_id).data.tags["mlflow.parentRunId"] == run.run_id
    local = store.download_artifacts(run.run_id, "logs/run.log", str(tmp_path))
    assert "ZeroDivisionError" in open(local).read()
    assert mlflow.active_run() is None


def test_resolved_params_keep_what_mlflow_run_logged(store, monkeypatch):
    """Under `mlflow run` the MLproject params exist already (seed='' = conf default): a resolved value that
    differs is logged as resolved.<key>."""
    run = store.create_run(store.get_experiment_by_name("e").experiment_id)
    store.log_param(run.info.run_id, "seed", "")
    monkeypatch.setenv("MLFLOW_RUN_ID", run.info.run_id)
    with tracking.entry_run("x", "e", entry_point="main"):
        tracking.log_resolved_params({"seed": 0, "model.n": 4})
    params = store.get_run(run.info.run_id).data.params
    assert params == {"seed": "", "resolved.seed": "0", "model.n": "4"}


def test_the_closing_summary_points_to_the_ui_that_exists():
    from pipelines.tracking import ui_hint

    assert ui_hint("http://127.0.0.1:36973") == "open http://127.0.0.1:36973 (the tracking server's UI)"
    assert ui_hint("sqlite:////tmp/x/mlflow.db").startswith("mlflow ui --backend-store-uri sqlite:////tmp/x/mlflow.db")


def test_entry_runs_leave_no_run_log_folder(store, tmp_path, monkeypatch):
    """Each entry run's temporary log folder is removed when it ends (success, error, Ctrl+C/SIGTERM); a
    folder left by a process killed with SIGKILL (its PID gone) is removed by the next run; the log still
    reaches MLflow, also for a name that is not UTF-8."""
    import os
    import subprocess
    import sys
    import tempfile

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp / f"pradot-log-{int(dead.stdout)}-abc"
    stale.mkdir()
    (stale / "run.log").write_text("left by a killed run")
    mine = tmp / f"pradot-log-{os.getpid()}-alive"  # a live process's folder is left alone
    mine.mkdir()
    with tracking.entry_run("ok", "e", entry_point="predict") as run:
        import logging

        logging.getLogger("x").info("file %s", os.fsdecode(b"caf\xe9.png"))
    for exc in (ValueError, KeyboardInterrupt):
        with pytest.raises(exc):
            with tracking.entry_run("bad", "e", entry_point="predict"):
                raise exc
    assert sorted(p.name for p in tmp.iterdir()) == [mine.name]
    text = open(store.download_artifacts(run.run_id, "logs/run.log", str(tmp_path)), encoding="utf-8").read()
    assert "caf\\xe9.png" in text
