"""The sweep entry point: argv -> the checked plan -> Ray -> the parent MLflow run -> features once ->
``Tuner.fit`` -> the trial table -> the ``top_k`` banks registered -> :class:`SweepResult`.

Everything that can fail on bad input (config, search space, data, resume folder, tracking store) is
checked before a cluster is started or joined and before anything is logged. An interrupted sweep
(Ctrl+C, SIGUSR1, ``sweep.stop_after_trials``) ends its parent run KILLED and exits 3; ``sweep.resume=true``
restores it with its saved configuration into the same parent run.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from omegaconf import DictConfig, OmegaConf

from pipelines import cli, config, tracking
from pipelines.sweep.cluster import Cluster, absolute_tracking_uri, check_tracking_for_cluster, connect
from pipelines.sweep.evalset import evaluation_set, extract_features, open_data
from pipelines.sweep.plan import SweepPlan, sweep_plan
from pipelines.sweep.space import SweepError, alias_overrides
from pipelines.sweep.trial import TrialContext

__all__ = ["STATE_FILE", "SweepResult", "Resume", "find_resume_path", "run_sweep", "run", "main"]

log = logging.getLogger(__name__)

#: in the sweep's Tune folder: its MLflow parent run, tracking store and configuration (for resume)
STATE_FILE = "pradot_sweep.json"
_T0 = time.perf_counter()  # phase timings in the log are seconds since the start
_STARTED = time.strftime("%Y%m%d-%H%M%S")


@dataclass
class SweepResult:
    """What a sweep did: ``state`` finished | interrupted, its runs, trials and registered versions."""

    state: str
    parent_run_id: str
    path: str  # the Tune folder
    tracking_uri: str
    metric: str
    dataset: str
    category: str
    num_samples: int
    trials: int
    terminated: int
    errored: int = 0
    registered: list[dict] = field(default_factory=list)
    best: dict[str, Any] = field(default_factory=dict)
    best_config: dict[str, Any] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        return cli.EXIT_INTERRUPTED if self.state == "interrupted" else cli.EXIT_OK

    def resume_notice(self) -> str:
        return (f"\nsweep interrupted after {self.terminated} of {self.num_samples} trials; resume with:\n"
                f"  python pipelines/sweep.py sweep.resume=true sweep.resume_from={self.path}\n"
                f"  (mlflow run . -e sweep --env-manager local -P resume=true -P resume_from={self.path})")

    def summary(self) -> str:
        """The closing summary (an interrupted sweep printed its resume notice on stderr already)."""
        if self.state == "interrupted":
            return ""
        m = self.metric
        lines = ["\n== PRADOT sweep finished ==", f"tracking store : {self.tracking_uri}",
                 f"parent run     : {self.parent_run_id}",
                 f"trials         : {self.trials} ({self.terminated} finished, {self.errored} failed); "
                 f"Tune folder {self.path}",
                 f"best           : {m}={self.best[m]:.4f}  {self.best_config}"]
        lines += [f"registered     : models:/{r['name']}/{r['version']}  (trial {r['trial_id']}, {m}={r[m]:.4f})"
                  for r in self.registered]
        if self.registered:
            lines.append(f"next           : mlflow run . --env-manager local -e promote -P category={self.category} "
                         f"-P dataset={self.dataset} -P select_by={m}   (plus the sweep's data overrides)")
        return "\n".join(lines)


# ------------------------------------------------------------------------------------- resume
@dataclass(frozen=True)
class Resume:
    """An interrupted sweep's folder and its state file."""

    path: Path
    parent_run_id: str
    tracking_uri: str
    config: dict


def find_resume_path(storage: Path, resume_from: str | None, name: str | None) -> Path:
    """``resume_from``, else ``<storage>/<name>``, else the latest sweep folder under ``storage``.

    Raises:
        SweepError: no such sweep folder.
    """
    if resume_from:
        path = Path(resume_from).expanduser().resolve()
    elif name:
        path = storage / name
    else:
        found = sorted((p.parent for p in storage.glob(f"*/{STATE_FILE}")), key=lambda p: p.stat().st_mtime)
        if not found:
            raise SweepError(f"sweep.resume=true: no sweep to resume under {storage} (give sweep.resume_from=PATH)")
        path = found[-1]
    if not (path / STATE_FILE).is_file():
        raise SweepError(f"{path} is not a PRADOT sweep folder (no {STATE_FILE}); give sweep.resume_from=PATH of "
                         f"a folder under sweep.storage_path")
    return path


