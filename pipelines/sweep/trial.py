"""One Tune trial (a function trainable, run on a Ray worker): the training config plus the sampled values
-> the trial's ``PRADOTConfig`` -> a ``PrototypeModel`` trained on the cached features, scored on the
evaluation features after every epoch, reported to Tune and logged to the trial's nested MLflow run.

Workers import this module as ``pipelines.sweep.trial``; the driver hands every trial the same
:class:`TrialContext` (``tune.with_parameters``).
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
from omegaconf import DictConfig

from pipelines import config
from pipelines.sweep.evalset import EvalSet, FeatureStore
from pipelines.sweep.space import SearchSpace
from pradot.model import PRADOTConfig

__all__ = ["PARENT_TAG", "TrialContext", "TrialSetup", "trial_setup", "TrialRun", "trial_main",
           "CHECKPOINT_MODEL", "CHECKPOINT_SCORES", "CHECKPOINT_META"]

log = logging.getLogger(__name__)

PARENT_TAG = "mlflow.parentRunId"
#: the files of a trial's checkpoint: its banks (PrototypeModel.state), calibration scores, metadata
CHECKPOINT_MODEL, CHECKPOINT_SCORES, CHECKPOINT_META = "model.pt", "calibration_scores.npy", "trial.json"


@dataclass(frozen=True)
class TrialContext:
    """What every trial gets from the driver."""

    train_config: DictConfig  # the training config (no sweep group; paths absolute)
    space: SearchSpace
    evalset: EvalSet
    features: FeatureStore
    metric: str
    milestones: tuple[int, ...]  # epochs with a checkpoint (ASHA's rungs and the last epoch)
    tracking_uri: str
    parent_run_id: str
    experiment_id: str
    data_params: Mapping[str, str]  # the data a bank is trained and scored on, as `main` logs it
    cpu: float = 1.0
    gpu: float = 0.0

    @property
    def objective(self) -> str:
        return self.evalset.objective


@dataclass(frozen=True)
class TrialSetup:
    """The trial's training config (with the sampled values) and the model config built from it."""

    config: DictConfig
    model: PRADOTConfig

    @property
    def batch_ratio(self) -> Any:
        return self.config.model.batch_ratio

    def hparams(self) -> dict[str, Any]:
        """The searchable hyper-parameters by their short names (checkpoint metadata, the ``config`` tag)."""
        m = self.model
        return {"alpha": m.alpha, "n": m.n, "eta": m.eta, "epsilon": m.epsilon, "batch_ratio": self.batch_ratio,
                "sinkhorn_iters": m.sinkhorn_iters, "stages": list(m.stages), "backbone": m.backbone,
                "batch_size": m.batch_size}

    def params(self) -> dict[str, str]:
        """The trial run's params under the training config's names (``model.alpha``, ``backbone.stages``)."""
        flat = config.flatten(self.config)
        return {**{k: v for k, v in flat.items() if k.startswith(("model.", "backbone."))},
                "model.batch_size": str(self.model.batch_size)}


def trial_setup(ctx: TrialContext, sampled: Mapping[str, Any]) -> TrialSetup:
    """Training config + the search space's constants + Tune's ``sampled`` values (``{path: value}``)."""
    cfg = config.with_overrides(ctx.train_config, ctx.space.trial_overrides(sampled))
    return TrialSetup(cfg, config.model_config(cfg))


# ------------------------------------------------------------------------------------- tracking
def _retry(fn: Callable, *args, attempts: int = 5, **kwargs):
    """MLflow calls from trials: retried (SQLite 'database is locked', a busy server)."""
    for i in range(attempts):
        try:
            return fn(*args, **kwargs)
        except Exception:  # noqa: BLE001
            if i == attempts - 1:
                raise
            time.sleep(0.5 * (2 ** i))


class TrialRun:
    """The trial's nested MLflow run, written through a client (a worker has no active run)."""

    def __init__(self, client, run_id: str):
        self.client, self.run_id = client, run_id

    @classmethod
    def open(cls, ctx: TrialContext, trial_id: str, trial_name: str, setup: TrialSetup) -> "TrialRun":
        """Create the run, or reopen it when a resumed sweep restarts the trial."""
        from mlflow import MlflowClient
        from mlflow.entities import Param

        client = MlflowClient(tracking_uri=ctx.tracking_uri, registry_uri=ctx.tracking_uri)
        parent = ctx.parent_run_id
        found = _retry(client.search_runs, [ctx.experiment_id], max_results=1,
                       filter_string=f"tags.`{PARENT_TAG}` = '{parent}' and tags.`pradot.trial_id` = '{trial_id}'")
        if found:
            run = cls(client, found[0].info.run_id)
            attempts = int(found[0].data.tags.get("pradot.attempts", "1")) + 1
            _retry(client.update_run, run.run_id, status="RUNNING")
            run.tag("pradot.attempts", str(attempts))
            return run
        tags = {PARENT_TAG: parent, "pradot.sweep_run_id": parent, "pradot.trial_id": trial_id,
                "pradot.trial_name": trial_name, "pradot.objective": ctx.objective, "pradot.entry_point": "sweep-trial",
                "pradot.attempts": "1", "pradot.features": ",".join(ctx.features.cache_keys),
                "pradot.dataset": str(ctx.train_config.data.kind), "pradot.category": str(ctx.train_config.category),
                "pradot.backbone": setup.model.backbone}
        if ctx.objective == "test":
            tags["pradot.note"] = "objective=test: hyper-parameters chosen on the test labels (paper reproduction only)"
        run = cls(client, _retry(client.create_run, ctx.experiment_id, run_name=f"trial-{trial_id}", tags=tags)
                  .info.run_id)
        params = {**setup.params(), "trial_id": trial_id, "sweep.objective": ctx.objective,
                  "sweep.metric": ctx.metric, **ctx.data_params}
        _retry(client.log_batch, run.run_id, params=[Param(k, str(v)) for k, v in params.items()])
        return run

    def tag(self, key: str, value: str) -> None:
        _retry(self.client.set_tag, self.run_id, key, value)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        _retry(self.client.log_batch, self.run_id,
               metrics=[Metric(k, float(v), now, int(step)) for k, v in metrics.items()])

    def close(self, status: str) -> None:
        _retry(self.client.set_terminated, self.run_id, status)


