"""The model registry, in one place: the tags of a registered version (one type, written and read here),
registering a logged model atomically, telling an incomplete version, and the alias decision.

Registration is atomic: a version is created only after its run has FINISHED, in one call that carries
every tag (:func:`register`), so a crash leaves either no version or a complete one; :func:`incomplete`
says why a version (e.g. one registered by an earlier release and cut short) must not be used.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.checks import list_items
from pipelines.tracking import setup_tracking
from pradot.errors import InputError

log = logging.getLogger(__name__)

__all__ = [
    "VersionTags",
    "log_model",
    "registration",
    "register",
    "incomplete",
    "AliasDecision",
    "alias_lock",
    "decide_alias",
]


# ------------------------------------------------------------------------------------- registry tags
def _stages_text(stages: Sequence[int]) -> str:
    return ",".join(str(int(s)) for s in stages)


def _number(text: str | None) -> float | None:
    try:
        x = float(text) if text not in (None, "") else None
    except ValueError:
        return None
    return x if x is not None and math.isfinite(x) else None


@dataclass
class VersionTags:
    """The tags of a registered model version: what it is, how it was trained and chosen, its metrics.

    One schema for the banks ``main`` and ``sweep`` register, the memory banks ``baseline`` registers
    (``kind="memory_bank"``) and the ensembles ``promote`` registers;
    :meth:`to_tags` writes it, :meth:`from_tags` reads it back (also from versions registered by earlier
    releases, which used the same keys).
    """

    dataset: str = ""
    category: str = ""
    run_id: str = ""
    threshold: float | None = None
    kind: str = "bank"  # "bank" | "ensemble" | "memory_bank" | "fewshot"
    backbone: str = ""
    stages: tuple[int, ...] = ()
    image_size: int | None = None
    alpha: float | None = None
    n: float | None = None
    eta: float | None = None
    epsilon: float | None = None
    batch_size: int | None = None
    epochs: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)  # -> "metric.<name>"
    # a bank chosen by a sweep
    sweep_run_id: str | None = None
    sweep_rank: int | None = None
    trial_id: str | None = None
    objective: str | None = None
    batch_ratio: float | None = None
    epochs_trained: int | None = None
    calibration_source: str | None = None
    sweep_metric: str | None = None  # the metric the sweep ranked by; with sweep_score -> tag "<sweep_metric>"
    sweep_score: float | None = None
    config: dict[str, Any] | None = None  # a sweep trial's hyper-parameters -> tag "config" (JSON)
    # the evidence behind the threshold and the metrics
    calibration_n_images: int | None = None  # normal images the threshold was calibrated on
    test_metrics: str | None = None  # "complete" | "partial" | "skipped" (pipelines.train.test_metrics_status)
    test_metrics_note: str | None = None  # why test metrics were skipped (the run's metrics/notes.txt, shortened)
    # an ensemble
    members: tuple[str, ...] = ()
    normalisation: str | None = None
    member_stages: tuple[tuple[int, ...], ...] = ()
    member_alphas: tuple[float, ...] = ()
    selection: str | None = None
    selection_metric: str | None = None
    selection_split: str | None = None  # the split the choice was made on (validation+pseudo: no test label)
    fusion: str | None = None  # mean | search
    member_weights: tuple[float, ...] = ()
    member_kinds: tuple[str, ...] = ()
    # feature options and post-processing (banks and memory banks)
    aggregation: int | None = None
    smoothing_sigma: float | None = None
    coreset_ratio: float | None = None
    # a few-shot model (FOCT): its support
    shots: int | None = None
    support_split: int | None = None
    support: tuple[str, ...] = ()

    _TEXT = (
        "dataset",
        "category",
        "run_id",
        "backbone",
        "sweep_run_id",
        "trial_id",
        "objective",
        "calibration_source",
        "sweep_metric",
        "normalisation",
        "selection",
        "selection_metric",
        "test_metrics",
        "test_metrics_note",
        "selection_split",
        "fusion",
    )
    _NUMBERS = ("threshold", "alpha", "n", "eta", "epsilon", "batch_ratio", "smoothing_sigma", "coreset_ratio")
    _INTEGERS = (
        "image_size",
        "batch_size",
        "epochs",
        "sweep_rank",
        "epochs_trained",
        "calibration_n_images",
        "aggregation",
        "shots",
        "support_split",
    )
    _KINDS = ("ensemble", "memory_bank", "fewshot")

    def to_tags(self) -> dict[str, str]:
        """``{tag: str}``; fields left unset are not written."""
        tags: dict[str, str] = {}
        for name in (*self._TEXT, *self._NUMBERS, *self._INTEGERS):
            value = getattr(self, name)
            if value not in (None, ""):
                tags[name] = str(value)
        if self.stages:
            tags["stages"] = _stages_text(self.stages)
        if self.kind == "ensemble":
            tags["pradot.kind"] = "ensemble"
            tags["members"] = ",".join(self.members)
            tags["n_members"] = str(len(self.members))
            tags["member_stages"] = ";".join(_stages_text(s) for s in self.member_stages)
            tags["member_alphas"] = ";".join(f"{a:g}" for a in self.member_alphas)
            if self.member_weights:
                tags["member_weights"] = ";".join(f"{w:g}" for w in self.member_weights)
            if self.member_kinds:
                tags["member_kinds"] = ";".join(self.member_kinds)
        if self.kind == "memory_bank":
            tags["pradot.kind"] = "memory_bank"
        if self.kind == "fewshot":
            tags["pradot.kind"] = "fewshot"
            tags["support"] = ",".join(self.support)
        if self.sweep_metric and self.sweep_score is not None:
            tags[self.sweep_metric] = str(round(float(self.sweep_score), 6))
        if self.config:
            tags["config"] = json.dumps(self.config, sort_keys=True, default=str)
        tags.update({f"metric.{k}": str(round(float(v), 5)) for k, v in self.metrics.items()})
        return tags

    @classmethod
    def from_tags(cls, tags: Mapping[str, str]) -> VersionTags:
        """Read :meth:`to_tags`' output; unknown tags are ignored, unreadable values left unset."""
        out = cls(kind=tags["pradot.kind"] if tags.get("pradot.kind") in cls._KINDS else "bank")
        for name in cls._TEXT:
            if tags.get(name):
                setattr(out, name, str(tags[name]))
        for name in (*cls._NUMBERS, *cls._INTEGERS):
            x = _number(tags.get(name))
            if x is not None:
                setattr(out, name, int(x) if name in cls._INTEGERS else x)
        try:
            out.stages = tuple(int(s) for s in list_items(str(tags.get("stages", ""))))
        except ValueError:
            out.stages = ()
        out.metrics = {
            k[len("metric.") :]: x for k, v in tags.items() if k.startswith("metric.") and (x := _number(v)) is not None
        }
        if tags.get("members"):
            out.members = tuple(m for m in str(tags["members"]).split(",") if m)
        weights = [_number(w) for w in str(tags.get("member_weights", "")).split(";") if w]
        if weights and all(w is not None for w in weights):
            out.member_weights = tuple(weights)
        out.member_kinds = tuple(k for k in str(tags.get("member_kinds", "")).split(";") if k)
        if tags.get("support"):
            out.support = tuple(m for m in str(tags["support"]).split(",") if m)
        if out.sweep_metric:
            out.sweep_score = _number(tags.get(out.sweep_metric))
        with contextlib.suppress(ValueError, TypeError):
            out.config = json.loads(tags["config"]) if tags.get("config") else None
        return out

    def with_updates(self, **changes: Any) -> VersionTags:
        return dataclasses.replace(self, **changes)


