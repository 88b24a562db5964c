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
