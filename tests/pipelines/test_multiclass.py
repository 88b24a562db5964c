"""The multi-class entry point (pipelines/multiclass.py, MLproject `multiclass`): bad settings refused before any
run; `mlflow run . -e multiclass` with the tiny recipe end to end, its unified model served by `mlflow models
serve` (no category in the request) and scored by `predict` with the same answers."""

from __future__ import annotations

import base64
import csv
import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipelines import multiclass, registry
from pipelines.tags import MULTICLASS_METHOD
from tests.helpers import free_port, http, pinged, wait_for

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
NAME = "pradot-synthetic-multiclass"


@pytest.mark.parametrize(
    "override, phrase",
    [
        ("multiclass.methods=[pradot,patchcore]", "multiclass.methods"),
        ("multiclass.categories=[screw_bag,screw_bag]", "each once"),
        ("multiclass.register=foct", "multiclass.register"),
        ("multiclass.per_category=maybe", "per_category"),
        ("multiclass.ablation=[ddpm]", "add vpdm to multiclass.methods"),
    ],
)
def test_bad_settings_are_refused_before_any_run(store, tmp_path, capsys, override, phrase):
    argv = ["multiclass=ci", f"data.root={tmp_path}/data", override]
    assert multiclass.main(argv) == 2
    assert phrase in capsys.readouterr().err
    assert not store.search_runs([e.experiment_id for e in store.search_experiments()])
    assert not (tmp_path / "data").exists()  # nothing generated either


def test_ablation_plan_is_table3_rows_of_the_vpdm_method():
    from pipelines import config
    from pradot.vpdm import ABLATIONS

    def plan(*overrides):
        argv = ["multiclass=ci", "multiclass.register=none", *overrides]
        return multiclass.multiclass_plan(config.compose("multiclass", argv))

    assert plan("multiclass.methods=[vpdm]").ablations == ()
    every = plan("multiclass.methods=[pradot,vpdm]", "multiclass.ablation=true")
    vpdm = every.methods[1].config
    assert [r for r, _ in every.ablations] == list(ABLATIONS)
    for row, m in every.ablations:
        assert (m.kind, m.name, m.config) == ("vpdm", f"vpdm-{row}", vpdm.ablated(row))
    some = plan("multiclass.methods=[vpdm]", "multiclass.ablation=[ddpm,full,ddpm]")  # full: vpdm itself
    assert [(r, m.config.endpoint) for r, m in some.ablations] == [("ddpm", "standard")]
    with pytest.raises(config.ConfigError, match="Table 3's rows: full, vague_only"):
        plan("multiclass.methods=[vpdm]", "multiclass.ablation=[no_prototypes]")


def test_ablation_flag_fits_the_rows_and_logs_table3_and_vpdm_figures(store, tmp_path):
    argv = ["multiclass=ci", f"data.root={tmp_path}/data", "multiclass.methods=[vpdm]", "multiclass.register=none"]
    argv += ["multiclass.ablation=[ddpm]", "multiclass.categories=[woven_fabric]"]
    argv += ["+multiclass.vpdm.overrides.n_draws=1"]  # one reconstruction per image: seconds
    result = multiclass.run(argv)
    run = store.get_run(result.run_id)
    assert "vpdm-ddpm_ablation.woven_fabric.image_auroc" in run.data.metrics
    rows = json.loads(Path(store.download_artifacts(result.run_id, "ablation/ablation.json")).read_text())["rows"]
    assert [(r["row"], r["endpoint"]) for r in rows] == [("full", "N(y_hat, I)"), ("ddpm", "N(0, I)")]
    means = run.data.metrics
    assert rows[1]["image_auroc"] == pytest.approx(means["vpdm-ddpm_ablation.mean.image_auroc"])
    assert rows[0]["image_auroc"] == pytest.approx(means["vpdm_unified.mean.image_auroc"])
    assert "| ddpm |" in result.summary()
    figs = {Path(a.path).name for a in store.list_artifacts(result.run_id, "figures")}
    assert {"vpdm_reconstructions.png", "vpdm_vague_steps.png"} <= figs  # the paper's Fig. 2 and 3


def _serve(uri: str, model_uri: str, tmp: Path):
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("MLFLOW_RUN_ID", None)
    cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri, "--env-manager", "local"]
    cmd += ["-h", "127.0.0.1", "-p", str(port), "-w", "1"]
    log_path = tmp / "server.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=tmp, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    return proc, f"http://127.0.0.1:{port}", log_path


