"""Fixtures of the pipeline tests."""

import pytest


@pytest.fixture()
def store(sqlite_uri, tmp_path, monkeypatch):
    """A client of this test's own MLflow store (a copy of the session's migrated template, see
    ``tests/conftest.py``), set as MLFLOW_TRACKING_URI, with an experiment ``e`` whose artifacts go under
    ``tmp_path``."""
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", sqlite_uri)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)  # mlflow.set_experiment writes it; restored after
    from tests.helpers import tracking_uri

    client = mlflow.MlflowClient(sqlite_uri)
    client.create_experiment("e", artifact_location=(tmp_path / "artifacts").as_uri())
    # set explicitly too: a URI another test (or a module fixture) of this worker set with mlflow.set_tracking_uri
    # would win over the variable
    with tracking_uri(sqlite_uri):
        yield client
        while mlflow.active_run():
            mlflow.end_run()
