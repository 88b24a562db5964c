"""notebooks/quickstart.ipynb is executed (nbclient) against a model registered by the training pipeline."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.usefixtures("sqlite_uri")  # the store at tmp_path/mlflow.db: a copy of the migrated template
def test_quickstart_notebook_runs(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    data = tmp_path / "synthetic"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("PRADOT_SYNTHETIC_ROOT", str(data))
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.chdir(tmp_path)
    from pipelines import train

    assert (
        train.main(["experiment=ci", "data=synthetic", f"cache.dir={tmp_path}/cache", "evaluation.figures=false"]) == 0
    )

    nb = nbformat.read(REPO / "notebooks" / "quickstart.ipynb", as_version=4)
    NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(REPO / "notebooks")}}
    ).execute()
    outputs = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "pradot-synthetic-screw_bag v1" in outputs
    assert "logical_anomalies" in outputs and "mean" in outputs
    images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert images, "the notebook shows the anomaly maps"
