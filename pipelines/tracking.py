"""MLflow, in one place: the tracking store, an entry point's run (experiment, nesting, run log, FAILED on
error), resolved params, registry version tags (one type, written and read here), registration and the
alias decision.

```python
with entry_run("synthetic-screw_bag", "pradot", entry_point="main") as run:   # run.run_id, run.log_path
    log_resolved_params(flatten(cfg))
    version = register(model_file, calibration, "pradot-synthetic-screw_bag", VersionTags(...), example)
```
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_TRACKING_URI", "setup_tracking", "run_log", "EntryRun", "entry_run", "log_resolved_params",
           "VersionTags", "register", "AliasDecision", "decide_alias", "example_image"]

#: tracking store used when MLFLOW_TRACKING_URI is not set: a SQLite file in the working directory
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
#: loggers too chatty for a run log
_QUIET = ("matplotlib", "PIL", "urllib3", "alembic", "numba", "git")


def setup_tracking() -> str:
    """Use ``MLFLOW_TRACKING_URI`` when set, else the SQLite file in the working directory; returns the URI."""
    import mlflow

    uri = os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    mlflow.set_tracking_uri(uri)
    return uri


@contextlib.contextmanager
def run_log(name: str = "run.log") -> Iterator[Path]:
    """Capture the loggers (and warnings) to a file for the lifetime of the block; the caller logs it as
    an artifact, also when the run fails."""
    folder = Path(tempfile.mkdtemp(prefix="pradot-log-"))
    path = folder / name
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    stream = logging.StreamHandler(sys.stderr)
    stream.setFormatter(logging.Formatter("[pradot] %(message)s"))
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    root.addHandler(handler)
    root.addHandler(stream)
    for noisy in _QUIET:
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.captureWarnings(True)
    try:
        yield path
    finally:
        handler.flush()
        root.removeHandler(handler)
        root.removeHandler(stream)
        logging.captureWarnings(False)


@dataclass(frozen=True)
class EntryRun:
    """The MLflow run of an entry point (or of a step nested in one)."""

    run_id: str
    experiment_id: str
    tracking_uri: str
    log_path: Path


@contextlib.contextmanager
def entry_run(run_name: str, experiment_name: str, *, entry_point: str, nested: bool = False,
              log_name: str = "run.log", tags: Mapping[str, str] | None = None,
              run_id: str | None = None) -> Iterator[EntryRun]:
    """Start (or, under ``mlflow run``, resume) the entry point's run; ``nested``: a child of the active run;
    ``run_id``: reopen that run (e.g. a resumed sweep's parent).

    The experiment is set unless the run exists already (``MLFLOW_RUN_ID`` under ``mlflow run``, or
    ``run_id``). The block's log is captured and logged as ``logs/<log_name>``; an exception ends the run
    FAILED with the error in the log, then propagates.
    """
    import mlflow

    uri = setup_tracking()
    if not nested and not run_id and not os.environ.get("MLFLOW_RUN_ID"):
        mlflow.set_experiment(experiment_name)
    start = {"run_id": run_id} if run_id else {"run_name": run_name, "nested": nested}
    with run_log(log_name) as logfile, mlflow.start_run(**start) as run:
        mlflow.set_tags({"pradot.entry_point": entry_point, **(tags or {})})
        try:
            yield EntryRun(run.info.run_id, run.info.experiment_id, uri, logfile)
        except BaseException as e:
            user_error = isinstance(e, (ValueError, FileNotFoundError))
            log.error("run failed: %s: %s", type(e).__name__, e, exc_info=not user_error)
            raise
        finally:
            mlflow.log_artifact(str(logfile), "logs")


def log_resolved_params(params: Mapping[str, Any]) -> None:
    """Log the resolved config as params of the active run. Under ``mlflow run`` the MLproject parameters
    are logged already as the user gave them (e.g. ``seed=''`` for "conf default"): a resolved value that
    differs goes to ``resolved.<key>`` (MLflow params cannot change)."""
    import mlflow

    existing = mlflow.get_run(mlflow.active_run().info.run_id).data.params
    out = {}
    for k, v in params.items():
        v = str(v)[:6000]
        if k in existing and existing[k] != v:
            out[f"resolved.{k}"] = v
        elif k not in existing:
            out[k] = v
    if out:
        mlflow.log_params(out)


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

    One schema for the banks ``main`` and ``sweep`` register and the ensembles ``promote`` registers;
    :meth:`to_tags` writes it, :meth:`from_tags` reads it back (also from versions registered by earlier
    releases, which used the same keys).
    """

    dataset: str = ""
    category: str = ""
    run_id: str = ""
    threshold: float | None = None
    kind: str = "bank"  # "bank" | "ensemble" | "fewshot"
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
    # an ensemble
    members: tuple[str, ...] = ()
    normalisation: str | None = None
    member_stages: tuple[tuple[int, ...], ...] = ()
    member_alphas: tuple[float, ...] = ()
    selection: str | None = None
    selection_metric: str | None = None
    # a few-shot model (FOCT): its support
    shots: int | None = None
    support_split: int | None = None
    support: tuple[str, ...] = ()

    _TEXT = ("dataset", "category", "run_id", "backbone", "sweep_run_id", "trial_id", "objective",
             "calibration_source", "sweep_metric", "normalisation", "selection", "selection_metric")
    _NUMBERS = ("threshold", "alpha", "n", "eta", "epsilon", "batch_ratio")
    _INTEGERS = ("image_size", "batch_size", "epochs", "sweep_rank", "epochs_trained", "shots", "support_split")

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
    def from_tags(cls, tags: Mapping[str, str]) -> "VersionTags":
        """Read :meth:`to_tags`' output; unknown tags are ignored, unreadable values left unset."""
        out = cls(kind=tags["pradot.kind"] if tags.get("pradot.kind") in ("ensemble", "fewshot") else "bank")
        for name in cls._TEXT:
            if tags.get(name):
                setattr(out, name, str(tags[name]))
        for name in (*cls._NUMBERS, *cls._INTEGERS):
            x = _number(tags.get(name))
            if x is not None:
                setattr(out, name, int(x) if name in cls._INTEGERS else x)
        try:
            out.stages = tuple(int(s) for s in str(tags.get("stages", "")).replace("[", "").replace("]", "")
                               .split(",") if s.strip())
        except ValueError:
            out.stages = ()
        out.metrics = {k[len("metric."):]: x for k, v in tags.items()
                       if k.startswith("metric.") and (x := _number(v)) is not None}
        if tags.get("members"):
            out.members = tuple(m for m in str(tags["members"]).split(",") if m)
        if tags.get("support"):
            out.support = tuple(m for m in str(tags["support"]).split(",") if m)
        if out.sweep_metric:
            out.sweep_score = _number(tags.get(out.sweep_metric))
        with contextlib.suppress(ValueError, TypeError):
            out.config = json.loads(tags["config"]) if tags.get("config") else None
        return out

    def with_updates(self, **changes: Any) -> "VersionTags":
        return dataclasses.replace(self, **changes)


def register(model_path: str | Path, calibration, name: str, tags: VersionTags, example_image=None) -> str:
    """Log the model file with its calibration as the active run's pyfunc model, register it as a
    version of ``name`` and tag the version; returns the version."""
    from mlflow import MlflowClient

    from pipelines.mlflow_model import log_pradot_model

    info = log_pradot_model(model_path, calibration, registered_model_name=name, input_example_image=example_image,
                            extra_tags=tags.to_tags())
    version = str(info.registered_model_version)
    client = MlflowClient()
    for key, value in tags.to_tags().items():
        client.set_model_version_tag(name, version, key, value)
    log.info("registered model %s version %s", name, version)
    return version


def example_image(splits) -> Path:
    """The served model's input example: a normal test image, else any test, validation or training image."""
    normal = [s for s in splits.test if s.label == 0]
    return (normal or splits.test or splits.validation or splits.train)[0].image_path


# ------------------------------------------------------------------------------------- aliases
@dataclass(frozen=True)
class AliasDecision:
    moved: bool
    reason: str
    previous: str | None  # the version that held the alias before, if any


def decide_alias(client, name: str, version: str, alias: str, metric: str, value: float,
                 force: bool = False) -> AliasDecision:
    """Move ``alias`` to ``version`` when it beats the current holder on ``metric`` (strictly; the holder's
    ``metric.<metric>`` tag), or when ``force``; else keep it. The reason says which and why."""
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
    old = VersionTags.from_tags(champ.tags).metrics.get(metric)
    if force:
        client.set_registered_model_alias(name, alias, version)
        return AliasDecision(True, f"promoted (force=true): v{version} {metric}={new:.5f} replaces v{previous} "
                                   f"({metric}={old if old is not None else 'unknown'})", previous)
    if old is None:
        return AliasDecision(False, f"kept: the {alias} v{previous} has no metric.{metric} tag to compare with; "
                                    f"v{version} has {metric}={new:.5f} (use force=true to move the alias)", previous)
    if new > old:
        client.set_registered_model_alias(name, alias, version)
        return AliasDecision(True, f"promoted: v{version} {metric}={new:.5f} > {old:.5f} of the previous {alias} "
                                   f"v{previous}", previous)
    return AliasDecision(False, f"kept: v{version} {metric}={new:.5f} does not beat {old:.5f} of the {alias} "
                                f"v{previous}", previous)


def dump_json(value: Any) -> str:
    """JSON for a tag or a logged dict (tuples as lists, anything else as its str)."""
    return json.dumps(value, sort_keys=True, default=str)
