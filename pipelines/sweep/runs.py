"""A trial's MLflow run and why it ended, in one set of tags that the trial (on its worker) and the driver
(for trials whose worker or node died) both write.

Tags of every trial run:

* where it ran (the latest attempt): ``pradot.node_id``, ``pradot.node_ip``, ``pradot.hostname``, ``pradot.pid``;
* ``pradot.attempts`` (1 + retries and resumptions), ``pradot.restored_from_epoch`` (an attempt that
  continued from its checkpoint), ``pradot.retry_errors`` (why earlier attempts ended);
* why it ended, ``pradot.trial_status``: ``running``, ``completed`` (trained its whole budget:
  ``model.epochs``, or ASHA's ``max_t`` when smaller), ``stopped_early`` (ASHA stopped it before),
  ``retrying`` (it failed and Tune restarts it), ``failed``, ``interrupted`` (the sweep was), with
  ``pradot.epochs_trained``;
* a failure: ``pradot.failure`` (``infrastructure``: its worker or node died, or the node could not reach
  the storage, the feature cache or the tracking server; ``error``: the trial itself raised) and
  ``pradot.error`` (``Type: message``).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Mapping
from typing import Any

from pipelines.names import tag_value
from pipelines.tags import (
    ATTEMPTS,
    EPOCHS_TRAINED,
    ERROR,
    FAILURE,
    HOSTNAME,
    NODE_ID,
    NODE_IP,
    PID,
    TRIAL_ID,
    TRIAL_STATUS,
)

__all__ = [
    "PARENT_TAG",
    "TRIAL_ID_TAG",
    "STATUS_TAG",
    "FAILURE_TAG",
    "ERROR_TAG",
    "EPOCHS_TAG",
    "INFRASTRUCTURE",
    "TRIAL_ERROR",
    "retry",
    "failure_kind",
    "error_text",
    "failure_tags",
    "end_label",
    "where_tags",
    "find_trial_runs",
    "TrialRun",
]

PARENT_TAG = "mlflow.parentRunId"
TRIAL_ID_TAG = TRIAL_ID
STATUS_TAG = TRIAL_STATUS
FAILURE_TAG = FAILURE
ERROR_TAG = ERROR
EPOCHS_TAG = EPOCHS_TRAINED
INFRASTRUCTURE, TRIAL_ERROR = "infrastructure", "error"
_MAX_TAG = 4000


def retry(fn: Callable, *args, attempts: int = 5, **kwargs):
    """MLflow calls from trials and callbacks: retried (SQLite 'database is locked', a busy server)."""
    for i in range(attempts):
        try:
            return fn(*args, **kwargs)
        except Exception:  # noqa: BLE001
            if i == attempts - 1:
                raise
            time.sleep(0.5 * (2**i))


# ------------------------------------------------------------------------------------- why it ended
def _cause(exc: BaseException) -> BaseException:
    """A trial's own exception inside Ray's wrapper (``RayTaskError``)."""
    from ray.exceptions import RayTaskError

    while isinstance(exc, RayTaskError) and getattr(exc, "cause", None) is not None and exc.cause is not exc:
        exc = exc.cause
    return exc


def failure_kind(exc: BaseException) -> str:
    """``infrastructure`` (Ray's system errors: a dead actor, worker or node, lost objects, memory; or an
    ``OSError``: storage, cache or tracking server out of reach) or ``error`` (the trial raised)."""
    from ray.exceptions import RayError, RayTaskError

    cause = _cause(exc)
    if isinstance(cause, RayError) and not isinstance(cause, RayTaskError):
        return INFRASTRUCTURE
    return INFRASTRUCTURE if isinstance(cause, OSError) else TRIAL_ERROR


def error_text(exc: BaseException) -> str:
    """``Type: message`` of the trial's own exception (Ray's traceback wrapper removed), bounded."""
    cause = _cause(exc)
    text = f"{type(cause).__name__}: {cause}".strip()
    return text if len(text) <= _MAX_TAG else text[:_MAX_TAG] + " ..."


def failure_tags(exc: BaseException) -> dict[str, str]:
    """The tags of a failed trial, whoever writes them."""
    return {STATUS_TAG: "failed", FAILURE_TAG: failure_kind(exc), ERROR_TAG: error_text(exc)}


def end_label(epochs_trained: int, budget: int) -> str:
    """``completed`` when the trial trained its whole budget (``model.epochs``, or ASHA's ``max_t`` when
    smaller), else ``stopped_early``."""
    return "completed" if int(epochs_trained) >= int(budget) else "stopped_early"


def where_tags() -> dict[str, str]:
    """This worker's node id, node address, host name and process id."""
    import ray

    ctx = ray.get_runtime_context()
    return {
        NODE_ID: ctx.get_node_id(),
        NODE_IP: ray.util.get_node_ip_address(),
        HOSTNAME: socket.gethostname(),
        PID: str(os.getpid()),
    }