def _resume(cfg: DictConfig) -> tuple[DictConfig, Resume | None]:
    """With ``sweep.resume`` / ``sweep.resume_from``: the interrupted sweep's own configuration (other
    overrides are ignored) and its state; else ``cfg`` as it is."""
    sw = cfg.sweep
    if not (sw.get("resume") or sw.get("resume_from")):
        return cfg, None
    storage = Path(str(sw.storage_path)).expanduser().resolve()
    path = find_resume_path(storage, sw.get("resume_from"), sw.get("name"))
    state = json.loads((path / STATE_FILE).read_text())
    saved = config.with_overrides(OmegaConf.create(state["config"]),
                                  {"sweep.storage_path": str(path.parent), "sweep.stop_after_trials": None})
    log.info("resuming the sweep in %s (its saved configuration; other overrides are ignored)", path)
    return saved, Resume(path, state["parent_run_id"], state["tracking_uri"], state["config"])


def _write_state(path: Path, run: tracking.EntryRun, uri: str, cfg: DictConfig) -> None:
    """The state file of a new sweep folder (``uri``: the tracking store, absolute)."""
    path.mkdir(parents=True, exist_ok=True)
    (path / STATE_FILE).write_text(json.dumps(
        {"parent_run_id": run.run_id, "experiment_id": run.experiment_id, "tracking_uri": uri,
         "name": path.name, "created": time.time(), "config": OmegaConf.to_container(cfg, resolve=True)},
        indent=1, default=str))


# ------------------------------------------------------------------------------------- the driver
@dataclass
class _Sweep:
    """The driver's checked inputs."""

    cfg: DictConfig  # the sweep's config, paths absolute
    plan: SweepPlan
    splits: Any  # pradot.engine.Splits
    path: Path  # the Tune folder
    uri: str  # the tracking store, absolute
    resume: Resume | None
    device: Any

    def data_params(self) -> dict[str, str]:
        """The data a bank is trained and scored on, as `main` logs it (promote checks them)."""
        flat = config.flatten(self.cfg)
        return {**{k: v for k, v in flat.items() if k.startswith("data.")}, "category": str(self.cfg.category),
                "seed": str(self.cfg.seed), "data.resolved_root": str(self.splits.dataset.root)}


def _absolute_paths(cfg: DictConfig) -> DictConfig:
    """Data root and cache folder as absolute paths (trials and a resumed sweep run elsewhere)."""
    values = {"cache.dir": str(Path(str(cfg.cache.dir)).expanduser().resolve())}
    for key in ("data_root", "data.root"):
        v = OmegaConf.select(cfg, key)
        if v not in (None, "") and "://" not in str(v):
            values[key] = str(Path(str(v)).expanduser().resolve())
    return config.with_overrides(cfg, values)


def _checked(cfg: DictConfig, plan: SweepPlan, resume: Resume | None) -> _Sweep:
    """Everything that can fail on bad input, before any cluster work or tracking."""
    from pradot.device import resolve_device

    storage = Path(plan.storage_path).expanduser().resolve()
    device = resolve_device(str(cfg.device))
    cfg = _absolute_paths(cfg)
    splits = open_data(cfg, plan)
    path = resume.path if resume else storage / str(plan.name or f"sweep-{cfg.data.kind}-{cfg.category}-{_STARTED}")
    if not resume and path.exists():
        raise SweepError(f"{path} exists already: choose another sweep.name, or resume it with sweep.resume=true "
                         f"sweep.resume_from={path}")
    uri = absolute_tracking_uri(tracking.setup_tracking())  # $MLFLOW_TRACKING_URI, else ./mlflow.db
    if resume and resume.tracking_uri != uri:
        raise SweepError(f"this sweep was tracked in {resume.tracking_uri!r}; resume it with the same store "
                         f"(MLFLOW_TRACKING_URI), not {uri!r}")
    return _Sweep(cfg, plan, splits, path, uri, resume, device)


