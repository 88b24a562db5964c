"""``predict ray=true`` (or ``ray=<address>``): score the images on every node of a Ray cluster with Ray Data,
the driver writing the same files as the local path.

    pradot-predict model_uri=models:/pradot-synthetic-screw_bag/1 input=/nfs/line3 output=out ray=10.0.0.1:6379

The driver lists the input, checks the output and loads the model as the local path does, then joins the
cluster (:func:`pipelines.sweep.cluster.connect`: ``ray=<address>``, else ``$RAY_ADDRESS``, else a private
local Ray; an address where nothing answers, a refused token or no node of the cluster on this machine is one
clear error, before any work) and checks from every node that it reads the first input file as the driver
does (the nodes read the images themselves: the input must be on storage every node mounts at the same path).
The model travels through the object store (every file of its folder): the nodes need no access to the
tracking store or the registry.

The images to score become a Ray Dataset of file names, one block per ``batch_size`` images in the local
path's order (``ray.data.from_arrow``), mapped by an actor pool (``Dataset.map_batches`` with
``ActorPoolStrategy``): one actor per GPU when the cluster has GPUs (and ``device`` is not ``cpu``), else one
per node with a CPU, holding as many of that node's CPUs as the smallest such node has (``ray_actors``
overrides the count). Each actor loads the model once and calls :func:`pipelines.predict_outputs.score_batch`
on its blocks: the reading, the pyfunc call and the rendering of the map, mask and overlay bytes are the
local path's own functions, on the same batches. The driver iterates the results in order
(``preserve_order``) and writes each file atomically and the CSV rows as the local path does, so an
interrupted run resumes (``resume=true``) from either path.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from pipelines import checks, cli
from pipelines.names import printable
from pipelines.predict_outputs import KINDS, BatchSettings, Scored, open_model, score_batch


class RayPredictSettings(BatchSettings, Protocol):
    """What the Ray path reads of predict's settings (:class:`pipelines.predict.PredictSettings`)."""

    device: str
    ray_address: str | None
    ray_actors: int | None


__all__ = ["ray_target", "probe", "ActorPlan", "actor_plan", "model_files", "check_nodes", "BatchScorer", "session"]

log = logging.getLogger(__name__)

#: a cluster address: ``[ray://]host[:port]`` (a name, an IPv4 address, or an IPv6 address in brackets)
_ADDRESS = re.compile(r"^(ray://)?(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(:(?P<port>\d{1,5}))?$")
_FALSE, _TRUE = ("false", "no", "off", "0", ""), ("true", "yes", "on", "1")
_PROBE_TIMEOUT_S = 120.0
#: how long the actor pool may take to start every actor before the first block is scored
_ACTORS_TIMEOUT_S = 600


def ray_target(value: Any) -> tuple[bool, str | None]:
    """The ``ray`` setting: ``(False, None)`` for false (the local path), ``(True, None)`` for true (the cluster
    at ``$RAY_ADDRESS``, else a private local Ray), ``(True, address)`` for an address (``host:port``,
    ``ray://host:port``, ``auto``; ``local``: a private local Ray even with ``$RAY_ADDRESS`` set).

    Raises:
        ConfigError: a value that is none of these.
    """
    if value is None or value is False:
        return False, None
    if value is True:
        return True, None
    text = str(value).strip()
    if text.lower() in _FALSE:
        return False, None
    if text.lower() in _TRUE:
        return True, None
    if text in ("auto", "local"):
        return True, text
    match = _ADDRESS.match(text)
    if match is None or (match["port"] and not 0 < int(match["port"]) < 65536):
        raise checks.ConfigError(
            f"ray={value!r} is not a Ray cluster address; give ray=true (the cluster at $RAY_ADDRESS, else a "
            f"private local Ray), ray=<host>:<port> (the head's address, as `ray start --head` prints it), "
            f"ray=ray://<host>:10001 (Ray Client), ray=local, or ray=false (this process only)"
        )
    return True, text


def probe(address: str | None) -> None:
    """Fail fast, before the input is listed or the model loaded, when nothing answers at the cluster's address
    (``ray=<address>``, else ``$RAY_ADDRESS``; nothing to probe for a private local Ray).

    Raises:
        UsageError: naming the address, where it came from and the fix.
    """
    from pipelines.sweep.cluster import cluster_address, probe_address
    from pipelines.sweep.plan import RaySettings as ClusterSettings

    target = cluster_address(ClusterSettings(address=address))
    if target:
        probe_address(
            target,
            setting="ray",
            what="predict",
            private="set ray=true with RAY_ADDRESS unset to run predict on a private local Ray of this machine "
            "(ray=false: the local path, without Ray).",
        )


@dataclass(frozen=True)
class ActorPlan:
    """How many scoring actors, and what each holds."""

    actors: int
    num_cpus: float
    num_gpus: float

    @property
    def device(self) -> str:
        """The actors' torch device."""
        return "cuda" if self.num_gpus else "cpu"


