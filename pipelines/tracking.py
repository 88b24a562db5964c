"""MLflow runs, in one place: the tracking store, an entry point's run (experiment, nesting, run log, FAILED
on error, KILLED on Ctrl+C or SIGTERM, owner host/PID tags, orphans of killed processes closed), resolved
params, the served model's input example. The registry (version tags, atomic registration, the alias
decision) is :mod:`pipelines.registry`.

```python
with entry_run("synthetic-screw_bag", "pradot", entry_point="main") as run:   # run.run_id, run.log_path
    log_resolved_params(flatten(cfg))
    model_uri = log_model(model_file, calibration, tags, example)              # in the run, not registered
version = register(model_uri, "pradot-synthetic-screw_bag", tags)              # after the run, one call
```
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.tags import ENTRY_POINT

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_TRACKING_URI",
    "setup_tracking",
    "run_log",
    "remove_stale_logs",
    "EntryRun",
    "entry_run",
    "started_runs",
    "log_resolved_params",
    "example_image",
    "require_store",
    "store_hint",
    "ui_hint",
]

#: tracking store used when MLFLOW_TRACKING_URI is not set: a SQLite file in the working directory
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
#: loggers too chatty for a run log
_QUIET = ("matplotlib", "PIL", "urllib3", "alembic", "numba", "git")
#: a log record with this attribute true (``extra={FILE_ONLY: True}``) goes to the run log, not the console
FILE_ONLY = "pradot_file_only"


def setup_tracking() -> str:
    """Use ``MLFLOW_TRACKING_URI`` when set, else the SQLite file in the working directory; returns the URI."""
    import mlflow

    uri = os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    mlflow.set_tracking_uri(uri)
    return uri


def ui_hint(tracking_uri: str) -> str:
    """Where to look at the runs: a tracking server serves its own UI; a local store needs ``mlflow ui``."""
    if str(tracking_uri).startswith(("http://", "https://")):
        return f"open {tracking_uri} (the tracking server's UI)"
    return f"mlflow ui --backend-store-uri {tracking_uri}   (then open http://127.0.0.1:5000)"


def _registry_uri(model_uri: str) -> bool:
    return str(model_uri).startswith(("models:/", "runs:/"))


def require_store(model_uri: str) -> None:
    """Before a ``models:/`` or ``runs:/`` URI is looked up in the default store (no ``MLFLOW_TRACKING_URI``):
    refuse when ``./mlflow.db`` does not exist, rather than create an empty store and answer "not found".

    Raises:
        ConfigError: no tracking store here; says where models are looked up and how to point elsewhere.
    """
    from pipelines.checks import ConfigError

    if _registry_uri(model_uri) and not os.environ.get("MLFLOW_TRACKING_URI") and not Path("mlflow.db").exists():
        raise ConfigError(
            f"{model_uri} is looked up in the tracking store, and there is none here: {Path.cwd()} has "
            f"no mlflow.db and MLFLOW_TRACKING_URI is not set. Run from the folder that holds the "
            f"mlflow.db you trained with, or export MLFLOW_TRACKING_URI=sqlite:////path/to/mlflow.db "
            f"(or http://<server>:5000)"
        )


def store_hint(model_uri: str) -> str:
    """`` (looked up in the tracking store <uri> ...)`` for registry and run URIs, else ``""``."""
    if not _registry_uri(model_uri):
        return ""
    import mlflow

    return f" (looked up in the tracking store {mlflow.get_tracking_uri()}; set MLFLOW_TRACKING_URI for another)"


_LOG_FOLDER = re.compile(r"^pradot-log-(\d+)-")


def remove_stale_logs(tmp: str | None = None) -> list[Path]:
    """Remove the run-log folders (``pradot-log-<pid>-*`` in the temporary folder) of this user's processes
    that no longer exist (killed with SIGKILL, so their own clean-up never ran); returns them."""
    from pipelines.liveness import process_alive

    gone = []
    with contextlib.suppress(OSError), os.scandir(tmp or tempfile.gettempdir()) as it:
        for e in it:
            m = _LOG_FOLDER.match(e.name)
            with contextlib.suppress(OSError):
                if m and e.is_dir(follow_symlinks=False) and e.stat(follow_symlinks=False).st_uid == os.getuid():
                    if not process_alive(int(m.group(1))):
                        shutil.rmtree(e.path, ignore_errors=True)
                        gone.append(Path(e.path))
    return gone


class _Console(logging.StreamHandler):
    """The console handler of :func:`run_log` (one, however deeply runs nest)."""


@contextlib.contextmanager
def run_log(name: str = "run.log") -> Iterator[Path]:
    """Capture the loggers (and warnings) to a file for the lifetime of the block; the caller logs it as
    an artifact inside the block, also when the run fails. The file's folder (``pradot-log-<pid>-*`` in the
    temporary folder) is removed when the block ends (success, error, Ctrl+C or SIGTERM); folders left by
    processes killed with SIGKILL are removed by the next run (:func:`remove_stale_logs`). Both the file and
    the console write records through :class:`pipelines.names.LogFormatter`: a name that is not UTF-8 is
    written as escaped bytes (the log never fails on a file name), and a name's newline or terminal escape
    cannot forge a record."""
    from pipelines.names import LogFormatter

    remove_stale_logs()
    folder = Path(tempfile.mkdtemp(prefix=f"pradot-log-{os.getpid()}-"))
    path = folder / name
    handler = logging.FileHandler(path, encoding="utf-8", errors="backslashreplace")
    handler.setFormatter(LogFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    stream: logging.Handler | None = None
    if not any(isinstance(h, _Console) for h in root.handlers):  # a nested run (reproduce's members): one console
        stream = _Console(sys.stderr)
        stream.setFormatter(LogFormatter("[pradot] %(message)s"))
        stream.addFilter(lambda record: not getattr(record, FILE_ONLY, False))
        root.addHandler(stream)
    root.setLevel(logging.INFO)
    root.addHandler(handler)
    for noisy in _QUIET:
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.captureWarnings(True)
    try:
        yield path
    finally:
        handler.flush()
        root.removeHandler(handler)
        if stream is not None:
            root.removeHandler(stream)
        handler.close()
        logging.captureWarnings(False)
        shutil.rmtree(folder, ignore_errors=True)


@dataclass
class EntryRun:
    """The MLflow run of an entry point (or of a step nested in one)."""

    run_id: str
    experiment_id: str
    tracking_uri: str
    log_path: Path
    #: the status the run ends with when the block ends normally (None: FINISHED), e.g. KILLED for a sweep
    #: that was interrupted and saved its state: set inside the block, applied after the log is logged
    end_status: str | None = None


_STARTED: list[str] = []  # runs entry_run started in this process


def started_runs() -> list[str]:
    """The ids of the runs :func:`entry_run` started (or reopened) in this process, oldest first."""
    return list(_STARTED)


@contextlib.contextmanager
def entry_run(
    run_name: str,
    experiment_name: str,
    *,
    entry_point: str,
    nested: bool = False,
    log_name: str = "run.log",
    tags: Mapping[str, str] | None = None,
    run_id: str | None = None,
    sigterm=None,
) -> Iterator[EntryRun]:
    """Start (or, under ``mlflow run``, resume) the entry point's run; ``nested``: a child of the active run;
    ``run_id``: reopen that run (e.g. a resumed sweep's parent).

    First, runs of this machine left RUNNING by a killed process are marked FAILED
    (:func:`pipelines.liveness.close_orphans`). The experiment is set unless the run exists already
    (``MLFLOW_RUN_ID`` under ``mlflow run``, or ``run_id``). The run is tagged with its owner (host, PID).
    The block's log is captured and logged as ``logs/<log_name>``; an exception ends the run FAILED with the
    error in the log, Ctrl+C or SIGTERM end it KILLED; the exception then propagates. ``sigterm``: the
    context manager that handles SIGTERM in the block (default :func:`pipelines.liveness.sigterm_as_interrupt`;
    a sweep passes :func:`~pipelines.liveness.sigterm_stops_tune`). ``EntryRun.end_status`` set in the block
    ends the run with that status instead of FINISHED.
    """
    import mlflow

    from pipelines import liveness

    uri = setup_tracking()
    if not nested:
        liveness.close_orphans(mlflow.MlflowClient())
    if not nested and not run_id and not os.environ.get("MLFLOW_RUN_ID"):
        mlflow.set_experiment(experiment_name)
    start = {"run_id": run_id} if run_id else {"run_name": run_name, "nested": nested}
    interrupted = False
    on_sigterm = sigterm or liveness.sigterm_as_interrupt
    with run_log(log_name) as logfile, on_sigterm(), mlflow.start_run(**start) as run:
        _STARTED.append(run.info.run_id)
        if liveness.ORPHAN_TAG in run.data.tags:  # reopened after it was closed as an orphan
            mlflow.MlflowClient().delete_tag(run.info.run_id, liveness.ORPHAN_TAG)
        mlflow.set_tags({ENTRY_POINT: entry_point, **liveness.owner_tags(), **(tags or {})})
        entry = EntryRun(run.info.run_id, run.info.experiment_id, uri, logfile)
        try:
            yield entry
        except KeyboardInterrupt:
            interrupted = True
            log.error("run interrupted (Ctrl+C or SIGTERM): it is ended KILLED")
            raise
        except BaseException as e:
            from pipelines.errors import is_user_error

            user_error = is_user_error(e)  # bad input: the message says it all; anything else: traceback
            # the run log keeps it; the console gets the entry point's one error line
            log.error("run failed: %s: %s", type(e).__name__, e, exc_info=not user_error, extra={FILE_ONLY: True})
            raise
        finally:
            mlflow.log_artifact(str(logfile), "logs")
            if interrupted:
                mlflow.end_run("KILLED")
            elif entry.end_status:
                mlflow.end_run(entry.end_status)


def log_resolved_params(params: Mapping[str, Any]) -> None:
    """Log the resolved config as params of the active run. Under ``mlflow run`` the MLproject parameters
    are logged already as the user gave them (e.g. ``seed=''`` for "conf default"): a resolved value that
    differs goes to ``resolved.<key>`` (MLflow params cannot change)."""
    import mlflow

    existing = mlflow.get_run(mlflow.active_run().info.run_id).data.params
    out = {}
    from pipelines.names import tag_value

    for k, v in params.items():
        v = tag_value(str(v), 6000)
        if k in existing and existing[k] != v:
            out[f"resolved.{k}"] = v
        elif k not in existing:
            out[k] = v
    if out:
        mlflow.log_params(out)


def example_image(splits) -> Path:
    """The served model's input example: a normal test image, else any test, validation or training image."""
    normal = [s for s in splits.test if s.label == 0]
    return (normal or splits.test or splits.validation or splits.train)[0].image_path
