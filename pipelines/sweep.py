"""MLflow entry point `sweep`: a Ray Tune + Optuna (TPE) hyper-parameter search over PRADOT.

    python pipelines/sweep.py category=screw_bag sweep.num_samples=32            # Hydra overrides
    mlflow run . -e sweep --env-manager local -P category=screw_bag -P num_samples=32
    python pipelines/sweep.py sweep.resume=true [sweep.resume_from=.ray_results/<name>]   # finish a killed sweep

How it works:

* The driver validates the search space (``conf/sweep/``) before anything starts, opens the dataset,
  connects to Ray (``$RAY_ADDRESS`` / ``sweep.ray.address``: an existing cluster; else a local one) and
  refuses a file/SQLite MLflow store when the cluster has several nodes.
* Backbone features of the training images and of the evaluation set are extracted **once**, in the
  driver, into the memory-mapped ``pradot.features.FeatureCache`` (``cache.dir``), before ``Tuner.fit``.
  Trials only load them: from the cache folder (``sweep.feature_store=disk``; on several nodes it must be
  shared storage) or from Ray's object store (``object_store``: the driver ``ray.put``s the arrays; works
  on any cluster, costs memory). ``auto``: disk on one node, object store on several.
* Objective (``sweep.objective``): ``pseudo`` (default, no test labels) scores every trial each epoch on
  the validation normals plus synthetic anomalies made from them (``pradot.data.pseudo_anomalies``) as
  ``val_auroc``; ``test`` (paper reproduction only) uses the test split's labels as ``test_auroc`` and
  tags the parent, the trials and the registered versions ``pradot.objective=test``.
* Each trial (a Tune function trainable; ``reuse_actors`` runs one trial after another in the same
  worker process) trains one bank with ``PRADOT.fit_features`` and, after every epoch, scores the cached
  evaluation features and ``tune.report``s the metrics (ASHA stops the weak ones). It needs no backbone
  network (only the feature shapes), logs to its own nested MLflow run (tag ``mlflow.parentRunId``)
  through the tracking URI the driver hands it, and saves its bank (``PRADOT.save``, without backbone
  weights) in a Tune checkpoint at the epochs where ASHA may stop it and at the last one.
* After the sweep the driver logs the trial table (``sweep/trials.csv``) to the parent run and registers
  the ``top_k`` banks as versions of ``pradot-<dataset>-<category>`` (``log_pradot_model``, logged in each
  trial's run; backbone weights re-attached; threshold calibrated on the validation normals).
* A sweep interrupted by Ctrl+C / SIGUSR1 (or ``sweep.stop_after_trials``) keeps its Tune experiment
  folder under ``sweep.storage_path``; ``sweep.resume=true`` continues it with ``Tuner.restore``: finished
  trials are kept, unfinished ones restart, the same MLflow parent (and child runs) are reused.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, compose, flatten, parse_overrides, run_log, setup_tracking  # noqa: E402

log = logging.getLogger("pradot.sweep")

#: search-space parameters and how a trial maps them onto PRADOTConfig
SEARCHABLE = ("alpha", "n", "eta", "epsilon", "batch_ratio", "sinkhorn_iters", "stages", "backbone")
SPACE_TYPES = ("uniform", "loguniform", "int", "choice", "const")
OBJECTIVES = {"pseudo": "val_auroc", "test": "test_auroc"}
#: metrics every trial reports each epoch besides the objective's
COMMON_METRICS = ("ot_loss", "prototype_change", "epoch_seconds", "eval_seconds", "epoch")
STATE_FILE = "pradot_sweep.json"
STOP_ENV = "PRADOT_SWEEP_STOP_AFTER_TRIALS"
PARENT_TAG = "mlflow.parentRunId"
EXIT_BAD_INPUT, EXIT_FAILED, EXIT_INTERRUPTED = 2, 1, 3
T0 = time.perf_counter()  # phase timings in the log are seconds since the start


class SweepError(ValueError):
    """Bad sweep input or environment; the message says what and how to fix it."""


# ------------------------------------------------------------------------------ validation
@dataclass
class SweepPlan:
    """The validated sweep settings (plain Python values)."""

    num_samples: int
    max_concurrent_trials: int
    objective: str
    metric: str
    mode: str
    seed: int
    space: dict[str, dict]
    scheduler: dict
    resources: dict
    pseudo: dict
    feature_store: str
    top_k: int
    epochs: int
    backbones: list[str]
    stage_sets: list[tuple[int, ...]]
    storage_path: str
    name: str | None
    stop_after_trials: int | None
    time_budget_s: float | None
    reuse_actors: bool = True
    milestones: list[int] = field(default_factory=list)

    def union_stages(self) -> tuple[int, ...]:
        return tuple(sorted({s for st in self.stage_sets for s in st}))


def _num(name: str, v, kind=float, lo=None, hi=None, lo_open=False) -> float:
    try:
        x = kind(v)
    except (TypeError, ValueError):
        raise SweepError(f"sweep.search_space.{name}: {v!r} is not a number") from None
    if isinstance(x, float) and not math.isfinite(x):
        raise SweepError(f"sweep.search_space.{name}: {v!r} is not finite")
    if lo is not None and (x < lo or (lo_open and x == lo)):
        raise SweepError(f"sweep.search_space.{name}: {v!r} must be {'>' if lo_open else '>='} {lo}")
    if hi is not None and x > hi:
        raise SweepError(f"sweep.search_space.{name}: {v!r} must be <= {hi}")
    return x


#: allowed range of each numeric parameter: (low, high, low is open)
_RANGES = {"alpha": (0.0, 1.0, False), "n": (0.0, None, True), "eta": (0.0, 1.0, False),
           "epsilon": (0.0, None, True), "batch_ratio": (1.0, None, False), "sinkhorn_iters": (1, None, False)}


def _stage_key(stages) -> str:
    return ",".join(str(int(s)) for s in stages)


def _parse_stages(name: str, v) -> tuple[int, ...]:
    if isinstance(v, str):
        v = [x for x in v.replace("+", ",").replace("[", "").replace("]", "").split(",") if x.strip()]
    if isinstance(v, (int, float)):
        v = [v]
    try:
        st = tuple(sorted({int(s) for s in v}))
    except (TypeError, ValueError):
        raise SweepError(f"sweep.search_space.{name}: {v!r} is not a list of stage indices") from None
    if not st or any(s < 0 or s > 4 for s in st):
        raise SweepError(f"sweep.search_space.{name}: stages must be non-empty lists of indices in 0..4, got {v!r}")
    return st


def _normalise_param(name: str, spec) -> dict:
    """A search-space entry -> {"type": ..., ...} with checked values."""
    from pradot.backbone import BACKBONES

    if not isinstance(spec, dict):  # a bare value or list: const / choice
        spec = {"type": "choice", "values": list(spec)} if isinstance(spec, (list, tuple)) else \
            {"type": "const", "value": spec}
    spec = dict(spec)
    t = str(spec.get("type", "")).lower()
    if t not in SPACE_TYPES:
        raise SweepError(f"sweep.search_space.{name}: type {spec.get('type')!r} is not one of {list(SPACE_TYPES)}")
    extra = set(spec) - {"type", "low", "high", "values", "value"}
    if extra:
        raise SweepError(f"sweep.search_space.{name}: unknown keys {sorted(extra)} "
                         f"(use type, low, high, values, value)")

    def check_value(v):
        if name == "stages":
            return _stage_key(_parse_stages(name, v))
        if name == "backbone":
            if str(v) not in BACKBONES:
                raise SweepError(f"sweep.search_space.backbone: unknown backbone {v!r}; available: {list(BACKBONES)}")
            return str(v)
        lo, hi, lo_open = _RANGES[name]
        kind = int if name == "sinkhorn_iters" else float
        x = _num(name, v, kind, lo, hi, lo_open)
        whole = isinstance(x, float) and x.is_integer() and name in ("n", "batch_ratio")
        return int(x) if kind is int or whole else x

    if t == "const":
        if "value" not in spec:
            raise SweepError(f"sweep.search_space.{name}: type const needs value")
        return {"type": t, "value": check_value(spec["value"])}
    if t == "choice":
        values = spec.get("values")
        if not isinstance(values, (list, tuple)) or not values:
            raise SweepError(f"sweep.search_space.{name}: type choice needs a non-empty list of values")
        vals = [check_value(v) for v in values]
        return {"type": t, "values": list(dict.fromkeys(vals))}
    if name in ("stages", "backbone"):
        raise SweepError(f"sweep.search_space.{name}: use type choice (or const), not {t}")
    if "low" not in spec or "high" not in spec:
        raise SweepError(f"sweep.search_space.{name}: type {t} needs low and high")
    lo, hi = check_value(spec["low"]), check_value(spec["high"])
    if t == "int":
        lo, hi = int(lo), int(hi)
    if not lo < hi:
        raise SweepError(f"sweep.search_space.{name}: low {lo} must be < high {hi}")
    if t == "loguniform" and lo <= 0:
        raise SweepError(f"sweep.search_space.{name}: loguniform needs low > 0, got {lo}")
    return {"type": t, "low": lo, "high": hi}


def _space_values(spec: dict) -> list:
    if spec["type"] == "const":
        return [spec["value"]]
    if spec["type"] == "choice":
        return list(spec["values"])
    return [spec["low"], spec["high"]]


def metric_keys(objective: str, kinds: list[str] | None = None, test_types: list[str] | None = None) -> list[str]:
    """The metric names every trial reports each epoch (what ``sweep.metric`` may name)."""
    from pradot.data.pseudo_anomalies import KIND_STYLE

    keys = list(COMMON_METRICS)
    if objective == "pseudo":
        kinds = list(kinds or [])
        keys += ["val_auroc"] + [f"val_auroc_{k}" for k in kinds]
        styles = sorted({KIND_STYLE[k] for k in kinds if k in KIND_STYLE})
        if len(styles) > 1:
            keys += [f"val_auroc_{s}" for s in styles]
    else:
        keys += ["test_auroc"] + [f"test_auroc_{t}" for t in (test_types or [])]
    return keys


def validate_sweep(cfg) -> SweepPlan:
    """Check the sweep config; raises SweepError before anything is started or logged."""
    from omegaconf import OmegaConf

    from pradot.data.pseudo_anomalies import KINDS

    sw = OmegaConf.to_container(cfg.sweep, resolve=True)

    def integer(key, v, lo):
        if isinstance(v, bool) or v is None:
            raise SweepError(f"sweep.{key} must be an integer >= {lo}, got {v!r}")
        try:
            x = int(v)
        except (TypeError, ValueError):
            raise SweepError(f"sweep.{key} must be an integer >= {lo}, got {v!r}") from None
        if x != float(v) or x < lo:
            raise SweepError(f"sweep.{key} must be an integer >= {lo}, got {v!r}")
        return x

    num_samples = integer("num_samples", sw.get("num_samples"), 1)
    max_conc = integer("max_concurrent_trials", sw.get("max_concurrent_trials"), 1)
    top_k = integer("top_k", sw.get("top_k", 0), 0)
    objective = str(sw.get("objective", "pseudo")).lower()
    if objective not in OBJECTIVES:
        raise SweepError(f"sweep.objective must be one of {list(OBJECTIVES)}, got {objective!r}")
    mode = str(sw.get("mode", "max")).lower()
    if mode not in ("max", "min"):
        raise SweepError(f"sweep.mode must be max or min, got {sw.get('mode')!r}")

    space_cfg = sw.get("search_space") or {}
    if not isinstance(space_cfg, dict) or not space_cfg:
        raise SweepError("sweep.search_space is empty: give at least one parameter to search, e.g. "
                         "sweep.search_space.alpha='{type: uniform, low: 0, high: 1}' "
                         f"(parameters: {list(SEARCHABLE)})")
    unknown = [k for k in space_cfg if k not in SEARCHABLE]
    if unknown:
        raise SweepError(f"sweep.search_space: unknown parameter(s) {unknown}; searchable parameters: "
                         f"{list(SEARCHABLE)}")
    space = {k: _normalise_param(k, v) for k, v in space_cfg.items() if v is not None}  # null: not searched
    if not space:
        raise SweepError("sweep.search_space is empty (every parameter is null): search at least one of "
                         f"{list(SEARCHABLE)}")
    if all(v["type"] == "const" for v in space.values()):
        raise SweepError("sweep.search_space has only constants: nothing to search")

    # pseudo anomalies
    pa = dict(sw.get("pseudo_anomalies") or {})
    kinds = [str(k) for k in (pa.get("kinds") or KINDS)]
    bad = [k for k in kinds if k not in KINDS]
    if bad:
        raise SweepError(f"sweep.pseudo_anomalies.kinds: unknown {bad}; available: {list(KINDS)}")
    pf = pa.get("patch_fraction", [0.15, 0.3])
    if not (isinstance(pf, (list, tuple)) and len(pf) == 2 and 0 < float(pf[0]) <= float(pf[1]) < 1):
        raise SweepError(f"sweep.pseudo_anomalies.patch_fraction must be [min, max] with 0 < min <= max < 1, got {pf}")
    pseudo = {"kinds": kinds, "per_image": integer("pseudo_anomalies.per_image", pa.get("per_image", 1), 1),
              "seed": int(pa.get("seed", 0)), "patch_fraction": (float(pf[0]), float(pf[1]))}

    keys = metric_keys(objective, kinds)
    metric = sw.get("metric") or OBJECTIVES[objective]
    if objective == "pseudo" and metric not in keys:
        raise SweepError(f"sweep.metric {metric!r} is not reported by the trials (objective={objective}); "
                         f"reported metrics: {keys}")
    if objective == "test" and metric not in keys and not str(metric).startswith("test_auroc_"):
        raise SweepError(f"sweep.metric {metric!r} is not reported by the trials (objective={objective}); "
                         f"reported metrics: {keys} and test_auroc_<anomaly type>")

    epochs = int(cfg.model.epochs)
    if epochs < 1:
        raise SweepError(f"model.epochs must be >= 1 for a sweep (trials report once per epoch), got {epochs}")
    sch = dict(sw.get("scheduler") or {"type": "fifo"})
    stype = str(sch.get("type", "fifo")).lower()
    if stype not in ("asha", "fifo"):
        raise SweepError(f"sweep.scheduler.type must be asha or fifo, got {sch.get('type')!r}")
    scheduler = {"type": stype}
    milestones = [epochs]
    if stype == "asha":
        grace = integer("scheduler.grace_period", sch.get("grace_period", 1), 1)
        rf = integer("scheduler.reduction_factor", sch.get("reduction_factor", 3), 2)
        max_t = integer("scheduler.max_t", sch.get("max_t") or epochs, 1)
        if max_t > epochs:
            raise SweepError(f"sweep.scheduler.max_t={max_t} exceeds model.epochs={epochs}")
        if grace > max_t:
            raise SweepError(f"sweep.scheduler.grace_period={grace} exceeds max_t={max_t} (model.epochs)")
        scheduler.update(grace_period=grace, reduction_factor=rf, max_t=max_t)
        n_rungs = int(np.log(max_t / grace) / np.log(rf) + 1)
        milestones = sorted({grace * rf ** k for k in range(n_rungs)} | {max_t})

    res = dict(sw.get("resources") or {})
    cpu = _num("resources.cpu", res.get("cpu", 1), float, 0.0, None, True)
    gpu = res.get("gpu", "auto")
    if str(gpu).lower() != "auto":
        gpu = _num("resources.gpu", gpu, float, 0.0)
    else:
        gpu = "auto"
    store = str(sw.get("feature_store", "auto")).lower()
    if store not in ("auto", "disk", "object_store"):
        raise SweepError(f"sweep.feature_store must be auto, disk or object_store, got {store!r}")

    backbones = space["backbone"]["values"] if "backbone" in space and space["backbone"]["type"] == "choice" else \
        [space["backbone"]["value"]] if "backbone" in space else [str(cfg.backbone.name)]
    if "stages" in space:
        stage_sets = [_parse_stages("stages", v) for v in _space_values(space["stages"])]
    else:
        stage_sets = [_parse_stages("stages", list(cfg.backbone.stages))]

    stop_after = sw.get("stop_after_trials")
    stop_after = integer("stop_after_trials", stop_after, 1) if stop_after not in (None, "", 0) else None
    budget = sw.get("time_budget_s")
    budget = _num("time_budget_s", budget, float, 0.0, None, True) if budget not in (None, "") else None
    return SweepPlan(num_samples=num_samples, max_concurrent_trials=max_conc, objective=objective, metric=str(metric),
                     mode=mode, seed=int(sw.get("seed", 0)), space=space, scheduler=scheduler,
                     resources={"cpu": cpu, "gpu": gpu}, pseudo=pseudo, feature_store=store, top_k=top_k,
                     epochs=epochs, backbones=list(backbones), stage_sets=stage_sets,
                     storage_path=str(sw.get("storage_path") or ".ray_results"), name=sw.get("name"),
                     stop_after_trials=stop_after, time_budget_s=budget, milestones=milestones,
                     reuse_actors=bool(sw.get("reuse_actors", True)))


def check_against_data(plan: SweepPlan, cfg, n_train: int, n_validation: int, test_types: list[str]) -> None:
    """Checks that need the dataset: batch sizes vs. training images, evaluation images, test metrics."""
    from pradot.engine import batch_size_for

    def extreme(name, default, pick):
        return pick(_space_values(plan.space[name])) if name in plan.space else float(default)

    n_max = extreme("n", cfg.model.n, max)
    ratio_max = extreme("batch_ratio", cfg.model.batch_ratio, max)
    bs = batch_size_for(n_max, ratio_max)
    if bs > n_train:
        raise SweepError(f"the search space allows batch size {bs} (n={n_max} x batch_ratio={ratio_max}) but the "
                         f"training split has only {n_train} images; lower the upper bounds of n / batch_ratio")
    if plan.objective == "pseudo":
        if n_validation == 0:
            raise SweepError("objective=pseudo needs validation images (normals to make pseudo-anomalies from); "
                             "this dataset has none: set data.validation_fraction (e.g. 0.1) or use objective=test")
        kinds = plan.pseudo["kinds"]
        made = [kinds[i % len(kinds)] for i in range(n_validation * plan.pseudo["per_image"])]
        keys = metric_keys("pseudo", list(dict.fromkeys(made)))
        if plan.metric not in keys:
            raise SweepError(f"sweep.metric {plan.metric!r} is not reported: {n_validation} validation images make "
                             f"only the pseudo-anomaly kinds {sorted(set(made))}; reported metrics: {keys}")
    if plan.objective == "test":
        if not test_types:
            raise SweepError("objective=test needs anomalous test images; the test split has none")
        keys = metric_keys("test", test_types=test_types)
        if plan.metric not in keys:
            raise SweepError(f"sweep.metric {plan.metric!r} is not reported by the trials (objective=test); "
                             f"reported metrics: {keys}")


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
    remote_client = bool(address) and str(address).startswith("ray://")
    if is_local_store(uri) and (n_nodes > 1 or remote_client):
        raise SweepError(
            f"the MLflow tracking store {uri!r} is a local file/SQLite store, but the Ray cluster "
            f"({'Ray Client at ' + address if remote_client else f'{n_nodes} nodes'}) runs trials on other "
            f"machines, which cannot write this machine's file. Start a tracking server and point every node "
            f"at it: `mlflow server --backend-store-uri sqlite:///mlflow.db --artifacts-destination ./mlartifacts "
            f"--host 0.0.0.0 --port 5000` then `export MLFLOW_TRACKING_URI=http://<host>:5000`.")


# ------------------------------------------------------------------------------------ the trial
def _retry(fn, *args, attempts: int = 5, **kwargs):
    """MLflow calls from trials: retried (SQLite 'database is locked', a busy server)."""
    for i in range(attempts):
        try:
            return fn(*args, **kwargs)
        except Exception:  # noqa: BLE001
            if i == attempts - 1:
                raise
            time.sleep(0.5 * (2 ** i))


def _trial_hparams(config: dict, ctx: dict) -> dict:
    """The trial's hyper-parameters: the searched ones over the config's fixed ones."""
    hp = dict(ctx["fixed"])
    hp.update({k: v for k, v in config.items() if k in SEARCHABLE})
    hp["stages"] = tuple(int(s) for s in str(hp["stages"]).split(","))
    hp["n"] = float(hp["n"])
    if hp["n"].is_integer():
        hp["n"] = int(hp["n"])
    return hp


def _evaluate(scores: np.ndarray, ctx: dict) -> dict[str, float]:
    from pradot.metrics import image_auroc

    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(ctx["eval_labels"])
    groups = np.asarray(ctx["eval_groups"])
    out = {}
    normal = labels == 0
    if ctx["objective"] == "pseudo":
        out["val_auroc"] = image_auroc(labels, scores)
        for g in dict.fromkeys(groups[~normal].tolist()):
            sel = normal | (groups == g)
            out[f"val_auroc_{g}"] = image_auroc(labels[sel], scores[sel])
        styles = np.asarray(ctx["eval_styles"])
        uniq = list(dict.fromkeys(styles[~normal].tolist()))
        if len(uniq) > 1:
            for st in uniq:
                sel = normal | (styles == st)
                out[f"val_auroc_{st}"] = image_auroc(labels[sel], scores[sel])
    else:
        per_type = {}
        for g in dict.fromkeys(groups[~normal].tolist()):
            sel = normal | (groups == g)
            per_type[g] = image_auroc(labels[sel], scores[sel])
            out[f"test_auroc_{g}"] = per_type[g]
        # as `main` reports image_auroc: LOCO-style data the mean over anomaly types, else all anomalies at once
        out["test_auroc"] = (float(np.mean(list(per_type.values()))) if ctx["loco_style"]
                             else image_auroc(labels, scores))
    return out


def _child_run(client, ctx: dict, trial_id: str, trial_name: str, hp: dict) -> str:
    """The trial's nested MLflow run: created, or reopened when a resumed sweep restarts the trial."""
    from mlflow.entities import Param

    parent = ctx["parent_run_id"]
    found = _retry(client.search_runs, [ctx["experiment_id"]],
                   filter_string=f"tags.`{PARENT_TAG}` = '{parent}' and tags.`pradot.trial_id` = '{trial_id}'",
                   max_results=1)
    if found:
        run = found[0]
        attempts = int(run.data.tags.get("pradot.attempts", "1")) + 1
        _retry(client.update_run, run.info.run_id, status="RUNNING")
        _retry(client.set_tag, run.info.run_id, "pradot.attempts", str(attempts))
        return run.info.run_id
    tags = {PARENT_TAG: parent, "pradot.sweep_run_id": parent, "pradot.trial_id": trial_id,
            "pradot.trial_name": trial_name, "pradot.objective": ctx["objective"], "pradot.entry_point": "sweep-trial",
            "pradot.attempts": "1", "pradot.features": ",".join(ctx["feature_keys"]),
            "pradot.dataset": ctx["dataset"], "pradot.category": ctx["category"], "pradot.backbone": hp["backbone"]}
    if ctx["objective"] == "test":
        tags["pradot.note"] = "objective=test: hyper-parameters chosen on the test labels (paper reproduction only)"
    run = _retry(client.create_run, ctx["experiment_id"], run_name=f"trial-{trial_id}", tags=tags)
    params = {**{f"model.{k}": v for k, v in hp.items() if k not in ("stages", "backbone")},
              "backbone.name": hp["backbone"], "backbone.stages": "[" + ",".join(map(str, hp["stages"])) + "]",
              "model.batch_size": hp["batch_size"], "trial_id": trial_id, "sweep.objective": ctx["objective"],
              "sweep.metric": ctx["metric"], **ctx["data_params"]}
    _retry(client.log_batch, run.info.run_id, params=[Param(k, str(v)) for k, v in params.items()])
    return run.info.run_id


