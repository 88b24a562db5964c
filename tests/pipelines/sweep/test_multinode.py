"""The sweep on a simulated Ray cluster of several nodes (``multinode.py``: a head without CPUs and two worker
nodes of one CPU each, built as Ray's cluster utilities build them, all on 127.0.0.1) with a real
``mlflow server`` behind a proxy that demands basic-auth credentials, as ``python pipelines/sweep.py`` runs
it (``RAY_ADDRESS``, ``MLFLOW_TRACKING_URI``, ``MLFLOW_TRACKING_USERNAME/PASSWORD`` in the driver's
environment only; the nodes have neither the credentials nor this checkout on their ``PYTHONPATH``).

One cluster for the module, in this order: an undisturbed sweep (trials on both workers, runs and versions
on the server), the same sweep with a worker killed mid-trial (retried from its checkpoint on the other
worker: the same registered banks), a node without the shared folders (refused before any trial), a local
store (refused), and a sweep without ``RAY_ADDRESS`` next to the running cluster (a private Ray).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest

from pipelines import config
from pipelines.sweep import evalset, plan
from tests.pipelines.sweep.multinode import AuthProxy, RayCluster, mlflow_server, unshare_prefix, wait_for

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[3]
MODEL = "pradot-synthetic-screw_bag"
EPOCHS = 10
# FIFO and 2 trials (TPE's first trials are seeded random draws): the registered banks depend only on the seed
SWEEP = [
    "experiment=ci",
    "sweep=ci",
    "sweep.scheduler.type=fifo",
    "sweep.num_samples=2",
    "sweep.max_concurrent_trials=2",
    f"model.epochs={EPOCHS}",
    "sweep.top_k=1",
    "sweep.seed=0",
]


@pytest.fixture(scope="module")
def sim(tmp_path_factory, mlflow_db_template):
    from tests.helpers import copy_store

    root = tmp_path_factory.mktemp("multinode")
    # the nodes are other machines: no tracking settings, no Ray settings of this process, no checkout on the path
    base = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RAY_", "PYTHONPATH"))}
    ray_env = {
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": uuid.uuid4().hex,
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
    }
    started, password = [], uuid.uuid4().hex
    try:
        copy_store(mlflow_db_template, root)  # the server's backend store, migrated
        server, upstream = mlflow_server(root, base)
        started.append(server)
        proxy = AuthProxy(upstream, "alice", password)
        started.append(proxy)
        cluster = RayCluster(root, {**base, **ray_env}, head_cpus=0)
        started.append(cluster)
        ids = {"a": cluster.add_worker("a"), "b": cluster.add_worker("b")}
        cfg = config.compose("sweep", [*SWEEP, f"data.root={root / 'data'}"])
        evalset.open_data(cfg, plan.sweep_plan(cfg))  # the CI dataset, made once

        def up():
            try:
                return urllib.request.urlopen(f"{upstream}/health", timeout=2).status == 200
            except OSError:
                return False

        wait_for(up, 120, "mlflow server", server.proc, server.log)
        driver = {
            **os.environ,
            **ray_env,
            "RAY_ADDRESS": cluster.address,
            "RAY_TMPDIR": str(cluster.temp_dir),
            "MLFLOW_TRACKING_URI": proxy.uri,
            "MLFLOW_TRACKING_USERNAME": "alice",
            "MLFLOW_TRACKING_PASSWORD": password,
            "TQDM_DISABLE": "1",
        }
        for k in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"):
            driver.pop(k, None)
        for shared in ("results", "cache"):  # the shared storage: a test may mount over it before any sweep ran
            (root / shared).mkdir(exist_ok=True)
        yield SimpleNamespace(
            root=root,
            cluster=cluster,
            proxy=proxy,
            upstream=upstream,
            ids=ids,
            driver=driver,
            results=root / "results",
            cache=root / "cache",
        )
    finally:
        for s in reversed(started):
            s.stop()


def _args(sim, name: str, *extra: str) -> list[str]:
    return [
        *SWEEP,
        f"data.root={sim.root / 'data'}",
        f"cache.dir={sim.cache}",
        f"sweep.storage_path={sim.results}",
        f"sweep.name={name}",
        f"tracking.experiment_name={name}",
        *extra,
    ]


def _sweep(sim, name: str, *extra: str, env=None, background: bool = False):
    """``python pipelines/sweep.py ...`` as a user runs it on the cluster; its output in ``<root>/<name>.log``."""
    with open(sim.root / f"{name}.log", "w") as log:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(
            [sys.executable, str(REPO / "pipelines" / "sweep.py"), *_args(sim, name, *extra)],
            env=env or sim.driver,
            cwd=sim.root,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
        )
    if not background:
        proc.wait(600)
    return proc


def _output(sim, name: str) -> str:
    text = (sim.root / f"{name}.log").read_text()
    print(f"--- {name} ---\n{text[-6000:]}")  # shown when a test fails
    return text


def _client(sim):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=sim.upstream, registry_uri=sim.upstream)


def _runs(sim, name: str):
    client = _client(sim)
    exp = client.get_experiment_by_name(name)
    runs = client.search_runs([exp.experiment_id], max_results=1000) if exp else []
    return (
        [r for r in runs if r.data.tags.get("pradot.sweep") == "true"],
        [r for r in runs if "mlflow.parentRunId" in r.data.tags],
    )


def _registered_bank(sim, parent_id: str) -> dict:
    """The sweep's registered bank (``sweep.top_k=1``): ``{stage: prototype features}``."""
    import mlflow

    from pradot.model import PRADOT

    (v,) = [v for v in _client(sim).search_model_versions(f"name='{MODEL}'") if v.tags.get("sweep_run_id") == parent_id]
    source = _client(sim).get_model_version_download_uri(MODEL, v.version)
    folder = mlflow.artifacts.download_artifacts(
        source, tracking_uri=sim.upstream, dst_path=str(sim.root / f"dl-{v.version}")
    )
    model = PRADOT.load(next(Path(folder).rglob("*.pt")))
    return {s: model.banks[s].features.clone() for s in model.banks}