def log_model(model_path: str | Path, calibration, tags: VersionTags | None = None, example_image=None) -> str:
    """Log the model file with its calibration as the active run's pyfunc model (not registered; the
    logged model carries ``tags``); returns its URI for :func:`register`."""
    from pipelines.mlflow_model import log_pradot_model

    info = log_pradot_model(
        model_path,
        calibration,
        input_example_image=example_image,
        extra_tags=tags.to_tags() if tags is not None else None,
    )
    return info.model_uri


@contextlib.contextmanager
def registration(name: str | None) -> Iterator[None]:
    """Create the registered model ``name`` (unless it exists) before the block's work: the registry judges
    the name now, not after training, and :func:`register` is then the one call that creates the version.
    If the block fails and this call created the model, which still has no version, it is removed again:
    a failed run leaves nothing in the registry. ``name=None``: nothing to register, the block just runs.

    Raises:
        ValueError: the registry refuses the name (the message says why).
    """
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    if name is None:
        yield
        return
    setup_tracking()
    client, created = MlflowClient(), False
    try:
        client.create_registered_model(name)
        created = True
    except MlflowException as e:
        if e.error_code in ("INVALID_PARAMETER_VALUE", "BAD_REQUEST"):
            raise InputError(f"the model registry refuses the registered model name {name!r}: {e.message}") from None
        if e.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
            raise
    try:
        yield
    except BaseException:
        if created:
            with contextlib.suppress(MlflowException):
                if not client.search_model_versions(f"name='{name}'"):
                    client.delete_registered_model(name)
        raise