def _reopen_parent(s: _Sweep) -> None:
    """A resumed sweep's parent must be unfinished; a run started by `mlflow run` points to it."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=s.uri)
    parent_id = s.resume.parent_run_id
    if client.get_run(parent_id).data.tags.get("pradot.sweep_state") == "finished":
        raise SweepError(f"the sweep in {s.path} has finished already (MLflow run {parent_id}); nothing to resume")
    env_run = os.environ.get("MLFLOW_RUN_ID")
    if env_run and env_run != parent_id:
        client.set_tag(env_run, "pradot.resumed_sweep_run_id", parent_id)


def _describe_parent(s: _Sweep, run: tracking.EntryRun, cluster: Cluster, store: str, resources: dict) -> None:
    """Tags, params and the search space of a new sweep's parent run (a resumed one counts resumptions)."""
    import mlflow

    if s.resume:
        previous = mlflow.get_run(run.run_id).data.tags.get("pradot.resumed", "0")
        mlflow.set_tag("pradot.resumed", str(int(previous) + 1))
        return
    cfg, plan = s.cfg, s.plan
    mlflow.set_tags({"pradot.sweep": "true", "pradot.objective": plan.objective, "pradot.metric": plan.metric,
                     "pradot.dataset": str(cfg.data.kind), "pradot.category": str(cfg.category),
                     "pradot.backbone": ",".join(plan.backbones), "pradot.sweep_name": s.path.name,
                     "pradot.sweep_path": str(s.path), "pradot.ray_nodes": str(cluster.n_nodes),
                     "pradot.feature_store": store})
    if plan.objective == "test":
        mlflow.set_tag("pradot.note", "objective=test: hyper-parameters chosen on the TEST labels "
                                      "(paper reproduction only, not a fair estimate)")
    tracking.log_resolved_params(config.flatten(cfg))
    mlflow.log_dict(plan.record(resources), "sweep/search_space.yaml")
    mlflow.log_text(config.resolved_yaml(cfg), "config/resolved_config.yaml")


def _trial_context(s: _Sweep, run: tracking.EntryRun, store: str, resources: dict) -> TrialContext:
    """Extract the features (once), log what was extracted, and build what every trial gets."""
    import mlflow

    evalset, sources = evaluation_set(s.plan, s.splits, int(s.cfg.data.image_size))
    features, infos = extract_features(s.plan, s.cfg, s.splits, sources, store, s.device)
    log.info("features ready at %.1fs", time.perf_counter() - _T0)
    extracted = sum(1 for i in infos if i["extracted_now"])
    suffix = "_on_resume" if s.resume else ""
    mlflow.log_dict({"features": infos, "feature_store": store},
                    "sweep/features_resume.json" if s.resume else "sweep/features.json")
    mlflow.log_metrics({f"features_extracted{suffix}": extracted, f"features_reused{suffix}": len(infos) - extracted})
    return TrialContext(train_config=config.training_view(s.cfg), space=s.plan.space, evalset=evalset,
                        features=features, metric=s.plan.metric, milestones=s.plan.milestones, tracking_uri=s.uri,
                        parent_run_id=run.run_id, experiment_id=run.experiment_id, data_params=s.data_params(),
                        cpu=resources["cpu"], gpu=resources["gpu"])


def _fit(s: _Sweep, run: tracking.EntryRun, ctx: TrialContext, resources: dict):
    """Build (or restore) the Tuner and run the trials; returns (ResultGrid, seconds)."""
    from ray import tune

    from pipelines.sweep import tuner
    from pipelines.sweep.trial import trial_main

    trainable = tune.with_resources(tune.with_parameters(trial_main, ctx=ctx), resources)
    if s.resume:
        t = tuner.restore_tuner(s.path, trainable)
    else:
        _write_state(s.path, run, s.uri, s.cfg)
        t = tuner.build_tuner(s.plan, trainable, s.path, s.uri)
    t0 = time.time()
    grid = tuner.fit(t, s.plan.stop_after_trials)
    elapsed = time.time() - t0
    log.info("trials done in %.1fs (at %.1fs)", elapsed, time.perf_counter() - _T0)
    return grid, elapsed


def _log_trials(grid) -> None:
    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        grid.get_dataframe().to_csv(Path(tmp) / "trials.csv", index=False)
        mlflow.log_artifact(str(Path(tmp) / "trials.csv"), "sweep")
    mlflow.log_metrics({"trials": len(grid), "trials_terminated": grid.num_terminated,
                        "trials_errored": grid.num_errors})


