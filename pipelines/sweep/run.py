"""The sweep entry point: argv -> the checked plan -> Ray -> checks from every node -> the parent MLflow
run -> features once -> ``Tuner.fit`` -> every trial's outcome and the trial table -> the ``top_k`` banks
registered -> :class:`SweepResult`.

Everything that can fail on bad input (config, search space, data, resume folder, tracking store and
whether the cluster's nodes can reach it, storage) is checked before a cluster is started or joined, or
before any trial starts, and before anything is logged. An interrupted sweep (Ctrl+C, SIGUSR1,
``sweep.stop_after_trials``) ends its parent run KILLED and exits 3; one that lost trials to infrastructure
(unless ``sweep.allow_lost_trials``) registers nothing, ends FAILED and exits 1; ``sweep.resume=true``
restores either with its saved configuration into the same parent run.
"""

from __future__ import annotations

import logging
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from pipelines import cli, config, liveness, tracking
from pipelines.sweep.cluster import Cluster, absolute_tracking_uri, check_tracking_for_cluster, cluster_address, connect
from pipelines.sweep.evalset import evaluation_set, extract_features, open_data
from pipelines.sweep.plan import SweepPlan, sweep_plan
from pipelines.sweep.resume import Resume, reopen_parent, resume_config, write_state
from pipelines.sweep.space import SweepError, alias_overrides
from pipelines.sweep.storage import STATE_FILE, SweepFolder, check_nodes, describe_problems, storage_location
from pipelines.sweep.trial import TrialContext
from pipelines.tags import (
    BACKBONE,
    BEST_RUN_ID,
    BEST_TRIAL_ID,
    CATEGORY,
    DATASET,
    FEATURE_STORE,
    LOST_TRIALS,
    METRIC,
    NOTE,
    OBJECTIVE,
    RAY_ADDRESS,
    RAY_NODES,
    REGISTERED,
    RESUMED,
    SWEEP,
    SWEEP_NAME,
    SWEEP_PATH,
    SWEEP_STATE,
)

__all__ = ["STATE_FILE", "SweepResult", "Resume", "run_sweep", "run", "main"]

log = logging.getLogger(__name__)

_T0 = time.perf_counter()  # phase timings in the log are seconds since the start
_STARTED = time.strftime("%Y%m%d-%H%M%S")


@dataclass
class SweepResult:
    """What a sweep did: ``state`` finished | interrupted | incomplete (lost trials), its runs, trials and
    registered versions."""

    state: str
    parent_run_id: str
    path: str  # the Tune folder (a path or a URI)
    tracking_uri: str
    metric: str
    dataset: str
    category: str
    num_samples: int
    trials: int
    terminated: int
    errored: int = 0
    lost: int = 0
    registered: list[dict] = field(default_factory=list)
    best: dict[str, Any] = field(default_factory=dict)
    best_config: dict[str, Any] = field(default_factory=dict)
    notice: str = ""  # what it says about lost trials
    #: the sweep's own overrides of data and training (promote needs the same); None: unknown (a resumed sweep)
    overrides: list[str] | None = None

    @property
    def exit_code(self) -> int:
        return {"interrupted": cli.EXIT_INTERRUPTED, "incomplete": cli.EXIT_FAILED}.get(self.state, cli.EXIT_OK)

    def resume_hint(self) -> str:
        return (
            f"  python pipelines/sweep.py sweep.resume=true sweep.resume_from={self.path}\n"
            f"  (mlflow run . -e sweep --env-manager local -P resume=true -P resume_from={self.path})"
        )

    def resume_notice(self) -> str:
        return (
            f"\nsweep interrupted after {self.terminated} of {self.num_samples} trials; resume with:\n"
            f"{self.resume_hint()}"
        )

    def summary(self) -> str:
        """The closing summary (an interrupted sweep printed its resume notice on stderr already)."""
        if self.state == "interrupted":
            return ""
        head = [
            f"tracking store : {self.tracking_uri}",
            f"parent run     : {self.parent_run_id}",
            f"trials         : {self.trials} ({self.terminated} finished, {self.errored} failed, {self.lost} "
            f"lost to infrastructure); Tune folder {self.path}",
        ]
        if self.state == "incomplete":
            return "\n".join(["\n== PRADOT sweep INCOMPLETE ==", *head, self.notice])
        m = self.metric
        lines = ["\n== PRADOT sweep finished ==", *head, f"best           : {m}={self.best[m]:.4f}  {self.best_config}"]
        lines += [
            f"registered     : models:/{r['name']}/{r['version']}  (trial {r['trial_id']}, {m}={r[m]:.4f})"
            for r in self.registered
        ]
        if self.registered:
            same = (
                "   (plus the sweep's data and training overrides)"
                if self.overrides is None
                else f' -P overrides="{" ".join(self.overrides)}"'
                if self.overrides
                else ""
            )
            lines.append(
                f"next           : mlflow run . --env-manager local -e promote -P category={self.category} "
                f"-P dataset={self.dataset} -P select_by={m}{same}"
            )
        if self.notice:
            lines.append(self.notice)
        return "\n".join(lines)


