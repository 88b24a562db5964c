"""A sweep's state file (its MLflow parent run, tracking store and configuration, in its Tune folder) and
resuming an interrupted or incomplete sweep from it with its own configuration, in the same parent run.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass

from omegaconf import DictConfig, OmegaConf

from pipelines import config
from pipelines.sweep.space import SweepError
from pipelines.sweep.storage import STATE_FILE, SweepFolder, find_resume_folder
from pipelines.tags import RESUMED_SWEEP_RUN_ID, SWEEP_STATE

__all__ = ["Resume", "resume_config", "write_state", "reopen_parent"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Resume:
    """An interrupted sweep's folder and its state file."""

    folder: SweepFolder
    parent_run_id: str
    tracking_uri: str
    config: dict
    overrides: list[str] | None = None  # the overrides it was started with (None: saved by an earlier release)


def resume_config(cfg: DictConfig) -> tuple[DictConfig, Resume | None]:
    """With ``sweep.resume`` / ``sweep.resume_from``: the interrupted sweep's own configuration (other
    overrides are ignored, except ``sweep.allow_lost_trials=true``) and its state; else ``cfg`` as it is.

    Raises:
        SweepError: no sweep folder to resume.
    """
    sw = cfg.sweep
    if not (sw.get("resume") or sw.get("resume_from")):
        return cfg, None
    folder = find_resume_folder(str(sw.storage_path), sw.get("resume_from"), sw.get("name"))
    state = json.loads(folder.read_text(STATE_FILE))
    allow = bool(sw.get("allow_lost_trials")) or bool(state["config"].get("sweep", {}).get("allow_lost_trials"))
    saved = config.with_overrides(
        OmegaConf.create(state["config"]),
        {
            "sweep.storage_path": folder.storage,
            "sweep.name": folder.name,
            "sweep.stop_after_trials": None,
            "sweep.allow_lost_trials": allow,
        },
    )
    log.info("resuming the sweep in %s (its saved configuration; other overrides are ignored)", folder)
    return saved, Resume(folder, state["parent_run_id"], state["tracking_uri"], state["config"], state.get("overrides"))


def write_state(
    folder: SweepFolder,
    parent_run_id: str,
    experiment_id: str,
    uri: str,
    cfg: DictConfig,
    overrides: Sequence[str] = (),
) -> None:
    """The state file of a new sweep folder (``uri``: the tracking store, absolute; ``overrides``: the user's)."""
    folder.write_text(
        STATE_FILE,
        json.dumps(
            {
                "parent_run_id": parent_run_id,
                "experiment_id": experiment_id,
                "tracking_uri": uri,
                "name": folder.name,
                "created": time.time(),
                "config": OmegaConf.to_container(cfg, resolve=True),
                "overrides": list(overrides),
            },
            indent=1,
            default=str,
        ),
    )


def reopen_parent(resume: Resume, uri: str) -> None:
    """A resumed sweep's parent must be unfinished; a run started by `mlflow run` points to it.

    Raises:
        SweepError: the sweep has finished already.
    """
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    parent_id = resume.parent_run_id
    if client.get_run(parent_id).data.tags.get(SWEEP_STATE) == "finished":
        raise SweepError(
            f"the sweep in {resume.folder} has finished already (MLflow run {parent_id}); nothing to resume"
        )
    env_run = os.environ.get("MLFLOW_RUN_ID")
    if env_run and env_run != parent_id:  # `mlflow run` made a run of its own: it only points to the sweep's
        client.set_tag(env_run, RESUMED_SWEEP_RUN_ID, parent_id)
        client.set_tag(env_run, "mlflow.runName", f"resume-of-{client.get_run(parent_id).info.run_name}")
        client.set_tag(
            env_run,
            "mlflow.note.content",
            f"This `mlflow run` resumed the sweep of run {parent_id}: the "
            "trials, metrics and registered versions are in that run, not in this one.",
        )
