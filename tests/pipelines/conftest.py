"""Fixtures of the pipeline tests."""

import pytest


@pytest.fixture()
def store(tmp_path, monkeypatch):
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)  # mlflow.set_experiment writes it; restored after
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    client.create_experiment("e", artifact_location=(tmp_path / "artifacts").as_uri())
    yield client
    while mlflow.active_run():
        mlflow.end_run()
