"""The `sweep` entry point against real services: a local Ray cluster started with `ray start --head`
and an `mlflow server` (SQLite + artifact folder), both on 127.0.0.1 and stopped at the end.

One Ray cluster and one MLflow server are shared by the module. The sweeps run as the entry point runs
them, `python pipelines/sweep.py ...` (what `mlflow run . -e sweep` calls), on the CI experiment (synthetic
data at 96 px, EfficientNet-Lite0 stage 2, 2 epochs, `sweep=ci`). Bad input is refused before any
service is needed: those tests call `main` in this process, without a cluster or a server.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest

from pipelines import config
from pipelines.sweep import cluster, evalset, plan
from pipelines.sweep.run import main as sweep_main
from pipelines.sweep.space import SweepError
from tests.helpers import wait_for

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
MODEL_NAME = "pradot-synthetic-screw_bag"
CI = ["experiment=ci", "sweep=ci"]


# ----------------------------------------------------------------------------------- services
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen, timeout: float = 40) -> None:
    """SIGTERM to the process we started (`ray start --block` then shuts its node down), then its
    process group (also ours: started with start_new_session) if anything is left."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait(10)


def _make_data(data_root: Path) -> None:
    """The CI dataset (generated on first use), made while the services start."""
    cfg = config.compose("sweep", [*CI, f"data.root={data_root}"])
    evalset.open_data(cfg, plan.sweep_plan(cfg))


@pytest.fixture(scope="module")
def services(tmp_path_factory, mlflow_db_template):
    from tests.helpers import copy_store

    root = tmp_path_factory.mktemp("sweep")
    copy_store(mlflow_db_template, root)  # the server's backend store, migrated
    procs, temp_dir = [], None
    try:
        # Ray head node: `ray start --block` stays in the foreground, so stopping it stops this cluster
        # only (`ray stop` would stop every Ray process of the user on this machine).
        temp_dir = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths have a length limit
        port = _free_port()
        ray_log = root / "ray.log"
        ray_cmd = [
            str(BIN / "ray"),
            "start",
            "--head",
            "--block",
            "--node-ip-address=127.0.0.1",
            f"--port={port}",
            "--num-cpus=2",
            "--num-gpus=0",
            "--include-dashboard=false",
            "--disable-usage-stats",
            f"--temp-dir={temp_dir}",
            f"--dashboard-port={_free_port()}",
            f"--node-manager-port={_free_port()}",
            f"--object-manager-port={_free_port()}",
            f"--dashboard-agent-listen-port={_free_port()}",
            f"--dashboard-agent-grpc-port={_free_port()}",
            f"--runtime-env-agent-port={_free_port()}",
            f"--metrics-export-port={_free_port()}",
            "--object-store-memory=500000000",
        ]
        # Ray resolves 127.0.0.1 to the machine's network address unless clustering is off (its single-machine
        # mode): then every Ray server listens on 127.0.0.1 only. A token of our own (not ~/.ray/auth_token,
        # which other Ray users of this machine share); no drain wait at shutdown.
        ray_env = {
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": uuid.uuid4().hex,
            "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
            "RAY_USAGE_STATS_ENABLED": "0",
        }
        env = {**os.environ, **ray_env}
        env.pop("RAY_ADDRESS", None)
        ray_proc = subprocess.Popen(
            ray_cmd, stdout=open(ray_log, "w"), stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        procs.append(ray_proc)

        mlflow_port = _free_port()
        mlflow_log = root / "mlflow.log"
        mlflow_proc = subprocess.Popen(
            [
                str(BIN / "mlflow"),
                "server",
                "--backend-store-uri",
                f"sqlite:///{root}/mlflow.db",
                "--artifacts-destination",
                str(root / "artifacts"),
                "--host",
                "127.0.0.1",
                "--port",
                str(mlflow_port),
                "--workers",
                "1",
            ],
            stdout=open(mlflow_log, "w"),
            stderr=subprocess.STDOUT,
            cwd=root,
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},  # no background job workers
            start_new_session=True,
        )
        procs.append(mlflow_proc)
        uri = f"http://127.0.0.1:{mlflow_port}"

        def mlflow_up():
            try:
                return urllib.request.urlopen(f"{uri}/health", timeout=2).status == 200
            except OSError:
                return False

        _make_data(root / "data")
        wait_for(lambda: "block forever" in ray_log.read_text(), 120, "ray head", ray_proc, ray_log)
        wait_for(mlflow_up, 120, "mlflow server", mlflow_proc, mlflow_log)
        yield {
            "root": root,
            "ray_address": f"127.0.0.1:{port}",
            "tracking_uri": uri,
            "data": root / "data",
            "env": {**ray_env, "RAY_ADDRESS": f"127.0.0.1:{port}", "MLFLOW_TRACKING_URI": uri, "TQDM_DISABLE": "1"},
        }
    finally:
        for p in reversed(procs):
            _stop(p)
        if temp_dir:
            shutil.rmtree(temp_dir, ignore_errors=True)