def _features_for(ctx: dict, payload: dict, split: str, backbone: str, stages) -> dict:
    """A split's cached features for the trial's stages (disk memmaps or object-store arrays)."""
    key = f"{backbone}/{split}"
    if ctx["feature_store"] == "object_store":
        import ray

        feats = {int(s): ray.get(ref) for s, ref in payload["features"][key].items() if int(s) in stages}
    else:
        from pradot.features import FeatureCache

        ident = ctx["identities"][key]
        feats = FeatureCache(ctx["cache_dir"]).load(ident)
        if feats is None:
            raise FileNotFoundError(
                f"the cached features {FeatureCache.key(ident)} ({key}) are not in {ctx['cache_dir']} on node "
                f"{socket.gethostname()}: on a multi-node cluster cache.dir must be shared storage (NFS, ...), or "
                f"use sweep.feature_store=object_store")
    return {int(s): feats[int(s)] for s in stages}


def _shape_only_backbone_class():
    import torch.nn as nn

    class ShapeOnlyBackbone(nn.Module):
        """What PRADOT needs of a backbone to train and score on precomputed features: its name, stages,
        channels and feature grids. Trials use it instead of the real network (no timm import, no weights:
        seconds saved per trial); the driver re-attaches the real backbone when it registers a bank."""

        def __init__(self, name: str, stages, channels: dict, grids: dict, image_size: int):
            super().__init__()
            self.name = name
            self.stages = tuple(int(s) for s in stages)
            self.channels = {int(k): int(v) for k, v in channels.items()}
            self._grids = {int(k): tuple(v) for k, v in grids.items()}
            self._image_size = int(image_size)
            self.net = nn.Identity()

        def grid(self, stage: int, image_size: int) -> tuple[int, int]:
            if int(image_size) != self._image_size:
                raise ValueError(f"feature grids are known for {self._image_size} px, not {image_size}")
            return self._grids[int(stage)]

        def forward(self, images):
            raise RuntimeError("a sweep trial works on cached features only; it has no backbone network")

    return ShapeOnlyBackbone


