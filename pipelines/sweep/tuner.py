"""Tune's side of the driver: the ``Tuner`` (built for a new sweep, restored to resume one; trials retried
``sweep.max_failures`` times from their last checkpoint) and the callback that tags and closes the MLflow
runs of the trials Tune ends or retries.

This module imports Ray Tune; the driver imports it once the input is checked.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable
from pathlib import Path

from ray import tune

from pipelines.sweep.plan import SweepPlan
from pipelines.sweep.runs import (
    EPOCHS_TAG,
    ERROR_TAG,
    FAILURE_TAG,
    INFRASTRUCTURE,
    LOGGED_KEY,
    STATUS_TAG,
    TRIAL_ERROR,
    TrialRun,
    end_label,
    failure_tags,
    find_trial_runs,
)
from pipelines.tags import ATTEMPTS, HOSTNAME, NODE_ID, PID, RETRY_ERRORS

__all__ = ["STOP_ENV", "tune_error", "error_tags", "SweepCallback", "build_tuner", "restore_tuner", "fit"]

log = logging.getLogger(__name__)

STOP_ENV = "PRADOT_SWEEP_STOP_AFTER_TRIALS"


def tune_error(trial) -> BaseException | str | None:
    """A Tune trial's last error: the exception (``RayTaskError`` / ``RayActorError``) when Tune kept it,
    else its text. Read from the driver's copy (the storage's copy is synced later)."""
    import cloudpickle

    for path in (trial.pickled_error_file, trial.error_file):
        try:
            if path and Path(path).is_file():
                if path == trial.pickled_error_file:
                    with open(path, "rb") as f:
                        return cloudpickle.load(f)
                return Path(path).read_text().rsplit("Failure # ", 1)[-1]
        except Exception as e:  # noqa: BLE001 - an unreadable pickle still leaves the text
            log.debug("could not read %s: %s", path, e)
    try:
        return trial.get_pickled_error() or trial.get_error()
    except Exception:  # noqa: BLE001
        return None


def error_tags(error: BaseException | str | None) -> dict[str, str]:
    """:func:`pipelines.sweep.runs.failure_tags` of an exception or, when Tune kept only the text, of that
    text (Ray's system errors named in it are infrastructure failures)."""
    if isinstance(error, BaseException):
        return failure_tags(error)
    text = " ".join(str(error or "unknown error").split())
    infra = any(
        n in text
        for n in (
            "RayActorError",
            "ActorDiedError",
            "NodeDiedError",
            "WorkerCrashedError",
            "ActorUnavailableError",
            "OutOfMemoryError",
            "NodeSetupError",
        )
    )
    return {STATUS_TAG: "failed", FAILURE_TAG: INFRASTRUCTURE if infra else TRIAL_ERROR, ERROR_TAG: text[-4000:]}


class SweepCallback(tune.Callback):
    """Driver side: tags and closes the MLflow run of every trial Tune ends (found by its trial-id tag, so
    also the runs of trials whose worker or node died before they reported), records the errors of the
    attempts Tune retries, and interrupts the sweep after ``$PRADOT_SWEEP_STOP_AFTER_TRIALS`` completed
    trials (as Ctrl+C does: Tune saves the experiment state and ``Tuner.restore`` can finish it)."""

    def __init__(self, tracking_uri: str, experiment_id: str, parent_run_id: str, budget: int):
        self.tracking_uri, self.experiment_id, self.parent_run_id = tracking_uri, experiment_id, parent_run_id
        self.budget = int(budget)
        self._client = None
        self._completed = 0
        self._signalled = False
        self._logged: dict[str, TrialRun] = {}  # the trial runs this driver logged epochs to, by run id

    def __getstate__(self):  # pickled into Tune's tuner.pkl: only the stable part
        return {
            "tracking_uri": self.tracking_uri,
            "experiment_id": self.experiment_id,
            "parent_run_id": self.parent_run_id,
            "budget": self.budget,
        }

    def __setstate__(self, state):  # a sweep saved by an earlier release has no run ids: its runs stay untagged
        self.__init__(
            state["tracking_uri"],
            state.get("experiment_id", ""),
            state.get("parent_run_id", ""),
            state.get("budget", state.get("epochs", 0)),
        )

    @property
    def client(self):
        if self._client is None:
            from mlflow import MlflowClient

            self._client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)
        return self._client

    def _run(self, trial):
        return find_trial_runs(self.client, self.experiment_id, self.parent_run_id, trial.trial_id).get(trial.trial_id)

    def _close(self, trial, status: str, tags: dict[str, str]) -> None:
        try:
            run = self._run(trial)
            if run is None:  # it died before it created its run: trials.csv still lists it
                log.warning("trial %s ended %s without an MLflow run: %s", trial.trial_id, status, tags)
                return
            TrialRun(self.client, run.info.run_id).end(status, tags)
        except Exception as e:  # noqa: BLE001 - bookkeeping must not stop the sweep
            log.warning("could not close the MLflow run of trial %s: %s", trial.trial_id, e)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        """Log an epoch's metrics to the trial's MLflow run when Tune takes its result: the run holds exactly
        the epochs Tune took (with their checkpoints), each once, whenever a kill or stop lands. A restarted
        trial reports again the epochs after its checkpoint: those already logged are not logged twice."""
        run_id, names = result.get("mlflow_run_id"), str(result.get(LOGGED_KEY) or "")
        if not run_id or not names:
            return
        try:
            run = self._logged.get(run_id)
            if run is None:
                history = self.client.get_metric_history(run_id, "epoch")
                run = self._logged[run_id] = TrialRun(
                    self.client, run_id, max((int(m.step) for m in history), default=0)
                )
            metrics = {k: float(result[k]) for k in names.split(",") if isinstance(result.get(k), (int, float))}
            run.log_epoch(metrics, int(result["epoch"]))
        except Exception as e:  # noqa: BLE001 - bookkeeping must not stop the sweep
            log.warning("could not log epoch %s of trial %s: %s", result.get("epoch"), trial.trial_id, e)

    def on_trial_complete(self, iteration, trials, trial, **info):
        epochs = int((trial.last_result or {}).get("epoch", 0))
        self._close(trial, "FINISHED", {STATUS_TAG: end_label(epochs, self.budget), EPOCHS_TAG: str(epochs)})
        self._completed += 1
        stop_after = os.environ.get(STOP_ENV)
        if stop_after and not self._signalled and self._completed >= int(stop_after):
            self._signalled = True
            log.warning(
                "sweep.stop_after_trials=%s reached: interrupting the sweep (resume with sweep.resume=true)", stop_after
            )
            os.kill(os.getpid(), signal.SIGUSR1)  # Tune's own interrupt handler (the Ctrl+C path)

    def on_trial_error(self, iteration, trials, trial, **info):
        tags = error_tags(tune_error(trial))
        log.warning(
            "trial %s failed after %d attempt(s) (%s): %s",
            trial.trial_id,
            trial.num_failures,
            tags[FAILURE_TAG],
            tags[ERROR_TAG][:300],
        )
        self._close(trial, "FAILED", {**tags, EPOCHS_TAG: str(int((trial.last_result or {}).get("epoch", 0)))})

    def on_trial_recover(self, iteration, trials, trial, **info):
        """A failed attempt that Tune retries (``sweep.max_failures``) from the trial's last checkpoint."""
        tags = error_tags(tune_error(trial))
        log.warning(
            "trial %s failed (%s), retrying from its last checkpoint (%d failure(s) so far): %s",
            trial.trial_id,
            tags[FAILURE_TAG],
            trial.num_failures,
            tags[ERROR_TAG][:300],
        )
        try:
            run = self._run(trial)
            if run is None:
                return
            t = run.data.tags
            where = f"{t.get(HOSTNAME)} ({t.get(NODE_ID, '')[:12]}) pid {t.get(PID)}"
            line = f"attempt {t.get(ATTEMPTS, '1')} on {where}: {tags[FAILURE_TAG]}: {tags[ERROR_TAG][:500]}"
            earlier = t.get(RETRY_ERRORS, "")
            TrialRun(self.client, run.info.run_id).tags(
                {STATUS_TAG: "retrying", RETRY_ERRORS: f"{earlier}\n{line}" if earlier else line}
            )
        except Exception as e:  # noqa: BLE001
            log.warning("could not tag the MLflow run of trial %s: %s", trial.trial_id, e)