# ------------------------------------------------------------------------------------- training
class _Done(Exception):
    """Training ended at ASHA's max_t (< model.epochs)."""


def _training_metrics(stats) -> dict[str, float]:
    out = {"ot_loss": float(np.mean(list(stats.ot_loss.values()))),
           "prototype_change": float(np.mean(list(stats.change.values()))),
           "epoch_seconds": float(stats.seconds), "epoch": int(stats.epoch)}
    for s in stats.ot_loss:
        out[f"ot_loss_stage{s}"] = float(stats.ot_loss[s])
        out[f"prototype_change_stage{s}"] = float(stats.change[s])
    return out


@dataclass
class _Trial:
    """A running trial: what the per-epoch callback needs."""

    ctx: TrialContext
    setup: TrialSetup
    run: TrialRun
    trial_id: str
    model: Any  # pradot.model.PrototypeModel
    eval_features: dict

    def scores(self, features) -> np.ndarray:
        return self.model.maps_from_features(features)[1].cpu().numpy()

    def calibration_scores(self, eval_scores: np.ndarray) -> np.ndarray:
        ev = self.ctx.evalset
        if ev.calibration_split == ev.split:
            return ev.normal_scores(eval_scores)
        m = self.setup.model
        return self.scores(self.ctx.features.load(m.backbone, ev.calibration_split, m.stages))

    def write_checkpoint(self, folder: Path, epoch: int, eval_scores: np.ndarray, metrics: dict) -> None:
        from pradot.checkpoint import save_state

        save_state(self.model.state(), folder / CHECKPOINT_MODEL)
        np.save(folder / CHECKPOINT_SCORES, self.calibration_scores(eval_scores))
        (folder / CHECKPOINT_META).write_text(json.dumps(
            {"trial_id": self.trial_id, "mlflow_run_id": self.run.run_id, "epoch": int(epoch),
             "hparams": self.setup.hparams(), "calibration_source": self.ctx.evalset.calibration_source,
             "metrics": metrics}, indent=1))

    def on_epoch(self, stats) -> None:
        """Score, log, checkpoint at a milestone, report to Tune (which may stop the trial here)."""
        from ray import tune

        t0 = time.perf_counter()
        scores = self.scores(self.eval_features)
        metrics = {**self.ctx.evalset.evaluate(scores), **_training_metrics(stats),
                   "eval_seconds": time.perf_counter() - t0}
        self.run.log_metrics(metrics, stats.epoch)
        folder = checkpoint = None
        if stats.epoch in self.ctx.milestones:
            folder = Path(tempfile.mkdtemp(prefix="pradot-ckpt-"))
            self.write_checkpoint(folder, stats.epoch, scores, metrics)
            checkpoint = tune.Checkpoint.from_directory(str(folder))
        try:
            tune.report({**metrics, "mlflow_run_id": self.run.run_id}, checkpoint=checkpoint)
        finally:
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)
        last = max(self.ctx.milestones)
        if stats.epoch >= last and last < self.setup.model.epochs:
            raise _Done()  # ASHA's max_t: the scheduler stops the trial here anyway


def _fit(ctx: TrialContext, setup: TrialSetup, run: TrialRun, trial_id: str) -> None:
    import torch

    from pradot.model import PrototypeModel

    device = torch.device("cuda" if ctx.gpu > 0 and torch.cuda.is_available() else "cpu")
    m = setup.model
    train = ctx.features.load(m.backbone, "train", m.stages)
    model = PrototypeModel.for_features(m, train, device=device)
    run.tag("pradot.device", str(device))
    trial = _Trial(ctx, setup, run, trial_id, model, ctx.features.load(m.backbone, ctx.evalset.split, m.stages))
    try:
        model.fit_features(train, callback=trial.on_epoch, progress=False)
    except _Done:
        pass


def trial_main(sampled: dict, ctx: TrialContext) -> None:
    """The Tune function trainable (its name makes Tune's trial names, ``trial_main_<id>``): train one bank on
    the cached features, report the objective every epoch."""
    import torch
    from ray import tune

    warnings.filterwarnings("ignore", message="The given NumPy array is not writable")  # read-only cached features
    torch.set_num_threads(max(1, int(ctx.cpu)))
    tctx = tune.get_context()
    trial_id = tctx.get_trial_id()
    setup = trial_setup(ctx, sampled)
    run = TrialRun.open(ctx, trial_id, tctx.get_trial_name(), setup)
    status = "FAILED"
    try:
        _fit(ctx, setup, run, trial_id)
        status = "FINISHED"
        run.tag("pradot.trial_status", "completed")
    except SystemExit:  # Tune stopped the trial in tune.report (ASHA early stopping)
        status = "FINISHED"
        run.tag("pradot.trial_status", "stopped_early")
        raise
    except BaseException as e:
        run.tag("pradot.error", f"{type(e).__name__}: {e}"[:5000])
        raise
    finally:
        run.close(status)