def _ShapeOnlyBackbone(**kwargs):
    return _shape_only_backbone_class()(**kwargs)


def trial_main(config: dict, ctx: dict | None = None, payload: dict | None = None) -> None:
    """One Tune trial: train a bank on the cached features, report the objective every epoch."""
    import shutil

    import torch
    from mlflow import MlflowClient
    from mlflow.entities import Metric
    from ray import tune

    from pradot.engine import batch_size_for
    from pradot.model import PRADOT, PRADOTConfig

    import warnings

    warnings.filterwarnings("ignore", message="The given NumPy array is not writable")  # read-only cached features
    torch.set_num_threads(max(1, int(ctx["cpu"])))
    tctx = tune.get_context()
    trial_id, trial_name = tctx.get_trial_id(), tctx.get_trial_name()
    hp = _trial_hparams(config, ctx)
    hp["batch_size"] = batch_size_for(hp["n"], hp["batch_ratio"])
    client = MlflowClient(tracking_uri=ctx["tracking_uri"], registry_uri=ctx["tracking_uri"])
    run_id = _child_run(client, ctx, trial_id, trial_name, hp)
    status = "FAILED"
    try:
        device = torch.device("cuda" if ctx["gpu"] > 0 and torch.cuda.is_available() else "cpu")
        model_cfg = PRADOTConfig(**{**ctx["base_model"], "backbone": hp["backbone"], "stages": hp["stages"],
                                    "alpha": float(hp["alpha"]), "n": hp["n"], "eta": float(hp["eta"]),
                                    "epsilon": float(hp["epsilon"]), "sinkhorn_iters": int(hp["sinkhorn_iters"]),
                                    "batch_size": hp["batch_size"]})
        backbone = _ShapeOnlyBackbone(**ctx["backbone_shapes"][f"{hp['backbone']}/{_stage_key(hp['stages'])}"])
        train_feats = _features_for(ctx, payload, "train", hp["backbone"], hp["stages"])
        eval_feats = _features_for(ctx, payload, ctx["eval_split"], hp["backbone"], hp["stages"])
        calib_split = ctx["calibration_split"]
        model = PRADOT(model_cfg, backbone=backbone, device=device)
        _retry(client.set_tag, run_id, "pradot.device", str(device))
        milestones = set(ctx["milestones"])
        last_epoch = max(milestones)

        def on_epoch(stats):
            t0 = time.perf_counter()
            _, scores = model.score_features(eval_feats)
            scores = scores.cpu().numpy()
            metrics = _evaluate(scores, ctx)
            metrics.update(ot_loss=float(np.mean(list(stats.ot_loss.values()))),
                           prototype_change=float(np.mean(list(stats.change.values()))),
                           epoch_seconds=float(stats.seconds), eval_seconds=time.perf_counter() - t0,
                           epoch=int(stats.epoch))
            for s in stats.ot_loss:
                metrics[f"ot_loss_stage{s}"] = float(stats.ot_loss[s])
                metrics[f"prototype_change_stage{s}"] = float(stats.change[s])
            now = int(time.time() * 1000)
            _retry(client.log_batch, run_id, metrics=[Metric(k, float(v), now, int(stats.epoch))
                                                      for k, v in metrics.items()])
            checkpoint = tmp = None
            if stats.epoch in milestones:
                tmp = Path(tempfile.mkdtemp(prefix="pradot-ckpt-"))
                model.save(tmp / "model.pt", include_backbone=False)
                if calib_split == ctx["eval_split"]:
                    cal = scores[np.asarray(ctx["eval_labels"]) == 0]
                else:
                    cal = model.score_features(_features_for(ctx, payload, calib_split, hp["backbone"],
                                                             hp["stages"]))[1].cpu().numpy()
                np.save(tmp / "calibration_scores.npy", cal)
                (tmp / "trial.json").write_text(json.dumps(
                    {"trial_id": trial_id, "mlflow_run_id": run_id, "epoch": int(stats.epoch),
                     "hparams": {k: (list(v) if isinstance(v, tuple) else v) for k, v in hp.items()},
                     "calibration_source": ctx["calibration_source"], "metrics": metrics}, indent=1))
                checkpoint = tune.Checkpoint.from_directory(str(tmp))
            try:
                tune.report({**metrics, "mlflow_run_id": run_id}, checkpoint=checkpoint)
            finally:
                if tmp is not None:
                    shutil.rmtree(tmp, ignore_errors=True)
            if stats.epoch >= last_epoch and last_epoch < model_cfg.epochs:
                raise _Done()  # ASHA's max_t: the scheduler stops the trial here anyway

        try:
            model.fit_features(train_feats, callback=on_epoch, progress=False)
        except _Done:
            pass
        status = "FINISHED"
        _retry(client.set_tag, run_id, "pradot.trial_status", "completed")
    except SystemExit:  # Tune stopped the trial in tune.report (ASHA early stopping)
        status = "FINISHED"
        _retry(client.set_tag, run_id, "pradot.trial_status", "stopped_early")
        raise
    except BaseException as e:
        _retry(client.set_tag, run_id, "pradot.error", f"{type(e).__name__}: {e}"[:5000])
        raise
    finally:
        _retry(client.set_terminated, run_id, status)


