"""The sweep's settings as one typed :class:`SweepPlan`, checked before anything starts or is logged
(:func:`sweep_plan`), and the checks that need the opened dataset (:func:`check_against_data`).

```python
plan = sweep_plan(cfg)            # cfg: conf/sweep.yaml composed; raises SweepError on bad input
plan.space.param_space()          # Tune's search space, keyed by config paths
plan.metric, plan.scheduler.milestones, plan.resources.cpu, plan.pseudo.kinds, plan.top_k
```
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from pipelines import checks, config
from pipelines.sweep.space import SearchSpace, SweepError, as_number, parse_space
from pradot.data.pseudo_anomalies import DEFAULT_CONTRAST, DEFAULT_PATCH_FRACTION

__all__ = [
    "OBJECTIVES",
    "COMMON_METRICS",
    "FEATURE_STORES",
    "metric_keys",
    "PseudoAnomalySettings",
    "SchedulerSettings",
    "TrialResources",
    "RaySettings",
    "SweepPlan",
    "sweep_plan",
    "check_against_data",
]

#: objective -> the metric its trials report by default (``pseudo`` without localisation: ``val_auroc``)
OBJECTIVES = {"pseudo": "val_objective", "test": "test_auroc"}
#: metrics every trial reports each epoch besides the objective's
COMMON_METRICS = ("ot_loss", "prototype_change", "epoch_seconds", "eval_seconds", "epoch")
FEATURE_STORES = ("auto", "disk", "object_store")


def metric_keys(objective: str, kinds=None, test_types=None, localisation: bool = False) -> list[str]:
    """The metric names every trial reports each epoch (what ``sweep.metric`` may name)."""
    from pradot.data.pseudo_anomalies import KIND_STYLE

    keys = list(COMMON_METRICS)
    if objective == "pseudo":
        kinds = list(kinds or [])
        keys += ["val_auroc"] + [f"val_auroc_{k}" for k in kinds]
        styles = sorted({KIND_STYLE[k] for k in kinds if k in KIND_STYLE})
        if len(styles) > 1:
            keys += [f"val_auroc_{s}" for s in styles]
        if localisation:
            keys += [f"val_aupro_{s}" for s in styles] + ["val_objective"]
    else:
        keys += ["test_auroc"] + [f"test_auroc_{t}" for t in (test_types or [])]
    return keys


@dataclass(frozen=True)
class PseudoAnomalySettings:
    """``sweep.pseudo_anomalies``: what ``pradot.data.pseudo_anomalies`` makes from the validation normals."""

    kinds: tuple[str, ...]
    per_image: int = 1
    seed: int = 0
    patch_fraction: tuple[float, float] = DEFAULT_PATCH_FRACTION
    contrast: tuple[float, float] = DEFAULT_CONTRAST
    localisation: bool = True  # trials also score maps on the masks: val_aupro_<style>, val_objective (as promote)
    eval_size: int | None = None  # the localisation's size (promote's selection.eval_size; None: the image size)

    def made(self, n_normals: int) -> list[str]:
        """The kind of every anomaly made from ``n_normals`` images, in order."""
        from pradot.data.pseudo_anomalies import assign_kinds

        return [k for _, _, k in assign_kinds(n_normals, self.kinds, self.per_image)]

    def identity(self) -> dict:
        """What the images depend on besides the normals (part of their features' cache key)."""
        from pipelines.objective import _identity

        return _identity(self)


@dataclass(frozen=True)
class SchedulerSettings:
    """``sweep.scheduler``: ASHA (stops weak trials at ``milestones``) or FIFO (every trial runs out)."""

    type: str
    milestones: tuple[int, ...]  # epochs at which a trial may stop (ASHA's rungs and max_t)
    grace_period: int = 1
    reduction_factor: int = 3
    max_t: int = 1

    def to_dict(self) -> dict[str, Any]:
        if self.type != "asha":
            return {"type": self.type}
        return {
            "type": self.type,
            "grace_period": self.grace_period,
            "reduction_factor": self.reduction_factor,
            "max_t": self.max_t,
        }


@dataclass(frozen=True)
class TrialResources:
    """``sweep.resources``: per trial; ``gpu=None``: auto (1 when the cluster has GPUs, else 0)."""

    cpu: float = 1.0
    gpu: float | None = None


@dataclass(frozen=True)
class RaySettings:
    """``sweep.ray``: an existing cluster's address (else ``$RAY_ADDRESS``, else a local Ray of this size)."""

    address: str | None = None
    num_cpus: int | None = None
    num_gpus: int | None = None


@dataclass(frozen=True)
class SweepPlan:
    """The validated sweep settings."""

    space: SearchSpace
    num_samples: int
    max_concurrent_trials: int
    objective: str
    metric: str
    mode: str
    seed: int
    scheduler: SchedulerSettings
    resources: TrialResources
    pseudo: PseudoAnomalySettings
    feature_store: str
    top_k: int
    epochs: int
    backbones: tuple[str, ...]
    stage_sets: tuple[tuple[int, ...], ...]
    ray: RaySettings
    storage_path: str = ".ray_results"
    name: str | None = None
    resume: bool = False
    resume_from: str | None = None
    stop_after_trials: int | None = None
    time_budget_s: float | None = None
    reuse_actors: bool = True
    max_failures: int = 2  # retries of a failed trial (from its last checkpoint)
    checkpoint_every: int = 1  # epochs between a trial's checkpoints (ASHA's milestones always get one)
    allow_lost_trials: bool = False  # finish (and register) although trials were lost to infrastructure

    @property
    def milestones(self) -> tuple[int, ...]:
        return self.scheduler.milestones

    @property
    def budget(self) -> int:
        """The epochs a trial trains unless ASHA stops it: ASHA's max_t, or model.epochs."""
        return min(max(self.milestones), self.epochs)

    def union_stages(self) -> tuple[int, ...]:
        """Every stage some trial may use (features are extracted once for all of them)."""
        return tuple(sorted({s for st in self.stage_sets for s in st}))

    def record(self, resources: Mapping[str, float]) -> dict[str, Any]:
        """The ``sweep/search_space.yaml`` artifact (``resources``: what each trial got)."""
        return {
            "space": self.space.to_dict(),
            "num_samples": self.num_samples,
            "metric": self.metric,
            "mode": self.mode,
            "objective": self.objective,
            "scheduler": self.scheduler.to_dict(),
            "resources": dict(resources),
            "searcher": "optuna TPE",
            "seed": self.seed,
        }


# ------------------------------------------------------------------------------------- validation
def _integer(key: str, value: Any, lo: int) -> int:
    msg = f"sweep.{key} must be an integer >= {lo}, got {value!r}"
    if isinstance(value, bool) or value is None:
        raise SweepError(msg)
    try:
        x = int(value)
    except (TypeError, ValueError):
        raise SweepError(msg) from None
    if x != float(value) or x < lo:
        raise SweepError(msg)
    return x


def _positive(key: str, value: Any) -> float:
    x = as_number(f"sweep.{key}", value)
    if x <= 0:
        raise SweepError(f"sweep.{key}: {value!r} must be > 0")
    return x


def _optional(value: Any, parse, *empty) -> Any:
    return None if value in (None, "", *empty) else parse(value)


def _pseudo(sw: Mapping) -> PseudoAnomalySettings:
    from pradot.data.pseudo_anomalies import KINDS

    pa = dict(sw.get("pseudo_anomalies") or {})
    kinds = [str(k) for k in (pa.get("kinds") or KINDS)]
    bad = [k for k in kinds if k not in KINDS]
    if bad:
        raise SweepError(f"sweep.pseudo_anomalies.kinds: unknown {bad}; available: {list(KINDS)}")
    try:  # the same rule as promote's selection.pseudo_anomalies
        pf = checks.interval("sweep.pseudo_anomalies.patch_fraction", pa.get("patch_fraction", DEFAULT_PATCH_FRACTION))
        ct = checks.interval("sweep.pseudo_anomalies.contrast", pa.get("contrast", DEFAULT_CONTRAST), closed=True)
    except checks.ConfigError as e:
        raise SweepError(str(e)) from None
    from pipelines.checks import boolean

    size = _optional(pa.get("eval_size"), lambda v: _integer("pseudo_anomalies.eval_size", v, 8))
    return PseudoAnomalySettings(
        tuple(kinds),
        _integer("pseudo_anomalies.per_image", pa.get("per_image", 1), 1),
        int(pa.get("seed", 0)),
        pf,
        ct,
        boolean("sweep.pseudo_anomalies.localisation", pa.get("localisation", True)),
        size,
    )


def _metric(sw: Mapping, objective: str, pseudo: PseudoAnomalySettings) -> str:
    keys = metric_keys(objective, pseudo.kinds, localisation=pseudo.localisation)
    default = "val_auroc" if objective == "pseudo" and not pseudo.localisation else OBJECTIVES[objective]
    metric = str(sw.get("metric") or default)
    if objective == "pseudo" and metric not in keys:
        raise SweepError(
            f"sweep.metric {metric!r} is not reported by the trials (objective={objective}); reported metrics: {keys}"
        )
    if objective == "test" and metric not in keys and not metric.startswith("test_auroc_"):
        raise SweepError(
            f"sweep.metric {metric!r} is not reported by the trials (objective={objective}); "
            f"reported metrics: {keys} and test_auroc_<anomaly type>"
        )
    return metric


def _scheduler(sw: Mapping, epochs: int) -> SchedulerSettings:
    sch = dict(sw.get("scheduler") or {"type": "fifo"})
    stype = str(sch.get("type", "fifo")).lower()
    if stype not in ("asha", "fifo"):
        raise SweepError(f"sweep.scheduler.type must be asha or fifo, got {sch.get('type')!r}")
    if stype == "fifo":
        return SchedulerSettings("fifo", (epochs,), max_t=epochs)
    grace = _integer("scheduler.grace_period", sch.get("grace_period", 1), 1)
    rf = _integer("scheduler.reduction_factor", sch.get("reduction_factor", 3), 2)
    max_t = _integer("scheduler.max_t", sch.get("max_t") or epochs, 1)
    if max_t > epochs:
        raise SweepError(f"sweep.scheduler.max_t={max_t} exceeds model.epochs={epochs}")
    if grace > max_t:
        raise SweepError(f"sweep.scheduler.grace_period={grace} exceeds max_t={max_t} (model.epochs)")
    n_rungs = int(math.log(max_t / grace) / math.log(rf) + 1)
    milestones = tuple(sorted({grace * rf**k for k in range(n_rungs)} | {max_t}))
    return SchedulerSettings("asha", milestones, grace, rf, max_t)


def _resources(sw: Mapping) -> TrialResources:
    res = dict(sw.get("resources") or {})
    gpu = res.get("gpu", "auto")
    if str(gpu).lower() == "auto":
        gpu = None
    else:
        gpu = as_number("sweep.resources.gpu", gpu)
        if gpu < 0:
            raise SweepError(f"sweep.resources.gpu: {gpu!r} must be >= 0")
    return TrialResources(_positive("resources.cpu", res.get("cpu", 1)), gpu)


def _ray(sw: Mapping) -> RaySettings:
    r = dict(sw.get("ray") or {})
    return RaySettings(
        address=str(r["address"]) if r.get("address") else None,
        num_cpus=_optional(r.get("num_cpus"), int, 0),
        num_gpus=_optional(r.get("num_gpus"), int),
    )


def sweep_plan(cfg: DictConfig) -> SweepPlan:
    """Check the composed sweep config (``conf/sweep.yaml``) and return its plan.

    Raises:
        SweepError: a bad sweep setting or search space (before anything is started or logged).
        ValueError: the training config's own values (``config.train_settings``' checks, e.g. ConfigError).
    """
    sw = OmegaConf.to_container(cfg.sweep, resolve=True)
    num_samples = _integer("num_samples", sw.get("num_samples"), 1)
    max_concurrent = _integer("max_concurrent_trials", sw.get("max_concurrent_trials"), 1)
    top_k = _integer("top_k", sw.get("top_k", 0), 0)
    objective = str(sw.get("objective", "pseudo")).lower()
    if objective not in OBJECTIVES:
        raise SweepError(f"sweep.objective must be one of {list(OBJECTIVES)}, got {objective!r}")
    mode = str(sw.get("mode", "max")).lower()
    if mode not in ("max", "min"):
        raise SweepError(f"sweep.mode must be max or min, got {sw.get('mode')!r}")
    epochs = int(cfg.model.epochs)
    if epochs < 1:
        raise SweepError(f"model.epochs must be >= 1 for a sweep (trials report once per epoch), got {epochs}")
    config.train_settings(config.training_view(cfg))  # the training config's values, names and device
    space = parse_space(sw.get("search_space"), cfg)
    pseudo = _pseudo(sw)
    metric = _metric(sw, objective, pseudo)
    store = str(sw.get("feature_store", "auto")).lower()
    if store not in FEATURE_STORES:
        raise SweepError(f"sweep.feature_store must be auto, disk or object_store, got {store!r}")
    return SweepPlan(
        space=space,
        num_samples=num_samples,
        max_concurrent_trials=max_concurrent,
        objective=objective,
        metric=metric,
        mode=mode,
        seed=int(sw.get("seed", 0)),
        scheduler=_scheduler(sw, epochs),
        resources=_resources(sw),
        pseudo=pseudo,
        feature_store=store,
        top_k=top_k,
        epochs=epochs,
        backbones=tuple(str(b) for b in space.spanned("backbone.name", str(cfg.backbone.name))),
        stage_sets=tuple(space.stage_sets(list(cfg.backbone.stages))),
        ray=_ray(sw),
        storage_path=str(sw.get("storage_path") or ".ray_results"),
        name=_optional(sw.get("name"), lambda v: checks.folder_name("sweep.name", str(v))),
        resume=bool(sw.get("resume")),
        resume_from=_optional(sw.get("resume_from"), str),
        stop_after_trials=_optional(sw.get("stop_after_trials"), lambda v: _integer("stop_after_trials", v, 1), 0),
        time_budget_s=_optional(sw.get("time_budget_s"), lambda v: _positive("time_budget_s", v)),
        reuse_actors=bool(sw.get("reuse_actors", True)),
        max_failures=_integer("max_failures", sw.get("max_failures", 2), 0),
        checkpoint_every=_integer("checkpoint_every", sw.get("checkpoint_every", 1), 1),
        allow_lost_trials=checks.boolean("sweep.allow_lost_trials", sw.get("allow_lost_trials", False)),
    )


def check_against_data(
    plan: SweepPlan, cfg: DictConfig, n_train: int, n_validation: int, test_types: list[str]
) -> None:
    """Checks that need the dataset: batch sizes vs. training images, evaluation images, test metrics.

    Raises:
        SweepError: what does not fit and what to change.
    """
    from pradot.engine import batch_size_for

    n_max = max(plan.space.spanned("model.n", cfg.model.n))
    ratio_max = max(plan.space.spanned("model.batch_ratio", cfg.model.batch_ratio))
    bs = batch_size_for(n_max, ratio_max)
    if bs > n_train:
        raise SweepError(
            f"the search space allows batch size {bs} (n={n_max} x batch_ratio={ratio_max}) but the "
            f"training split has only {n_train} images; lower the upper bounds of n / batch_ratio"
        )
    if plan.objective == "pseudo":
        if n_validation == 0:
            raise SweepError(
                "objective=pseudo needs validation images (normals to make pseudo-anomalies from); "
                "this dataset has none: set data.validation_fraction (e.g. 0.1) or use objective=test"
            )
        made = plan.pseudo.made(n_validation)
        keys = metric_keys("pseudo", list(dict.fromkeys(made)), localisation=plan.pseudo.localisation)
        if plan.metric not in keys:
            raise SweepError(
                f"sweep.metric {plan.metric!r} is not reported: {n_validation} validation images make "
                f"only the pseudo-anomaly kinds {sorted(set(made))}; reported metrics: {keys}"
            )
    if plan.objective == "test":
        if not test_types:
            raise SweepError("objective=test needs anomalous test images; the test split has none")
        keys = metric_keys("test", test_types=test_types)
        if plan.metric not in keys:
            raise SweepError(
                f"sweep.metric {plan.metric!r} is not reported by the trials (objective=test); reported metrics: {keys}"
            )
