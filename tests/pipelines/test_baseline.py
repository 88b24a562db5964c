"""The memory-bank baseline entry point (pipelines/baseline.py, MLproject `baseline`) on a tmp SQLite store."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
import torch

from pipelines import baseline, registry

NAME = "pradot-synthetic-screw_bag-baseline"


@pytest.mark.usefixtures("sqlite_uri")  # the store at tmp_path/mlflow.db: a copy of the migrated template
def test_baseline_run_registers_a_servable_memory_bank(tmp_path, monkeypatch, capsys):
    import mlflow
    import mlflow.pyfunc
    import pandas as pd
    from mlflow import MlflowClient

    from pradot.data import read_image
    from pradot.memory_bank import MemoryBankModel
    from pradot.persistence import load_scoring_model
    from tests.helpers import tracking_uri

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    client = MlflowClient(tracking_uri=uri)
    client.create_experiment("pradot", artifact_location=(tmp_path / "artifacts").as_uri())
    common = ["experiment=ci", f"data.root={tmp_path}/data", f"cache.dir={tmp_path}/cache", "evaluation.n_overlays=2"]
    # bad settings: a clear error before any run
    assert baseline.main([*common, "memory_bank.coreset_ratio=0"]) == 2
    assert "coreset_ratio" in capsys.readouterr().err and not client.search_runs(["1"])
    assert baseline.main(common) == 0, capsys.readouterr().err
    assert "registered as " + NAME + " v1" in capsys.readouterr().out
    (v,) = client.search_model_versions(f"name='{NAME}'")
    tags = registry.VersionTags.from_tags(v.tags)
    assert (tags.kind, tags.aggregation, tags.smoothing_sigma, tags.coreset_ratio, tags.stages) == (
        "memory_bank",
        3,
        4.0,
        1.0,
        (2,),
    )
    run = client.get_run(v.run_id)
    assert run.data.tags["pradot.entry_point"] == "baseline" and "image_auroc" in run.data.metrics
    assert run.data.params["memory_bank.aggregation"] == "3" and not [
        k for k in run.data.params if k.startswith("model.")
    ]
    figs = {Path(a.path).name for a in client.list_artifacts(run.info.run_id, "figures")}
    assert {"anomaly_overlays.png", "roc.png"} <= figs
    # served with the single-bank contract; the served map is the model's
    img = next(p for p in sorted((tmp_path / "data" / "screw_bag" / "test" / "structural_anomalies").glob("*.png")))
    with tracking_uri(uri):
        pyf = mlflow.pyfunc.load_model(f"models:/{NAME}/1")
        pred = pyf.predict(
            pd.DataFrame({"image": [base64.b64encode(img.read_bytes()).decode()]}),
            params={"return_map": True, "map_format": "npy"},
        )
        local = Path(mlflow.artifacts.download_artifacts(f"models:/{NAME}/1", dst_path=str(tmp_path / "dl")))
    model = load_scoring_model(next(local.rglob("*.pt")))
    assert isinstance(model, MemoryBankModel)
    x = torch.from_numpy(read_image(img, 96)).permute(2, 0, 1)[None].float() / 255
    maps, scores = model.score(x)
    served = np.load(io.BytesIO(base64.b64decode(pred["anomaly_map"][0])))
    np.testing.assert_allclose(served, maps[0].numpy(), rtol=1e-5, atol=1e-6)
    assert pred["raw_score"][0] == pytest.approx(float(scores[0]), rel=1e-6)
    assert pred["threshold"][0] == pytest.approx(tags.threshold)


def test_padim_baseline_run_registers_a_servable_padim_model(tmp_path, monkeypatch, capsys):
    """`memory_bank=padim`: the PaDiM-style model in its own run, registered as <model name>-padim, served."""
    import mlflow
    import mlflow.pyfunc
    import pandas as pd
    from mlflow import MlflowClient

    from pradot.data import read_image
    from pradot.padim import PaDiMModel
    from pradot.persistence import load_scoring_model
    from tests.helpers import tracking_uri

    name = "pradot-synthetic-screw_bag-padim"
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    client = MlflowClient(tracking_uri=uri)
    client.create_experiment("pradot", artifact_location=(tmp_path / "artifacts").as_uri())
    common = ["experiment=ci", f"data.root={tmp_path}/data", f"cache.dir={tmp_path}/cache", "evaluation.n_overlays=0"]
    assert baseline.main([*common, "memory_bank=padim", "memory_bank.covariance=oas"]) == 2
    assert "covariance" in capsys.readouterr().err and not client.search_runs(["1"])
    assert baseline.main([*common, "memory_bank=padim", "memory_bank.n_channels=16"]) == 0, capsys.readouterr().err
    assert "registered as " + name + " v1" in capsys.readouterr().out
    (v,) = client.search_model_versions(f"name='{name}'")
    tags = registry.VersionTags.from_tags(v.tags)
    assert tags.kind == "memory_bank" and tags.config["baseline"] == "padim" and tags.config["n_channels"] == 16
    run = client.get_run(v.run_id)
    assert run.data.params["memory_bank.kind"] == "padim" and "image_auroc" in run.data.metrics
    img = next(p for p in sorted((tmp_path / "data" / "screw_bag" / "test" / "structural_anomalies").glob("*.png")))
    with tracking_uri(uri):
        pyf = mlflow.pyfunc.load_model(f"models:/{name}/1")
        pred = pyf.predict(
            pd.DataFrame({"image": [base64.b64encode(img.read_bytes()).decode()]}),
            params={"return_map": True, "map_format": "npy"},
        )
        local = Path(mlflow.artifacts.download_artifacts(f"models:/{name}/1", dst_path=str(tmp_path / "dl")))
    model = load_scoring_model(next(local.rglob("*.pt")))
    assert isinstance(model, PaDiMModel) and model.channels is not None and len(model.channels) == 16
    x = torch.from_numpy(read_image(img, model.config.image_size)).permute(2, 0, 1)[None].float() / 255
    maps, scores = model.score(x)
    served = np.load(io.BytesIO(base64.b64decode(pred["anomaly_map"][0])))
    np.testing.assert_allclose(served, maps[0].numpy(), rtol=1e-5, atol=1e-5)
    assert pred["raw_score"][0] == pytest.approx(float(scores[0]), rel=1e-5)