class _Done(Exception):
    """Training ended at ASHA's max_t (< model.epochs)."""


# --------------------------------------------------------------------------- driver callback
def _tune_callback_class():
    from ray import tune

    class SweepCallback(tune.Callback):
        """Driver side: closes the MLflow runs of trials Tune stopped (ASHA) or that failed, and
        interrupts the sweep after ``$PRADOT_SWEEP_STOP_AFTER_TRIALS`` completed trials (as Ctrl+C does:
        Tune saves the experiment state and ``Tuner.restore`` can finish it)."""

        def __init__(self, tracking_uri: str, epochs: int):
            self.tracking_uri, self.epochs = tracking_uri, int(epochs)
            self._client = None
            self._completed = 0
            self._signalled = False

        def __getstate__(self):  # pickled into Tune's tuner.pkl: only the stable part
            return {"tracking_uri": self.tracking_uri, "epochs": self.epochs}

        def __setstate__(self, state):
            self.__init__(state["tracking_uri"], state["epochs"])

        @property
        def client(self):
            if self._client is None:
                from mlflow import MlflowClient

                self._client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)
            return self._client

        def _close(self, trial, status, trial_status=None):
            result = trial.last_result or {}
            run_id = result.get("mlflow_run_id")
            if not run_id:
                return
            if trial_status is None:  # Tune stopped it (ASHA) or it ended on its own
                trial_status = "completed" if result.get("epoch", 0) >= self.epochs else "stopped_early"
            try:
                run = self.client.get_run(run_id)
                if run.info.status == "RUNNING":
                    self.client.set_tag(run_id, "pradot.trial_status", trial_status)
                    self.client.set_terminated(run_id, status)
            except Exception as e:  # noqa: BLE001 - bookkeeping must not stop the sweep
                log.warning("could not close MLflow run %s of trial %s: %s", run_id, trial.trial_id, e)

        def on_trial_complete(self, iteration, trials, trial, **info):
            self._close(trial, "FINISHED")
            self._completed += 1
            stop_after = os.environ.get(STOP_ENV)
            if stop_after and not self._signalled and self._completed >= int(stop_after):
                self._signalled = True
                log.warning("sweep.stop_after_trials=%s reached: interrupting the sweep (resume with "
                            "sweep.resume=true)", stop_after)
                os.kill(os.getpid(), signal.SIGUSR1)  # Tune's own interrupt handler (the Ctrl+C path)

        def on_trial_error(self, iteration, trials, trial, **info):
            self._close(trial, "FAILED", "error")

    return SweepCallback