def _outcome(s: _Sweep, run: tracking.EntryRun, grid, elapsed: float) -> SweepResult:
    """Log the trial table; an interrupted sweep stops here, a finished one tags its best and registers."""
    import mlflow

    from pipelines.sweep.register import register_top_k
    from pipelines.sweep.tuner import close_open_children

    plan, client = s.plan, mlflow.MlflowClient(tracking_uri=s.uri, registry_uri=s.uri)
    unfinished = len(grid) - grid.num_terminated - grid.num_errors
    budget_hit = plan.time_budget_s is not None and elapsed >= plan.time_budget_s
    _log_trials(grid)
    result = SweepResult("interrupted", run.run_id, str(s.path), s.uri, plan.metric, str(s.cfg.data.kind),
                         str(s.cfg.category), plan.num_samples, len(grid), grid.num_terminated, grid.num_errors)
    if unfinished > 0 or (len(grid) < plan.num_samples and not budget_hit):
        close_open_children(client, run.experiment_id, run.run_id, "KILLED")
        mlflow.set_tag("pradot.sweep_state", "interrupted")
        return result
    close_open_children(client, run.experiment_id, run.run_id, "FINISHED")
    if grid.num_terminated == 0:
        raise RuntimeError(f"all {len(grid)} trials failed; see the trials' runs (tag pradot.error) and {s.path}")
    best = grid.get_best_result(metric=plan.metric, mode=plan.mode, scope="last")
    mlflow.log_metric(f"best_{plan.metric}", float(best.metrics[plan.metric]))
    mlflow.set_tags({"pradot.best_trial_id": best.metrics.get("trial_id", ""),
                     "pradot.best_run_id": best.metrics.get("mlflow_run_id", ""), "pradot.sweep_state": "finished"})
    result.registered = register_top_k(grid, plan, s.cfg, s.splits, run.run_id)
    log.info("registration done at %.1fs", time.perf_counter() - _T0)
    mlflow.log_dict({"registered": result.registered}, "sweep/registered.json")
    mlflow.set_tag("pradot.registered", ",".join(f"{r['name']}/{r['version']}" for r in result.registered))
    result.state, result.best_config = "finished", dict(best.config)
    result.best = {k: best.metrics.get(k) for k in (plan.metric, "trial_id", "mlflow_run_id")}
    return result


def _on_cluster(s: _Sweep, cluster: Cluster) -> SweepResult:
    """The sweep in its parent MLflow run (ended KILLED when interrupted)."""
    from mlflow import MlflowClient

    check_tracking_for_cluster(s.uri, cluster.n_nodes, cluster.address)
    resources = cluster.trial_resources(s.plan.resources)
    store = cluster.feature_store(s.plan.feature_store)
    if cluster.n_nodes > 1:
        log.warning("a %d-node cluster: sweep.storage_path=%s must be on storage every node mounts at the same "
                    "path (NFS, ...): trials write their checkpoints there and the driver reads them",
                    cluster.n_nodes, s.path.parent)
    if s.resume:
        _reopen_parent(s)
    cfg = s.cfg
    name = f"sweep-{cfg.data.kind}-{cfg.category}{'-TEST-OBJECTIVE' if s.plan.objective == 'test' else ''}"
    with tracking.entry_run(name, str(cfg.tracking.experiment_name), entry_point="sweep", log_name="sweep.log",
                            run_id=s.resume.parent_run_id if s.resume else None) as run:
        _describe_parent(s, run, cluster, store, resources)
        log.info("parent run %s ready at %.1fs", run.run_id, time.perf_counter() - _T0)
        ctx = _trial_context(s, run, store, resources)
        result = _outcome(s, run, *_fit(s, run, ctx, resources))
    if result.state == "interrupted":
        MlflowClient(tracking_uri=s.uri).set_terminated(run.run_id, "KILLED")
        print(result.resume_notice(), file=sys.stderr)
    return result


def run_sweep(cfg: DictConfig, resume: Resume | None = None) -> SweepResult:
    """The sweep of a composed ``conf/sweep.yaml`` (``resume``: continue that interrupted sweep)."""
    plan = sweep_plan(cfg)
    s = _checked(cfg, plan, resume)
    log.info("configuration and data checked in %.1fs", time.perf_counter() - _T0)
    with connect(plan.ray) as cluster:
        log.info("connected to Ray (%d node%s) at %.1fs", cluster.n_nodes, "s" if cluster.n_nodes > 1 else "",
                 time.perf_counter() - _T0)
        return _on_cluster(s, cluster)


def run(argv: Sequence[str]) -> SweepResult:
    """Compose ``conf/sweep.yaml`` with the overrides in ``argv`` (short search-space names allowed) and sweep."""
    cfg = config.compose("sweep", alias_overrides(config.parse_overrides(argv)))
    cfg, resume = _resume(cfg)
    return run_sweep(cfg, resume)


def main(argv: Sequence[str] | None = None) -> int:
    return cli.run_entry(run, argv)
