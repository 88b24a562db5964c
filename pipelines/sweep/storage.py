"""Where a sweep keeps its Tune folder, and whether every node reaches it.

``sweep.storage_path`` is a local folder (made absolute) or a URI Tune writes through pyarrow's
filesystems (``s3://``, ``gs://``, ``abfs://``, ``file://``, ...), passed to Tune unchanged. Before any
trial starts the driver checks, from every node of the cluster, that the sweep folder is the same storage
it wrote (a probe file it just wrote is read back, and each node writes one of its own) and, for
``sweep.feature_store=disk``, that ``cache.dir`` is the driver's cache; a trial repeats the storage check
on its own node before it trains (nodes that join later).

```python
folder = SweepFolder.of(storage_location("s3://bucket/sweeps"), "my-sweep")   # s3://bucket/sweeps/my-sweep
folder.write_text("pradot_sweep.json", "...")
problems = check_nodes(folder, cache_dir="/nfs/cache")     # {} when every node sees both
```
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from pipelines.sweep.space import SweepError

__all__ = [
    "STATE_FILE",
    "NodeSetupError",
    "is_uri",
    "storage_location",
    "SweepFolder",
    "find_resume_folder",
    "check_nodes",
    "check_from_this_node",
    "describe_problems",
]

log = logging.getLogger(__name__)

#: in the sweep's Tune folder: its MLflow parent run, tracking store and configuration (for resume)
STATE_FILE = "pradot_sweep.json"
_PROBE = ".pradot-probe-"


class NodeSetupError(OSError):
    """A node cannot reach what a trial needs (the sweep's storage, the feature cache): an infrastructure
    failure, not a fault of the trial's settings."""


def is_uri(value: str) -> bool:
    """``scheme://...`` with a scheme of two letters or more (``C:\\`` is a Windows path)."""
    scheme = urlparse(str(value)).scheme
    return len(scheme) > 1 and "://" in str(value)


def storage_location(value: str) -> str:
    """``sweep.storage_path`` as Tune gets it: a URI unchanged, a local path absolute."""
    value = str(value)
    return value.rstrip("/") if is_uri(value) else str(Path(value).expanduser().resolve())


def _short(e: BaseException, limit: int = 300) -> str:
    text = " ".join(f"{type(e).__name__}: {e}".split())
    return text if len(text) <= limit else text[:limit] + " ..."


@dataclass(frozen=True)
class SweepFolder:
    """A sweep's Tune folder: ``<storage location>/<name>``, read and written through pyarrow."""

    storage: str  # a URI or an absolute path
    name: str

    @classmethod
    def of(cls, storage: str, name: str) -> SweepFolder:
        return cls(storage_location(storage), str(name))

    @classmethod
    def at(cls, location: str) -> SweepFolder:
        """The folder at ``location`` (a URI, or a path made absolute)."""
        location = storage_location(location)
        parent, _, name = location.rpartition("/")
        return cls(parent or "/", name)

    @property
    def location(self) -> str:
        return f"{self.storage.rstrip('/')}/{self.name}"

    @property
    def is_local(self) -> bool:
        return not is_uri(self.storage)

    def _fs(self):
        import pyarrow.fs

        if self.is_local:
            return pyarrow.fs.LocalFileSystem(), self.location
        fs, path = pyarrow.fs.FileSystem.from_uri(self.location)
        return fs, path

    def exists(self, name: str = "") -> bool:
        import pyarrow.fs

        fs, path = self._fs()
        return fs.get_file_info(f"{path}/{name}" if name else path).type != pyarrow.fs.FileType.NotFound

    def read_text(self, name: str) -> str:
        fs, path = self._fs()
        with fs.open_input_stream(f"{path}/{name}") as f:
            return f.readall().decode()

    def write_text(self, name: str, text: str) -> None:
        fs, path = self._fs()
        fs.create_dir(path, recursive=True)
        with fs.open_output_stream(f"{path}/{name}") as f:
            f.write(text.encode())

    def delete(self, name: str) -> None:
        fs, path = self._fs()
        fs.delete_file(f"{path}/{name}")

    def delete_if_empty(self) -> None:
        """Remove the folder when nothing is in it (a sweep refused before it started)."""
        import pyarrow.fs

        fs, path = self._fs()
        if not fs.get_file_info(pyarrow.fs.FileSelector(path, allow_not_found=True)):
            fs.delete_dir(path)

    def __str__(self) -> str:
        return self.location


def find_resume_folder(storage: str, resume_from: str | None, name: str | None) -> SweepFolder:
    """``resume_from``, else ``<storage>/<name>``, else the latest sweep folder under ``storage``.

    Raises:
        SweepError: no such sweep folder.
    """
    import pyarrow.fs

    if resume_from:
        folder = SweepFolder.at(resume_from)
    elif name:
        folder = SweepFolder.of(storage, name)
    else:
        base = SweepFolder.at(storage)
        fs, path = base._fs()
        dirs = [
            i
            for i in fs.get_file_info(pyarrow.fs.FileSelector(path, allow_not_found=True))
            if i.type == pyarrow.fs.FileType.Directory
        ]
        states = [
            s for s in fs.get_file_info([f"{d.path}/{STATE_FILE}" for d in dirs]) if s.type == pyarrow.fs.FileType.File
        ]
        if not states:
            raise SweepError(f"sweep.resume=true: no sweep to resume under {storage} (give sweep.resume_from=PATH)")
        latest = max(states, key=lambda s: s.mtime_ns or 0)
        folder = SweepFolder(base.location, latest.path.rstrip("/").split("/")[-2])
    if not folder.exists(STATE_FILE):
        raise SweepError(
            f"{folder} is not a PRADOT sweep folder (no {STATE_FILE}); give sweep.resume_from=PATH of "
            f"a folder under sweep.storage_path"
        )
    return folder


# ------------------------------------------------------------------------------- checks from the nodes
def probe_node(folder: SweepFolder, storage_token: tuple[str, str] | None, cache: tuple[str, str, str] | None) -> dict:
    """Run on a node: read back the driver's probe of the sweep folder and write one of this node's own;
    read the driver's probe in the feature cache. Returns ``{"node_id", "hostname", "storage", "cache"}``
    with ``None`` for what is fine, else the problem."""
    import ray

    out = {
        "node_id": ray.get_runtime_context().get_node_id(),
        "hostname": socket.gethostname(),
        "storage": None,
        "cache": None,
    }
    if storage_token is not None:
        name, token = storage_token
        try:
            if folder.read_text(name) != token:
                raise NodeSetupError("the probe file holds another driver's token (another storage at the same path)")
            own = f"{_PROBE}{out['node_id'][:12]}-{os.getpid()}"
            folder.write_text(own, token)
            folder.delete(own)
        except Exception as e:  # noqa: BLE001 - every failure is the answer
            out["storage"] = _short(e)
    if cache is not None:
        cache_dir, name, token = cache
        try:
            if Path(cache_dir, name).read_text() != token:
                raise NodeSetupError("the probe file holds another driver's token (another folder at the same path)")
        except Exception as e:  # noqa: BLE001
            out["cache"] = _short(e)
    return out


def check_nodes(folder: SweepFolder, cache_dir: str | None = None, timeout_s: float = 120.0) -> dict[str, dict]:
    """Check from every alive node of the connected Ray cluster that ``folder`` (and ``cache_dir`` when
    given) is the storage this driver writes. Returns ``{node_id: answer}`` for the nodes with a problem
    (a node that does not answer in ``timeout_s`` is one)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    token = uuid.uuid4().hex
    name = f"{_PROBE}{token[:12]}"
    folder.write_text(name, token)  # raises here when the driver itself cannot write the storage
    cache = None
    if cache_dir is not None:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        Path(cache_dir, name).write_text(token)
        cache = (str(cache_dir), name, token)
    nodes = {n["NodeID"]: n for n in ray.nodes() if n.get("Alive")}
    task = ray.remote(num_cpus=0, max_retries=0)(probe_node)
    refs = {
        task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(nid, soft=False)).remote(
            folder, (name, token), cache
        ): nid
        for nid in nodes
    }
    t0, ready = time.perf_counter(), []
    try:
        ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=timeout_s)
        problems = {}
        for ref, nid in refs.items():
            host = nodes[nid].get("NodeManagerHostname") or nodes[nid].get("NodeManagerAddress")
            if ref not in ready:
                problems[nid] = {
                    "node_id": nid,
                    "hostname": host,
                    "storage": f"no answer in {timeout_s:.0f}s",
                    "cache": None,
                }
                continue
            try:
                answer = ray.get(ref)
            except Exception as e:  # noqa: BLE001 - the node could not run the check at all
                answer = {"node_id": nid, "hostname": host, "storage": _short(e), "cache": None}
            if answer["storage"] or answer["cache"]:
                problems[nid] = answer
    finally:
        for ref in refs:
            if ref not in ready:
                ray.cancel(ref, force=True)
        _remove_quietly(lambda: folder.delete(name))
        if cache is not None:
            _remove_quietly(lambda: Path(cache_dir, name).unlink())
    log.info(
        "storage%s checked from %d node(s) in %.1fs: %s",
        " and feature cache" if cache else "",
        len(nodes),
        time.perf_counter() - t0,
        "all fine" if not problems else f"{len(problems)} with a problem",
    )
    return problems


def _remove_quietly(fn) -> None:
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - a probe file left behind is harmless
        log.debug("could not remove a probe file: %s", e)


def describe_problems(problems: Mapping[str, dict], folder: SweepFolder, cache_dir: str | None) -> str:
    """One line per node and problem, for the refusal message."""
    lines = []
    for nid, p in problems.items():
        where = f"node {p.get('hostname')} ({nid[:12]})"
        if p.get("storage"):
            lines.append(f"  {where}: sweep storage {folder}: {p['storage']}")
        if p.get("cache"):
            lines.append(f"  {where}: cache.dir {cache_dir}: {p['cache']}")
    return "\n".join(lines)


def check_from_this_node(location: str, parent_run_id: str) -> None:
    """A trial's own check before it trains: the sweep folder's state file, as the driver wrote it, is
    readable here (a node that joined after the driver's check, or without the shared storage).

    Raises:
        NodeSetupError: naming this node, the folder and what failed.
    """
    folder = SweepFolder.at(location)
    try:
        text = folder.read_text(STATE_FILE)
    except Exception as e:  # noqa: BLE001
        raise NodeSetupError(
            f"node {socket.gethostname()} cannot read the sweep folder {folder}: {_short(e)}; "
            f"sweep.storage_path must be storage every node reaches (shared mount or a URI "
            f"such as s3://...)"
        ) from e
    if parent_run_id not in text:
        raise NodeSetupError(
            f"node {socket.gethostname()} sees another folder at {folder} (its {STATE_FILE} is "
            f"not this sweep's): sweep.storage_path must be the same storage on every node"
        )