# ------------------------------------------------------------------------------------- driver
def _param_space(plan: SweepPlan) -> dict:
    from ray import tune

    out = {}
    for name, spec in plan.space.items():
        t = spec["type"]
        if t == "const":
            continue
        if t == "uniform":
            out[name] = tune.uniform(spec["low"], spec["high"])
        elif t == "loguniform":
            out[name] = tune.loguniform(spec["low"], spec["high"])
        elif t == "int":
            out[name] = tune.randint(spec["low"], spec["high"] + 1)  # high inclusive
        else:
            out[name] = tune.choice(list(spec["values"]))
    return out


def _fixed_hparams(plan: SweepPlan, cfg) -> dict:
    m = cfg.model
    fixed = {"alpha": float(m.alpha), "n": float(m.n), "eta": float(m.eta), "epsilon": float(m.epsilon),
             "batch_ratio": float(m.batch_ratio), "sinkhorn_iters": int(m.sinkhorn_iters),
             "stages": _stage_key(cfg.backbone.stages), "backbone": str(cfg.backbone.name)}
    for name, spec in plan.space.items():
        if spec["type"] == "const":
            fixed[name] = spec["value"]
    return fixed


def _resources(plan: SweepPlan, ray) -> dict:
    gpu = plan.resources["gpu"]
    if gpu == "auto":  # the cluster's GPUs (a local Ray counts this machine's CUDA devices)
        gpu = 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
    res = {"cpu": float(plan.resources["cpu"]), "gpu": float(gpu)}
    have = ray.cluster_resources()
    if res["cpu"] > have.get("CPU", 0) or res["gpu"] > have.get("GPU", 0):
        raise SweepError(f"each trial asks for {res} but the Ray cluster has CPU={have.get('CPU', 0)}, "
                         f"GPU={have.get('GPU', 0)}: lower sweep.resources")
    return res


def _connect_ray(cfg, plan: SweepPlan):
    address = cfg.sweep.ray.get("address") or os.environ.get("RAY_ADDRESS") or None
    if not address:  # a Ray of our own, for this machine only: its servers listen on 127.0.0.1
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray

    # Workers import pradot: installed (`pip install -e .`, make setup) it is there already and the
    # workers Ray has prestarted can run trials; otherwise the job's workers get this checkout's src/.
    runtime_env = None
    try:
        from importlib.metadata import distribution

        distribution("pradot")
    except Exception:  # noqa: BLE001 - not installed
        src = str(REPO / "src")
        runtime_env = {"env_vars": {"PYTHONPATH": os.pathsep.join(
            p for p in (src, os.environ.get("PYTHONPATH", "")) if p)}}
    if address:
        host = str(address).rsplit(":", 1)[0]
        local = {"_node_ip_address": "127.0.0.1"} if host in ("127.0.0.1", "localhost") else {}
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=True, **local)
    else:
        nc, ng = cfg.sweep.ray.get("num_cpus"), cfg.sweep.ray.get("num_gpus")
        ray.init(num_cpus=int(nc) if nc else None, num_gpus=int(ng) if ng is not None else None,
                 include_dashboard=False, runtime_env=runtime_env)
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    return ray, address, len(nodes)


def _find_resume_path(cfg, storage: Path) -> Path:
    if cfg.sweep.get("resume_from"):
        path = Path(str(cfg.sweep.resume_from)).expanduser().resolve()
    elif cfg.sweep.get("name"):
        path = storage / str(cfg.sweep.name)
    else:
        found = sorted((p.parent for p in storage.glob(f"*/{STATE_FILE}")), key=lambda p: p.stat().st_mtime)
        if not found:
            raise SweepError(f"sweep.resume=true: no sweep to resume under {storage} (give sweep.resume_from=PATH)")
        path = found[-1]
    if not (path / STATE_FILE).is_file():
        raise SweepError(f"{path} is not a PRADOT sweep folder (no {STATE_FILE}); give sweep.resume_from=PATH of "
                         f"a folder under sweep.storage_path")
    return path


@dataclass
class Prepared:
    """What the driver computed before the trials: data, features, trial context."""

    spec: Any
    splits: Any
    ctx: dict
    payload: dict
    backbones: dict
    features_info: list
    cache: Any


def open_data(cfg, plan: SweepPlan):
    """The dataset's splits, checked against the sweep (before any cluster work or tracking)."""
    from pradot.engine import open_splits
    from train import specs_from_config

    spec, base_cfg = specs_from_config(cfg)  # also PRADOTConfig's checks of the fixed values
    splits = open_splits(spec)
    test_types = sorted({s.anomaly_type for s in splits.test if s.label == 1})
    check_against_data(plan, cfg, len(splits.train), len(splits.validation), test_types)
    return spec, base_cfg, splits


class _Lazy:
    """A dataset built on first use (pseudo-anomalies are only made when their features are not cached)."""

    def __init__(self, factory):
        self._factory, self._ds = factory, None

    def _get(self):
        if self._ds is None:
            self._ds = self._factory()
        return self._ds

    def __len__(self):
        return len(self._get())

    def __getitem__(self, i):
        return self._get()[i]