def find_trial_runs(client, experiment_id: str, parent_run_id: str, trial_id: str | None = None) -> dict[str, Any]:
    """``{trial_id: run}`` of the sweep's trial runs (one trial: ``trial_id``), found by their tags."""
    query = f"tags.`{PARENT_TAG}` = '{parent_run_id}'"
    if trial_id:
        query += f" and tags.`{TRIAL_ID_TAG}` = '{trial_id}'"
    runs = retry(client.search_runs, [experiment_id], filter_string=query, max_results=10000)
    return {r.data.tags.get(TRIAL_ID_TAG, ""): r for r in runs}


#: the result key that names the metrics of a trial's report the driver logs to its MLflow run
LOGGED_KEY = "pradot_logged_metrics"


# ------------------------------------------------------------------------------------- the run
class TrialRun:
    """The trial's nested MLflow run, written through a client (a worker has no active run).

    ``logged_upto``: the last epoch whose metrics the run holds; an attempt restarted from an earlier
    checkpoint recomputes the epochs after it but does not log them twice."""

    def __init__(self, client, run_id: str, logged_upto: int = 0):
        self.client, self.run_id, self.logged_upto = client, run_id, int(logged_upto)
        self.reported_upto = int(logged_upto)  # the worker's side: the last epoch Tune took from this attempt

    @classmethod
    def open(
        cls,
        client,
        experiment_id: str,
        parent_run_id: str,
        trial_id: str,
        tags: Mapping[str, str],
        params: Mapping[str, Any],
    ) -> TrialRun:
        """Create the run (``tags``, ``params``), or reopen it for a new attempt of the trial (a retry or a
        resumed sweep); either way tagged with where this attempt runs."""
        from mlflow.entities import Param

        where = {**where_tags(), STATUS_TAG: "running"}
        found = find_trial_runs(client, experiment_id, parent_run_id, trial_id).get(trial_id)
        if found is not None:
            history = retry(client.get_metric_history, found.info.run_id, "epoch")
            run = cls(client, found.info.run_id, max((int(m.step) for m in history), default=0))
            retry(client.update_run, run.run_id, status="RUNNING")
            run.tags({**where, ATTEMPTS: str(int(found.data.tags.get(ATTEMPTS, "1")) + 1)})
            for stale in (FAILURE_TAG, ERROR_TAG):  # an earlier attempt's (the driver keeps it in retry_errors)
                if stale in found.data.tags:
                    retry(client.delete_tag, run.run_id, stale)
            return run
        created = retry(
            client.create_run,
            experiment_id,
            run_name=f"trial-{trial_id}",
            tags={PARENT_TAG: parent_run_id, TRIAL_ID_TAG: trial_id, ATTEMPTS: "1", **tags, **where},
        )
        run = cls(client, created.info.run_id)
        retry(client.log_batch, run.run_id, params=[Param(k, str(v)) for k, v in params.items()])
        return run

    def tags(self, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        retry(
            self.client.log_batch, self.run_id, tags=[RunTag(k, tag_value(str(v), _MAX_TAG)) for k, v in tags.items()]
        )

    def log_epoch(self, metrics: Mapping[str, float], epoch: int) -> None:
        """The metrics of ``epoch``, unless an earlier attempt logged them already."""
        from mlflow.entities import Metric

        if int(epoch) <= self.logged_upto:
            return
        now = int(time.time() * 1000)
        retry(
            self.client.log_batch,
            self.run_id,
            metrics=[Metric(k, float(v), now, int(epoch)) for k, v in metrics.items()],
        )
        self.logged_upto = int(epoch)

    def end(self, status: str, tags: Mapping[str, str], *, unless_ended: bool = False) -> None:
        """Tag why it ended and set the run's status (FINISHED, FAILED, KILLED).

        ``unless_ended``: the trial's own last word, which the driver's overrides: nothing is written when the
        run has ended already (the driver closed it: an interrupted sweep). The driver writes the status
        first and the tags second, so a trial that looks after that sees the run ended and leaves it."""
        if unless_ended:
            if retry(self.client.get_run, self.run_id).info.status != "RUNNING":
                return
            self.tags(tags)
            retry(self.client.set_terminated, self.run_id, status)
            return
        retry(self.client.set_terminated, self.run_id, status)
        self.tags(tags)
