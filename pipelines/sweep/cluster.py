"""The Ray cluster a sweep runs on: connecting (``sweep.ray.address`` / ``$RAY_ADDRESS``: an existing
cluster, probed first; else a private local Ray of this machine), what each trial may ask for, where the
features travel, what the workers get from the driver's environment, and the tracking-store rules.

An existing cluster counts as several machines even when only its head is up (nodes may join later, as
autoscaling clusters do): no file/SQLite tracking store, no disk feature store unless checked from every
node, and a tracking server on a loopback address only when every node is on this machine.
"""

from __future__ import annotations

import contextlib
import importlib.machinery
import importlib.util
import ipaddress
import logging
import os
import socket
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from pipelines.sweep.plan import RaySettings, TrialResources
from pipelines.sweep.space import SweepError

__all__ = [
    "REPO",
    "FORWARDED_ENV_PREFIXES",
    "store_kind",
    "absolute_tracking_uri",
    "is_local_store",
    "is_loopback",
    "check_tracking_for_cluster",
    "forwarded_env",
    "worker_runtime_env",
    "cluster_address",
    "probe_address",
    "Cluster",
    "connect",
]

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
#: the driver's environment variables the trial workers get (tracking credentials and HTTP settings)
FORWARDED_ENV_PREFIXES = ("MLFLOW_TRACKING_", "MLFLOW_HTTP_REQUEST_", "DATABRICKS_")
_PROBE_TIMEOUT_S = 5.0


# ------------------------------------------------------------------------------- tracking store
def store_kind(uri: str) -> str:
    """``databricks`` (``databricks``, ``databricks-uc``, with or without a profile), ``local`` (a file
    path, ``file:`` or ``sqlite:``: a file only this machine writes) or ``server`` (HTTP(S), a database
    server, a plugin's store), by MLflow's own URI rules (``mlflow.utils.uri``)."""
    from mlflow.utils.uri import get_uri_scheme, is_databricks_unity_catalog_uri, is_databricks_uri, is_local_uri

    if is_databricks_uri(uri) or is_databricks_unity_catalog_uri(uri):
        return "databricks"
    if get_uri_scheme(uri) == "sqlite" or is_local_uri(uri):
        return "local"
    return "server"


def absolute_tracking_uri(uri: str) -> str:
    """Relative file / SQLite stores made absolute (trials run in other working directories); any other
    store unchanged."""
    if store_kind(uri) != "local":
        return uri
    p = urlparse(uri)
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str(Path(uri[len("sqlite:///") :]).resolve())
    if p.scheme in ("", "file") and "://" not in uri:
        return str(Path(uri).resolve())
    if p.scheme == "file" and p.path and not p.netloc and not Path(p.path).is_absolute():
        return "file://" + str(Path(p.path).resolve())
    return uri


def is_local_store(uri: str) -> bool:
    """True for stores only this machine can write: a file path, ``file:`` or ``sqlite:``."""
    return store_kind(uri) == "local"


def _is_loopback_host(host: str | None) -> bool:
    if not host:
        return False
    if host.lower() == "localhost" or host.lower().endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def is_loopback(uri: str) -> bool:
    """Whether the store's host is this machine's loopback address (``127.0.0.0/8``, ``::1``, ``localhost``)."""
    return _is_loopback_host(urlparse(uri).hostname)


def _this_host() -> str:
    """This machine's name for the fix in a message (a placeholder when it only knows itself as localhost)."""
    for name in (socket.gethostname, socket.getfqdn):
        try:
            host = name()
        except OSError:
            continue
        if host and not _is_loopback_host(host) and not host.startswith("localhost"):
            return host
    return "<this-machine's-address>"