def _prepare(cfg, plan: SweepPlan, feature_store: str, device, spec, base_cfg, splits) -> Prepared:
    """Make the evaluation set and find (or extract, once) every feature array the trials need."""
    from pradot.backbone import load_backbone
    from pradot.data import ImageDataset, read_image
    from pradot.data.pseudo_anomalies import (KIND_STYLE, ArrayImageDataset, assign_kinds, make_pseudo_anomalies,
                                              pseudo_identity)
    from pradot.engine import feature_identity
    from pradot.features import FeatureCache

    weights = cfg.backbone.get("weights_path")
    union = plan.union_stages()
    cache = FeatureCache(Path(str(cfg.cache.dir)).expanduser().resolve())
    size = spec.image_size

    # the evaluation set of the objective (labels known without making the images)
    eval_datasets: dict[str, tuple] = {}
    if plan.objective == "pseudo":
        pa = plan.pseudo
        made = assign_kinds(len(splits.validation), pa["kinds"], pa["per_image"])
        labels = [0] * len(splits.validation) + [1] * len(made)
        groups = ["good"] * len(splits.validation) + [k for _, _, k in made]
        styles = ["good"] * len(splits.validation) + [KIND_STYLE[k] for _, _, k in made]

        def build():
            normals = [read_image(s.image_path, size) for s in splits.validation]
            anomalies = make_pseudo_anomalies(normals, kinds=pa["kinds"], per_image=pa["per_image"], seed=pa["seed"],
                                              patch_fraction=pa["patch_fraction"])
            assert anomalies.kinds == groups[len(normals):]
            return ArrayImageDataset(np.concatenate([np.stack(normals), anomalies.images]), labels)

        eval_split = "validation+pseudo"
        eval_datasets[eval_split] = (_Lazy(build), splits.validation,
                                     {"pseudo": pseudo_identity(pa["kinds"], pa["per_image"], pa["seed"],
                                                                pa["patch_fraction"])})
        calibration_split, calibration_source = eval_split, "validation"
    else:
        labels = [int(s.label) for s in splits.test]
        groups = [s.anomaly_type if s.label else "good" for s in splits.test]
        styles = groups
        eval_split = "test"
        eval_datasets["test"] = (ImageDataset(splits.test, size), splits.test, {})
        if splits.validation:
            eval_datasets["validation"] = (ImageDataset(splits.validation, size), splits.validation, {})
            calibration_split, calibration_source = "validation", "validation"
        else:
            calibration_split, calibration_source = "train", "train (no validation images)"

    identities, infos, payload_feats, shapes = {}, [], {}, {}
    for name in plan.backbones:
        wp = weights if name == str(cfg.backbone.name) else None
        bb = None  # loaded only when some features are not cached yet
        todo = [("train", ImageDataset(splits.train, size), splits.train, {})] + \
               [(k, ds, samples, extra) for k, (ds, samples, extra) in eval_datasets.items()]
        for split, ds, samples, extra in todo:
            ident = {**feature_identity(spec, name, union, samples, split, wp), **extra}
            t0 = time.perf_counter()
            feats = cache.load(ident)
            extracted = feats is None
            if extracted:
                if bb is None:
                    bb = load_backbone(name, union, weights_path=wp, device=device)
                feats = cache.get_or_compute(ident, bb, ds, device=device, num_workers=int(cfg.num_workers),
                                             progress=False)
            metas = list(cache.info(ident).values())  # one record per stage
            infos.append({"backbone": name, "split": split, "stages": list(union), "key": cache.key(ident),
                          "path": str(cache.path(ident)), "extracted_now": extracted,
                          "n_images": int(metas[0]["n_images"]),
                          "extraction_seconds": max(float(m["seconds"]) for m in metas),
                          "created": max(float(m["created"]) for m in metas),
                          "lookup_seconds": time.perf_counter() - t0})
            log.info("features %s/%s: %s (%s)", name, split, "extracted" if extracted else "cache hit",
                     cache.path(ident))
            identities[f"{name}/{split}"] = ident
            if feature_store == "object_store":
                import ray

                payload_feats[f"{name}/{split}"] = {s: ray.put(np.ascontiguousarray(a)) for s, a in feats.items()}
            if split == "train":  # what a trial's model needs of the backbone: channels and grids per stage
                for st in plan.stage_sets:
                    shapes[f"{name}/{_stage_key(st)}"] = {
                        "name": name, "stages": list(st), "image_size": size,
                        "channels": {int(s): int(feats[s].shape[1]) for s in st},
                        "grids": {int(s): [int(feats[s].shape[2]), int(feats[s].shape[3])] for s in st}}
        del bb

    payload = {"features": payload_feats} if feature_store == "object_store" else {}
    base = {k: v for k, v in base_cfg.__dict__.items()
            if k not in ("backbone", "stages", "alpha", "n", "eta", "epsilon", "sinkhorn_iters", "batch_size")}
    ctx = {"objective": plan.objective, "metric": plan.metric, "milestones": plan.milestones,
           "fixed": _fixed_hparams(plan, cfg), "base_model": base, "eval_split": eval_split,
           "eval_labels": labels, "eval_groups": groups, "eval_styles": styles,
           "calibration_split": calibration_split, "calibration_source": calibration_source,
           "loco_style": bool(splits.dataset.has_saturation), "identities": identities,
           "cache_dir": str(cache.root), "feature_store": feature_store,
           "feature_keys": [i["key"] for i in infos], "dataset": spec.kind, "category": spec.category,
           "backbone_shapes": shapes,
           # the data the bank is trained / scored on, as `main` logs it (pipelines/promote.py checks them)
           "data_params": {**{k: v for k, v in flatten(cfg).items() if k.startswith("data.")},
                           "category": str(cfg.category), "seed": str(cfg.seed),
                           "data.resolved_root": str(splits.dataset.root)}}
    backbone_names = {str(cfg.backbone.name): weights}
    backbones = _BackboneLoader(lambda n, st: load_backbone(n, st, weights_path=backbone_names.get(n), device="cpu"))
    return Prepared(spec, splits, ctx, payload, backbones, infos, cache)


class _BackboneLoader(dict):
    """``loader["name/2,3"]`` -> the real backbone (with weights), loaded on first use (registration)."""

    def __init__(self, load):
        super().__init__()
        self._load = load

    def __missing__(self, key):
        name, stages = key.split("/")
        self[key] = self._load(name, tuple(int(s) for s in stages.split(",")))
        return self[key]


def _register_top_k(grid, plan: SweepPlan, cfg, prep: Prepared, parent_id: str, mlflow) -> list[dict]:
    """Register the best ``top_k`` trials' banks (their last checkpoint) as model versions."""
    from mlflow_model import log_pradot_model
    from pradot.model import PRADOT
    from train import model_name

    try:
        from pradot.serving import calibrate
    except ImportError:
        from pradot.serving import Calibration
        calibrate = Calibration.calibrate

    candidates = [r for r in grid if r.error is None and r.checkpoint is not None
                  and isinstance(r.metrics.get(plan.metric), (int, float)) and math.isfinite(r.metrics[plan.metric])]
    candidates.sort(key=lambda r: r.metrics[plan.metric], reverse=(plan.mode == "max"))
    chosen = candidates[:plan.top_k]
    if not chosen or plan.top_k == 0 or not cfg.tracking.register:
        return []
    name = model_name(cfg)
    example = (prep.splits.validation or prep.splits.train)[0].image_path
    out = []
    for rank, r in enumerate(chosen, 1):
        with r.checkpoint.as_directory() as d, tempfile.TemporaryDirectory(prefix="pradot-reg-") as tmp:
            d = Path(d)
            meta = json.loads((d / "trial.json").read_text())
            hp = meta["hparams"]
            bb = prep.backbones[f"{hp['backbone']}/{_stage_key(hp['stages'])}"]
            model = PRADOT.load(d / "model.pt", backbone=bb)
            path = model.save(Path(tmp) / "pradot_model.pt", include_backbone=bool(cfg.tracking.include_backbone))
            calib = calibrate(np.load(d / "calibration_scores.npy"), float(cfg.calibration.quantile))
            value = float(r.metrics[plan.metric])
            tags = {"sweep_run_id": parent_id, "sweep_rank": rank, "trial_id": meta["trial_id"],
                    "run_id": meta["mlflow_run_id"], "objective": plan.objective, plan.metric: round(value, 6),
                    "alpha": hp["alpha"], "n": hp["n"], "eta": hp["eta"], "epsilon": hp["epsilon"],
                    "batch_ratio": hp["batch_ratio"], "batch_size": hp["batch_size"],
                    "stages": ",".join(map(str, hp["stages"])), "backbone": hp["backbone"],
                    "epochs_trained": meta["epoch"], "image_size": prep.spec.image_size,
                    "dataset": prep.spec.kind, "category": prep.spec.category, "threshold": calib.threshold,
                    "calibration_source": meta["calibration_source"],
                    "config": json.dumps({k: hp[k] for k in sorted(hp)}, default=str),
                    # what pipelines/promote.py ranks banks by (promote metric=val_auroc for a pseudo sweep)
                    **{f"metric.{k}": round(float(v), 5) for k, v in meta["metrics"].items()
                       if k.startswith(("val_auroc", "test_auroc"))}}
            with mlflow.start_run(run_id=meta["mlflow_run_id"], nested=True):
                info = log_pradot_model(path, calib, registered_model_name=name, input_example_image=example,
                                        extra_tags=tags)
                mlflow.set_tags({"pradot.registered_model": name,
                                 "pradot.registered_version": str(info.registered_model_version)})
        out.append({"rank": rank, "trial_id": meta["trial_id"], "run_id": meta["mlflow_run_id"], "name": name,
                    "version": str(info.registered_model_version), plan.metric: value})
        log.info("registered %s v%s (trial %s, %s=%.4f)", name, info.registered_model_version, meta["trial_id"],
                 plan.metric, value)
    return out


