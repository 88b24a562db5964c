"""Datasets without anomalies (a new line: only good parts): a folder dataset with no test/ folder, or with
test/good only, trains, calibrates on the held-out normals, registers, and records that the test metrics
were skipped and why (run tag + metrics/notes.txt, version tags), with the calibration's sample size."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]


def _texture(rng, size=64):
    img = np.full((size, size, 3), 120, np.uint8) + rng.integers(0, 30, size=(size, size, 1), dtype=np.uint8)
    img[::8] = 60
    img[:, ::8] = 60
    return img


def test_status_of_the_test_metrics():
    from pipelines.train import test_metrics_status

    assert test_metrics_status({}, ["test metrics skipped: the test split is empty"]) == "skipped"
    assert test_metrics_status({"image_auroc": 0.9}, ["pixel metrics (pixel_auroc, au_pro) skipped: x"]) == "partial"
    assert test_metrics_status({"image_auroc": 0.9}, ["2 of 9 anomaly maps differ in size"]) == "complete"


@pytest.mark.slow
@pytest.mark.parametrize(
    "test_good, cause",
    [(0, "the test split is empty"), (3, "no anomalous images")],
    ids=["no test folder", "test/good only"],
)
@pytest.mark.usefixtures("sqlite_uri")  # the store at tmp_path/mlflow.db: a copy of the migrated template
def test_normal_only_folder_trains_calibrates_registers(tmp_path, test_good, cause):
    rng = np.random.default_rng(0)
    cat = tmp_path / "data" / "line7"
    (cat / "train" / "good").mkdir(parents=True)
    for i in range(10):
        Image.fromarray(_texture(rng)).save(cat / "train" / "good" / f"{i:03d}.png")
    if test_good:
        (cat / "test" / "good").mkdir(parents=True)
        for i in range(test_good):
            Image.fromarray(_texture(rng)).save(cat / "test" / "good" / f"{i:03d}.png")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PRADOT_CACHE_DIR": str(tmp_path / "cache")}
    env.pop("MLFLOW_RUN_ID", None)
    cmd = [
        sys.executable,
        str(REPO / "pipelines" / "train.py"),
        "data=folder",
        f"data_root={tmp_path / 'data'}",
        "category=line7",
        "backbone=efficientnet_lite0",
        "backbone.stages=[2]",
        "data.image_size=64",
        "model.n=1",
        "model.batch_ratio=4",
        "model.epochs=1",
        "evaluation.figures=false",
        "evaluation.n_overlays=2",
        "data.validation_fraction=0.2",
        "tracking.model_name=line7",
        "tracking.include_backbone=false",
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    summary = proc.stdout[proc.stdout.index("== PRADOT run finished ==") :]
    assert "registered as line7 v1" in summary and "metrics        : (none: see the notes)" in summary
    assert "note           : " in summary and cause in summary

    from mlflow import MlflowClient

    from pipelines.registry import VersionTags

    client = MlflowClient(tracking_uri=uri)
    (version,) = client.search_model_versions("name='line7'")
    run = client.get_run(version.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["pradot.test_metrics"] == "skipped" and cause in run.data.tags["pradot.test_metrics_note"]
    assert (
        run.data.tags["pradot.calibration_n_images"] == "2"
        and run.data.tags["pradot.calibration_source"] == "validation"
    )
    notes = Path(client.download_artifacts(run.info.run_id, "metrics/notes.txt", str(tmp_path))).read_text()
    assert cause in notes
    assert not [k for k in run.data.metrics if k.startswith(("image_auroc", "pixel_auroc", "au_pro"))]
    tags = VersionTags.from_tags(version.tags)  # the registry says it too, read back by the type that wrote it
    assert tags.test_metrics == "skipped" and cause in tags.test_metrics_note and tags.metrics == {}
    assert tags.calibration_n_images == 2 and tags.calibration_source == "validation"
    assert tags.threshold is not None
    import mlflow

    mlflow.set_tracking_uri(uri)  # the logged model carries the calibration, its sample size included
    meta = mlflow.models.get_model_info("models:/line7/1").metadata["pradot"]["calibration"]
    assert meta["n_images"] == 2 and meta["threshold"] == pytest.approx(tags.threshold)
    log = Path(client.download_artifacts(run.info.run_id, "logs/run.log", str(tmp_path))).read_text()
    assert "0.99 quantile on 2 normal image(s): it needs at least 100" in log
