"""The cluster rules that need no cluster (pipelines/sweep/cluster.py)."""

import os
import sys

from pipelines.sweep import cluster


def test_workers_get_this_checkout_unless_pipelines_is_installed(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    env = cluster.worker_runtime_env()
    if cluster._importable_elsewhere("pipelines"):  # an installed project: Ray's prestarted workers import it
        assert env is None
    else:
        assert env["env_vars"]["PYTHONPATH"].split(os.pathsep) == [str(cluster.REPO), str(cluster.REPO / "src"),
                                                                     "/elsewhere"]
    assert cluster._importable_elsewhere("json") and not cluster._importable_elsewhere("no_such_package_xyz")
    assert "pipelines" in sys.modules  # found here through the checkout, which a worker elsewhere does not have


def test_feature_store_follows_the_cluster_size():
    assert cluster.Cluster(None, 1).feature_store("auto") == "disk"
    assert cluster.Cluster("10.0.0.1:6379", 3).feature_store("auto") == "object_store"
    assert cluster.Cluster(None, 1).feature_store("object_store") == "object_store"


def test_relative_stores_are_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cluster.absolute_tracking_uri("mlruns") == str(tmp_path / "mlruns")
    assert cluster.absolute_tracking_uri("http://h:5000") == "http://h:5000"
    assert cluster.is_local_store("sqlite:////x.db") and not cluster.is_local_store("https://h")