def _close_open_children(client, experiment_id: str, parent_id: str, status: str) -> None:
    for run in client.search_runs([experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent_id}' and "
                                                                  f"attributes.status = 'RUNNING'"):
        client.set_tag(run.info.run_id, "pradot.trial_status", "interrupted" if status == "KILLED" else "stopped_early")
        client.set_terminated(run.info.run_id, status)


_STARTED = time.strftime("%Y%m%d-%H%M%S")


def _sweep_name(cfg, plan: SweepPlan) -> str:
    return str(plan.name or f"sweep-{cfg.data.kind}-{cfg.category}-{_STARTED}")


def _absolute_paths(cfg) -> None:
    """Data root and cache folder as absolute paths (trials and a resumed sweep run elsewhere)."""
    from omegaconf import open_dict

    with open_dict(cfg):
        cfg.cache.dir = str(Path(str(cfg.cache.dir)).expanduser().resolve())
        for holder, key in ((cfg, "data_root"), (cfg.data, "root")):
            v = holder.get(key)
            if v not in (None, "") and "://" not in str(v):
                holder[key] = str(Path(str(v)).expanduser().resolve())


def run_sweep(cfg, resume_path: Path | None = None, saved_state: dict | None = None) -> dict:
    """The sweep (config validated by the caller). Returns a summary dict."""
    import mlflow
    from omegaconf import OmegaConf

    # everything that can fail on bad input, before any cluster work or tracking
    plan = validate_sweep(cfg)
    storage = Path(plan.storage_path).expanduser().resolve()
    from pradot.engine import resolve_device
    device = resolve_device(str(cfg.device))
    _absolute_paths(cfg)
    data = open_data(cfg, plan)
    if not saved_state and (storage / _sweep_name(cfg, plan)).exists():
        raise SweepError(f"{storage / _sweep_name(cfg, plan)} exists already: choose another sweep.name, or resume "
                         f"it with sweep.resume=true sweep.resume_from={storage / _sweep_name(cfg, plan)}")
    uri = absolute_tracking_uri(setup_tracking())  # $MLFLOW_TRACKING_URI, else ./mlflow.db (made absolute)
    if saved_state and saved_state["tracking_uri"] != uri:
        raise SweepError(f"this sweep was tracked in {saved_state['tracking_uri']!r}; resume it with the same "
                         f"store (MLFLOW_TRACKING_URI), not {uri!r}")
    mlflow.set_tracking_uri(uri)
    log.info("configuration and data checked in %.1fs", time.perf_counter() - T0)
    ray, address, n_nodes = _connect_ray(cfg, plan)
    log.info("connected to Ray (%d node%s) at %.1fs", n_nodes, "s" if n_nodes > 1 else "", time.perf_counter() - T0)
    try:
        check_tracking_for_cluster(uri, n_nodes, address)
        resources = _resources(plan, ray)
        feature_store = plan.feature_store if plan.feature_store != "auto" else \
            ("disk" if n_nodes == 1 else "object_store")
        if n_nodes > 1:
            log.warning("a %d-node cluster: sweep.storage_path=%s must be on storage every node mounts at the same "
                        "path (NFS, ...): trials write their checkpoints there and the driver reads them", n_nodes,
                        storage)
        return _run_on_cluster(cfg, plan, uri, storage, ray, n_nodes, resources, feature_store, device,
                               resume_path, saved_state, mlflow, OmegaConf, data)
    finally:
        ray.shutdown()


