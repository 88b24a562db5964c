"""Memory and latency of the served model under hostile load (issue 13): a real ``mlflow models serve`` on
127.0.0.1, requests sent concurrently, the server's resident memory sampled every 20 ms.

    python -m benchmarks.serving_load                                  # the issue's load case, defaults below
    python -m benchmarks.serving_load --requests 48 --concurrency 6 --output benchmarks/results/serving-load.json

The model is a small PRADOT (EfficientNet-Lite0 stage 2 at 224 px, fitted one epoch on noise images: its
scores mean nothing, its size and cost are a real model's), logged and registered in a temporary SQLite
store and served with one uvicorn worker. The request mix cycles through:

- ``big_png_map``: one flat 5000 x 5000 PNG (25 MP, the per-image limit; ~110 KB as base64) with
  ``return_map`` (PNG heat map): the request that raised the server's memory by 3.0 GB before issue 13;
- ``big_npy_map``: the same image with ``map_format="npy"`` (a 133 MB answer before);
- ``normal``: four 640 x 480 camera-like images, scores only;
- ``over_budget``: five 25 MP images (125 MP > the 100 MP request budget): must be refused (413).

It reports the status codes, throughput, p50/p95 latency per kind, and the server's RSS (the process tree:
``mlflow models serve`` and its uvicorn worker) idle after warm-up, at its peak under load, and after.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

KINDS = ("big_png_map", "big_npy_map", "normal", "over_budget")
EXPECTED = {"big_png_map": 200, "big_npy_map": 200, "normal": 200, "over_budget": 413}


def flat_png(w: int, h: int, fill: int = 90) -> bytes:
    """A flat RGB PNG written row by row: small on the wire, ``w x h`` pixels once decoded."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    row = b"\x00" + bytes([fill]) * (3 * w)
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row) for _ in range(h)) + comp.flush()
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", idat)
        + chunk(b"IEND", b"")
    )


