"""Which process owns an MLflow run, and what happens when that process dies.

* Every entry point's run records its owner in tags: ``pradot.host`` (the hostname), ``pradot.pid`` and
  ``pradot.process`` (``<boot id>/<PID namespace>/<process start time>``, from ``/proc`` on Linux).
* SIGTERM (``kill PID``, ``docker stop``, Kubernetes/Slurm preemption, a CI timeout) is handled like Ctrl+C
  while an entry point runs (:func:`sigterm_as_interrupt`): the run ends KILLED with its log.
* SIGKILL, the OOM killer or a power loss leave the run RUNNING. The next run of any entry point on the same
  machine marks such orphans FAILED (:func:`close_orphans`), with tag ``pradot.orphaned`` saying why. A run
  is an orphan when it is RUNNING, its ``pradot.host`` is this hostname, and its process is gone: the machine
  rebooted since (another boot id), or, in the same PID namespace, no process has its PID and start time
  (a PID reused by another process does not count as alive). Runs of other machines, of other PID
  namespaces (another container with the same hostname) and runs without these tags are never touched.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from pipelines.tags import HOST, ORPHANED, PID, PROCESS

log = logging.getLogger(__name__)

__all__ = [
    "HOST_TAG",
    "PID_TAG",
    "PROCESS_TAG",
    "ORPHAN_TAG",
    "owner_tags",
    "process_alive",
    "is_orphan",
    "close_orphans",
    "sigterm_as_interrupt",
    "sigterm_stops_tune",
]

HOST_TAG, PID_TAG, PROCESS_TAG, ORPHAN_TAG = HOST, PID, PROCESS, ORPHANED


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def _start_time(pid: int) -> str | None:
    """The process's start time (clock ticks since boot, /proc/<pid>/stat field 22); None when it does not
    exist or /proc is not there."""
    stat = _read(f"/proc/{pid}/stat")
    if stat is None:
        return None
    return stat[stat.rindex(")") + 2 :].split()[19]


def _namespace() -> str:
    with contextlib.suppress(OSError):
        return os.readlink("/proc/self/ns/pid")
    return ""


def _identity(pid: int) -> str:
    """``<boot id>/<PID namespace>/<start time>`` of process ``pid`` (parts empty where /proc has none)."""
    return f"{_read('/proc/sys/kernel/random/boot_id') or ''}/{_namespace()}/{_start_time(pid) or ''}"


def owner_tags() -> dict[str, str]:
    """The tags that name this process as a run's owner."""
    return {HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid()), PROCESS_TAG: _identity(os.getpid())}


def process_alive(pid: int, start: str = "") -> bool:
    """A process with this PID exists (and, when ``start`` is given and /proc is there, it started then)."""
    if pid <= 0:
        return False
    now = _start_time(pid)
    if now is not None:
        return not start or now == start
    if Path("/proc/self/stat").exists():  # Linux: no /proc/<pid>: no such process
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_orphan(tags: dict[str, str]) -> str | None:
    """Why a RUNNING run with these tags has no live owner on this machine, or None (alive, or unknown)."""
    host, pid, process = tags.get(HOST_TAG), tags.get(PID_TAG, ""), tags.get(PROCESS_TAG, "")
    if host != socket.gethostname() or not pid.isdigit():
        return None
    boot, ns, start = (process.split("/", 2) + ["", "", ""])[:3]
    mine = _identity(os.getpid()).split("/", 2)
    if boot and mine[0] and boot != mine[0]:
        return f"the machine {host} rebooted after process {pid} started"
    if ns != mine[1]:
        return None  # another PID namespace (a container with the same hostname): cannot tell
    if int(pid) == os.getpid() or process_alive(int(pid), start):
        return None
    return f"process {pid} on {host} ended without closing the run (SIGKILL, out of memory or a crash)"


def close_orphans(client, reason_suffix: str = "") -> list[str]:
    """Mark every orphaned RUNNING run of this machine FAILED with tag ``pradot.orphaned`` (all experiments).
    Returns their run ids. Never raises: bookkeeping must not stop the work."""
    import mlflow

    closed = []
    try:
        host = socket.gethostname().replace("'", "")
        runs = mlflow.search_runs(
            search_all_experiments=True,
            output_format="list",
            filter_string=f"attributes.status = 'RUNNING' and tags.`{HOST_TAG}` = '{host}'",
        )
        for run in runs:
            why = is_orphan(run.data.tags)
            if why is None:
                continue
            note = f"{why}; marked FAILED at {time.strftime('%Y-%m-%d %H:%M:%S')}{reason_suffix}"
            client.set_tag(run.info.run_id, ORPHAN_TAG, note)
            client.set_terminated(run.info.run_id, "FAILED")
            log.warning("run %s (%s) was left RUNNING: %s", run.info.run_id, run.info.run_name, note)
            closed.append(run.info.run_id)
    except Exception as e:  # noqa: BLE001
        log.warning("could not look for orphaned runs: %s: %s", type(e).__name__, e)
    return closed


@contextlib.contextmanager
def _on_sigterm(handler) -> Iterator[None]:
    """``handler`` answers SIGTERM within the block (main thread only: elsewhere nothing changes); the previous
    handler is restored after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def sigterm_as_interrupt():
    """Within the block, SIGTERM does what Ctrl+C does: it calls the current SIGINT handler (Python's raises
    ``KeyboardInterrupt``; Ray Tune's stops the sweep gracefully). Only in the main thread; the previous
    handler is restored after."""

    def on_sigterm(signum, frame):
        log.warning("SIGTERM received: stopping as on Ctrl+C (the run is ended KILLED with its log)")
        handler = signal.getsignal(signal.SIGINT)
        if callable(handler) and handler is not signal.default_int_handler:
            handler(signal.SIGINT, frame)
        else:
            raise KeyboardInterrupt("SIGTERM")

    return _on_sigterm(on_sigterm)


def sigterm_stops_tune():
    """Around ``Tuner.fit`` and the sweep's bookkeeping after it: SIGTERM (what ``mlflow run`` sends its
    command when Ctrl+C reaches it) asks Ray Tune to stop as Ctrl+C does, through Tune's own SIGUSR1 handler,
    every time it comes. Tune restores Python's SIGINT handler after the first interrupt, so a SIGTERM that
    followed it would otherwise raise ``KeyboardInterrupt`` while Tune saves its state or while the sweep
    labels its trials and ends its run. Once Tune has ended, its handler only sets a flag nobody reads: the
    bookkeeping (seconds) finishes. Before Tune has installed its handler, SIGTERM interrupts as
    :func:`sigterm_as_interrupt` does. Main thread only; the previous handler is restored after."""

    def on_sigterm(signum, frame):
        tune_stop = signal.getsignal(signal.SIGUSR1)
        if callable(tune_stop) and tune_stop not in (signal.default_int_handler, on_sigterm):
            log.warning("SIGTERM received: stopping the sweep as on Ctrl+C (resumable; its bookkeeping finishes)")
            tune_stop(signal.SIGUSR1, frame)
            return
        raise KeyboardInterrupt("SIGTERM")

    return _on_sigterm(on_sigterm)
