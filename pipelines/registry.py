"""The model registry, in one place: the tags of a registered version (the records of
:mod:`pipelines.version_tags`, one per model kind, re-exported here),
registering a logged model atomically, telling an incomplete version, and the alias decision.

Registration is atomic: a version is created only after its run has FINISHED, in one call that carries
every tag (:func:`register`), so a crash leaves either no version or a complete one; :func:`incomplete`
says why a version (e.g. one registered by an earlier release and cut short) must not be used.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.tags import REGISTERED
from pipelines.tracking import setup_tracking
from pipelines.version_tags import (
    KINDS,
    RECORDS,
    BankTags,
    EnsembleTags,
    FewShotTags,
    MemoryBankTags,
    PaDiMTags,
    VersionTags,
    VPDMTags,
    record_class,
)
from pradot.errors import InputError

log = logging.getLogger(__name__)

__all__ = [
    "VersionTags",
    "BankTags",
    "MemoryBankTags",
    "PaDiMTags",
    "EnsembleTags",
    "FewShotTags",
    "VPDMTags",
    "RECORDS",
    "KINDS",
    "record_class",
    "log_model",
    "registration",
    "register",
    "incomplete",
    "AliasDecision",
    "alias_lock",
    "decide_alias",
]


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
        mlflow.MlflowClient().set_tag(tags.run_id, REGISTERED, f"{name}/{version}")
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