def camera_png(seed: int, w: int = 640, h: int = 480) -> bytes:
    from PIL import Image

    rgb = (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def bodies() -> dict[str, bytes]:
    big = base64.b64encode(flat_png(5000, 5000)).decode()
    normal = [base64.b64encode(camera_png(i)).decode() for i in range(4)]

    def body(values, **params) -> bytes:
        out = {"dataframe_split": {"columns": ["image"], "data": [[v] for v in values]}}
        if params:
            out["params"] = params
        return json.dumps(out).encode()

    return {
        "big_png_map": body([big], return_map=True),
        "big_npy_map": body([big], return_map=True, map_format="npy"),
        "normal": body(normal),
        "over_budget": body([big] * 5),
    }


class Images:
    """A map-style dataset of ``{"image": (3, S, S) tensor}`` items (what ``PRADOT.fit`` takes)."""

    def __init__(self, images):
        self.images = images

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return {"image": self.images[i]}


def log_model(tmp: Path, model_config: dict) -> str:
    """Fit a small PRADOT, log and register it in ``tmp``'s SQLite store (served with ``model_config``);
    returns the tracking URI."""
    import mlflow
    import torch

    from pipelines.mlflow_model import log_pradot_model
    from pradot import PRADOT, PRADOTConfig
    from pradot.calibration import Calibration

    torch.manual_seed(0)
    model = PRADOT(
        PRADOTConfig(backbone="efficientnet_lite0", stages=(2,), image_size=224, n=1, batch_size=4, epochs=1, eta=0.5)
    )
    images = torch.rand(8, 3, 224, 224)
    model.fit(Images(images), progress=False)
    _, scores = model.score(images[:4])
    uri = f"sqlite:///{tmp}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    exp = mlflow.create_experiment("load", artifact_location=(tmp / "artifacts").as_uri())
    with mlflow.start_run(experiment_id=exp):
        log_pradot_model(
            model.save(tmp / "model.pt"),
            Calibration.calibrate(scores),
            registered_model_name="pradot-load",
            model_config=model_config,
        )
    return uri


def tree_rss(pid: int) -> int:
    """Resident bytes of ``pid`` and all its descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
                children.setdefault(int(stat[stat.rindex(")") + 2 :].split()[1]), []).append(int(d.name))
            except (OSError, ValueError):
                continue
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo.extend(children.get(p, []))
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            continue
    return total


class Sampler(threading.Thread):
    """Samples :func:`tree_rss` every 20 ms; ``peak`` is the largest sample."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.peak, self.running = pid, 0, True

    def run(self):
        while self.running:
            self.peak = max(self.peak, tree_rss(self.pid))
            time.sleep(0.02)


def post(url: str, body: bytes, timeout: float = 120) -> tuple[int, float, int]:
    """(status, seconds, answer bytes)."""
    req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
    t0 = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            n = len(r.read())
            return r.status, time.perf_counter() - t0, n
    except urllib.error.HTTPError as e:
        n = len(e.read())
        return e.code, time.perf_counter() - t0, n


def serve(uri: str, tmp: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": uri,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "models",
        "serve",
        "-m",
        "models:/pradot-load/1",
        "--env-manager",
        "local",
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
        "-w",
        "1",
    ]
    log = open(tmp / "server.log", "w")
    proc = subprocess.Popen(cmd, cwd=tmp, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/ping", timeout=2) as r:
                if r.status == 200:
                    return proc, url
        except OSError:
            time.sleep(0.5)
        if proc.poll() is not None:
            break
    raise RuntimeError(f"the server did not come up:\n{(tmp / 'server.log').read_text()[-3000:]}")


def percentile(xs: list[float], q: float) -> float:
    return float(np.percentile(xs, q)) if xs else float("nan")


def load(url: str, requests: int, concurrency: int, proc_pid: int) -> dict:
    """Warm up, sample idle memory, send ``requests`` requests (the kinds in turn) ``concurrency`` at a time."""
    data = bodies()
    for kind in ("normal", "big_png_map", "big_npy_map"):  # imports, first-call allocations
        post(f"{url}/invocations", data[kind])
    time.sleep(2)
    idle = tree_rss(proc_pid)
    sampler = Sampler(proc_pid)
    sampler.start()
    kinds = [KINDS[i % len(KINDS)] for i in range(requests)]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(lambda k: (k, *post(f"{url}/invocations", data[k])), kinds))
    wall = time.perf_counter() - t0
    sampler.running = False
    sampler.join()
    time.sleep(2)
    after = tree_rss(proc_pid)
    per_kind = {}
    for kind in KINDS:
        rows = [r for r in results if r[0] == kind]
        per_kind[kind] = {
            "n": len(rows),
            "status": sorted({r[1] for r in rows}),
            "as_expected": all(r[1] == EXPECTED[kind] for r in rows),
            "p50_s": percentile([r[2] for r in rows], 50),
            "p95_s": percentile([r[2] for r in rows], 95),
            "max_answer_bytes": max((r[3] for r in rows), default=0),
        }
    lat = [r[2] for r in results]
    return {
        "requests": requests,
        "concurrency": concurrency,
        "wall_s": wall,
        "throughput_rps": requests / wall,
        "p50_s": percentile(lat, 50),
        "p95_s": percentile(lat, 95),
        "per_kind": per_kind,
        "rss_idle_mb": idle / 2**20,
        "rss_peak_mb": sampler.peak / 2**20,
        "rss_after_mb": after / 2**20,
        "peak_over_idle": sampler.peak / idle,
        "server_up_after": post(f"{url}/invocations", data["normal"])[0] == 200,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=48)
    p.add_argument("--concurrency", type=int, default=6, help="6 = MLflow's thread pool on 2 cores")
    p.add_argument(
        "--model-config",
        default="{}",
        help="JSON merged into the served model_config, e.g. "
        "'{\"mmap_threshold\": 0}' (glibc's default allocator) or '{\"max_in_flight\": 2}'",
    )
    p.add_argument("--output", default=None, help="write the result as JSON here")
    a = p.parse_args(argv)
    model_config = {"device": "cpu", **json.loads(a.model_config)}
    with tempfile.TemporaryDirectory(prefix="pradot-load-") as tmp:
        tmp = Path(tmp)
        proc, url = serve(log_model(tmp, model_config), tmp)
        try:
            result = load(url, a.requests, a.concurrency, proc.pid)
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
    result["model_config"] = model_config
    result["command"] = " ".join([Path(sys.executable).name, "-m", "benchmarks.serving_load", *(argv or sys.argv[1:])])
    text = json.dumps(result, indent=1)
    print(text)
    if a.output:
        Path(a.output).write_text(text + "\n")
    ok = result["server_up_after"] and all(k["as_expected"] for k in result["per_kind"].values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