# ------------------------------------------------------------------------------------- the driver
@dataclass
class _Sweep:
    """The driver's checked inputs."""

    cfg: DictConfig  # the sweep's config, paths absolute
    plan: SweepPlan
    splits: Any  # pradot.engine.Splits
    folder: SweepFolder  # the Tune folder
    uri: str  # the tracking store, absolute
    resume: Resume | None
    device: Any
    overrides: list[str] = field(default_factory=list)  # the user's, saved with the sweep (promote's hint)

    def data_params(self) -> dict[str, str]:
        """The data a bank is trained and scored on, as `main` logs it (promote checks them)."""
        flat = config.flatten(self.cfg)
        return {
            **{k: v for k, v in flat.items() if k.startswith("data.")},
            "category": str(self.cfg.category),
            "seed": str(self.cfg.seed),
            "data.resolved_root": str(self.splits.dataset.root),
        }


def _absolute_paths(cfg: DictConfig) -> DictConfig:
    """Data root and cache folder as absolute paths (trials and a resumed sweep run elsewhere)."""
    values = {"cache.dir": str(Path(str(cfg.cache.dir)).expanduser().resolve())}
    for key in ("data_root", "data.root"):
        v = OmegaConf.select(cfg, key)
        if v not in (None, "") and "://" not in str(v):
            values[key] = str(Path(str(v)).expanduser().resolve())
    return config.with_overrides(cfg, values)


def _new_folder(cfg: DictConfig, plan: SweepPlan) -> SweepFolder:
    """A new sweep's Tune folder (``sweep.storage_path`` as Tune gets it: a URI unchanged)."""
    folder = SweepFolder(
        storage_location(plan.storage_path), str(plan.name or f"sweep-{cfg.data.kind}-{cfg.category}-{_STARTED}")
    )
    try:
        exists = folder.exists()
    except OSError as e:
        raise SweepError(f"sweep.storage_path {folder.storage!r} is not reachable from this machine: {e}") from None
    if exists:
        raise SweepError(
            f"{folder} exists already: choose another sweep.name, or resume it with sweep.resume=true "
            f"sweep.resume_from={folder}"
        )
    return folder


def _checked(cfg: DictConfig, plan: SweepPlan, resume: Resume | None, overrides: Sequence[str] = ()) -> _Sweep:
    """Everything that can fail on bad input, before any cluster work or tracking."""
    from pradot.device import resolve_device

    device = resolve_device(str(cfg.device))
    cfg = _absolute_paths(cfg)
    splits = open_data(cfg, plan)
    folder = resume.folder if resume else _new_folder(cfg, plan)
    uri = absolute_tracking_uri(tracking.setup_tracking())  # $MLFLOW_TRACKING_URI, else ./mlflow.db
    if resume and resume.tracking_uri != uri:
        raise SweepError(
            f"this sweep was tracked in {resume.tracking_uri!r}; resume it with the same store "
            f"(MLFLOW_TRACKING_URI), not {uri!r}"
        )
    check_tracking_for_cluster(uri, 1, cluster_address(plan.ray))  # an existing cluster: before joining it
    return _Sweep(cfg, plan, splits, folder, uri, resume, device, list(overrides))


