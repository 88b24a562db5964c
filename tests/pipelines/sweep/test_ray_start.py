"""The README's one-machine cluster recipe with the real ``ray`` CLI: a token in ``~/.ray/auth_token``
(``ray get-auth-token --generate``), ``ray start --head --port=P`` (which then turns token authentication
on and registers the node under the machine's network address, not 127.0.0.1), an ``mlflow server`` on
127.0.0.1, and the sweep with ``RAY_ADDRESS=127.0.0.1:P`` and nothing else set: no ``RAY_AUTH_MODE``, no
node address. A driver without the head's token gets one line naming the cause and the fix.

``ray start --block`` instead of ``ray start`` + ``ray stop``: the same head in the foreground, so that
stopping it stops this cluster only (``ray stop`` stops every Ray of the machine). ``$HOME`` and
``$RAY_TMPDIR`` are the test's own (the token file and Ray's session files of this machine's users are left
alone).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest

from pipelines import config
from pipelines.sweep import evalset, plan
from tests.pipelines.sweep.multinode import BIN, Service, free_port, mlflow_server, wait_for

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[3]
SWEEP = ["experiment=ci", "sweep=ci", "sweep.num_samples=1", "sweep.top_k=1"]


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    root = tmp_path_factory.mktemp("ray_start")
    home = root / "home"
    home.mkdir()
    temp_dir = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))  # short: Ray's socket paths have a length limit
    # this process's tracking and Ray settings are not the user's shell
    base = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RAY_"))}
    base.update(HOME=str(home), RAY_TMPDIR=str(temp_dir), RAY_USAGE_STATS_ENABLED="0", TQDM_DISABLE="1")
    started: list = []
    try:
        subprocess.run([str(BIN / "ray"), "get-auth-token", "--generate"], env=base, check=True, capture_output=True)
        assert (home / ".ray" / "auth_token").is_file()
        port = free_port()
        head_cmd = [str(BIN / "ray"), "start", "--head", f"--port={port}", "--num-cpus=2", "--block"]
        head = Service([*head_cmd, "--include-dashboard=false"], root / "ray-head.log", base)
        started.append(head)
        server, uri = mlflow_server(root, base)
        started.append(server)
        cfg = config.compose("sweep", [*SWEEP, f"data.root={root / 'data'}"])
        evalset.open_data(cfg, plan.sweep_plan(cfg))  # the CI dataset, made while the services start

        def mlflow_up():
            try:
                return urllib.request.urlopen(f"{uri}/health", timeout=2).status == 200
            except OSError:
                return False

        wait_for(lambda: "block forever" in head.log.read_text(), 120, "ray head", head.proc, head.log)
        wait_for(mlflow_up, 120, "mlflow server", server.proc, server.log)
        node_ip = re.search(r"Local node IP: (\S+)", head.log.read_text()).group(1)
        yield SimpleNamespace(root=root, base=base, port=port, uri=uri, node_ip=node_ip, head=head)
    finally:
        for s in reversed(started):
            s.stop()
        shutil.rmtree(temp_dir, ignore_errors=True)


def _sweep(recipe, name: str, **env) -> subprocess.CompletedProcess:
    """``python pipelines/sweep.py`` with the recipe's two variables (and ``env``), as a user runs it."""
    driver = {**recipe.base, "RAY_ADDRESS": f"127.0.0.1:{recipe.port}", "MLFLOW_TRACKING_URI": recipe.uri, **env}
    args = [
        *SWEEP,
        f"data.root={recipe.root / 'data'}",
        f"cache.dir={recipe.root / 'cache'}",
        f"sweep.storage_path={recipe.root / 'results'}",
        f"sweep.name={name}",
        f"tracking.experiment_name={name}",
    ]
    proc = subprocess.run(
        [sys.executable, str(REPO / "pipelines" / "sweep.py"), *args],
        env=driver,
        cwd=recipe.root,
        capture_output=True,
        text=True,
        timeout=500,
    )
    print(f"--- {name} (rc {proc.returncode}) ---\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")  # shown on failure
    return proc


def test_a_sweep_finishes_on_a_head_started_with_ray_start(recipe):
    assert "Token authentication is enabled" in recipe.head.log.read_text()  # the head demands the token
    proc = _sweep(recipe, "recipe")
    assert proc.returncode == 0
    assert "PRADOT sweep finished" in proc.stdout
    assert "this driver sends the token of" in proc.stderr  # found in ~/.ray/auth_token, passed on

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=recipe.uri, registry_uri=recipe.uri)
    exp = client.get_experiment_by_name("recipe")
    runs = client.search_runs([exp.experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("pradot.sweep") == "true"]
    (trial,) = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert parent.info.status == "FINISHED" and trial.info.status == "FINISHED"
    # the trial ran on the node `ray start` registered, under the address Ray resolved for it
    assert trial.data.tags["pradot.node_ip"] == recipe.node_ip
    versions = client.search_model_versions("name='pradot-synthetic-screw_bag'")
    assert [v.tags.get("sweep_run_id") for v in versions] == [parent.info.run_id]


def test_a_driver_without_the_heads_token_gets_one_line(recipe):
    empty_home = recipe.root / "elsewhere"
    empty_home.mkdir(exist_ok=True)
    proc = _sweep(recipe, "no-token", HOME=str(empty_home))
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    (line,) = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
    assert f"cannot join the Ray cluster at '127.0.0.1:{recipe.port}'" in line
    assert "requires token authentication and this driver has no token" in line
    assert "RAY_AUTH_TOKEN" in line and "~/.ray/auth_token" in line