def _run_sweep(services, args, timeout: float = 400) -> subprocess.CompletedProcess:
    """`python pipelines/sweep.py ARGS` on the test cluster, tracked by the test server."""
    env = {**os.environ, **services["env"]}
    env.pop("MLFLOW_RUN_ID", None)
    proc = subprocess.run(
        [sys.executable, str(REPO / "pipelines" / "sweep.py"), *args],
        env=env,
        cwd=services["root"],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    log = services["root"] / f"sweep-{len(list(services['root'].glob('sweep-*.log')))}.log"
    log.write_text(f"$ sweep.py {' '.join(args)}\n{proc.stdout}\n{proc.stderr}")
    print(f"sweep output: {log}\n{proc.stderr[-4000:]}")  # shown when a test fails
    return proc


def _client(services):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=services["tracking_uri"], registry_uri=services["tracking_uri"])


def _runs(client, experiment_name):
    exp = client.get_experiment_by_name(experiment_name)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("pradot.sweep") == "true"]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return parents, children


def _sweep(args) -> int:
    return sweep_main(list(args))


# ------------------------------------------------------------------------------- a full sweep
@pytest.fixture(scope="module")
def full_sweep(services):
    """4 trials, 2 at a time, ASHA, top 2 registered; run once, checked by several tests."""
    cache = services["root"] / "cache-full"
    t0 = time.time()
    proc = _run_sweep(
        services,
        [
            *CI,
            f"data.root={services['data']}",
            f"cache.dir={cache}",
            f"sweep.storage_path={services['root'] / 'ray_results'}",
            "sweep.name=full",
            "tracking.experiment_name=sweep-full",
        ],
    )
    rc, seconds = proc.returncode, time.time() - t0
    client = _client(services)
    parents, children = _runs(client, "sweep-full")
    return {
        "rc": rc,
        "client": client,
        "parents": parents,
        "children": children,
        "cache": cache,
        "seconds": seconds,
        "path": services["root"] / "ray_results" / "full",
        "stdout": proc.stdout,
    }