def _check_nodes(s: _Sweep, cluster: Cluster, store: str) -> None:
    """Before any trial starts: every node reaches the sweep folder (and ``cache.dir`` for the disk store).

    Raises:
        SweepError: naming the nodes and what they cannot reach.
    """
    cache = str(s.cfg.cache.dir) if store == "disk" and cluster.several_machines else None
    if not (cluster.several_machines or not s.folder.is_local or cache):
        return  # a private local Ray and a local folder: one filesystem
    created = not s.folder.exists()
    try:
        problems = check_nodes(s.folder, cache)
    except OSError as e:
        raise SweepError(
            f"sweep.storage_path {s.folder.storage!r}: this machine cannot write the sweep folder {s.folder}: {e}"
        ) from None
    finally:
        if created:
            s.folder.delete_if_empty()
    if problems:
        raise SweepError(
            f"{len(problems)} node(s) of the Ray cluster cannot reach what the trials need; refused before any "
            f"trial started:\n{describe_problems(problems, s.folder, cache)}\nsweep.storage_path must be storage "
            f"every node reaches at the same path (a shared mount such as NFS) or a URI such as s3://bucket/sweeps "
            f"with the nodes' credentials"
            + (
                "; for the features use sweep.feature_store=object_store (or auto), or a cache.dir on shared storage."
                if cache
                else "."
            )
        )


def _describe_parent(s: _Sweep, run: tracking.EntryRun, cluster: Cluster, store: str, resources: dict) -> None:
    """Tags, params and the search space of a new sweep's parent run (a resumed one counts resumptions)."""
    import mlflow

    if s.resume:
        previous = mlflow.get_run(run.run_id).data.tags.get(RESUMED, "0")
        mlflow.set_tags({RESUMED: str(int(previous) + 1), SWEEP_STATE: "running"})
        return
    cfg, plan = s.cfg, s.plan
    mlflow.set_tags(
        {
            SWEEP: "true",
            OBJECTIVE: plan.objective,
            METRIC: plan.metric,
            DATASET: str(cfg.data.kind),
            CATEGORY: str(cfg.category),
            BACKBONE: ",".join(plan.backbones),
            SWEEP_NAME: s.folder.name,
            SWEEP_PATH: s.folder.location,
            RAY_NODES: str(cluster.n_nodes),
            RAY_ADDRESS: cluster.address or "local",
            FEATURE_STORE: store,
        }
    )
    if plan.objective == "test":
        mlflow.set_tag(
            NOTE,
            "objective=test: hyper-parameters chosen on the TEST labels (paper reproduction only, not a fair estimate)",
        )
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
    mlflow.log_dict(
        {"features": infos, "feature_store": store}, "sweep/features_resume.json" if s.resume else "sweep/features.json"
    )
    mlflow.log_metrics({f"features_extracted{suffix}": extracted, f"features_reused{suffix}": len(infos) - extracted})
    return TrialContext(
        train_config=config.training_view(s.cfg),
        space=s.plan.space,
        evalset=evalset,
        features=features,
        metric=s.plan.metric,
        milestones=s.plan.milestones,
        tracking_uri=s.uri,
        parent_run_id=run.run_id,
        experiment_id=run.experiment_id,
        data_params=s.data_params(),
        cpu=resources["cpu"],
        gpu=resources["gpu"],
        sweep_folder=s.folder.location,
        checkpoint_every=s.plan.checkpoint_every,
    )


def _fit(s: _Sweep, run: tracking.EntryRun, ctx: TrialContext, resources: dict):
    """Build (or restore) the Tuner and run the trials; returns (ResultGrid, seconds)."""
    from ray import tune

    from pipelines.sweep import tuner
    from pipelines.sweep.trial import trial_main

    trainable = tune.with_resources(tune.with_parameters(trial_main, ctx=ctx), resources)
    if s.resume:
        t = tuner.restore_tuner(s.folder.location, trainable)
    else:
        write_state(s.folder, run.run_id, run.experiment_id, s.uri, s.cfg, s.overrides)
        callback = tuner.SweepCallback(s.uri, run.experiment_id, run.run_id, s.plan.budget)
        t = tuner.build_tuner(s.plan, trainable, s.folder.storage, s.folder.name, callback)
    t0 = time.time()
    grid = tuner.fit(t, s.plan.stop_after_trials)
    elapsed = time.time() - t0
    log.info("trials done in %.1fs (at %.1fs)", elapsed, time.perf_counter() - _T0)
    return grid, elapsed