def _final_banks(sim, name: str) -> dict[str, dict]:
    """Every trial's bank at its last checkpoint in the sweep's folder, keyed by its hyper-parameters."""
    from pradot.checkpoint import load_state

    out = {}
    for trial in (sim.results / name).glob("trial_*"):
        last = max(trial.glob("checkpoint_*"), key=lambda p: p.name)
        meta = json.loads((last / "trial.json").read_text())
        out[json.dumps(meta["hparams"], sort_keys=True)] = {
            s: b["features"] for s, b in load_state(last / "model.pt")["banks"].items()
        }
    return out


def _same(a: dict, b: dict) -> bool:
    return sorted(a) == sorted(b) and all((a[k] == b[k]).all() for k in a)


@pytest.fixture(scope="module")
def calm(sim):
    t0 = time.time()
    proc = _sweep(sim, "calm")
    out = _output(sim, "calm")
    parents, children = _runs(sim, "calm")
    return SimpleNamespace(rc=proc.returncode, out=out, parents=parents, children=children, seconds=time.time() - t0)


def test_trials_land_on_both_nodes_and_their_runs_and_versions_reach_the_server(sim, calm):
    assert calm.rc == 0, calm.out
    (parent,) = calm.parents
    assert parent.info.status == "FINISHED" and parent.data.tags["pradot.feature_store"] == "object_store"
    assert {c.data.tags["pradot.node_id"] for c in calm.children} == {sim.ids["a"], sim.ids["b"]}
    for c in calm.children:  # where each ran and why it ended
        t = c.data.tags
        assert (c.info.status, t["pradot.trial_status"], t["pradot.epochs_trained"]) == (
            "FINISHED",
            "completed",
            str(EPOCHS),
        )
        assert t["pradot.hostname"] and int(t["pradot.pid"]) > 0 and t["pradot.attempts"] == "1"
    (version,) = [
        v
        for v in _client(sim).search_model_versions(f"name='{MODEL}'")
        if v.tags.get("sweep_run_id") == parent.info.run_id
    ]
    assert version.run_id in {c.info.run_id for c in calm.children} and version.tags["sweep_rank"] == "1"
    # every request of the driver and of the trials carried the credentials, which only the driver had
    assert sim.proxy.refused == []
    with pytest.raises(urllib.error.HTTPError, match="401"):
        urllib.request.urlopen(f"{sim.proxy.uri}/api/2.0/mlflow/experiments/search?max_results=1", timeout=10)
    import pandas as pd

    table = pd.read_csv(_client(sim).download_artifacts(parent.info.run_id, "sweep/trials.csv", str(sim.root)))
    assert set(table["node_id"]) == {sim.ids["a"], sim.ids["b"]} and set(table["trial_status"]) == {"completed"}