def test_sweep_logs_one_parent_and_a_child_run_per_trial(full_sweep):
    assert full_sweep["rc"] == 0
    assert len(full_sweep["parents"]) == 1
    parent = full_sweep["parents"][0]
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["pradot.objective"] == "pseudo"
    assert parent.data.tags["pradot.sweep_state"] == "finished"
    children = full_sweep["children"]
    assert len(children) == 4
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert len({c.data.tags["pradot.trial_id"] for c in children}) == 4
    client = full_sweep["client"]
    for c in children:
        assert c.info.status == "FINISHED"
        assert c.data.tags["pradot.objective"] == "pseudo"
        assert 0.0 <= c.data.metrics["val_auroc"] <= 1.0
        # the objective promote chooses by: detection and localisation of both pseudo-anomaly styles
        assert {"val_aupro_structural", "val_aupro_logical"} <= set(c.data.metrics)
        expected = np.mean(
            [
                (c.data.metrics[f"val_auroc_{s}"] + c.data.metrics[f"val_aupro_{s}"]) / 2
                for s in ("structural", "logical")
            ]
        )
        assert c.data.metrics["val_objective"] == pytest.approx(expected, abs=1e-6)
        history = client.get_metric_history(c.info.run_id, "val_objective")
        assert sorted(m.step for m in history) == list(range(1, len(history) + 1))  # one value per epoch
        assert 1 <= len(history) <= 2
        assert {"model.alpha", "model.n", "model.eta", "model.epsilon", "model.batch_ratio"} <= set(c.data.params)
        # why it ended, truthfully: all of model.epochs (2, ASHA's max_t) is completed, fewer is stopped early
        assert c.data.tags["pradot.trial_status"] == ("completed" if len(history) == 2 else "stopped_early")
        assert c.data.tags["pradot.epochs_trained"] == str(len(history))
        assert c.data.tags["pradot.hostname"] and c.data.tags["pradot.node_id"] and int(c.data.tags["pradot.pid"])
    # the trial table and the search space are artifacts of the parent
    import pandas as pd

    local = client.download_artifacts(parent.info.run_id, "sweep", str(full_sweep["path"].parent / "dl"))
    table = pd.read_csv(Path(local) / "trials.csv")
    assert len(table) == 4 and {"val_objective", "val_auroc"} <= set(table.columns)
    assert set(table["mlflow_run_id"]) == {c.info.run_id for c in children}
    assert (Path(local) / "search_space.yaml").is_file()
    assert parent.data.metrics["trials_terminated"] == 4


def test_sweep_registers_the_top_k_trials(full_sweep):
    assert full_sweep["rc"] == 0
    client, parent = full_sweep["client"], full_sweep["parents"][0]
    versions = [
        v
        for v in client.search_model_versions(f"name='{MODEL_NAME}'")
        if v.tags.get("sweep_run_id") == parent.info.run_id
    ]
    assert len(versions) == 2  # sweep=ci: top_k=2
    finals = {c.info.run_id: c.data.metrics["val_objective"] for c in full_sweep["children"]}
    best_two = sorted(finals.values(), reverse=True)[:2]
    assert sorted((float(v.tags["val_objective"]) for v in versions), reverse=True) == pytest.approx(best_two, abs=1e-5)
    for v in versions:
        assert v.run_id in finals  # logged in the trial's own run
        assert {"alpha", "n", "stages", "config", "trial_id"} <= set(v.tags)
        assert v.tags["objective"] == "pseudo"
        assert float(v.tags["metric.val_objective"]) == pytest.approx(float(v.tags["val_objective"]), abs=1e-4)
        assert "metric.val_auroc" in v.tags  # promote's select_by keys
        assert client.get_run(v.run_id).data.params["data.kind"] == "synthetic"  # promote checks the data
        assert client.get_run(v.run_id).data.tags["pradot.registered_version"] == v.version


def test_sweep_extracts_features_once(full_sweep):
    assert full_sweep["rc"] == 0
    parent = full_sweep["parents"][0]
    # one extraction per split (train; validation + pseudo-anomalies) for the whole sweep, in the driver,
    # before any trial started; every trial read the same cache entries
    assert parent.data.metrics["features_extracted"] == 2
    metas = [json.loads(p.read_text()) for p in full_sweep["cache"].glob("*/stage*.json")]  # one per stage
    splits = {m["identity"]["split"] for m in metas}
    assert splits == {"train", "validation+pseudo"}
    assert len(metas) == len(splits) * len({m["stage"] for m in metas})  # each stage stored once per split
    first_trial_start = min(c.info.start_time for c in full_sweep["children"]) / 1000.0
    assert all(m["created"] < first_trial_start for m in metas)
    keys = {p.parent.name for p in full_sweep["cache"].glob("*/stage*.json")}
    for c in full_sweep["children"]:
        assert set(c.data.tags["pradot.features"].split(",")) == keys
    validation = next(m for m in metas if m["identity"]["split"] == "validation+pseudo")
    assert validation["n_images"] == 12  # 6 validation normals + 6 pseudo-anomalies


