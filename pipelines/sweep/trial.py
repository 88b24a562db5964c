"""One Tune trial (a function trainable, run on a Ray worker): the training config plus the sampled values
-> the trial's ``PRADOTConfig`` -> a ``PrototypeModel`` trained on the cached features, scored on the
evaluation features after every epoch, reported to Tune (with a checkpoint, by default) and logged to the trial's nested
MLflow run (:mod:`pipelines.sweep.runs`). A trial that Tune restarts (a retry after its worker or node
died, or a resumed sweep) continues from its last checkpoint with the rest of the same seeded schedule, so
it ends with the banks an uninterrupted trial would have.

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
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from pipelines import config
from pipelines.sweep.evalset import EvalSet, FeatureStore
from pipelines.sweep.runs import EPOCHS_TAG, LOGGED_KEY, PARENT_TAG, STATUS_TAG, TrialRun, end_label, failure_tags
from pipelines.sweep.space import SearchSpace
from pipelines.sweep.storage import NodeSetupError, check_from_this_node
from pipelines.tags import (
    BACKBONE,
    CATEGORY,
    DATASET,
    DEVICE,
    ENTRY_POINT,
    FEATURES,
    NOTE,
    OBJECTIVE,
    RESTORED_FROM_EPOCH,
    SWEEP_RUN_ID,
    TRIAL_NAME,
)
from pradot.model import PRADOTConfig

__all__ = [
    "PARENT_TAG",
    "TrialContext",
    "TrialSetup",
    "trial_setup",
    "open_run",
    "trial_main",
    "CHECKPOINT_MODEL",
    "CHECKPOINT_SCORES",
    "CHECKPOINT_META",
]

log = logging.getLogger(__name__)

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
    milestones: tuple[int, ...]  # epochs at which ASHA may stop a trial (its rungs and max_t, the last)
    tracking_uri: str
    parent_run_id: str
    experiment_id: str
    data_params: Mapping[str, str]  # the data a bank is trained and scored on, as `main` logs it
    cpu: float = 1.0
    gpu: float = 0.0
    sweep_folder: str = ""  # the Tune folder (a path or URI); a trial checks it reaches it before it trains
    checkpoint_every: int = 1  # epochs between checkpoints (the milestones always get one)

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
        return {
            "alpha": m.alpha,
            "n": m.n,
            "eta": m.eta,
            "epsilon": m.epsilon,
            "batch_ratio": self.batch_ratio,
            "sinkhorn_iters": m.sinkhorn_iters,
            "stages": list(m.stages),
            "backbone": m.backbone,
            "batch_size": m.batch_size,
        }

    def params(self) -> dict[str, str]:
        """The trial run's params under the training config's names (``model.alpha``, ``backbone.stages``)."""
        flat = config.flatten(self.config)
        return {
            **{k: v for k, v in flat.items() if k.startswith(("model.", "backbone."))},
            "model.batch_size": str(self.model.batch_size),
        }


def trial_setup(ctx: TrialContext, sampled: Mapping[str, Any]) -> TrialSetup:
    """Training config + the search space's constants + Tune's ``sampled`` values (``{path: value}``)."""
    cfg = config.with_overrides(ctx.train_config, ctx.space.trial_overrides(sampled))
    return TrialSetup(cfg, config.model_config(cfg))


# ------------------------------------------------------------------------------------- tracking
def open_run(ctx: TrialContext, trial_id: str, trial_name: str, setup: TrialSetup) -> TrialRun:
    """The trial's run: created on its first attempt, reopened by a retry or a resumed sweep."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=ctx.tracking_uri, registry_uri=ctx.tracking_uri)
    tags = {
        SWEEP_RUN_ID: ctx.parent_run_id,
        TRIAL_NAME: trial_name,
        OBJECTIVE: ctx.objective,
        ENTRY_POINT: "sweep-trial",
        FEATURES: ",".join(ctx.features.cache_keys),
        DATASET: str(ctx.train_config.data.kind),
        CATEGORY: str(ctx.train_config.category),
        BACKBONE: setup.model.backbone,
    }
    if ctx.objective == "test":
        tags[NOTE] = "objective=test: hyper-parameters chosen on the test labels (paper reproduction only)"
    params = {
        **setup.params(),
        "trial_id": trial_id,
        "sweep.objective": ctx.objective,
        "sweep.metric": ctx.metric,
        **ctx.data_params,
    }
    return TrialRun.open(client, ctx.experiment_id, ctx.parent_run_id, trial_id, tags, params)


