"""The Ray cluster a sweep runs on: connecting (``sweep.ray.address`` / ``$RAY_ADDRESS``: an existing
cluster; else a local Ray of this machine), what each trial may ask for, where the features travel, and
the tracking-store rule (trials log from the worker nodes: a file/SQLite store only works on one node).
"""

from __future__ import annotations

import contextlib
import importlib.machinery
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator
from urllib.parse import urlparse

from pipelines.sweep.plan import RaySettings, TrialResources
from pipelines.sweep.space import SweepError

__all__ = ["REPO", "absolute_tracking_uri", "is_local_store", "check_tracking_for_cluster", "worker_runtime_env",
           "Cluster", "connect"]

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------------- tracking store
def absolute_tracking_uri(uri: str) -> str:
    """Relative file / SQLite URIs made absolute (trials run in other working directories)."""
    p = urlparse(uri)
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str(Path(uri[len("sqlite:///"):]).resolve())
    if p.scheme in ("", "file") and "://" not in uri:
        return str(Path(uri).resolve())
    if p.scheme == "file" and p.path and not p.netloc and not Path(p.path).is_absolute():
        return "file://" + str(Path(p.path).resolve())
    return uri


def is_local_store(uri: str) -> bool:
    """True for stores only this machine can write: a file path, file:// or sqlite://."""
    scheme = urlparse(uri).scheme.lower()
    return scheme in ("", "file", "sqlite") or (len(scheme) == 1 and os.name == "nt")


def check_tracking_for_cluster(uri: str, n_nodes: int, address: str | None) -> None:
    """Refuse a local store when trials run on other machines (several nodes, or Ray Client)."""
    remote_client = bool(address) and str(address).startswith("ray://")
    if is_local_store(uri) and (n_nodes > 1 or remote_client):
        raise SweepError(
            f"the MLflow tracking store {uri!r} is a local file/SQLite store, but the Ray cluster "
            f"({'Ray Client at ' + address if remote_client else f'{n_nodes} nodes'}) runs trials on other "
            f"machines, which cannot write this machine's file. Start a tracking server and point every node "
            f"at it: `mlflow server --backend-store-uri sqlite:///mlflow.db --artifacts-destination ./mlartifacts "
            f"--host 0.0.0.0 --port 5000` then `export MLFLOW_TRACKING_URI=http://<host>:5000`.")


# ------------------------------------------------------------------------------------- Ray
def _importable_elsewhere(package: str) -> bool:
    """Whether ``package`` imports without this checkout on ``sys.path`` (installed), as a worker
    started in another folder would import it."""
    here = {REPO, REPO / "pipelines"}
    paths = [p for p in sys.path if Path(p or ".").resolve() not in here]
    for finder in sys.meta_path:
        try:
            if finder is importlib.machinery.PathFinder:
                spec = finder.find_spec(package, paths)
            elif hasattr(finder, "find_spec"):
                spec = finder.find_spec(package, None)
            else:
                continue
        except Exception:  # noqa: BLE001 - a finder that cannot tell does not find it
            continue
        if spec is not None:
            return True
    return False


def worker_runtime_env() -> dict | None:
    """Workers import the trial as ``pipelines.sweep.trial`` (and ``pradot``): installed, Ray's prestarted
    workers can run it (``None``); otherwise the job's workers get this checkout's root and ``src/``."""
    if _importable_elsewhere("pipelines") and _importable_elsewhere("pradot"):
        return None
    paths = [str(REPO), str(REPO / "src"), os.environ.get("PYTHONPATH", "")]
    return {"env_vars": {"PYTHONPATH": os.pathsep.join(p for p in paths if p)}}


@dataclass(frozen=True)
class Cluster:
    """The Ray cluster this driver is connected to."""

    address: str | None  # None: a local Ray started by this process
    n_nodes: int

    def trial_resources(self, request: TrialResources) -> dict[str, float]:
        """``{"cpu", "gpu"}`` per trial (gpu auto: 1 when the cluster has GPUs, else 0).

        Raises:
            SweepError: the cluster has less than one trial asks for.
        """
        import ray

        have = ray.cluster_resources()
        gpu = request.gpu if request.gpu is not None else (1.0 if have.get("GPU", 0) >= 1 else 0.0)
        res = {"cpu": float(request.cpu), "gpu": float(gpu)}
        if res["cpu"] > have.get("CPU", 0) or res["gpu"] > have.get("GPU", 0):
            raise SweepError(f"each trial asks for {res} but the Ray cluster has CPU={have.get('CPU', 0)}, "
                             f"GPU={have.get('GPU', 0)}: lower sweep.resources")
        return res

    def feature_store(self, setting: str) -> str:
        """``disk`` or ``object_store`` (``auto``: disk on one node, the object store on several)."""
        if setting != "auto":
            return setting
        return "disk" if self.n_nodes == 1 else "object_store"


@contextlib.contextmanager
def connect(settings: RaySettings) -> Iterator[Cluster]:
    """Join the cluster (``settings.address``, else ``$RAY_ADDRESS``) or start a local Ray; shut down after."""
    address = settings.address or os.environ.get("RAY_ADDRESS") or None
    if not address:  # a Ray of our own, for this machine only: its servers listen on 127.0.0.1
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray

    runtime_env = worker_runtime_env()
    if address:
        host = str(address).rsplit(":", 1)[0]
        local = {"_node_ip_address": "127.0.0.1"} if host in ("127.0.0.1", "localhost") else {}
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=True, **local)
    else:
        ray.init(num_cpus=settings.num_cpus, num_gpus=settings.num_gpus, include_dashboard=False,
                 runtime_env=runtime_env)
    try:
        yield Cluster(address, len([n for n in ray.nodes() if n.get("Alive")]))
    finally:
        ray.shutdown()