# --------------------------------------------------------------------------------------- resume
def test_interrupted_sweep_resumes_and_finishes_the_remaining_trials(services):
    client = _client(services)
    storage = services["root"] / "ray_results"
    path = storage / "resume"
    common = [
        f"data.root={services['data']}",
        f"cache.dir={services['root'] / 'cache-resume'}",
        f"sweep.storage_path={storage}",
    ]
    proc = _run_sweep(
        services,
        [
            *CI,
            *common,
            "sweep.name=resume",
            "tracking.experiment_name=sweep-resume",
            "sweep.num_samples=3",
            "sweep.max_concurrent_trials=1",
            "sweep.stop_after_trials=1",
            "sweep.top_k=0",
            "sweep.scheduler.type=fifo",
            "sweep.feature_store=object_store",
        ],
    )
    assert proc.returncode == 3  # interrupted
    assert "sweep.resume=true" in proc.stderr
    (parent,), children = _runs(client, "sweep-resume")
    assert parent.info.status == "KILLED" and parent.data.tags["pradot.sweep_state"] == "interrupted"
    done_before = {c.data.tags["pradot.trial_id"]: c for c in children if c.info.status == "FINISHED"}
    assert 1 <= len(done_before) < 3
    # the counts come from the state Tune saved (what the resume continues), not from the in-memory grid
    assert parent.data.metrics["trials_terminated"] == len(done_before)
    assert f"sweep interrupted after {len(done_before)} of 3 trials" in proc.stderr
    assert all(c.info.status in ("FINISHED", "KILLED") for c in children)

    proc = _run_sweep(services, ["sweep.resume=true", f"sweep.resume_from={path}"])
    assert proc.returncode == 0
    (parent2,), children = _runs(client, "sweep-resume")
    assert parent2.info.run_id == parent.info.run_id and parent2.info.status == "FINISHED"
    assert parent2.data.metrics["features_extracted"] == 2
    assert parent2.data.metrics["features_extracted_on_resume"] == 0
    trials = {c.data.tags["pradot.trial_id"]: c for c in children}
    assert len(trials) == len(children) == 3
    assert all(c.info.status == "FINISHED" for c in children)
    for tid, before in done_before.items():  # finished trials were not run again
        after = trials[tid]
        assert after.data.tags["pradot.attempts"] == "1"
        assert after.info.end_time == before.info.end_time
        assert len(client.get_metric_history(after.info.run_id, "val_auroc")) == 2
    # Tune's own record of the experiment: 3 trials, all terminated
    state = json.loads(max(path.glob("experiment_state-*.json")).read_text())
    statuses = [json.loads(t[0])["status"] if isinstance(t, list) else t["status"] for t in state["trial_data"]]
    assert statuses == ["TERMINATED"] * 3


#: enough epochs that Ctrl+C, sent once a trial logged its second, lands mid-trial; few enough for the resume
CTRL_C_EPOCHS = 16