def test_a_node_lost_mid_trial_is_retried_from_its_checkpoint_with_the_same_banks(sim, calm):
    assert calm.rc == 0, calm.out
    proc = _sweep(sim, "lost", background=True)
    client, killed, deadline = _client(sim), None, time.time() + 400
    while killed is None and time.time() < deadline and proc.poll() is None:
        _, children = _runs(sim, "lost")
        on_b = [
            c
            for c in children
            if c.data.tags.get("pradot.node_id") == sim.ids["b"]
            and c.info.status == "RUNNING"
            and 3 <= c.data.metrics.get("epoch", 0) < EPOCHS - 1
        ]
        if on_b:
            sim.cluster.nodes["b"].kill()  # the machine dies: raylet, object store and the trial's worker
            killed = on_b[0]
        time.sleep(0.1)
    proc.wait(600)
    out = _output(sim, "lost")
    assert killed is not None, "no trial was caught mid-way on node b"
    assert proc.returncode == 0, out
    (parent,), children = _runs(sim, "lost")
    run = client.get_run(killed.info.run_id)
    t = run.data.tags
    assert (run.info.status, t["pradot.trial_status"], t["pradot.attempts"]) == ("FINISHED", "completed", "2")
    assert t["pradot.node_id"] == sim.ids["a"] and int(t["pradot.restored_from_epoch"]) >= 3
    assert f"({sim.ids['b'][:12]})" in t["pradot.retry_errors"] and "infrastructure" in t["pradot.retry_errors"]
    steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "val_auroc"))
    assert steps == list(range(1, EPOCHS + 1))  # every epoch once, across both attempts
    assert parent.data.metrics["trials_retried"] == 1 and parent.data.metrics["trials_lost"] == 0
    # the banks of every trial, and the registered one, are the undisturbed sweep's
    calm_banks, lost_banks = _final_banks(sim, "calm"), _final_banks(sim, "lost")
    assert len(calm_banks) == 2 and sorted(lost_banks) == sorted(calm_banks)
    assert all(_same(lost_banks[k], calm_banks[k]) for k in calm_banks)
    assert _same(_registered_bank(sim, parent.info.run_id), _registered_bank(sim, calm.parents[0].info.run_id))


@pytest.mark.xfail(
    strict=False,
    reason="known intermittent bug (issue 21 note, 2026-12-08): the resumed trial sometimes ends at its checkpoint's "
    "epoch ('completed after 4 iterations', tagged stopped_early) instead of training on to model.epochs",
)
def test_a_trial_lost_after_its_retries_stops_the_sweep_until_resumed(sim, calm):
    """No retry left (sweep.max_failures=0) and the trial's worker killed: the sweep says it lost the trial,
    registers nothing and exits 1; resumed, the trial continues from its checkpoint to the undisturbed bank."""
    import signal

    assert calm.rc == 0, calm.out
    proc = _sweep(sim, "lost0", "sweep.num_samples=1", "sweep.max_failures=0", background=True)
    killed, deadline = None, time.time() + 300
    while killed is None and time.time() < deadline and proc.poll() is None:
        _, children = _runs(sim, "lost0")
        mid = [c for c in children if c.info.status == "RUNNING" and 3 <= c.data.metrics.get("epoch", 0) < EPOCHS - 1]
        if mid:
            os.kill(int(mid[0].data.tags["pradot.pid"]), signal.SIGKILL)  # the trial's worker process dies
            killed = mid[0]
        time.sleep(0.1)
    proc.wait(600)
    out = _output(sim, "lost0")
    assert killed is not None, "the trial was not caught mid-way"
    assert proc.returncode == 1 and "1 trial(s) lost to infrastructure" in out and "sweep.resume=true" in out, out
    client = _client(sim)
    (parent,), (child,) = _runs(sim, "lost0")
    assert parent.info.status == "FAILED" and parent.data.tags["pradot.sweep_state"] == "incomplete"
    assert parent.data.tags["pradot.lost_trials"] == child.data.tags["pradot.trial_id"]
    assert (child.info.status, child.data.tags["pradot.trial_status"], child.data.tags["pradot.failure"]) == (
        "FAILED",
        "failed",
        "infrastructure",
    )
    assert "Actor" in child.data.tags["pradot.error"]  # Ray's word for the dead worker
    assert not [
        v for v in client.search_model_versions(f"name='{MODEL}'") if v.tags.get("sweep_run_id") == parent.info.run_id
    ]
    import pandas as pd

    table = pd.read_csv(client.download_artifacts(parent.info.run_id, "sweep/trials.csv", str(sim.root / "lost0-dl")))
    assert list(table["status"]) == ["ERROR"] and list(table["failure"]) == ["infrastructure"]

    proc = _sweep(sim, "lost0-resume", "sweep.resume=true", f"sweep.resume_from={sim.results / 'lost0'}")
    out = _output(sim, "lost0-resume")
    assert proc.returncode == 0, out
    run = client.get_run(child.info.run_id)
    assert (run.info.status, run.data.tags["pradot.trial_status"], run.data.tags["pradot.attempts"]) == (
        "FINISHED",
        "completed",
        "2",
    )
    assert int(run.data.tags["pradot.restored_from_epoch"]) >= 3 and "pradot.error" not in run.data.tags
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "val_auroc")) == list(range(1, EPOCHS + 1))
    (bank,) = _final_banks(sim, "lost0").items()
    assert _same(bank[1], _final_banks(sim, "calm")[bank[0]])  # the undisturbed sweep's trial with these values
    assert client.get_run(parent.info.run_id).data.tags["pradot.sweep_state"] == "finished"


