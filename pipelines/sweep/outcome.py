"""After ``Tuner.fit``: what became of every trial (also the failed ones and those that never reported),
each trial's MLflow run closed as Tune ended it, the trial table, and the trials lost to infrastructure.

```python
saved = saved_statuses(grid)               # the statuses Tune saved (what a resume continues)
records = trial_records(grid, runs, plan.budget, interrupted=False, saved=saved)   # one per Tune trial
close_runs(records, client)                # FINISHED / FAILED / KILLED with the tags of pipelines.sweep.runs
table(records)                             # sweep/trials.csv
lost = [r for r in records if r.lost]      # ERROR after their retries, infrastructure failures
```
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pipelines.sweep.runs import EPOCHS_TAG, ERROR_TAG, FAILURE_TAG, INFRASTRUCTURE, STATUS_TAG, TrialRun, end_label
from pipelines.sweep.tuner import error_tags, tune_error
from pipelines.tags import HOSTNAME, NODE_ID, NODE_IP, PID

__all__ = [
    "TrialRecord",
    "tune_trials",
    "saved_statuses",
    "unfinished",
    "trial_status",
    "statuses",
    "trial_records",
    "close_runs",
    "table",
    "lost_notice",
]

log = logging.getLogger(__name__)

_WHERE = (NODE_ID, NODE_IP, HOSTNAME, PID)


@dataclass
class TrialRecord:
    """One Tune trial as the sweep reports it."""

    trial_id: str
    tune_status: str  # TERMINATED | ERROR | PENDING | PAUSED | RUNNING
    label: str  # completed | stopped_early | failed | interrupted
    epochs: int
    attempts: int
    config: dict
    metrics: dict  # its last reported result
    run: Any = None  # its MLflow run (found by its trial-id tag), None when it never created one
    failure: str = ""
    error: str = ""
    where: dict = field(default_factory=dict)

    @property
    def lost(self) -> bool:
        """Failed (after its retries) for a reason outside the trial: its worker or node died, storage..."""
        return self.tune_status == "ERROR" and self.failure == INFRASTRUCTURE

    @property
    def run_status(self) -> str:
        """The MLflow status its run ends with."""
        return {"TERMINATED": "FINISHED", "ERROR": "FAILED"}.get(self.tune_status, "KILLED")

    def tags(self) -> dict[str, str]:
        tags = {STATUS_TAG: self.label, EPOCHS_TAG: str(self.epochs)}
        if self.tune_status == "ERROR":
            tags.update({FAILURE_TAG: self.failure, ERROR_TAG: self.error})
        return tags


def tune_trials(grid) -> list:
    """Tune's ``Trial`` objects behind a ``ResultGrid`` (its ``ExperimentAnalysis.trials``): every trial, with
    its status and failure count, including those that never reported."""
    return list(grid._experiment_analysis.trials)


def saved_statuses(grid) -> dict[str, str]:
    """Each trial's status as Tune saved it in the experiment state (``ray.tune.ExperimentAnalysis`` of the
    grid's folder), which is what ``Tuner.restore`` resumes. After an interrupt (Ctrl+C, SIGUSR1) Tune stops
    the running trials and the in-memory grid calls them TERMINATED, while the state saved first has them
    RUNNING or PENDING: unfinished."""
    from ray.tune import ExperimentAnalysis

    quiet = logging.getLogger("ray.tune.analysis.experiment_analysis")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # "Failed to fetch metrics" for trials that never reported
    try:
        analysis = ExperimentAnalysis(grid.experiment_path, storage_filesystem=grid.filesystem)
    finally:
        quiet.setLevel(level)
    return {t.trial_id: t.status for t in analysis.trials}


def unfinished(statuses: Mapping[str, str]) -> list[str]:
    """The trials a resume continues: neither TERMINATED nor ERROR."""
    return [tid for tid, status in statuses.items() if status not in ("TERMINATED", "ERROR")]


def trial_status(in_memory: str, saved: str | None) -> str:
    """A trial's status after the sweep: the grid's, except that a trial the grid calls TERMINATED but Tune saved
    as RUNNING / PENDING was stopped by the interrupt (unfinished). An ERROR is final either way."""
    if in_memory == "TERMINATED" and saved not in (None, "TERMINATED", "ERROR"):
        return saved
    return in_memory


def statuses(grid, saved: Mapping[str, str]) -> dict[str, str]:
    """``{trial_id: status}`` of every trial (:func:`trial_status`)."""
    return {t.trial_id: trial_status(t.status, saved.get(t.trial_id)) for t in tune_trials(grid)}


def trial_records(
    grid, runs: Mapping[str, Any], budget: int, interrupted: bool, saved: Mapping[str, str] | None = None
) -> list[TrialRecord]:
    """One record per Tune trial; ``runs``: ``{trial_id: MLflow run}``; ``interrupted``: the sweep was;
    ``saved``: :func:`saved_statuses` (see :func:`trial_status`)."""
    out = []
    saved = saved or {}
    for t in tune_trials(grid):
        last = dict(t.last_result or {})
        epochs = int(last.get("epoch", 0) or 0)
        run = runs.get(t.trial_id)
        failure = error = ""
        status = trial_status(t.status, saved.get(t.trial_id))
        if status == "TERMINATED":
            label = end_label(epochs, budget)
        elif status == "ERROR":
            tags = error_tags(tune_error(t))
            label, failure, error = "failed", tags[FAILURE_TAG], tags[ERROR_TAG]
        else:
            label = "interrupted" if interrupted else "pending"
        where = {k: run.data.tags.get(k, "") for k in _WHERE} if run is not None else {}
        attempts = int(t.num_failures) + (0 if status == "ERROR" else 1)  # an errored trial's last one failed
        out.append(
            TrialRecord(
                t.trial_id, status, label, epochs, max(attempts, 1), dict(t.config), last, run, failure, error, where
            )
        )
    return out


def close_runs(records: list[TrialRecord], client) -> None:
    """End every trial's run as Tune ended the trial (the driver has the last word: a run left RUNNING by
    a dead worker, or labelled by a trial that Tune then interrupted)."""
    for r in records:
        if r.run is None:
            continue
        want, tags = r.run_status, r.tags()
        current = r.run.data.tags
        if r.run.info.status == want and all(current.get(k) == v for k, v in tags.items()):
            continue
        try:
            TrialRun(client, r.run.info.run_id).end(want, tags)
        except Exception as e:  # noqa: BLE001 - bookkeeping must not lose the sweep's result
            log.warning("could not close the MLflow run of trial %s: %s", r.trial_id, e)


def table(records: list[TrialRecord]):
    """``sweep/trials.csv``: one row per trial: status and why it ended, where it ran, attempts, its
    sampled values (``config/<path>``) and its last reported metrics. Texts that may hold names (the error,
    the host) are :func:`pipelines.names.csv_cell`."""
    import pandas as pd

    from pipelines.names import csv_cell

    rows = []
    for r in records:
        metrics = {k: v for k, v in r.metrics.items() if not isinstance(v, (dict, list))}
        rows.append(
            {
                "trial_id": r.trial_id,
                "status": r.tune_status,
                "trial_status": r.label,
                "epochs_trained": r.epochs,
                "attempts": r.attempts,
                "failure": csv_cell(r.failure),
                "error": csv_cell(r.error),
                "mlflow_run_id": r.run.info.run_id if r.run is not None else metrics.get("mlflow_run_id", ""),
                "node_id": r.where.get(NODE_ID, ""),
                "hostname": csv_cell(r.where.get(HOSTNAME, "")),
                "pid": r.where.get(PID, ""),
                **{f"config/{k}": v for k, v in r.config.items()},
                **{
                    k: v
                    for k, v in metrics.items()
                    if k not in ("trial_id", "mlflow_run_id", "pid", "hostname", "node_ip", "config")
                },
            }
        )
    return pd.DataFrame(rows)


def lost_notice(lost: list[TrialRecord], allowed: bool, resume_hint: str) -> str:
    """What the sweep says about the trials it lost to infrastructure."""
    lines = [f"{len(lost)} trial(s) lost to infrastructure after their retries (sweep.max_failures):"]
    for r in lost:
        where = r.where.get(HOSTNAME) or "?"
        lines.append(
            f"  trial {r.trial_id} (last on {where}, {r.attempts} attempt(s), {r.epochs} epoch(s)): "
            f"{' '.join(r.error.split())[:300]}"
        )
    if allowed:
        lines.append(
            "sweep.allow_lost_trials=true: the sweep finished with the other trials; its best banks may "
            "not be the search's best."
        )
    else:
        lines.append(
            f"nothing was registered. Rerun the lost trials from their last checkpoints once the cluster "
            f"is healthy:\n{resume_hint}\nor accept the loss: add sweep.allow_lost_trials=true to that "
            f"command."
        )
    return "\n".join(lines)
