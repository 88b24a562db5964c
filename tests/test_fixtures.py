"""The shared test fixtures keep their promises: a copied MLflow store is a fresh store of its own."""

import os
from pathlib import Path


def test_a_copied_store_is_fresh_and_its_own(sqlite_uri, mlflow_db_template, tmp_path, monkeypatch):
    """MLflow opens the copy without migrating it (its schema check passes), finds only the Default experiment,
    recreated under this working directory as in a new store, and what a test writes stays in its copy."""
    from mlflow import MlflowClient

    from tests.helpers import copy_store

    monkeypatch.chdir(tmp_path)
    client = MlflowClient(sqlite_uri)
    (default,) = client.search_experiments()
    assert default.name == "Default" and default.experiment_id == "0"
    assert Path(default.artifact_location.removeprefix("file://")).parent == tmp_path / "mlruns"
    assert client.search_registered_models() == []
    client.create_experiment("mine")
    client.create_registered_model("m")
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    other = MlflowClient(copy_store(mlflow_db_template, other_dir))
    assert [e.name for e in other.search_experiments()] == ["Default"] and other.search_registered_models() == []
    assert os.path.getsize(mlflow_db_template) > 0 and sqlite_uri == f"sqlite:///{tmp_path / 'mlflow.db'}"