@pytest.mark.slow
def test_ctrl_c_under_mlflow_run_interrupts_the_running_trial_and_resume_finishes_it(services):
    """The user's path: `mlflow run . -e sweep` in a terminal, Ctrl+C (SIGINT to the whole process group:
    mlflow, the sweep, the Ray workers) while a trial trains, then resume. MLflow answers Ctrl+C with SIGTERM
    to the sweep: the sweep still stops as Tune does, saves its bookkeeping, ends its run KILLED (MLflow
    then overwrites an ended run's status with FAILED) and the running trial's run KILLED / interrupted; the
    resume continues that trial in the same MLflow run, each epoch logged once."""
    client = _client(services)
    storage = services["root"] / "ray_results"
    overrides = " ".join(
        [
            *CI,
            f"data.root={services['data']}",
            f"cache.dir={services['root'] / 'cache-ctrlc'}",
            f"sweep.storage_path={storage}",
            "sweep.name=ctrlc",
            "sweep.num_samples=2",
            "sweep.max_concurrent_trials=1",
            "sweep.scheduler.type=fifo",
            "sweep.top_k=1",
            f"model.epochs={CTRL_C_EPOCHS}",
            "sweep.feature_store=object_store",
        ]
    )
    env = {**os.environ, **services["env"], "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("MLFLOW_RUN_ID", None)
    log = services["root"] / "ctrlc.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [
                str(BIN / "mlflow"),
                "run",
                str(REPO),
                "-e",
                "sweep",
                "--env-manager",
                "local",
                "--experiment-name",
                "sweep-ctrlc",
                "-P",
                f"overrides={overrides}",
            ],
            cwd=services["root"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def training():  # a trial has logged its second epoch (and has many more to go)
        exp = client.get_experiment_by_name("sweep-ctrlc")
        if exp is None:
            return False
        trials = [r for r in client.search_runs([exp.experiment_id]) if "pradot.trial_id" in r.data.tags]
        return any(r.data.metrics.get("epoch", 0) >= 2 for r in trials)

    try:
        wait_for(training, 300, "a training trial", proc, log, every=0.2)
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl+C in the terminal does
        proc.wait(timeout=240)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    text = log.read_text()
    (parent,), children = _runs(client, "sweep-ctrlc")
    # the sweep ends its run KILLED; `mlflow run` then sets FAILED on the run it started whatever its status
    # (MLflow compares the status string with integer codes: mlflow/mlflow#1832): the tag says what happened
    assert parent.info.status in ("KILLED", "FAILED") and parent.data.tags["pradot.sweep_state"] == "interrupted", text[
        -3000:
    ]
    assert "sweep interrupted after 0 of 2 trials" in text, text[-3000:]
    (cut,) = [c for c in children if c.data.tags["pradot.trial_status"] == "interrupted"]
    assert cut.info.status == "KILLED" and 2 <= int(cut.data.tags["pradot.epochs_trained"]) < CTRL_C_EPOCHS

    folder = storage / "ctrlc"
    done = _run_sweep(services, ["sweep.resume=true", f"sweep.resume_from={folder}"])
    assert done.returncode == 0, done.stderr[-3000:]
    after = client.get_run(cut.info.run_id)
    assert after.info.status == "FINISHED" and after.data.tags["pradot.trial_status"] == "completed"
    assert after.data.tags["pradot.attempts"] == "2"
    assert sorted(int(m.step) for m in client.get_metric_history(cut.info.run_id, "epoch")) == list(
        range(1, CTRL_C_EPOCHS + 1)
    )
    # the resumed sweep still knows the overrides it was started with: promote's hint repeats them
    hint = next(line for line in done.stdout.splitlines() if line.startswith("next"))
    assert (
        '-P overrides="experiment=ci' in hint and f"model.epochs={CTRL_C_EPOCHS}" in hint and "sweep.name" not in hint
    )


# ------------------------------------------------------------------------------------ bad input
@pytest.fixture()
def offline(tmp_path, monkeypatch):
    """No cluster, a SQLite store that must stay untouched: bad input is refused before anything starts."""
    db = tmp_path / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.chdir(tmp_path)
    return {"db": db, "tmp": tmp_path}


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["sweep.search_space=null"], "sweep.search_space is empty"),
        (["sweep.num_samples=0"], "sweep.num_samples must be an integer >= 1"),
        (["sweep.metric=val_aucroc"], "sweep.metric 'val_aucroc' is not reported"),
        (["+sweep.search_space.lr={type:loguniform,low:0.001,high:0.1}"], "unknown parameter(s) ['lr']"),
        (
            ["sweep.search_space.alpha={type:uniform,low:0,high:2}"],
            "sweep.search_space.model.alpha: 2 is out of range: it must be a number in [0, 1]",
        ),
        (["sweep.objective=test", "sweep.metric=val_auroc"], "not reported by the trials (objective=test)"),
        (["sweep.search_space.n.values=[16]"], "training split has only 16 images"),
    ],
)
def test_bad_input_is_refused_before_anything_starts(offline, capsys, overrides, message, tmp_path_factory):
    data = tmp_path_factory.getbasetemp() / "bad-input-data"
    rc = _sweep([*CI, f"data.root={data}", *overrides])
    assert rc == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert not offline["db"].exists()  # nothing tracked, nothing registered
    ray = sys.modules.get("ray")
    assert ray is None or not ray.is_initialized()  # no cluster started or joined
    assert not (offline["tmp"] / ".ray_results").exists()