def _run_on_cluster(cfg, plan, uri, storage, ray, n_nodes, resources, feature_store, device, resume_path,
                    saved_state, mlflow, OmegaConf, data) -> dict:
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search.optuna import OptunaSearch

    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    if saved_state:
        parent_id, name = saved_state["parent_run_id"], resume_path.name
        state = client.get_run(parent_id).data.tags.get("pradot.sweep_state")
        if state == "finished":
            raise SweepError(f"the sweep in {resume_path} has finished already (MLflow run {parent_id}); nothing "
                             f"to resume")
        env_run = os.environ.get("MLFLOW_RUN_ID")
        if env_run and env_run != parent_id:  # started by `mlflow run`: point that run at the sweep it resumes
            client.set_tag(env_run, "pradot.resumed_sweep_run_id", parent_id)
        run_ctx = mlflow.start_run(run_id=parent_id)
    else:
        name = _sweep_name(cfg, plan)
        if not os.environ.get("MLFLOW_RUN_ID"):
            mlflow.set_experiment(str(cfg.tracking.experiment_name))
        tag = "-TEST-OBJECTIVE" if plan.objective == "test" else ""
        run_ctx = mlflow.start_run(run_name=f"sweep-{cfg.data.kind}-{cfg.category}{tag}")
    with run_log("sweep.log") as logfile, run_ctx as run:
        try:
            parent_id, experiment_id = run.info.run_id, run.info.experiment_id
            if not saved_state:
                mlflow.set_tags({"pradot.sweep": "true", "pradot.objective": plan.objective,
                                 "pradot.metric": plan.metric, "pradot.entry_point": "sweep",
                                 "pradot.dataset": str(cfg.data.kind), "pradot.category": str(cfg.category),
                                 "pradot.backbone": ",".join(plan.backbones), "pradot.sweep_name": name,
                                 "pradot.sweep_path": str(storage / name), "pradot.ray_nodes": str(n_nodes),
                                 "pradot.feature_store": feature_store})
                if plan.objective == "test":
                    mlflow.set_tag("pradot.note", "objective=test: hyper-parameters chosen on the TEST labels "
                                                  "(paper reproduction only, not a fair estimate)")
                # under `mlflow run` the entry point's raw parameters are logged already (e.g. data_root='');
                # a resolved value that differs goes in as resolved.<key> (params cannot change)
                have = client.get_run(parent_id).data.params
                mlflow.log_params({(f"resolved.{k}" if k in have and have[k] != v else k): v[:6000]
                                   for k, v in flatten(cfg).items() if have.get(k) != v})
                mlflow.log_dict({"space": plan.space, "num_samples": plan.num_samples, "metric": plan.metric,
                                 "mode": plan.mode, "objective": plan.objective, "scheduler": plan.scheduler,
                                 "resources": resources, "searcher": "optuna TPE", "seed": plan.seed},
                                "sweep/search_space.yaml")
                mlflow.log_text(OmegaConf.to_yaml(cfg), "config/resolved_config.yaml")
            else:
                mlflow.set_tag("pradot.resumed", str(int(run.data.tags.get("pradot.resumed", "0")) + 1))

            log.info("parent run %s ready at %.1fs", parent_id, time.perf_counter() - T0)
            prep = _prepare(cfg, plan, feature_store, device, *data)
            log.info("features ready at %.1fs", time.perf_counter() - T0)
            extracted = sum(1 for i in prep.features_info if i["extracted_now"])
            mlflow.log_dict({"features": prep.features_info, "feature_store": feature_store},
                            "sweep/features.json" if not saved_state else "sweep/features_resume.json")
            mlflow.log_metrics({"features_extracted" if not saved_state else "features_extracted_on_resume": extracted,
                                "features_reused" if not saved_state else "features_reused_on_resume":
                                    len(prep.features_info) - extracted})
            ctx = {**prep.ctx, "tracking_uri": uri, "parent_run_id": parent_id, "experiment_id": experiment_id,
                   "cpu": resources["cpu"], "gpu": resources["gpu"]}

            # pickle this module's functions by value: workers need neither pipelines/ nor this file
            import ray.cloudpickle as cp
            if __name__ != "__main__":
                cp.register_pickle_by_value(sys.modules[__name__])
            trainable = tune.with_resources(tune.with_parameters(trial_main, ctx=ctx, payload=prep.payload),
                                            resources)
            exp_path = storage / name
            if saved_state:
                log.info("resuming %s", exp_path)
                tuner = tune.Tuner.restore(str(exp_path), trainable=trainable, resume_unfinished=True,
                                           resume_errored=True)
            else:
                exp_path.mkdir(parents=True, exist_ok=True)
                (exp_path / STATE_FILE).write_text(json.dumps(
                    {"parent_run_id": parent_id, "experiment_id": experiment_id, "tracking_uri": uri,
                     "name": name, "created": time.time(), "config": OmegaConf.to_container(cfg, resolve=True)},
                    indent=1, default=str))
                import optuna

                searcher = OptunaSearch(sampler=optuna.samplers.TPESampler(seed=plan.seed))
                if plan.scheduler["type"] == "asha":
                    scheduler = ASHAScheduler(time_attr="training_iteration", max_t=plan.scheduler["max_t"],
                                              grace_period=plan.scheduler["grace_period"],
                                              reduction_factor=plan.scheduler["reduction_factor"])
                else:
                    scheduler = FIFOScheduler()
                tuner = tune.Tuner(
                    trainable, param_space=_param_space(plan),
                    tune_config=tune.TuneConfig(metric=plan.metric, mode=plan.mode, search_alg=searcher,
                                                scheduler=scheduler, num_samples=plan.num_samples,
                                                max_concurrent_trials=plan.max_concurrent_trials,
                                                time_budget_s=plan.time_budget_s, reuse_actors=plan.reuse_actors,
                                                trial_dirname_creator=_trial_dirname),
                    run_config=tune.RunConfig(name=name, storage_path=str(storage), verbose=1,
                                              callbacks=[_tune_callback_class()(uri, plan.epochs)],
                                              checkpoint_config=tune.CheckpointConfig(num_to_keep=1)))
            os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")  # short trials
            if plan.stop_after_trials:
                os.environ[STOP_ENV] = str(plan.stop_after_trials)
            t0 = time.time()
            try:
                grid = tuner.fit()
            finally:
                os.environ.pop(STOP_ENV, None)
            elapsed = time.time() - t0
            log.info("trials done in %.1fs (at %.1fs)", elapsed, time.perf_counter() - T0)
            unfinished = len(grid) - grid.num_terminated - grid.num_errors
            budget_hit = plan.time_budget_s is not None and elapsed >= plan.time_budget_s
            interrupted = unfinished > 0 or (len(grid) < plan.num_samples and not budget_hit)

            with tempfile.TemporaryDirectory() as tmp:
                df = grid.get_dataframe()
                df.to_csv(Path(tmp) / "trials.csv", index=False)
                mlflow.log_artifact(str(Path(tmp) / "trials.csv"), "sweep")
            mlflow.log_metrics({"trials": len(grid), "trials_terminated": grid.num_terminated,
                                "trials_errored": grid.num_errors})
            if interrupted:
                _close_open_children(client, experiment_id, parent_id, "KILLED")
                mlflow.set_tag("pradot.sweep_state", "interrupted")
                summary = {"state": "interrupted", "parent_run_id": parent_id, "path": str(exp_path),
                           "trials": len(grid), "terminated": grid.num_terminated, "registered": []}
                print(f"\nsweep interrupted after {grid.num_terminated} of {plan.num_samples} trials; resume with:\n"
                      f"  python pipelines/sweep.py sweep.resume=true sweep.resume_from={exp_path}\n"
                      f"  (mlflow run . -e sweep --env-manager local -P resume=true -P resume_from={exp_path})",
                      file=sys.stderr)
                mlflow.log_artifact(str(logfile), "logs")
                mlflow.end_run("KILLED")
                return summary
            _close_open_children(client, experiment_id, parent_id, "FINISHED")
            if grid.num_terminated == 0:
                raise RuntimeError(f"all {len(grid)} trials failed; see the trials' runs (tag pradot.error) and "
                                   f"{exp_path}")
            best = grid.get_best_result(metric=plan.metric, mode=plan.mode, scope="last")
            mlflow.log_metric(f"best_{plan.metric}", float(best.metrics[plan.metric]))
            mlflow.set_tags({"pradot.best_trial_id": best.metrics.get("trial_id", ""),
                             "pradot.best_run_id": best.metrics.get("mlflow_run_id", ""),
                             "pradot.sweep_state": "finished"})
            registered = _register_top_k(grid, plan, cfg, prep, parent_id, mlflow)
            log.info("registration done at %.1fs", time.perf_counter() - T0)
            mlflow.log_dict({"registered": registered}, "sweep/registered.json")
            mlflow.set_tag("pradot.registered", ",".join(f"{r['name']}/{r['version']}" for r in registered))
            return {"state": "finished", "parent_run_id": parent_id, "path": str(exp_path), "trials": len(grid),
                    "terminated": grid.num_terminated, "errored": grid.num_errors, "registered": registered,
                    "best": {k: best.metrics.get(k) for k in (plan.metric, "trial_id", "mlflow_run_id")},
                    "best_config": {k: v for k, v in best.config.items()}, "tracking_uri": uri,
                    "metric": plan.metric}
        finally:
            if mlflow.active_run() is not None:
                mlflow.log_artifact(str(logfile), "logs")


def _trial_dirname(trial) -> str:
    return f"trial_{trial.trial_id}"


def main(argv=None) -> int:
    overrides = parse_overrides(sys.argv[1:] if argv is None else argv)
    cfg = compose(overrides)
    from omegaconf import OmegaConf

    from pradot.backbone import BackboneError
    from pradot.data import DatasetError

    try:
        resume_path, state = None, None
        if cfg.sweep.get("resume") or cfg.sweep.get("resume_from"):
            storage = Path(str(cfg.sweep.storage_path)).expanduser().resolve()
            resume_path = _find_resume_path(cfg, storage)
            state = json.loads((resume_path / STATE_FILE).read_text())
            cfg = OmegaConf.create(state["config"])  # the interrupted sweep's own configuration
            cfg.sweep.storage_path = str(resume_path.parent)
            cfg.sweep.stop_after_trials = None
            log.info("resuming the sweep in %s (its saved configuration; other overrides are ignored)", resume_path)
        validate_sweep(cfg)
        out = run_sweep(cfg, resume_path, state)
    except (SweepError, DatasetError, BackboneError, FileNotFoundError) as e:
        print(f"\nerror: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except ValueError as e:  # PRADOTConfig's checks of the fixed hyper-parameters
        print(f"\nerror: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except RuntimeError as e:
        print(f"\nerror: {e}", file=sys.stderr)
        return EXIT_FAILED
    if out["state"] == "interrupted":
        return EXIT_INTERRUPTED
    print("\n== PRADOT sweep finished ==")
    print(f"tracking store : {out['tracking_uri']}")
    print(f"parent run     : {out['parent_run_id']}")
    print(f"trials         : {out['trials']} ({out['terminated']} finished, {out['errored']} failed); "
          f"Tune folder {out['path']}")
    print(f"best           : {out['metric']}={out['best'][out['metric']]:.4f}  {out['best_config']}")
    for r in out["registered"]:
        print(f"registered     : models:/{r['name']}/{r['version']}  (trial {r['trial_id']}, "
              f"{out['metric']}={r[out['metric']]:.4f})")
    if out["registered"]:
        print(f"next           : mlflow run . --env-manager local -e promote -P category={cfg.category} "
              f"-P dataset={cfg.data.kind} -P select_by={out['metric']}   (plus the sweep's data overrides)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
