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
    "ray_token_source",
    "use_token_auth",
    "join_error",
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


def on_this_host(host: str) -> bool:
    """Whether ``host`` (a name or an IPv4/IPv6 address) is this machine: loopback, or an address one of its
    interfaces holds (a socket binds to it). ``ray start`` registers a node under the machine's network
    address (the one its default route uses), not 127.0.0.1."""
    if _is_loopback_host(host):
        return True
    try:
        infos = socket.getaddrinfo(host.strip("[]"), None, type=socket.SOCK_DGRAM)
    except (OSError, UnicodeError):
        return False
    for family, kind, _, _, sockaddr in infos:
        try:
            with socket.socket(family, kind) as s:
                s.bind((sockaddr[0], 0))
            return True
        except OSError:
            continue
    return False


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
    known (``node_addresses``) are addresses of this machine (:func:`on_this_host`: loopback, or an
    address of one of its interfaces, under which ``ray start`` registers a node).

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
        on_this_machine = (host is None or on_this_host(host)) and all(on_this_host(n) for n in nodes)
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


def probe_address(
    address: str,
    timeout_s: float = _PROBE_TIMEOUT_S,
    setting: str = "sweep.ray.address",
    what: str = "the sweep",
    private: str | None = None,
) -> None:
    """Fail fast when nothing answers at the cluster's address (``ray.init`` would wait for minutes);
    ``setting`` names where the address came from unless it is ``$RAY_ADDRESS``, ``what`` the work, ``private``
    how to run it on a private local Ray instead (default: unset both).

    Raises:
        SweepError: naming the address and where it came from.
    """
    if address == "auto":
        return
    source = "$RAY_ADDRESS" if os.environ.get("RAY_ADDRESS") == address else setting
    try:
        host, port = _host_port(address)
        socket.create_connection((host, port), timeout=timeout_s).close()
    except (OSError, ValueError) as e:
        raise SweepError(
            f"cannot reach the Ray cluster at {address!r} ({source}) within {timeout_s:.0f}s: {e}. Check the address "
            f"and that the head node runs (`ray start --head --port=6379`), or "
            + (private or f"unset RAY_ADDRESS and {setting} to run {what} on a private local Ray of this machine.")
        ) from None


# ---------------------------------------------------------------------- Ray token authentication
#: Ray's token authentication: the modes, where a token is looked up, how to get the head's
_TOKEN_DOCS = "https://docs.ray.io/en/latest/ray-security/token-auth.html"
_TOKEN_FIX = (
    "copy the head node's ~/.ray/auth_token to this machine's ~/.ray/auth_token, or export RAY_AUTH_TOKEN=<token> "
    "(`ray get-auth-token` on the head prints it)"
)


def ray_token_source(environ=None, home: Path | None = None) -> str | None:
    """Where this driver's Ray authentication token is, in Ray's lookup order (``$RAY_AUTH_TOKEN``, the file
    named by ``$RAY_AUTH_TOKEN_PATH``, ``~/.ray/auth_token``; Ray's token-authentication guide); ``None``
    without one."""
    environ = os.environ if environ is None else environ
    if environ.get("RAY_AUTH_TOKEN", "").strip():
        return "$RAY_AUTH_TOKEN"
    if environ.get("RAY_AUTH_TOKEN_PATH"):
        path = Path(environ["RAY_AUTH_TOKEN_PATH"]).expanduser()
        return f"$RAY_AUTH_TOKEN_PATH ({path})" if path.is_file() else None
    if home is None:
        home = Path(environ["HOME"]) if environ.get("HOME") else Path.home()
    default = home / ".ray" / "auth_token"
    return str(default) if default.is_file() else None


def use_token_auth(environ=None) -> str | None:
    """Send this driver's Ray token when it has one: ``RAY_AUTH_MODE=token`` unless the mode is set.

    Ray turns token mode on by itself only for a cluster it finds without an address; given
    ``RAY_ADDRESS`` the driver sends no token, and a cluster whose head had one (``ray start`` uses
    ``~/.ray/auth_token`` when it exists) refuses it. A cluster without authentication accepts a driver
    that sends a token. Returns where the token is when this set the mode, else ``None``."""
    environ = os.environ if environ is None else environ
    if environ.get("RAY_AUTH_MODE"):
        return None
    source = ray_token_source(environ)
    if source:
        environ["RAY_AUTH_MODE"] = "token"
    return source


def join_error(address: str, error: BaseException, environ=None) -> SweepError:
    """The one-line error for a failed ``ray.init(address=...)``: a token the cluster refuses (none, or not
    the head's), no node of the cluster on this machine (Ray connects a driver through a node of its own
    machine), else Ray's last message."""
    environ = os.environ if environ is None else environ
    chain, e = [], error
    while e is not None and len(chain) < 10:
        chain.append(e)
        e = e.__cause__ or e.__context__
    text = " ".join(f"{type(x).__name__}: {x}" for x in chain)
    where = f"the Ray cluster at {address!r}"
    if "AuthenticationError" in text or "InvalidAuthToken" in text or "UNAUTHENTICATED" in text:
        mode = environ.get("RAY_AUTH_MODE", "")
        source = ray_token_source(environ)
        if mode and mode.lower() != "token":
            why = f"it requires token authentication but RAY_AUTH_MODE={mode} here: unset RAY_AUTH_MODE and "
        elif source is None:
            why = "it requires token authentication and this driver has no token: "
        else:
            why = f"it refused this driver's token ({source}), which is not the head's: "
        return SweepError(f"cannot join {where}: {why}{_TOKEN_FIX}; see {_TOKEN_DOCS}")
    if "No node info found" in text:
        return SweepError(
            f"cannot join {where}: no node of it runs on this machine (a Ray driver connects through a node of "
            f"its own machine). Run the sweep on a node of the cluster, or add this machine first with "
            f"`ray start --address={address}`"
        )
    last = str(chain[-1]).strip().splitlines()
    return SweepError(f"cannot join {where}: {type(chain[-1]).__name__}: {last[-1] if last else ''}")


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
def connect(settings: RaySettings, setting: str = "sweep.ray.address", what: str = "the sweep") -> Iterator[Cluster]:
    """Join the existing cluster (``sweep.ray.address``, else ``$RAY_ADDRESS``; probed first) or start a
    private local Ray (never one already running on this machine; ``sweep.ray.num_cpus`` / ``num_gpus``);
    shut down after. ``setting`` and ``what``: the address's setting and the work, for the messages
    (``predict`` passes ``ray``).

    Raises:
        SweepError: nothing answers at the cluster's address; it refuses this driver's token (or its
            lack of one); no node of it runs on this machine (one line each, with the fix).
    """
    address = cluster_address(settings)
    if address:
        probe_address(address, setting=setting, what=what)
        token = use_token_auth()
        if token:  # before the run log exists: printed, as the user needs to know which token went out
            print(f"[pradot] Ray token authentication: this driver sends the token of {token}", file=sys.stderr)
        if _is_loopback_host(_host_port(address)[0]):  # the bootstrap address stays 127.0.0.1
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
        # no _node_ip_address: Ray connects the driver through this cluster's node on this machine, under the
        # address that node registered (``ray start``: the machine's network address, even for 127.0.0.1:P)
        try:
            ray.init(address=address, runtime_env=runtime_env, log_to_driver=True)
        except Exception as e:  # noqa: BLE001 - every way of failing to join becomes one line
            with contextlib.suppress(Exception):
                ray.shutdown()
            raise join_error(address, e) from None
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