def _trial_dirname(trial) -> str:
    return f"trial_{trial.trial_id}"


def build_tuner(plan: SweepPlan, trainable: Callable, storage: str, name: str, callback: SweepCallback) -> tune.Tuner:
    """A new sweep in ``<storage>/<name>`` (``storage``: a path or a URI, given to Tune as it is): Optuna's
    TPE sampler over the search space, ASHA (on the reported epoch) or FIFO, trial retries, the callback."""
    import optuna
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search.optuna import OptunaSearch

    searcher = OptunaSearch(sampler=optuna.samplers.TPESampler(seed=plan.seed))
    sch = plan.scheduler
    # time_attr "epoch": a trial restarted from its checkpoint reports its real epoch, whatever Tune counted
    scheduler = (
        ASHAScheduler(
            time_attr="epoch", max_t=sch.max_t, grace_period=sch.grace_period, reduction_factor=sch.reduction_factor
        )
        if sch.type == "asha"
        else FIFOScheduler()
    )
    return tune.Tuner(
        trainable,
        param_space=plan.space.param_space(),
        tune_config=tune.TuneConfig(
            metric=plan.metric,
            mode=plan.mode,
            search_alg=searcher,
            scheduler=scheduler,
            num_samples=plan.num_samples,
            max_concurrent_trials=plan.max_concurrent_trials,
            time_budget_s=plan.time_budget_s,
            reuse_actors=plan.reuse_actors,
            trial_dirname_creator=_trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=storage,
            verbose=1,
            callbacks=[callback],
            failure_config=tune.FailureConfig(max_failures=plan.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        ),
    )


def restore_tuner(location: str, trainable: Callable) -> tune.Tuner:
    """An interrupted sweep (``location``: its Tune folder, a path or a URI): finished trials are kept,
    unfinished and errored ones continue from their last checkpoint."""
    log.info("resuming %s", location)
    return tune.Tuner.restore(location, trainable=trainable, resume_unfinished=True, resume_errored=True)


def fit(tuner: tune.Tuner, stop_after_trials: int | None):
    """``tuner.fit()``; ``stop_after_trials``: interrupt it (resumably) after that many completed trials."""
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")  # short trials
    if stop_after_trials:
        os.environ[STOP_ENV] = str(stop_after_trials)
    try:
        return tuner.fit()
    finally:
        os.environ.pop(STOP_ENV, None)