def _trials(s: _Sweep, run: tracking.EntryRun, grid, interrupted: bool, client, saved: dict) -> list:
    """Every trial's record; their runs closed as Tune ended them; the trial table and counts logged."""
    import mlflow

    from pipelines.sweep.outcome import close_runs, table, trial_records
    from pipelines.sweep.runs import find_trial_runs

    records = trial_records(
        grid, find_trial_runs(client, run.experiment_id, run.run_id), s.plan.budget, interrupted, saved
    )
    close_runs(records, client)
    with tempfile.TemporaryDirectory() as tmp:
        table(records).to_csv(Path(tmp) / "trials.csv", index=False)
        mlflow.log_artifact(str(Path(tmp) / "trials.csv"), "sweep")
    counts = {
        "trials": len(records),
        "trials_terminated": sum(r.tune_status == "TERMINATED" for r in records),
        "trials_errored": sum(r.tune_status == "ERROR" for r in records),
        "trials_lost": sum(r.lost for r in records),
        "trials_retried": sum(r.attempts > 1 for r in records),
    }
    mlflow.log_metrics(counts)
    return records


def _outcome(s: _Sweep, run: tracking.EntryRun, grid, elapsed: float) -> SweepResult:
    """Close the trials' runs and log the table; an interrupted sweep, or one that lost trials (unless
    allowed), stops here; a finished one tags its best and registers."""
    import mlflow

    from pipelines.sweep.outcome import lost_notice, saved_statuses, statuses, unfinished
    from pipelines.sweep.register import register_top_k

    plan, client = s.plan, mlflow.MlflowClient(tracking_uri=s.uri, registry_uri=s.uri)
    saved = saved_statuses(grid)  # an interrupt makes the running trials TERMINATED in the grid, not in here
    final = statuses(grid, saved)
    terminated = sum(status == "TERMINATED" for status in final.values())
    errored = sum(status == "ERROR" for status in final.values())
    budget_hit = plan.time_budget_s is not None and elapsed >= plan.time_budget_s
    interrupted = bool(unfinished(final)) or (len(grid) < plan.num_samples and not budget_hit)
    records = _trials(s, run, grid, interrupted, client, saved)
    lost = [r for r in records if r.lost]
    result = SweepResult(
        "interrupted",
        run.run_id,
        s.folder.location,
        s.uri,
        plan.metric,
        str(s.cfg.data.kind),
        str(s.cfg.category),
        plan.num_samples,
        len(grid),
        terminated,
        errored,
        len(lost),
    )
    if interrupted:
        mlflow.set_tag(SWEEP_STATE, "interrupted")
        return result
    if lost:
        result.notice = lost_notice(lost, plan.allow_lost_trials, result.resume_hint())
        log.warning("%d trial(s) lost to infrastructure: %s", len(lost), ", ".join(r.trial_id for r in lost))
        mlflow.set_tags({LOST_TRIALS: ",".join(r.trial_id for r in lost)})
        if not plan.allow_lost_trials:
            mlflow.set_tag(SWEEP_STATE, "incomplete")
            result.state = "incomplete"
            return result
    if terminated == 0:
        raise RuntimeError(f"all {len(grid)} trials failed; see the trials' runs (tag pradot.error) and {s.folder}")
    best = grid.get_best_result(metric=plan.metric, mode=plan.mode, scope="last")
    mlflow.log_metric(f"best_{plan.metric}", float(best.metrics[plan.metric]))
    mlflow.set_tags(
        {
            BEST_TRIAL_ID: best.metrics.get("trial_id", ""),
            BEST_RUN_ID: best.metrics.get("mlflow_run_id", ""),
            SWEEP_STATE: "finished",
        }
    )
    result.registered = register_top_k(grid, plan, s.cfg, s.splits, run.run_id)
    log.info("registration done at %.1fs", time.perf_counter() - _T0)
    mlflow.log_dict({"registered": result.registered}, "sweep/registered.json")
    mlflow.set_tag(REGISTERED, ",".join(f"{r['name']}/{r['version']}" for r in result.registered))
    result.state, result.best_config = "finished", dict(best.config)
    result.best = {k: best.metrics.get(k) for k in (plan.metric, "trial_id", "mlflow_run_id")}
    return result