# ------------------------------------------------------------------------------------- training
def _budget(ctx: TrialContext, setup: TrialSetup) -> int:
    """The epochs a trial trains unless ASHA stops it: ASHA's max_t (the last milestone) or model.epochs."""
    return min(max(ctx.milestones), int(setup.model.epochs))


class _Done(Exception):
    """Training ended at ASHA's max_t (< model.epochs)."""


def _training_metrics(stats) -> dict[str, float]:
    out = {
        "ot_loss": float(np.mean(list(stats.ot_loss.values()))),
        "prototype_change": float(np.mean(list(stats.change.values()))),
        "epoch_seconds": float(stats.seconds),
        "epoch": int(stats.epoch),
    }
    for s in stats.ot_loss:
        out[f"ot_loss_stage{s}"] = float(stats.ot_loss[s])
        out[f"prototype_change_stage{s}"] = float(stats.change[s])
    return out


@dataclass
class _Trial:
    """A running trial: what the per-epoch callback needs; ``epoch``: the last epoch it reported."""

    ctx: TrialContext
    setup: TrialSetup
    run: TrialRun
    trial_id: str
    model: Any  # pradot.model.PrototypeModel
    eval_features: dict
    epoch: int = 0

    @property
    def budget(self) -> int:
        return _budget(self.ctx, self.setup)

    def scores(self, features) -> np.ndarray:
        return self.model.maps_from_features(features)[1].cpu().numpy()

    def evaluate(self) -> tuple[np.ndarray, dict[str, float]]:
        """The evaluation set's image scores and the objective's metrics (with its maps when the objective
        includes the localisation)."""
        maps, scores = self.model.maps_from_features(self.eval_features)
        scores = scores.cpu().numpy()
        ev = self.ctx.evalset
        return scores, ev.evaluate(scores, maps.cpu().numpy() if ev.localisation else None)

    def calibration_scores(self, eval_scores: np.ndarray) -> np.ndarray:
        ev = self.ctx.evalset
        if ev.calibration_split == ev.split:
            return ev.normal_scores(eval_scores)
        m = self.setup.model
        return self.scores(_load(self.ctx, m.backbone, ev.calibration_split, m.stages))

    def write_checkpoint(self, folder: Path, epoch: int, eval_scores: np.ndarray, metrics: dict) -> None:
        from pradot.checkpoint import save_state

        save_state(self.model.state(), folder / CHECKPOINT_MODEL)
        np.save(folder / CHECKPOINT_SCORES, self.calibration_scores(eval_scores))
        (folder / CHECKPOINT_META).write_text(
            json.dumps(
                {
                    "trial_id": self.trial_id,
                    "mlflow_run_id": self.run.run_id,
                    "epoch": int(epoch),
                    "hparams": self.setup.hparams(),
                    "calibration_source": self.ctx.evalset.calibration_source,
                    "metrics": metrics,
                },
                indent=1,
            )
        )

    def on_epoch(self, stats) -> None:
        """Score, checkpoint (every ``checkpoint_every`` epochs and at the milestones: a retried or resumed
        trial continues from its last one) and report the metrics with the checkpoint to Tune, as one step:
        the driver logs an epoch to MLflow when Tune takes its result (:class:`pipelines.sweep.tuner.
        SweepCallback`), so a kill or stop that lands between the report and anything after it cannot make
        the MLflow run disagree with what Tune resumes from (an epoch Tune never took is not logged; one it
        took is logged once, also when a restarted attempt reports it again)."""
        from ray import tune

        t0 = time.perf_counter()
        scores, objective = self.evaluate()
        metrics = {**objective, **_training_metrics(stats), "eval_seconds": time.perf_counter() - t0}
        folder = None
        if stats.epoch % max(1, int(self.ctx.checkpoint_every)) == 0 or stats.epoch in self.ctx.milestones:
            folder = Path(tempfile.mkdtemp(prefix="pradot-ckpt-"))
        try:
            if folder is not None:
                self.write_checkpoint(folder, stats.epoch, scores, metrics)
            tune.report(
                {**metrics, "mlflow_run_id": self.run.run_id, LOGGED_KEY: ",".join(metrics)},
                checkpoint=tune.Checkpoint.from_directory(str(folder)) if folder is not None else None,
            )
        except SystemExit:  # Tune stopped the trial: it took this epoch's result only if it logged it
            raise
        finally:
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)
        self._reported(stats.epoch, metrics)
        if stats.epoch >= self.budget and self.budget < self.setup.model.epochs:
            raise _Done()  # ASHA's max_t: the scheduler stops the trial here anyway

    def _reported(self, epoch: int, metrics: dict) -> None:
        self.epoch = self.run.reported_upto = int(epoch)