def register(model_uri: str, name: str, tags: VersionTags) -> str:
    """Register a logged model as a new version of ``name`` with all its tags in one call; returns the
    version. Call it after the model's run has ended (FINISHED), so that no version of an unfinished run
    exists, even for a moment."""
    import mlflow

    logged = {}  # the logged model's own tags (e.g. pradot.format), under the version tags
    if model_uri.startswith("models:/m-"):
        logged = {
            k: v
            for k, v in mlflow.MlflowClient().get_logged_model(model_uri[len("models:/") :]).tags.items()
            if not k.startswith("mlflow.")
        }
    version = str(mlflow.register_model(model_uri, name, tags={**logged, **tags.to_tags()}).version)
    log.info("registered model %s version %s", name, version)
    if tags.run_id:  # the run (ended) points to its version
        mlflow.MlflowClient().set_tag(tags.run_id, "pradot.registered", f"{name}/{version}")
    return version


def incomplete(client, version) -> str | None:
    """Why a registered version must not be used (promote skips it), or None: it is not READY, or its
    training run did not finish (a version registered before its run ended and cut short by a crash, as
    earlier releases could leave; a version :func:`register` makes always has a FINISHED run)."""
    if getattr(version, "status", "READY") != "READY":
        return f"registration status {version.status}"
    run_id = version.run_id or version.tags.get("run_id")
    if not run_id:
        return None
    try:
        status = client.get_run(run_id).info.status
    except Exception:  # noqa: BLE001 - a deleted run: nothing to check against
        return None
    return None if status == "FINISHED" else f"its run {run_id} is {status}, not FINISHED (registration cut short)"


# ------------------------------------------------------------------------------------- aliases
@dataclass(frozen=True)
class AliasDecision:
    moved: bool
    reason: str
    previous: str | None  # the version that held the alias before, if any


#: how long a promotion waits for another one of the same registered model to finish deciding (seconds)
ALIAS_LOCK_TIMEOUT_S = 6 * 3600


def _lock_dir(uri: str) -> Path:
    """Where the alias locks of the registry at ``uri`` live: beside a SQLite store's file (every process
    that writes the store can write there), else ``$PRADOT_LOCK_DIR`` or ``~/.cache/pradot/locks``."""
    import os

    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///") :]).resolve().parent / ".pradot-locks"
    return Path(os.environ.get("PRADOT_LOCK_DIR") or Path.home() / ".cache" / "pradot" / "locks")