def _on_cluster(s: _Sweep, cluster: Cluster) -> SweepResult:
    """The checks that need the cluster, then the sweep in its parent MLflow run (ended KILLED when
    interrupted, FAILED when it lost trials)."""
    check_tracking_for_cluster(s.uri, cluster.n_nodes, cluster.address, cluster.node_addresses)
    resources = cluster.trial_resources(s.plan.resources)
    store = cluster.feature_store(s.plan.feature_store)
    if store != s.plan.feature_store:
        log.info(
            "sweep.feature_store=auto: %s (%s)",
            store,
            "an existing Ray cluster: a node may lack this machine's cache.dir"
            if store == "object_store"
            else "a private local Ray",
        )
    _check_nodes(s, cluster, store)
    if s.resume:
        reopen_parent(s.resume, s.uri)
    cfg = s.cfg
    name = f"sweep-{cfg.data.kind}-{cfg.category}{'-TEST-OBJECTIVE' if s.plan.objective == 'test' else ''}"
    # `mlflow run` answers Ctrl+C with SIGTERM: in this block it stops Tune as Ctrl+C does, and the bookkeeping
    # after it (trial labels, the run's end status) finishes
    with tracking.entry_run(
        name,
        str(cfg.tracking.experiment_name),
        entry_point="sweep",
        log_name="sweep.log",
        run_id=s.resume.parent_run_id if s.resume else None,
        sigterm=liveness.sigterm_stops_tune,
    ) as run:
        _describe_parent(s, run, cluster, store, resources)
        log.info("parent run %s ready at %.1fs", run.run_id, time.perf_counter() - _T0)
        ctx = _trial_context(s, run, store, resources)
        result = _outcome(s, run, *_fit(s, run, ctx, resources))
        run.end_status = {"interrupted": "KILLED", "incomplete": "FAILED"}.get(result.state)
        if result.state == "interrupted":
            print(result.resume_notice(), file=sys.stderr)
    return result


def run_sweep(cfg: DictConfig, resume: Resume | None = None, overrides: Sequence[str] = ()) -> SweepResult:
    """The sweep of a composed ``conf/sweep.yaml`` (``resume``: continue that interrupted sweep; ``overrides``:
    the user's, kept with the sweep for the promote command it suggests)."""
    plan = sweep_plan(cfg)
    s = _checked(cfg, plan, resume, overrides)
    log.info("configuration and data checked in %.1fs", time.perf_counter() - _T0)
    with connect(plan.ray) as cluster:
        log.info(
            "connected to Ray (%d node%s%s) at %.1fs",
            cluster.n_nodes,
            "s" if cluster.n_nodes > 1 else "",
            f", existing cluster {cluster.address}" if cluster.address else ", private",
            time.perf_counter() - _T0,
        )
        return _on_cluster(s, cluster)


#: overrides that are the sweep's own (or shown apart in the promote hint): not passed on to promote
_SWEEP_ONLY = ("sweep.", "sweep=", "category=", "data=", "workdir=")


def run(argv: Sequence[str]) -> SweepResult:
    """Compose ``conf/sweep.yaml`` with the overrides in ``argv`` (short search-space names allowed) and sweep."""
    overrides = alias_overrides(config.parse_overrides(argv))
    cfg = config.compose("sweep", overrides)
    cfg, resume = resume_config(cfg)
    result = run_sweep(cfg, resume, overrides)
    given = resume.overrides if resume is not None else overrides  # None: a sweep saved by an earlier release
    if given is not None:
        result.overrides = [o for o in given if not o.lstrip("+~").startswith(_SWEEP_ONLY)]
    return result


def main(argv: Sequence[str] | None = None) -> int:
    return cli.run_entry(run, argv)
