"""Killed runs (pipelines/liveness.py through tracking.entry_run): SIGTERM ends the run KILLED with its log,
every entry run records its owner (host, PID), and the next entry run closes the runs of killed processes
(FAILED, tag ``pradot.orphaned``) without touching live ones. Real processes on a tmp SQLite store."""

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pipelines import liveness, tracking

#: a child process: an entry point whose work is a sleep, so it can be signalled or killed mid-run
CHILD = textwrap.dedent("""
    import sys, time
    from pipelines import cli, tracking

    def run(argv):
        with tracking.entry_run("sleeper", "e", entry_point="main") as r:
            print("RUN", r.run_id, flush=True)
            for _ in range(600):
                time.sleep(0.1)
        raise AssertionError("not reached")

    sys.exit(cli.run_entry(run, []))
""")


@pytest.fixture()
def store(sqlite_uri, tmp_path, monkeypatch):
    import mlflow

    uri = sqlite_uri
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    client = mlflow.MlflowClient(uri)
    client.create_experiment("e", artifact_location=(tmp_path / "artifacts").as_uri())
    yield client
    while mlflow.active_run():
        mlflow.end_run()


def _spawn_child(tmp_path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", CHILD],
        cwd=tmp_path,
        env=dict(os.environ),
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _run_of(proc: subprocess.Popen) -> str:
    """The run id the child prints once its entry run has started."""
    line = proc.stdout.readline()
    assert line.startswith("RUN "), (line, proc.stderr.read() if proc.poll() is not None else "")
    return line.split()[1]


def _start_child(tmp_path) -> tuple[subprocess.Popen, str]:
    proc = _spawn_child(tmp_path)
    return proc, _run_of(proc)


def test_sigterm_ends_the_run_killed_with_its_log(store, tmp_path):
    proc, run_id = _start_child(tmp_path)
    run = store.get_run(run_id)
    assert run.info.status == "RUNNING"
    assert run.data.tags[liveness.HOST_TAG] == socket.gethostname()
    assert run.data.tags[liveness.PID_TAG] == str(proc.pid)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 3, err  # cli.EXIT_INTERRUPTED
    assert "interrupted (Ctrl+C or SIGTERM)" in err and "Traceback" not in err
    run = store.get_run(run_id)
    assert run.info.status == "KILLED" and run.info.end_time is not None
    log = Path(store.download_artifacts(run_id, "logs/run.log", str(tmp_path))).read_text()
    assert "SIGTERM received" in log and "ended KILLED" in log


def test_the_next_entry_run_closes_the_run_of_a_killed_process(store, tmp_path):
    proc, live = _spawn_child(tmp_path), _spawn_child(tmp_path)  # both start (import torch, MLflow) at once
    orphan, live_run = _run_of(proc), _run_of(live)
    try:
        proc.kill()  # SIGKILL: nothing in the process runs, its run stays RUNNING
        proc.wait(timeout=30)
        assert store.get_run(orphan).info.status == "RUNNING"
        with tracking.entry_run("next", "e", entry_point="promote") as run:
            pass
        closed = store.get_run(orphan)
        assert closed.info.status == "FAILED"
        assert (
            f"process {proc.pid} on {socket.gethostname()} ended without closing the run"
            in closed.data.tags[liveness.ORPHAN_TAG]
        )
        assert store.get_run(live_run).info.status == "RUNNING"  # its process is alive: untouched
        assert store.get_run(run.run_id).info.status == "FINISHED"
    finally:
        live.kill()
        live.wait(timeout=30)


def test_a_reopened_orphan_loses_its_orphan_tag(store):
    exp = store.get_experiment_by_name("e").experiment_id
    run = store.create_run(exp, tags={liveness.ORPHAN_TAG: "process 1 ended", liveness.HOST_TAG: "elsewhere"})
    store.set_terminated(run.info.run_id, "FAILED")
    with tracking.entry_run("x", "e", entry_point="sweep", run_id=run.info.run_id):
        pass
    again = store.get_run(run.info.run_id)
    assert again.info.status == "FINISHED" and liveness.ORPHAN_TAG not in again.data.tags
    assert again.data.tags[liveness.PID_TAG] == str(os.getpid())


def test_orphan_rule():
    mine = liveness.owner_tags()
    host = socket.gethostname()
    assert liveness.is_orphan(mine) is None  # this process
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    boot, ns, _ = mine[liveness.PROCESS_TAG].split("/", 2)
    gone = {liveness.HOST_TAG: host, liveness.PID_TAG: str(dead.pid), liveness.PROCESS_TAG: f"{boot}/{ns}/1"}
    assert "ended without closing the run" in liveness.is_orphan(gone)
    # a live PID with another start time: the PID was reused by another process, the owner is gone
    reused = {**mine, liveness.PROCESS_TAG: f"{boot}/{ns}/1"}
    assert liveness.is_orphan({**reused, liveness.PID_TAG: str(os.getppid())}) is not None
    # another machine, another PID namespace (a container with the same hostname), no tags: never touched
    assert liveness.is_orphan({**gone, liveness.HOST_TAG: host + "-other"}) is None
    assert liveness.is_orphan({**gone, liveness.PROCESS_TAG: f"{boot}/pid:[1]/1"}) is None
    assert liveness.is_orphan({}) is None
    if boot:  # rebooted since: whatever the PID, the owner is gone
        assert "rebooted" in liveness.is_orphan({**mine, liveness.PROCESS_TAG: f"not-{boot}/{ns}/1"})


def test_sigterm_calls_the_current_sigint_handler():
    """Under Ray Tune (which installs its own SIGINT handler to stop a sweep gracefully) SIGTERM does the same."""
    calls = []
    before = signal.getsignal(signal.SIGTERM)
    previous = signal.signal(signal.SIGINT, lambda s, f: calls.append(s))
    try:
        with liveness.sigterm_as_interrupt():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)
        assert calls == [signal.SIGINT]
        signal.signal(signal.SIGINT, signal.default_int_handler)
        with pytest.raises(KeyboardInterrupt):
            with liveness.sigterm_as_interrupt():
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(1)
        assert signal.getsignal(signal.SIGTERM) == before  # restored after the block
    finally:
        signal.signal(signal.SIGINT, previous)


def test_sigterm_stops_tune_through_its_handler_every_time_and_interrupts_before_it():
    """In a sweep's run SIGTERM (what `mlflow run` sends on Ctrl+C) calls Tune's SIGUSR1 handler, the graceful
    stop, as often as it comes; before Tune has a handler it interrupts; the previous handlers come back."""
    import os
    import signal

    from pipelines.liveness import sigterm_stops_tune

    calls = []
    before_term, before_usr1 = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGUSR1)
    try:
        with sigterm_stops_tune():
            with pytest.raises(KeyboardInterrupt):  # no Tune yet: as Ctrl+C
                os.kill(os.getpid(), signal.SIGTERM)
            signal.signal(signal.SIGUSR1, lambda sig, frame: calls.append(sig))  # Tune installs its handler
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGTERM)  # again (MLflow's cancel after Ctrl+C): still no exception
        assert calls == [signal.SIGUSR1, signal.SIGUSR1]
        assert signal.getsignal(signal.SIGTERM) == before_term
    finally:
        signal.signal(signal.SIGUSR1, before_usr1)
