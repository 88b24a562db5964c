"""The cluster rules that need no cluster (pipelines/sweep/cluster.py): tracking stores by MLflow's URI rules,
which of them a cluster refuses and with what fix, what the workers get from the driver's environment, the
cluster address and its probe."""

import os
import socket
import sys
import time

import pytest

from pipelines.sweep import cluster
from pipelines.sweep.plan import RaySettings
from pipelines.sweep.space import SweepError


def test_workers_get_this_checkout_unless_it_is_installed(monkeypatch):
    for k in list(os.environ):
        if k.startswith(cluster.FORWARDED_ENV_PREFIXES):
            monkeypatch.delenv(k)
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    env = cluster.worker_runtime_env()
    if cluster._importable_elsewhere("pipelines") and cluster._importable_elsewhere("pradot"):
        assert env is None  # this very checkout is installed: Ray's prestarted workers import it
    else:
        assert env["env_vars"]["PYTHONPATH"].split(os.pathsep) == [
            str(cluster.REPO),
            str(cluster.REPO / "src"),
            "/elsewhere",
        ]
    assert cluster._importable_elsewhere("json") and not cluster._importable_elsewhere("no_such_package_xyz")
    assert "pipelines" in sys.modules  # found here through the checkout, which a worker elsewhere does not have


def test_workers_get_the_drivers_tracking_credentials(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "t0k")
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "pw")
    monkeypatch.setenv("MLFLOW_TRACKING_INSECURE_TLS", "true")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    monkeypatch.setenv("UNRELATED_SECRET", "no")
    env = cluster.worker_runtime_env()["env_vars"]
    assert {
        k: env[k]
        for k in (
            "MLFLOW_TRACKING_TOKEN",
            "MLFLOW_TRACKING_USERNAME",
            "MLFLOW_TRACKING_PASSWORD",
            "MLFLOW_TRACKING_INSECURE_TLS",
            "MLFLOW_HTTP_REQUEST_TIMEOUT",
        )
    } == {
        "MLFLOW_TRACKING_TOKEN": "t0k",
        "MLFLOW_TRACKING_USERNAME": "alice",
        "MLFLOW_TRACKING_PASSWORD": "pw",
        "MLFLOW_TRACKING_INSECURE_TLS": "true",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
    }
    assert "UNRELATED_SECRET" not in env


def test_feature_store_follows_the_cluster():
    assert cluster.Cluster(None, 1).feature_store("auto") == "disk"  # a private local Ray
    assert cluster.Cluster("10.0.0.1:6379", 3).feature_store("auto") == "object_store"
    assert cluster.Cluster("10.0.0.1:6379", 1).feature_store("auto") == "object_store"  # nodes may join later
    assert cluster.Cluster(None, 1).feature_store("object_store") == "object_store"


@pytest.mark.parametrize(
    "uri, kind",
    [
        ("databricks", "databricks"),
        ("databricks-uc", "databricks"),
        ("databricks://profile", "databricks"),
        ("databricks-uc://profile", "databricks"),
        ("sqlite:///mlflow.db", "local"),
        ("mlruns", "local"),
        ("/abs/mlruns", "local"),
        ("file:///abs/mlruns", "local"),
        ("http://127.0.0.1:5000", "server"),
        ("https://tracking.example.com", "server"),
        ("postgresql://u:p@db:5432/mlflow", "server"),
    ],
)
def test_tracking_stores_by_mlflows_uri_rules(uri, kind):
    assert cluster.store_kind(uri) == kind


def test_relative_stores_are_made_absolute_and_nothing_else(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cluster.absolute_tracking_uri("mlruns") == str(tmp_path / "mlruns")
    assert cluster.absolute_tracking_uri("sqlite:///mlflow.db") == f"sqlite:///{tmp_path / 'mlflow.db'}"
    for uri in ("http://h:5000", "databricks", "databricks-uc", "databricks://p"):
        assert cluster.absolute_tracking_uri(uri) == uri  # not a path under the working directory
    assert not (tmp_path / "databricks").exists()
    assert cluster.is_local_store("sqlite:////x.db") and not cluster.is_local_store("https://h")


def test_local_stores_are_refused_on_any_existing_cluster():
    with pytest.raises(SweepError, match="local file/SQLite store") as e:
        cluster.check_tracking_for_cluster("sqlite:////tmp/x/mlflow.db", 1, "10.0.0.1:6379")  # only the head is up
    assert "mlflow server" in str(e.value) and "--host 0.0.0.0" in str(e.value)
    with pytest.raises(SweepError, match="local file/SQLite store"):
        cluster.check_tracking_for_cluster("/tmp/mlruns", 1, "ray://10.0.0.1:10001")
    with pytest.raises(SweepError, match="local file/SQLite store"):
        cluster.check_tracking_for_cluster("sqlite:////tmp/x/mlflow.db", 1, "127.0.0.1:6379")  # nodes may lack it
    cluster.check_tracking_for_cluster("sqlite:////tmp/x/mlflow.db", 1, None)  # a private local Ray
    cluster.check_tracking_for_cluster("http://10.0.0.2:5000", 3, "10.0.0.1:6379")
    cluster.check_tracking_for_cluster("databricks", 3, "10.0.0.1:6379")


def test_loopback_servers_are_refused_unless_every_node_is_on_this_machine():
    for uri in (
        "http://127.0.0.1:5000",
        "http://localhost:5000",
        "https://[::1]:5000",
        "postgresql://u:p@localhost/mlflow",
    ):
        with pytest.raises(SweepError, match="loopback address") as e:
            cluster.check_tracking_for_cluster(uri, 1, "10.0.0.1:6379")
        assert "export MLFLOW_TRACKING_URI=http://" in str(e.value) and "--host 0.0.0.0" in str(e.value)
    with pytest.raises(SweepError, match="loopback address"):  # a node joined from another machine
        cluster.check_tracking_for_cluster("http://127.0.0.1:5000", 2, "127.0.0.1:6379", ["127.0.0.1", "10.0.0.7"])
    cluster.check_tracking_for_cluster("http://127.0.0.1:5000", 2, "127.0.0.1:6379", ["127.0.0.1", "127.0.0.1"])
    cluster.check_tracking_for_cluster("http://127.0.0.1:5000", 1, "127.0.0.1:6379")  # before joining it
    cluster.check_tracking_for_cluster("http://127.0.0.1:5000", 1, None)  # a private local Ray


def test_cluster_address_and_its_probe(monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    assert cluster.cluster_address(RaySettings()) == "10.0.0.1:6379"
    assert cluster.cluster_address(RaySettings(address="ray://h:10001")) == "ray://h:10001"
    monkeypatch.setenv("RAY_ADDRESS", "local")
    assert cluster.cluster_address(RaySettings()) is None
    monkeypatch.delenv("RAY_ADDRESS")
    assert cluster.cluster_address(RaySettings()) is None
    assert cluster._host_port("ray://head:10001") == ("head", 10001)
    assert cluster._host_port("head") == ("head", 6379) and cluster._host_port("[::1]:7000") == ("::1", 7000)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{s.getsockname()[1]}"  # nothing listens there
    monkeypatch.setenv("RAY_ADDRESS", address)
    t0 = time.perf_counter()
    with pytest.raises(SweepError, match=f"cannot reach the Ray cluster at '{address}' \\(\\$RAY_ADDRESS\\)"):
        cluster.probe_address(address)
    assert time.perf_counter() - t0 < 10