def check_tracking_for_cluster(
    uri: str, n_nodes: int, address: str | None, node_addresses: Iterable[str] | None = None
) -> None:
    """Refuse a store that trials on other machines cannot reach: a local file/SQLite store on an existing
    cluster (``address``) or several nodes; a loopback server unless the cluster's address and every node
    known (``node_addresses``) are loopback too (all on this machine).

    Raises:
        SweepError: naming the store and how to fix it.
    """
    several = n_nodes > 1 or bool(address)
    if not several:
        return
    where = f"Ray cluster at {address}" if address else f"{n_nodes}-node Ray cluster"
    server_fix = (
        f"Start a tracking server every node reaches and point the driver at it: `mlflow server "
        f"--backend-store-uri sqlite:///mlflow.db --artifacts-destination ./mlartifacts --host 0.0.0.0 "
        f"--port 5000`, then `export MLFLOW_TRACKING_URI=http://{_this_host()}:5000` (a name or address of "
        f"this machine that the nodes reach, not 127.0.0.1 or localhost)."
    )
    kind = store_kind(uri)
    if kind == "local":
        raise SweepError(
            f"the MLflow tracking store {uri!r} is a local file/SQLite store, but the {where} runs trials on "
            f"other machines (an existing cluster counts as several, nodes may join later), which cannot write "
            f"this machine's file. {server_fix}"
        )
    if kind == "server" and is_loopback(uri):
        nodes = list(node_addresses or [])
        host = _host_port(address)[0] if address and address != "auto" else None
        on_this_machine = (host is None or _is_loopback_host(host)) and all(_is_loopback_host(n) for n in nodes)
        if not (on_this_machine and (host is not None or nodes)):
            raise SweepError(
                f"the MLflow tracking server {uri!r} is on a loopback address: trials on the other nodes of the "
                f"{where} would talk to their own machine, not this one. {server_fix}"
            )


# ------------------------------------------------------------------------------------- Ray
def _spec_elsewhere(package: str):
    """How ``package`` imports without this checkout on ``sys.path`` (installed), as a worker started in
    another folder would import it; None when it does not."""
    here = {REPO, REPO / "pipelines", REPO / "src"}
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
            return spec
    return None


def _importable_elsewhere(package: str) -> bool:
    """Whether a worker started elsewhere imports ``package`` as this driver does: installed, and the same
    files (an installed copy of another checkout does not count)."""
    spec = _spec_elsewhere(package)
    if spec is None:
        return False
    mine = sys.modules.get(package)
    here = getattr(mine, "__file__", None) or (importlib.util.find_spec(package) or spec).origin
    return bool(spec.origin and here) and Path(spec.origin).resolve() == Path(here).resolve()


def forwarded_env(environ=None) -> dict[str, str]:
    """The driver's tracking variables (``MLFLOW_TRACKING_*``: token, username, password, insecure TLS,
    certificates...; ``MLFLOW_HTTP_REQUEST_*``; ``DATABRICKS_*``) that are set: the trials log with them."""
    environ = os.environ if environ is None else environ
    return {k: v for k, v in environ.items() if k.startswith(FORWARDED_ENV_PREFIXES)}