@pytest.mark.parametrize(
    "env, message",
    [
        # a tracking server on this machine's loopback address, trials on other machines: the fix is in the message
        (
            {"RAY_ADDRESS": "10.255.255.1:6379", "MLFLOW_TRACKING_URI": "http://127.0.0.1:5000"},
            "is on a loopback address: trials on the other nodes",
        ),
        # a SQLite store and an existing cluster, even one whose only node is this machine's (nodes may join later)
        ({"RAY_ADDRESS": "127.0.0.1:6379"}, "is a local file/SQLite store, but the Ray cluster at 127.0.0.1:6379"),
        (
            {"RAY_ADDRESS": "FREE_PORT", "MLFLOW_TRACKING_URI": "http://10.255.255.2:5000"},
            "cannot reach the Ray cluster",
        ),
    ],
)
def test_cluster_settings_are_refused_before_any_trial(offline, capsys, env, message, tmp_path_factory, monkeypatch):
    data = tmp_path_factory.getbasetemp() / "bad-input-data"
    for k, v in env.items():
        monkeypatch.setenv(k, f"127.0.0.1:{_free_port()}" if v == "FREE_PORT" else v)
    t0 = time.time()
    rc = _sweep([*CI, f"data.root={data}"])
    err = capsys.readouterr().err
    assert rc == 2 and message in err, err
    assert "--host 0.0.0.0" in err or "ray start --head" in err  # how to fix it
    assert time.time() - t0 < 60  # no minutes-long wait for an unreachable cluster
    assert not offline["db"].exists()
    ray = sys.modules.get("ray")
    assert ray is None or not ray.is_initialized()
    assert not (offline["tmp"] / ".ray_results").exists()


def test_a_storage_uri_goes_to_tune_unchanged_and_is_checked_first(offline, capsys, tmp_path_factory):
    """s3://... is not a local folder named 's3:'; unreachable from this machine, it is refused before anything."""
    data = tmp_path_factory.getbasetemp() / "bad-input-data"
    rc = _sweep([*CI, f"data.root={data}", "sweep.storage_path=s3://pradot-no-such-bucket-0/sweeps"])
    err = capsys.readouterr().err
    assert rc == 2 and "sweep.storage_path 's3://pradot-no-such-bucket-0/sweeps' is not reachable" in err, err
    assert not list(offline["tmp"].glob("s3*")) and not offline["db"].exists()


def test_local_store_is_refused_on_a_multi_node_cluster():
    with pytest.raises(SweepError, match="local file/SQLite store"):
        cluster.check_tracking_for_cluster("sqlite:////tmp/x/mlflow.db", 2, "10.0.0.1:6379")
    with pytest.raises(SweepError, match="local file/SQLite store"):
        cluster.check_tracking_for_cluster("/tmp/mlruns", 1, "ray://10.0.0.1:10001")
    cluster.check_tracking_for_cluster("http://10.0.0.2:5000", 3, "10.0.0.1:6379")
    cluster.check_tracking_for_cluster("sqlite:////tmp/x/mlflow.db", 1, None)
    assert cluster.absolute_tracking_uri("sqlite:///mlflow.db") == f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def test_resume_without_a_sweep_folder_is_a_clear_error(offline, capsys):
    rc = _sweep([*CI, "sweep.resume=true", f"sweep.storage_path={offline['tmp'] / 'nothing'}"])
    assert rc == 2
    assert "no sweep to resume" in capsys.readouterr().err
    assert not offline["db"].exists()