def test_a_node_without_the_shared_storage_is_refused_before_any_trial(sim):
    prefix = unshare_prefix()
    if prefix is None:
        pytest.skip("no private mount namespace here (unshare -m / -Urm): cannot simulate a node without NFS")
    sim.results.mkdir(exist_ok=True)
    node = sim.cluster.add_worker("c", prefix=prefix, tmpfs=[sim.results, sim.cache])
    try:
        proc = _sweep(sim, "refused", "sweep.feature_store=disk")
        out = _output(sim, "refused")
        assert proc.returncode == 2, out
        assert "node(s) of the Ray cluster cannot reach what the trials need; refused before any trial" in out
        lines = [line for line in out.splitlines() if f"({node[:12]})" in line]
        assert any("sweep storage" in line for line in lines) and any("cache.dir" in line for line in lines), out
        assert not any(sim.ids[n][:12] in out for n in ("a",))  # the nodes that share the folders are fine
        assert _runs(sim, "refused") == ([], []) and not (sim.results / "refused").exists()
    finally:
        sim.cluster.nodes["c"].stop()


def test_a_local_tracking_store_on_the_cluster_is_refused_with_the_fix(sim):
    db = sim.root / "local.db"
    proc = _sweep(sim, "local-store", env={**sim.driver, "MLFLOW_TRACKING_URI": f"sqlite:///{db}"})
    out = _output(sim, "local-store")
    assert proc.returncode == 2 and "is a local file/SQLite store" in out and "--host 0.0.0.0" in out, out
    assert not db.exists()


_PRIVATE = """
import json, ray
from pipelines.sweep.cluster import connect
from pipelines.sweep.plan import RaySettings
with connect(RaySettings(num_cpus=1)) as c:
    print(json.dumps({"address": c.address, "nodes": [n["NodeID"] for n in ray.nodes()],
                      "cpus": ray.cluster_resources().get("CPU")}))
"""


def test_without_an_address_the_sweep_starts_a_private_ray_next_to_a_running_one(sim):
    """The running cluster advertises itself where ``ray.init()`` without an address looks for one (its
    address file under ``$RAY_TMPDIR``); the sweep's ``connect`` starts a Ray of its own all the same."""
    assert (sim.cluster.temp_dir / "ray" / "ray_current_cluster").is_file()
    env = {k: v for k, v in sim.driver.items() if k != "RAY_ADDRESS"}  # RAY_TMPDIR: where the running cluster is
    out = subprocess.run([sys.executable, "-c", _PRIVATE], env=env, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["address"] is None and got["cpus"] == 1  # sweep.ray.num_cpus honoured
    assert len(got["nodes"]) == 1 and got["nodes"][0] not in sim.cluster.node_ids.values()