def _stop(proc) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


@pytest.mark.slow
def test_mlflow_run_multiclass_registers_a_unified_model_served_and_predicted_alike(tmp_path, monkeypatch):
    from mlflow import MlflowClient

    from pipelines import predict

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("MLFLOW_RUN_ID", None)
    env.pop("MLFLOW_EXPERIMENT_ID", None)
    cmd = [str(VENV_BIN / "mlflow"), "run", str(REPO), "--env-manager", "local", "-e", "multiclass"]
    cmd += ["-P", "dataset=synthetic", "-P", "recipe=ci", "-P", "overrides=data.root=data cache.dir=cache"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert f"as {NAME} v1" in proc.stdout and "| mean | pradot (unified) |" in proc.stdout
    client = MlflowClient(uri)
    (v,) = client.search_model_versions(f"name='{NAME}'")
    tags = registry.VersionTags.from_tags(v.tags)
    run = client.get_run(v.run_id)
    # one parent run: per-category and mean metrics of both unified methods, the table, thresholds, maps
    m = run.data.metrics
    for method in ("pradot_unified", "memory_bank_unified"):
        for cat in ("screw_bag", "woven_fabric", "mean"):
            assert f"{method}.{cat}.image_auroc" in m and f"{method}.{cat}.pixel_auroc" in m
    assert "memory_bank_unified.woven_fabric.au_pro_0.3" in m and "pradot_unified.screw_bag.au_spro_0.05" in m
    # the recipe fixes the method in advance (no choice on the test split): its unified model is registered
    chosen = run.data.tags[MULTICLASS_METHOD]
    assert chosen == "pradot" and tags.selection_split is None
    assert tags.category == "multiclass" and tags.dataset == "synthetic"
    arts = {a.path for a in client.list_artifacts(run.info.run_id, "comparison")}
    assert {"comparison/comparison.md", "comparison/comparison.csv", "comparison/comparison.json"} <= arts
    figs = {Path(a.path).name for a in client.list_artifacts(run.info.run_id, "figures")}
    assert {f"maps_screw_bag_{chosen}.png", f"maps_woven_fabric_{chosen}.png"} <= figs
    thresholds = json.loads(Path(client.download_artifacts(run.info.run_id, "calibration/thresholds.json")).read_text())
    own = thresholds[f"{chosen} (unified)"]
    assert own["global"]["threshold"] == pytest.approx(tags.threshold)
    assert set(own["categories"]) == {"screw_bag", "woven_fabric"}

    # served with the usual contract (no category), and predict gives the same answers
    images = tmp_path / "images"
    images.mkdir()
    picks = [
        tmp_path / "data" / "woven_fabric" / "test" / "stain" / "002.png",
        tmp_path / "data" / "screw_bag" / "test" / "good" / "000.png",
    ]
    for p in picks:
        (images / f"{p.parents[2].name}_{p.name}").write_bytes(p.read_bytes())
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    out = tmp_path / "pred"
    assert predict.main([f"model_uri=models:/{NAME}/1", f"input={images}", f"output={out}"]) == 0
    rows = {r["path"]: r for r in csv.DictReader(open(out / "scores.csv"))}
    server, url, log_path = _serve(uri, f"models:/{NAME}/1", tmp_path)
    try:
        wait_for(lambda: pinged(url), 150, "model server", server, log_path, every=0.5)
        for name, row in rows.items():
            data = base64.b64encode((images / name).read_bytes()).decode()
            body = {"dataframe_split": {"columns": ["image"], "data": [[data]]}}
            body["params"] = {"return_map": True, "map_format": "npy"}
            status, text = http("POST", f"{url}/invocations", body)
            assert status == 200, text[:300]
            pred = json.loads(text)["predictions"][0]
            assert float(row["raw_score"]) == pytest.approx(pred["raw_score"], rel=1e-6, abs=1e-7)
            assert (row["is_anomaly"] == "True") == pred["is_anomaly"]
            assert pred["threshold"] == pytest.approx(tags.threshold)
            served_map = np.load(io.BytesIO(base64.b64decode(pred["anomaly_map"])))
            assert served_map.ndim == 2
    finally:
        _stop(server)
