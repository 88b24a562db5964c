"""Helpers shared by the tests: hand-made image files and the services the slow tests start."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import shutil
import socket
import struct
import time
import urllib.error
import urllib.request
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from PIL import Image


def file_bytes(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def craft_png(width: int, height: int, idat: bytes | None = None, bit_depth: int = 1, colour: int = 0) -> bytes:
    """A PNG written by hand: an all-black 1-bit grayscale image (valid, ~12 kB for 10000x10000)."""
    if idat is None:
        row = b"\x00" + b"\x00" * ((width * bit_depth + 7) // 8)
        idat = zlib.compress(row * height, 9)
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def rgb_image(h=20, w=30, seed=0) -> np.ndarray:
    return (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method: str, url: str, body=None, timeout=60):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


@contextlib.contextmanager
def tracking_uri(uri: str):
    """Use ``uri`` for MLflow in this process, then restore exactly the previous state (the explicitly set
    URI, if any, and the MLFLOW_TRACKING_URI variable, which ``mlflow.set_tracking_uri`` also writes)."""
    import mlflow
    from mlflow.tracking._tracking_service import utils as tracking_utils

    previous_set = getattr(tracking_utils, "_tracking_uri", None)
    previous_env = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous_set)
        if previous_env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = previous_env


def copy_store(template: Path, folder: Path) -> str:
    """Copy the session's migrated MLflow database (fixture ``mlflow_db_template``) to ``folder/mlflow.db``;
    returns its ``sqlite:///`` URI. A fresh store without MLflow's migrations (seconds each)."""
    target = Path(folder) / "mlflow.db"
    shutil.copyfile(template, target)
    return f"sqlite:///{target}"


class FakeModel:
    """map = per-pixel mean of the RGB channels (+ ``ramp`` * x-position); score = max of the map."""

    def __init__(self, size=8, ramp=0.0):
        self.config = SimpleNamespace(image_size=size)
        self.ramp = ramp
        self.calls = []

    def score(self, images):
        self.calls.append((tuple(images.shape), images.dtype, float(images.min()), float(images.max())))
        S = self.config.image_size
        maps = images.mean(1) + self.ramp * torch.linspace(0, 1, S)[None, None, :]
        return maps, maps.amax(dim=(1, 2))


def wait_for(predicate, timeout: float, what: str, proc=None, log=None, every: float = 0.3) -> None:
    """Poll ``predicate`` until it is true; RuntimeError with the log's tail when ``timeout`` passes or ``proc``
    (a process we started) exits first."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(every)
    tail = Path(log).read_text()[-4000:] if log and Path(log).exists() else ""
    code = f" (exit code {proc.poll()})" if proc is not None and proc.poll() is not None else ""
    raise RuntimeError(f"{what} did not come up in {timeout}s{code}\n{tail}")


def pinged(url: str) -> bool:
    """Whether a model server at ``url`` answers ``/ping`` with 200."""
    try:
        return http("GET", f"{url}/ping", timeout=2)[0] == 200
    except OSError:
        return False


def logged_model_folder(model_path: Path, folder: Path, store_uri: str | None = None) -> Path:
    """``model_path`` logged as the pyfunc model (a fixed calibration, CPU) into the store ``store_uri``
    (default: a new SQLite store in ``folder``) and downloaded back under ``folder/dl``: a model folder as
    ``predict`` and ``mlflow models serve`` read it. The process's tracking URI is restored after."""
    import mlflow

    from pipelines import mlflow_model
    from pradot.serving import Calibration

    uri = store_uri or f"sqlite:///{folder}/mlflow.db"
    exp = mlflow.MlflowClient(uri).create_experiment("t", artifact_location=(folder / "artifacts").as_uri())
    with tracking_uri(uri), mlflow.start_run(experiment_id=exp):
        info = mlflow_model.log_pradot_model(
            model_path, Calibration(0.5, 0.0, 1.0, 0.99, 3), model_config={"device": "cpu"}
        )
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=info.model_uri, dst_path=str(folder / "dl")))