def _load(ctx: TrialContext, backbone: str, split: str, stages) -> dict:
    """A split's cached features; a node without the driver's ``cache.dir`` is an infrastructure failure."""
    try:
        return ctx.features.load(backbone, split, stages)
    except FileNotFoundError as e:
        raise NodeSetupError(str(e)) from e


def _restored(ctx: TrialContext, run: TrialRun, device) -> tuple[Any, int]:
    """The trial's last checkpoint (a retry, or a resumed sweep): its banks and epoch; else ``(None, 0)``."""
    from ray import tune

    from pradot.checkpoint import load_state
    from pradot.model import PrototypeModel

    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return None, 0
    with checkpoint.as_directory() as folder:
        meta = json.loads((Path(folder) / CHECKPOINT_META).read_text())
        model = PrototypeModel.from_state(load_state(Path(folder) / CHECKPOINT_MODEL), device=device)
    epoch = int(meta["epoch"])
    run.tags({RESTORED_FROM_EPOCH: str(epoch)})
    run.reported_upto = epoch
    run.log_epoch(meta["metrics"], epoch)  # Tune took it with this checkpoint; logged here unless the driver did
    log.info("trial %s continues from its checkpoint of epoch %d", meta["trial_id"], epoch)
    return model, epoch


def _fit(trial_id: str, ctx: TrialContext, setup: TrialSetup, run: TrialRun) -> _Trial:
    import torch

    from pradot.model import PrototypeModel

    device = torch.device("cuda" if ctx.gpu > 0 and torch.cuda.is_available() else "cpu")
    m = setup.model
    train = _load(ctx, m.backbone, "train", m.stages)
    model, start = _restored(ctx, run, device)
    model = model if model is not None else PrototypeModel.for_features(m, train, device=device)
    run.tags({DEVICE: str(device)})
    trial = _Trial(ctx, setup, run, trial_id, model, _load(ctx, m.backbone, ctx.evalset.split, m.stages), start)
    if start >= trial.budget:
        return trial  # it had trained its budget when its worker stopped
    try:
        model.fit_features(train, callback=trial.on_epoch, progress=False, start_epoch=start)
    except _Done:
        pass
    return trial


def trial_main(sampled: dict, ctx: TrialContext) -> None:
    """The Tune function trainable (its name makes Tune's trial names, ``trial_main_<id>``): train one bank on
    the cached features (from its last checkpoint when Tune restarts it), report the objective every epoch."""
    import torch
    from ray import tune

    warnings.filterwarnings("ignore", message="The given NumPy array is not writable")  # read-only cached features
    logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)  # a line per checkpoint
    torch.set_num_threads(max(1, int(ctx.cpu)))
    tctx = tune.get_context()
    trial_id = tctx.get_trial_id()
    setup = trial_setup(ctx, sampled)
    run = open_run(ctx, trial_id, tctx.get_trial_name(), setup)
    try:
        if ctx.sweep_folder:
            check_from_this_node(ctx.sweep_folder, ctx.parent_run_id)  # a node that joined after the driver's check
        trial = _fit(trial_id, ctx, setup, run)
        run.end(
            "FINISHED",
            {STATUS_TAG: end_label(trial.epoch, trial.budget), EPOCHS_TAG: str(trial.epoch)},
            unless_ended=True,
        )
    except SystemExit:  # Tune stopped the trial in tune.report (ASHA, or the sweep was interrupted)
        run.end(
            "FINISHED",
            {STATUS_TAG: end_label(run.reported_upto, _budget(ctx, setup)), EPOCHS_TAG: str(run.reported_upto)},
            unless_ended=True,
        )
        raise
    except BaseException as e:
        run.end("FAILED", {**failure_tags(e), EPOCHS_TAG: str(run.reported_upto)}, unless_ended=True)
        raise