def worker_runtime_env() -> dict | None:
    """The job's ``runtime_env``: the driver's tracking variables (:func:`forwarded_env`), and, unless the
    project is installed (importable without this checkout, as Ray's prestarted workers import it), this
    checkout's root and ``src/`` on the workers' ``PYTHONPATH`` (they import ``pipelines.sweep.trial``)."""
    env_vars = forwarded_env()
    if not (_importable_elsewhere("pipelines") and _importable_elsewhere("pradot")):
        paths = [str(REPO), str(REPO / "src"), os.environ.get("PYTHONPATH", "")]
        env_vars["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    return {"env_vars": env_vars} if env_vars else None


def cluster_address(settings: RaySettings) -> str | None:
    """The existing cluster to join: ``sweep.ray.address``, else ``$RAY_ADDRESS``; ``None`` (or
    ``local``): a private local Ray."""
    address = settings.address or os.environ.get("RAY_ADDRESS") or None
    return None if address in (None, "", "local") else str(address)


def _host_port(address: str) -> tuple[str, int]:
    client = address.startswith("ray://")
    rest = address[len("ray://") :] if client else address
    rest = rest.split("/", 1)[0]
    default = 10001 if client else 6379
    if rest.startswith("["):  # [v6]:port
        host, _, port = rest[1:].partition("]")
        return host, int(port.lstrip(":") or default)
    host, sep, port = rest.rpartition(":")
    return (host, int(port)) if sep and port.isdigit() else (rest, default)


def probe_address(address: str, timeout_s: float = _PROBE_TIMEOUT_S) -> None:
    """Fail fast when nothing answers at the cluster's address (``ray.init`` would wait for minutes).

    Raises:
        SweepError: naming the address and where it came from.
    """
    if address == "auto":
        return
    source = "$RAY_ADDRESS" if os.environ.get("RAY_ADDRESS") == address else "sweep.ray.address"
    try:
        host, port = _host_port(address)
        socket.create_connection((host, port), timeout=timeout_s).close()
    except (OSError, ValueError) as e:
        raise SweepError(
            f"cannot reach the Ray cluster at {address!r} ({source}) within {timeout_s:.0f}s: {e}. Check the address "
            f"and that the head node runs (`ray start --head --port=6379`), or unset RAY_ADDRESS and "
            f"sweep.ray.address to run the sweep on a private local Ray of this machine."
        ) from None


@dataclass(frozen=True)
class Cluster:
    """The Ray cluster this driver is connected to."""

    address: str | None  # None: a private local Ray started by this process
    n_nodes: int
    node_addresses: tuple[str, ...] = ()

    @property
    def several_machines(self) -> bool:
        """An existing cluster (nodes may join later) or several nodes now."""
        return self.address is not None or self.n_nodes > 1

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
            raise SweepError(
                f"each trial asks for {res} but the Ray cluster has CPU={have.get('CPU', 0)}, "
                f"GPU={have.get('GPU', 0)}: lower sweep.resources"
            )
        return res

    def feature_store(self, setting: str) -> str:
        """``disk`` or ``object_store`` (``auto``: disk on a private local Ray, the object store on an
        existing cluster or several nodes, where a node may lack the driver's ``cache.dir``)."""
        if setting != "auto":
            return setting
        return "object_store" if self.several_machines else "disk"


def _alive_nodes() -> list[dict]:
    import ray

    return [n for n in ray.nodes() if n.get("Alive")]


@contextlib.contextmanager
def connect(settings: RaySettings) -> Iterator[Cluster]:
    """Join the existing cluster (``sweep.ray.address``, else ``$RAY_ADDRESS``; probed first) or start a
    private local Ray (never one already running on this machine; ``sweep.ray.num_cpus`` / ``num_gpus``);
    shut down after.

    Raises:
        SweepError: nothing answers at the cluster's address.
    """
    address = cluster_address(settings)
    if address:
        probe_address(address)
        if _is_loopback_host(_host_port(address)[0]):  # a cluster of this machine only (its nodes on 127.0.0.1)
            os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        if settings.num_cpus is not None or settings.num_gpus is not None:
            log.warning(
                "sweep.ray.num_cpus / num_gpus size a private local Ray only; the cluster at %s keeps its "
                "own resources",
                address,
            )
    else:  # a Ray of our own, for this machine only: its servers listen on 127.0.0.1
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray

    runtime_env = worker_runtime_env()
    if address:
        local = {"_node_ip_address": "127.0.0.1"} if _is_loopback_host(_host_port(address)[0]) else {}
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=True, **local)
    else:
        ray.init(
            address="local",
            num_cpus=settings.num_cpus,
            num_gpus=settings.num_gpus,
            include_dashboard=False,
            runtime_env=runtime_env,
        )
    try:
        nodes = _alive_nodes()
        yield Cluster(address, len(nodes), tuple(str(n.get("NodeManagerAddress", "")) for n in nodes))
    finally:
        ray.shutdown()