@contextlib.contextmanager
def alias_lock(name: str, alias: str, timeout: float = ALIAS_LOCK_TIMEOUT_S, uri: str | None = None) -> Iterator[None]:
    """Hold the lock of ``alias`` of the registered model ``name`` in the registry at ``uri`` (default: the
    tracking URI) (a file lock, :mod:`filelock`): the alias decisions of one registered model happen one
    after another, across threads and processes of one machine (or of machines sharing the lock folder).

    Raises:
        TimeoutError: another promotion held it for ``timeout`` seconds.
    """
    import hashlib

    import mlflow
    from filelock import FileLock
    from filelock import Timeout as LockTimeout

    folder = _lock_dir(uri or mlflow.get_registry_uri())
    folder.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha256(f"{name}\0{alias}".encode()).hexdigest()[:20]
    lock = FileLock(str(folder / f"alias-{key}.lock"))
    try:
        lock.acquire(timeout=0)
    except LockTimeout:
        log.info("waiting for another promotion of %s to finish deciding @%s (lock %s)", name, alias, lock.lock_file)
        try:
            lock.acquire(timeout=timeout)
        except LockTimeout:
            raise TimeoutError(
                f"another promotion of {name} held the @{alias} lock {lock.lock_file} for {timeout:.0f} s; "
                f"if no promotion is running, remove that file"
            ) from None
    try:
        yield
    finally:
        lock.release()


def decide_alias(
    client,
    name: str,
    version: str,
    alias: str,
    metric: str,
    value: float,
    force: bool = False,
    holder_value: Any = None,
) -> AliasDecision:
    """Move ``alias`` to ``version`` when it beats the current holder on ``metric`` (strictly; the holder's
    ``metric.<metric>`` tag, or ``holder_value(version)`` when given: the holder's value measured now, e.g.
    re-scored on the same validation set; ``None`` from it falls back to the tag), or when ``force``; else keep
    it. The reason says which and why.

    Promotions do not race: the decision (read the holder, re-score it, move the alias) runs under
    :func:`alias_lock`, so a second promotion compares with the first one's result, not with the holder
    both started from. After a move the alias is read again; if a promotion that did not share the lock
    moved it meanwhile, the decision is made again against the new holder (at most 3 times).
    """
    for _ in range(3):
        with alias_lock(name, alias, uri=getattr(client, "_registry_uri", None)):
            decision = _decide(client, name, version, alias, metric, value, force, holder_value)
        if not decision.moved or _holder(client, name, alias) == str(version):
            return decision
        log.warning(
            "@%s of %s was moved by another promotion while v%s was promoted: deciding again", alias, name, version
        )
    return AliasDecision(
        False,
        f"kept: @{alias} of {name} kept being moved by other promotions (not sharing this machine's lock); "
        f"v{version} was not made {alias}",
        _holder(client, name, alias),
    )


def _holder(client, name: str, alias: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def _decide(client, name, version, alias, metric, value, force, holder_value) -> AliasDecision:
    """The decision of :func:`decide_alias`, unlocked."""
    from mlflow.exceptions import MlflowException

    try:
        champ = client.get_model_version_by_alias(name, alias)
    except MlflowException:
        champ = None
    new = round(float(value), 5)
    if champ is None:
        client.set_registered_model_alias(name, alias, version)
        return AliasDecision(True, f"promoted: v{version} is the first {alias} of {name} ({metric}={new:.5f})", None)
    previous = str(champ.version)
    if previous == str(version):
        return AliasDecision(True, f"promoted: v{version} already holds {alias}", previous)
    old = holder_value(champ) if holder_value is not None else None
    old = round(float(old), 5) if old is not None else None
    if old is None:
        old = VersionTags.from_tags(champ.tags).metrics.get(metric)
    if force:
        client.set_registered_model_alias(name, alias, version)
        return AliasDecision(
            True,
            f"promoted (force=true): v{version} {metric}={new:.5f} replaces v{previous} "
            f"({metric}={old if old is not None else 'unknown'})",
            previous,
        )
    if old is None:
        return AliasDecision(
            False,
            f"kept: the {alias} v{previous} has no metric.{metric} tag to compare with; "
            f"v{version} has {metric}={new:.5f} (use force=true to move the alias)",
            previous,
        )
    if new > old:
        client.set_registered_model_alias(name, alias, version)
        return AliasDecision(
            True, f"promoted: v{version} {metric}={new:.5f} > {old:.5f} of the previous {alias} v{previous}", previous
        )
    return AliasDecision(
        False, f"kept: v{version} {metric}={new:.5f} does not beat {old:.5f} of the {alias} v{previous}", previous
    )
