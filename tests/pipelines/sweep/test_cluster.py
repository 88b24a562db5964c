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


def _machine_address() -> str:
    """The address ``ray start`` registers a node of this machine under (Ray's own resolution)."""
    from ray._private.services import node_ip_address_from_perspective

    return node_ip_address_from_perspective()


def test_a_loopback_server_is_accepted_when_the_nodes_are_this_machines_network_address():
    here = _machine_address()
    assert cluster.on_this_host(here) and cluster.on_this_host("127.0.0.1") and cluster.on_this_host("localhost")
    assert not cluster.on_this_host("203.0.113.7")  # TEST-NET-3: no interface of any machine holds it
    assert not cluster.on_this_host("no-such-host.invalid")
    # `ray start --head` then RAY_ADDRESS=127.0.0.1:P (or the address ray start prints): the node is this machine
    cluster.check_tracking_for_cluster("http://127.0.0.1:5000", 1, "127.0.0.1:6379", [here])
    cluster.check_tracking_for_cluster("http://127.0.0.1:5000", 1, f"{here}:6379", [here])
    with pytest.raises(SweepError, match="loopback address"):
        cluster.check_tracking_for_cluster("http://127.0.0.1:5000", 2, "127.0.0.1:6379", [here, "203.0.113.7"])


def test_the_drivers_ray_token_is_found_in_rays_order_and_passed_on(tmp_path):
    home = tmp_path / "home"
    assert cluster.ray_token_source({}, home=home) is None
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text("abc")
    assert cluster.ray_token_source({}, home=home) == str(home / ".ray" / "auth_token")
    other = tmp_path / "tok"
    other.write_text("def")
    assert cluster.ray_token_source({"RAY_AUTH_TOKEN_PATH": str(other)}, home=home) == f"$RAY_AUTH_TOKEN_PATH ({other})"
    assert cluster.ray_token_source({"RAY_AUTH_TOKEN": "x", "RAY_AUTH_TOKEN_PATH": str(other)}) == "$RAY_AUTH_TOKEN"

    env = {"RAY_AUTH_TOKEN": "x"}
    assert cluster.use_token_auth(env) == "$RAY_AUTH_TOKEN" and env["RAY_AUTH_MODE"] == "token"
    env = {"RAY_AUTH_TOKEN": "x", "RAY_AUTH_MODE": "disabled"}  # the user's explicit choice stays
    assert cluster.use_token_auth(env) is None and env["RAY_AUTH_MODE"] == "disabled"
    env = {"RAY_AUTH_TOKEN_PATH": str(tmp_path / "missing")}
    assert cluster.use_token_auth(env) is None and "RAY_AUTH_MODE" not in env


def test_failures_to_join_become_one_line_with_the_cause_and_the_fix(tmp_path):
    from ray.exceptions import AuthenticationError

    def failed(cause: BaseException) -> ConnectionError:
        try:
            try:
                raise cause
            except Exception as inner:
                raise ConnectionError("Failed to connect to Ray cluster at 10.0.0.1:6379") from inner
        except ConnectionError as e:
            return e

    auth = AuthenticationError("RPC error: InvalidAuthToken: Authentication token is missing or incorrect.")
    no_token = str(cluster.join_error("127.0.0.1:6379", failed(auth), {"HOME": str(tmp_path)}))
    assert "requires token authentication and this driver has no token" in no_token
    assert "~/.ray/auth_token" in no_token and "RAY_AUTH_TOKEN=" in no_token and "\n" not in no_token
    wrong = str(cluster.join_error("127.0.0.1:6379", failed(auth), {"RAY_AUTH_TOKEN": "x"}))
    assert "refused this driver's token ($RAY_AUTH_TOKEN)" in wrong
    off = str(cluster.join_error("127.0.0.1:6379", failed(auth), {"RAY_AUTH_TOKEN": "x", "RAY_AUTH_MODE": "disabled"}))
    assert "RAY_AUTH_MODE=disabled here: unset RAY_AUTH_MODE" in off
    node = RuntimeError("No node info found matching attributes: '' when trying to resolve node to connect to.")
    msg = str(cluster.join_error("10.0.0.1:6379", failed(node)))
    assert "no node of it runs on this machine" in msg and "`ray start --address=10.0.0.1:6379`" in msg
    other = str(cluster.join_error("10.0.0.1:6379", failed(RuntimeError("boom\nlast words"))))
    assert other == "cannot join the Ray cluster at '10.0.0.1:6379': RuntimeError: last words"
