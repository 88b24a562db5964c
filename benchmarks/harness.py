"""What every benchmark section shares: timing with device synchronisation, medians, peak memory, the
description of the machine, the synthetic dataset every section reads, and the JSON writer."""

from __future__ import annotations

import json
import math
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks import REPO
from pradot.data import load_dataset
from pradot.transport import numba_available

__all__ = [
    "REPO",
    "available_memory_gb",
    "flat_metrics",
    "log",
    "machine_info",
    "med",
    "memory_section",
    "rss_peak_mb",
    "sync",
    "synthetic_data",
    "timed",
    "write_json",
]


def log(msg: str) -> None:
    print(msg, flush=True)


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA kernels are asynchronous), so a timer measures it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, repeats: int = 1, warmup: int = 0):
    """Call ``fn`` ``warmup`` times untimed, then ``repeats`` times timed: (result of the last call, list of
    seconds per timed call)."""
    out = None
    for _ in range(warmup):
        out = fn()
        sync(device)
    times = []
    for _ in range(max(1, repeats)):
        sync(device)
        t = time.perf_counter()
        out = fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return out, times


def med(xs) -> float:
    return float(statistics.median(xs))


def rss_peak_mb() -> float:
    """Peak resident set size of this process (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def memory_section(device: torch.device) -> dict:
    """Peak process RSS so far, and on CUDA the peak allocated GPU memory since the last call."""
    out = {"process_peak_rss_mb": round(rss_peak_mb(), 1)}
    if device.type == "cuda":
        out["cuda_max_allocated_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
        torch.cuda.reset_peak_memory_stats(device)
    return out


def available_memory_gb() -> float | None:
    """MemAvailable of /proc/meminfo in GiB (None where there is no such file)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return None


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or ""


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10).stdout.strip()


def machine_info(device: torch.device) -> dict:
    """CPU, threads, memory, library versions, git commit and load average: what the numbers depend on."""
    cpu = _cpu_name()
    info = {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu,
        "memory_gb": None,
        "load_average_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    try:
        info["memory_gb"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    for mod in ("ot", "numba", "timm"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001
            info[mod] = None
    info["numba_kernels"] = numba_available()
    try:
        info["git_commit"] = _git("rev-parse", "HEAD") or None
        info["git_dirty"] = bool(_git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        info["git_commit"] = None
    return info


def synthetic_data(data_root: str | Path, image_size: int, n_train: int):
    """The synthetic screw_bag every section reads (generated under ``data_root`` on first use)."""
    return load_dataset(
        "synthetic",
        Path(data_root).expanduser(),
        "screw_bag",
        generate=True,
        image_size=image_size,
        n_train=max(60, n_train),
    )


def flat_metrics(d: dict, prefix: str = "") -> dict:
    """Finite numbers of a nested dict as ``{"a.b.c": float}`` with MLflow-safe names (spaces, ``+`` and
    ``/`` become ``_``, parentheses go, any other character MLflow refuses, such as ``,``, becomes ``_``)."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}".replace(" ", "_").replace("(", "").replace(")", "").replace("+", "_").replace("/", "_")
        key = re.sub(r"[^A-Za-z0-9_.:-]", "_", key)
        if isinstance(v, dict):
            out.update(flat_metrics(v, key + "."))
        elif isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            out[key] = float(v)
    return out


def write_json(result: dict, path: str | Path) -> Path:
    """Write the result (indented; anything not JSON-native as ``str``) and return the path."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=str) + "\n")
    return out
