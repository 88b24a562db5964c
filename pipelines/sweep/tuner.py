"""Tune's side of the driver: the ``Tuner`` (built for a new sweep, restored to resume one) and the
callback that closes the MLflow runs of trials Tune stopped.

This module imports Ray Tune; the driver imports it once the input is checked.
"""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path
from typing import Callable

from ray import tune

from pipelines.sweep.plan import SweepPlan
from pipelines.sweep.trial import PARENT_TAG

__all__ = ["STOP_ENV", "SweepCallback", "build_tuner", "restore_tuner", "fit", "close_open_children"]

log = logging.getLogger(__name__)

STOP_ENV = "PRADOT_SWEEP_STOP_AFTER_TRIALS"


class SweepCallback(tune.Callback):
    """Driver side: closes the MLflow runs of trials Tune stopped (ASHA) or that failed, and interrupts
    the sweep after ``$PRADOT_SWEEP_STOP_AFTER_TRIALS`` completed trials (as Ctrl+C does: Tune saves the
    experiment state and ``Tuner.restore`` can finish it)."""

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

    def _close(self, trial, status: str, trial_status: str | None = None) -> None:
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


def close_open_children(client, experiment_id: str, parent_id: str, status: str) -> None:
    """End the trial runs still RUNNING (KILLED: the sweep was interrupted)."""
    for run in client.search_runs([experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent_id}' and "
                                                                  f"attributes.status = 'RUNNING'"):
        client.set_tag(run.info.run_id, "pradot.trial_status", "interrupted" if status == "KILLED" else "stopped_early")
        client.set_terminated(run.info.run_id, status)


def _trial_dirname(trial) -> str:
    return f"trial_{trial.trial_id}"


def build_tuner(plan: SweepPlan, trainable: Callable, path: Path, tracking_uri: str) -> tune.Tuner:
    """A new sweep: Optuna's TPE sampler over the search space, ASHA or FIFO, the callback above."""
    import optuna
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search.optuna import OptunaSearch

    searcher = OptunaSearch(sampler=optuna.samplers.TPESampler(seed=plan.seed))
    sch = plan.scheduler
    scheduler = ASHAScheduler(time_attr="training_iteration", max_t=sch.max_t, grace_period=sch.grace_period,
                              reduction_factor=sch.reduction_factor) if sch.type == "asha" else FIFOScheduler()
    return tune.Tuner(
        trainable, param_space=plan.space.param_space(),
        tune_config=tune.TuneConfig(metric=plan.metric, mode=plan.mode, search_alg=searcher, scheduler=scheduler,
                                    num_samples=plan.num_samples, max_concurrent_trials=plan.max_concurrent_trials,
                                    time_budget_s=plan.time_budget_s, reuse_actors=plan.reuse_actors,
                                    trial_dirname_creator=_trial_dirname),
        run_config=tune.RunConfig(name=path.name, storage_path=str(path.parent), verbose=1,
                                  callbacks=[SweepCallback(tracking_uri, plan.epochs)],
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=1)))


def restore_tuner(path: Path, trainable: Callable) -> tune.Tuner:
    """An interrupted sweep: finished trials are kept, unfinished and errored ones restart."""
    log.info("resuming %s", path)
    return tune.Tuner.restore(str(path), trainable=trainable, resume_unfinished=True, resume_errored=True)


def fit(tuner: tune.Tuner, stop_after_trials: int | None):
    """``tuner.fit()``; ``stop_after_trials``: interrupt it (resumably) after that many completed trials."""
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")  # short trials
    if stop_after_trials:
        os.environ[STOP_ENV] = str(stop_after_trials)
    try:
        return tuner.fit()
    finally:
        os.environ.pop(STOP_ENV, None)
