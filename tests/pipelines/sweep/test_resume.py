"""Resuming a sweep (pipelines/sweep/resume.py): the interrupted sweep's parent run is reopened; a finished
sweep is refused; under `mlflow run` the run MLflow made says, by name, tag and note, which sweep it resumed."""

from pathlib import Path

import pytest

from pipelines.sweep.resume import Resume, reopen_parent
from pipelines.sweep.space import SweepError


@pytest.mark.usefixtures("sqlite_uri")  # the store at tmp_path/mlflow.db: a copy of the migrated template
def test_reopen_parent_and_the_run_mlflow_run_made(tmp_path, monkeypatch):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("sweeps", artifact_location=str(tmp_path / "artifacts"))
    parent = client.create_run(exp, run_name="sweep-synthetic-screw_bag", tags={"pradot.sweep_state": "interrupted"})
    outer = client.create_run(exp, run_name="sassy-roo-115")  # what `mlflow run -e sweep -P resume=true` starts
    resume = Resume(
        folder=Path(tmp_path / "ray_results" / "sweep"), parent_run_id=parent.info.run_id, tracking_uri=uri, config={}
    )
    monkeypatch.setenv("MLFLOW_RUN_ID", outer.info.run_id)
    reopen_parent(resume, uri)
    tags = client.get_run(outer.info.run_id).data.tags
    assert tags["pradot.resumed_sweep_run_id"] == parent.info.run_id
    assert tags["mlflow.runName"] == "resume-of-sweep-synthetic-screw_bag"
    assert parent.info.run_id in tags["mlflow.note.content"]

    client.set_tag(parent.info.run_id, "pradot.sweep_state", "finished")
    with pytest.raises(SweepError, match="has finished already"):
        reopen_parent(resume, uri)
