"""The training entry point (MLproject `main`, pipelines/train.py) end to end: `mlflow run .` on tiny
synthetic data, failures, missing data; and what a training run logs."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent


def mlflow_run(tmp_path, *params, env_extra=None, timeout=600, entry="main"):
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db",
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        **(env_extra or {}),
    }
    env.pop("MLFLOW_RUN_ID", None)
    env.pop("MLFLOW_EXPERIMENT_ID", None)  # the experiment is --experiment-name's
    cmd = [
        str(VENV_BIN / "mlflow"),
        "run",
        str(REPO),
        "--env-manager",
        "local",
        "--experiment-name",
        "e2e",
        "-e",
        entry,
    ]
    for p in params:
        cmd += ["-P", p]
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout)


def client_for(tmp_path):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")


def common_overrides(tmp_path, extra=""):
    return f"overrides=experiment=ci cache.dir={tmp_path}/cache {extra}".strip()


@pytest.mark.slow
@pytest.mark.usefixtures("sqlite_uri")  # the store at tmp_path/mlflow.db: a copy of the migrated template
def test_mlflow_run_end_to_end(tmp_path):
    proc = mlflow_run(
        tmp_path,
        "dataset=synthetic",
        f"data_root={tmp_path}/synthetic",
        "alpha=0.3",
        common_overrides(tmp_path, "evaluation.umap_max_points=300"),  # the one end-to-end run with the UMAP figure
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "registered as pradot-synthetic-screw_bag" in proc.stdout
    client = client_for(tmp_path)
    exp = client.get_experiment_by_name("e2e")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["model.alpha"] == "0.3" and params["model.n"] == "1" and params["category"] == "screw_bag"
    assert params["model.batch_size"] == "8" and params["backbone.name"] == "efficientnet_lite0"
    # a training run logs what training uses: no sweep settings, no promote options
    assert not [k for k in params if k.startswith("sweep.") or k in ("members", "metric", "alphas")], sorted(params)
    m = run.data.metrics
    for key in (
        "image_auroc",
        "image_auroc_logical_anomalies",
        "image_auroc_structural_anomalies",
        "au_spro_0.05",
        "au_spro_0.01",
        "au_spro_1.0",
        "time_ot_seconds",
        "time_feature_seconds",
        "time_scoring_seconds",
    ):
        assert key in m, key
    assert 0.0 <= m["image_auroc"] <= 1.0
    hist = client.get_metric_history(run.info.run_id, "ot_loss_stage2")
    assert [h.step for h in hist] == [1, 2]
    arts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config", "metrics", "figures", "anomaly_maps", "logs"} <= arts
    figs = {Path(a.path).name for a in client.list_artifacts(run.info.run_id, "figures")}
    assert {
        "anomaly_overlays.png",
        "roc.png",
        "spro_curves.png",
        "prototypes.png",
        "umap.png",
        "restored_images.png",
        "assignments_0.png",
    } <= figs, figs
    tiffs = client.list_artifacts(run.info.run_id, "anomaly_maps/screw_bag/test")
    assert {Path(a.path).name for a in tiffs} == {"good", "logical_anomalies", "structural_anomalies"}
    (version,) = client.search_model_versions("name='pradot-synthetic-screw_bag'")
    assert version.run_id == run.info.run_id
    assert version.tags["alpha"] == "0.3" and "metric.image_auroc" in version.tags
    from pipelines.registry import VersionTags

    tags = VersionTags.from_tags(version.tags)  # the type that wrote them reads them back
    assert (tags.alpha, tags.stages, tags.n, tags.backbone, tags.run_id) == (
        0.3,
        (2,),
        1,
        "efficientnet_lite0",
        run.info.run_id,
    )
    assert tags.metrics["image_auroc"] == pytest.approx(m["image_auroc"], abs=1e-5)


@pytest.mark.slow
@pytest.mark.usefixtures("sqlite_uri")  # the store at tmp_path/mlflow.db: a copy of the migrated template
def test_crashed_run_is_failed_with_its_log(tmp_path):
    proc = mlflow_run(
        tmp_path,
        "dataset=synthetic",
        f"data_root={tmp_path}/synthetic",
        common_overrides(tmp_path, "debug.fail_at_epoch=1"),
    )
    assert proc.returncode != 0
    client = client_for(tmp_path)
    (run,) = client.search_runs([client.get_experiment_by_name("e2e").experiment_id])
    assert run.info.status == "FAILED"
    log_path = client.download_artifacts(run.info.run_id, "logs/run.log", str(tmp_path))
    text = Path(log_path).read_text()
    assert "epoch 1" in text and "failing on purpose" in text
    assert client.search_registered_models() == []


@pytest.mark.usefixtures("sqlite_uri")  # the store at tmp_path/mlflow.db: a copy of the migrated template
def test_missing_data_is_a_clear_error_and_registers_nothing(tmp_path):
    env = {"PRADOT_DATA_ROOT": ""}
    proc = mlflow_run(tmp_path, "category=screw_bag", common_overrides(tmp_path), env_extra=env)
    assert proc.returncode != 0
    err = proc.stderr
    assert "PRADOT_DATA_ROOT" in err and "dataset=synthetic" in err and "ground_truth" in err
    assert "Traceback" not in err.split("error:")[-1]
    assert client_for(tmp_path).search_registered_models() == []


def test_conf_defaults_are_the_papers_and_match_the_library():
    from pipelines import config
    from pradot.model import PRADOTConfig

    model_cfg = config.model_config(config.compose("train", []))
    lib = PRADOTConfig()
    for key in (
        "backbone",
        "stages",
        "image_size",
        "alpha",
        "n",
        "eta",
        "epsilon",
        "sinkhorn_iters",
        "batch_size",
        "epochs",
        "learn_coordinates",
        "warm_start",
    ):
        assert getattr(model_cfg, key) == getattr(lib, key), key
    assert (model_cfg.n, model_cfg.batch_size, model_cfg.epochs, model_cfg.epsilon) == (16, 64, 50, 0.01)
    with pytest.raises(config.ConfigError, match="bad configuration"):
        config.compose("train", ["model.nonexistent_key=3"])