def actor_plan(nodes: Sequence[Mapping[str, float]], device: str, actors: int | None = None) -> ActorPlan:
    """The actor pool for a cluster whose alive nodes have these resources (``{"CPU": 8, "GPU": 1, ...}``):
    with GPUs (and ``device`` not ``cpu``) one actor per GPU, each with one GPU and one CPU; else one actor
    per node with a CPU, each with the CPU count of the smallest such node (``actors`` of them when given,
    the CPUs split so that they spread over the nodes).

    Raises:
        UsageError: ``device=cuda`` on a cluster without GPUs; no node with a CPU; more actors than fit.
    """
    gpus = sum(float(n.get("GPU", 0)) for n in nodes)
    if device == "cuda" and gpus < 1:
        raise cli.UsageError("device=cuda but the Ray cluster has no GPU; give device=auto or device=cpu")
    if device != "cpu" and gpus >= 1:
        n_gpu = int(gpus)
        if actors is not None and actors > n_gpu:
            raise cli.UsageError(f"ray_actors={actors} but the Ray cluster has {n_gpu} GPUs (one actor each)")
        return ActorPlan(actors or n_gpu, 1.0, 1.0)
    cpus = [int(n.get("CPU", 0)) for n in nodes if float(n.get("CPU", 0)) >= 1]
    if not cpus:
        raise cli.UsageError("the Ray cluster has no node with a CPU for a scoring actor; add a worker node")
    count = actors or len(cpus)
    per_node = -(-count // len(cpus))
    num_cpus = max(1, min(cpus) // per_node)
    fits = sum(c // num_cpus for c in cpus)
    if count > fits:
        raise cli.UsageError(
            f"ray_actors={count} do not fit the Ray cluster's CPUs ({sum(cpus)} on {len(cpus)} nodes); give at "
            f"most {sum(cpus)}"
        )
    return ActorPlan(count, float(num_cpus), 0.0)


def model_files(folder: Path) -> dict[str, bytes]:
    """Every file of a logged model's folder by its path under it (what an actor writes back and loads)."""
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


def _text(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


def _bytes(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


class BatchScorer:
    """The actor of the pool: the model loaded once from its files (shipped through the object store), then
    one :func:`pipelines.predict_outputs.score_batch` per block of file names."""

    def __init__(self, settings: RayPredictSettings, model_ref: list, device: str):
        import ray

        with tempfile.TemporaryDirectory(prefix="pradot-model-") as tmp:
            for rel, data in ray.get(model_ref[0]).items():
                path = Path(tmp, rel)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
            self.model, scorer = open_model(tmp, settings, device)
        self.calibration, self.settings = scorer.calibration, settings
        self.node = ray.get_runtime_context().get_node_id()

    def __call__(self, batch: Mapping[str, Any]):
        import pyarrow as pa

        files = [Path(os.fsdecode(bytes(f))) for f in batch["file"]]
        out = score_batch(self.model, self.calibration, files, self.settings)
        ok = [o if isinstance(o, Scored) else None for o in out]
        nan = float("nan")

        def floats(name: str) -> pa.Array:
            return pa.array([getattr(o, name) if o else nan for o in ok], pa.float64())

        return pa.table(
            {
                "index": pa.array([int(i) for i in batch["index"]], pa.int64()),
                "error": pa.array([b"" if o else _bytes(str(r)) for o, r in zip(ok, out)], pa.binary()),
                **{n: floats(n) for n in ("score", "raw_score", "threshold", "mask_threshold")},
                "is_anomaly": pa.array([bool(o and o.is_anomaly) for o in ok], pa.bool_()),
                **{k: pa.array([o.files.get(k, b"") if o else b"" for o in ok], pa.large_binary()) for k in KINDS},
                "node": pa.array([self.node] * len(out), pa.string()),
            }
        )


def _outcome(row: Mapping[str, Any], kinds: Sequence[str]) -> Scored | str:
    if row["error"]:
        return _text(row["error"])
    return Scored(
        float(row["score"]),
        float(row["raw_score"]),
        bool(row["is_anomaly"]),
        float(row["threshold"]),
        float(row["mask_threshold"]),
        {k: row[k] for k in kinds},
    )


def _alive_nodes() -> list[dict]:
    import ray

    return [n for n in ray.nodes() if n.get("Alive") and (n["Resources"].get("CPU") or n["Resources"].get("GPU"))]


def _probe(files: list[bytes]) -> tuple[str, list[int | str]]:
    """On one node: this node's address and each file's size, or why it cannot be read."""
    import ray

    out: list[int | str] = []
    for f in files:
        try:
            with open(os.fsdecode(f), "rb") as fh:
                fh.read(1)
            out.append(os.stat(os.fsdecode(f)).st_size)
        except OSError as exc:
            out.append(f"{type(exc).__name__}: {exc.strerror or exc}")
    return ray.util.get_node_ip_address(), out


def check_nodes(files: Sequence[Path], nodes: Sequence[Mapping[str, Any]]) -> None:
    """Check from each node that it reads ``files`` (the first images) as this driver does: same size.

    Raises:
        UsageError: a node cannot read one, or sees another file (naming the node and the fix).
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    want = [f.stat().st_size for f in files]
    on_node = ray.remote(num_cpus=0, max_retries=0)(_probe)
    refs = {
        n["NodeID"]: on_node.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
        ).remote([os.fsencode(f) for f in files])
        for n in nodes
    }
    for node, ref in refs.items():
        address, got = ray.get(ref, timeout=_PROBE_TIMEOUT_S)
        for f, size, seen in zip(files, want, got):
            if seen != size:
                why = f"cannot read it ({seen})" if isinstance(seen, str) else f"sees {seen} bytes, not {size}"
                raise cli.UsageError(
                    f"ray: the node {address} ({node[:8]}) {why} for the input file {printable(f)}: with ray every "
                    f"node reads the images itself; put the input on storage every node mounts at the same path, "
                    f"or run predict without ray"
                )


def _source(settings: RayPredictSettings, plan: ActorPlan, model_ref, notes: list[str]):
    """``source(todo)``: the images as a Ray Dataset of file names (one block per ``batch_size`` images, in
    order), scored by the actor pool; yields each block's ``(index, Scored or reason)`` in order."""
    import pyarrow as pa
    import ray.data

    kinds = [k for k, on in zip(KINDS, (settings.write_maps, settings.write_masks, settings.write_overlays)) if on]

    def source(todo: list[tuple[Path, str]]) -> Iterator[list[tuple[int, Scored | str]]]:
        ctx = ray.data.DataContext.get_current()
        ctx.execution_options.preserve_order = True  # scores.csv in the local path's order
        ctx.enable_progress_bars = False  # predict's own bar counts the images
        # every actor up before the first block (the blocks spread over the nodes from the start); an error, not
        # a wait without end, when the cluster cannot place them
        ctx.wait_for_min_actors_s = _ACTORS_TIMEOUT_S
        bs = settings.batch_size
        blocks = [
            pa.table(
                {
                    "index": pa.array(range(i, min(i + bs, len(todo))), pa.int64()),
                    "file": pa.array([os.fsencode(f) for f, _ in todo[i : i + bs]], pa.binary()),
                }
            )
            for i in range(0, len(todo), bs)
        ]
        ds = ray.data.from_arrow(blocks).map_batches(
            BatchScorer,
            batch_size=None,  # one call per block: the local path's batches
            compute=ray.data.ActorPoolStrategy(size=plan.actors),
            num_cpus=plan.num_cpus,
            num_gpus=plan.num_gpus,
            fn_constructor_args=(settings, [model_ref], plan.device),
            batch_format="numpy",
        )
        used: set[str] = set()
        for table in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            rows = table.to_pylist()
            used.update(r["node"] for r in rows)
            yield [(int(r["index"]), _outcome(r, kinds)) for r in rows]
        notes.append(
            f"ray: {plan.actors} actors ({plan.num_cpus:g} CPU, {plan.num_gpus:g} GPU each); the images were "
            f"scored on {len(used)} node(s)"
        )

    return source


@contextlib.contextmanager
def session(settings: RayPredictSettings, model_folder: Path, probe_files: Sequence[Path]):
    """Join the cluster, plan the actors, check that every node reads ``probe_files``, put the model in the
    object store; yield ``(source, notes)`` (see :func:`_source`); leave the cluster (or stop the private Ray)
    after.

    Raises:
        UsageError: the cluster cannot be joined (see :func:`pipelines.sweep.cluster.connect`), the actors do
            not fit it (:func:`actor_plan`), or a node cannot read the input (:func:`check_nodes`).
    """
    from pipelines.sweep.cluster import connect
    from pipelines.sweep.plan import RaySettings as ClusterSettings

    files = model_files(model_folder)
    # ray is imported by connect, after its settings for a loopback address (Ray reads them at import)
    with connect(ClusterSettings(address=settings.ray_address), setting="ray", what="predict") as cluster:
        import ray

        nodes = _alive_nodes()
        plan = actor_plan([n["Resources"] for n in nodes], settings.device, settings.ray_actors)
        log.info(
            "ray: %s, %d node(s); %d actors with %g CPU, %g GPU each",
            cluster.address or "a private local Ray",
            len(nodes),
            plan.actors,
            plan.num_cpus,
            plan.num_gpus,
        )
        check_nodes(probe_files, nodes)
        notes: list[str] = []
        yield _source(settings, plan, ray.put(files), notes), notes
