"""predict on a Ray cluster (``ray=true`` / ``ray=<address>``, pipelines/predict_ray.py): the setting, the actor
plan and a cluster that does not answer need no cluster; one end-to-end test on a local cluster of two nodes
(``ray.cluster_utils.Cluster``, one CPU each) checks that the distributed predict writes what the local
predict writes, file for file, and that its folder resumes."""

from __future__ import annotations

import csv
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipelines import checks, cli, predict
from pipelines.predict_ray import actor_plan, ray_target

NAMES = [b"a_good.png", b"caf\xe9.png", b"=HYPERLINK(1).png", b"sub/d.png", b"sub/e.jpg", b"f.png"]


# ------------------------------------------------------------------------------------------- no cluster
def test_the_ray_setting_is_false_true_or_an_address():
    assert ray_target(False) == ray_target("false") == ray_target(None) == (False, None)
    assert ray_target(True) == ray_target("true") == ray_target("yes") == (True, None)
    assert ray_target("10.0.0.1:6379") == (True, "10.0.0.1:6379")
    assert ray_target("ray://head:10001") == (True, "ray://head:10001")
    assert ray_target("head") == (True, "head") and ray_target("local") == (True, "local")
    for bad in ("10.0.0.1:notaport", "a host:6379", "h:99999"):
        with pytest.raises(checks.ConfigError, match="is not a Ray cluster address; give ray=true"):
            ray_target(bad)
    with pytest.raises(checks.ConfigError, match="ray_actors=2 sizes the Ray path"):
        predict._ray_settings({"ray": False, "ray_actors": 2})
    assert predict._ray_settings({"ray": "h:1", "ray_actors": "3"}) == {
        "ray": True,
        "ray_address": "h:1",
        "ray_actors": 3,
    }


def test_one_actor_per_gpu_else_per_node_with_a_cpu():
    head, w4, w8 = {"CPU": 0.0, "memory": 1e9}, {"CPU": 4.0}, {"CPU": 8.0}
    plan = actor_plan([head, w4, w8], "auto")
    assert (plan.actors, plan.num_cpus, plan.num_gpus, plan.device) == (2, 4.0, 0.0, "cpu")  # the smallest node
    plan = actor_plan([head, w4, w8], "auto", actors=6)  # 3 per node when spread: 4 // 3 CPUs each
    assert (plan.actors, plan.num_cpus) == (6, 1.0)
    with pytest.raises(cli.UsageError, match="ray_actors=13 do not fit"):
        actor_plan([w4, w8], "auto", actors=13)
    gpus = [{"CPU": 16.0, "GPU": 2.0}, {"CPU": 16.0, "GPU": 1.0}]
    plan = actor_plan(gpus, "auto")
    assert (plan.actors, plan.num_cpus, plan.num_gpus, plan.device) == (3, 1.0, 1.0, "cuda")
    assert actor_plan(gpus, "cpu").num_gpus == 0.0 and actor_plan(gpus, "cpu").actors == 2
    with pytest.raises(cli.UsageError, match="ray_actors=4 but the Ray cluster has 3 GPUs"):
        actor_plan(gpus, "cuda", actors=4)
    with pytest.raises(cli.UsageError, match="device=cuda but the Ray cluster has no GPU"):
        actor_plan([w4], "cuda")
    with pytest.raises(cli.UsageError, match="no node with a CPU"):
        actor_plan([head], "auto")


def test_a_cluster_that_does_not_answer_is_refused_before_any_work(tmp_path, monkeypatch, capsys):
    from tests.helpers import free_port

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    address, out = f"127.0.0.1:{free_port()}", tmp_path / "out"  # nothing listens there
    argv = [f"model_uri={tmp_path}", f"input={tmp_path / 'parts'}", f"output={out}", f"ray={address}"]
    assert predict.main([*argv, "tracking.enabled=false"]) == cli.EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert f"cannot reach the Ray cluster at '{address}' (ray)" in err and "Traceback" not in err
    assert "set ray=true with RAY_ADDRESS unset to run predict on a private local Ray" in err and not out.exists()
    monkeypatch.setenv("RAY_ADDRESS", address)
    assert predict.main([*argv[:3], "ray=true", "tracking.enabled=false"]) == cli.EXIT_BAD_INPUT
    assert f"'{address}' ($RAY_ADDRESS)" in capsys.readouterr().err and not out.exists()


# ------------------------------------------------------------------------------------------- two nodes
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, mlflow_db_template):
    """A logged PRADOT model folder (tiny random backbone), as downloaded from the store."""

    from pradot import PRADOT, PRADOTConfig
    from pradot.backbone import load_backbone
    from tests.helpers import copy_store, logged_model_folder

    tmp = tmp_path_factory.mktemp("model")
    cfg = PRADOTConfig(backbone="tiny_random", stages=(2,), image_size=32, n=1, batch_size=2, epochs=1)
    path = PRADOT(cfg, backbone=load_backbone("tiny_random", (2,))).save(tmp / "m.pt")
    return logged_model_folder(path, tmp, copy_store(mlflow_db_template, tmp))


@pytest.fixture()
def images(tmp_path) -> Path:
    """Odd names, a subfolder, a JPEG of another size, and a corrupt file in the middle of a batch."""
    inp = tmp_path / "parts"
    (inp / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i, name in enumerate(NAMES):
        img = Image.fromarray(rng.integers(0, 255, (40 + 4 * i, 48, 3), dtype=np.uint8))
        img.save(os.path.join(os.fsencode(inp), name), format="JPEG" if name.endswith(b".jpg") else "PNG")
    (inp / "b_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return inp


def _predict(model: Path, inp: Path, out: Path, *extra: str) -> int:
    argv = [f"model_uri={model}", f"input={inp}", f"output={out}", "batch_size=2", "device=cpu"]
    return predict.main([*argv, "tracking.enabled=false", *extra])


def _files(root: Path) -> dict[bytes, bytes]:
    broot = os.fsencode(root)
    return {
        os.path.relpath(os.path.join(d, f), broot): Path(os.fsdecode(os.path.join(d, f))).read_bytes()
        for d, _, names in os.walk(broot)
        for f in names
    }


def _rows(out: Path) -> dict[str, dict]:
    with open(out / "scores.csv", newline="", encoding="utf-8") as f:
        return {r["path"]: r for r in csv.DictReader(f)}


def _assert_same_outputs(local: Path, dist: Path, *, batches_alike: bool = True) -> None:
    """The same files; maps to float tolerance; the rest byte for byte when the images were scored in the same
    batches (else a score's last digits, and so a mask or overlay pixel at the threshold, may differ)."""
    import tifffile

    want, got = _files(local), _files(dist)
    assert sorted(got) == sorted(want)  # no other file (no temporary name left behind)
    for rel, data in want.items():
        if rel.startswith(b"maps/"):  # the maps to float tolerance (they are the same bytes when the batches are)
            a, b = (tifffile.imread(Path(os.fsdecode(os.path.join(os.fsencode(r), rel)))) for r in (local, dist))
            np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
        elif batches_alike or rel in (b"errors.csv", b"predict.json"):  # scores.csv, masks and overlays too
            assert got[rel] == data, rel
    a, b = _rows(local), _rows(dist)
    assert a.keys() == b.keys()
    for k in a:
        for c in a[k]:
            same = float(b[k][c]) == pytest.approx(float(a[k][c]), rel=1e-5) if "score" in c else b[k][c] == a[k][c]
            assert same, (k, c, a[k][c], b[k][c])


@pytest.mark.slow
def test_two_nodes_write_what_the_local_predict_writes(model_dir, images, tmp_path, monkeypatch, capsys):
    import ray._private.ray_constants
    import torch
    from ray.cluster_utils import Cluster

    local, dist = tmp_path / "local", tmp_path / "ray"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each actor (one CPU each: Ray sets OMP_NUM_THREADS=1): the same float sums
    try:
        assert _predict(model_dir, images, local) == 0
    finally:
        torch.set_num_threads(threads)
    with open(local / "errors.csv", encoding="utf-8") as f:
        assert [r["path"] for r in csv.DictReader(f)] == ["b_broken.png"]
    short = Path(tempfile.mkdtemp(prefix="rp", dir="/tmp"))  # Ray's socket paths must stay short
    for k in ("RAY_ADDRESS", "MLFLOW_RUN_ID"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("RAY_TMPDIR", str(short))
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    # the cluster is on 127.0.0.1: as predict's connect sets it before Ray is imported in a process of its own,
    # the driver keeps the loopback address (Ray read this setting when this test process imported it)
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    monkeypatch.setattr(ray._private.ray_constants, "ENABLE_RAY_CLUSTER", False)
    small = {"num_cpus": 1, "object_store_memory": 80 * 2**20, "node_ip_address": "127.0.0.1"}
    cluster = Cluster(initialize_head=True, head_node_args={**small, "include_dashboard": False})
    try:
        cluster.add_node(**small)
        assert _predict(model_dir, images, dist, f"ray={cluster.address}") == 0
        summary = capsys.readouterr().out
        assert "ray: 2 actors (1 CPU, 0 GPU each); the images were scored on 2 node(s)" in summary
        _assert_same_outputs(local, dist)
    finally:
        cluster.shutdown()
        shutil.rmtree(short, ignore_errors=True)
    # its folder stopped after two rows, the third cut mid-line and a kept row's overlay lost: resumed (here by
    # the local path, the driver's code both paths share) to what the local predict wrote
    lines = (dist / "scores.csv").read_text(encoding="utf-8").splitlines(keepends=True)
    (dist / "scores.csv").write_text("".join(lines[:3]) + lines[3][:15], encoding="utf-8")
    kept = next(csv.DictReader([lines[0], lines[1]]))
    lost = next(csv.DictReader([lines[0], lines[2]]))
    (dist / lost["overlay"]).unlink()
    before = os.stat(dist / kept["map"]).st_mtime_ns
    assert _predict(model_dir, images, dist, "resume=true") == 0
    assert os.stat(dist / kept["map"]).st_mtime_ns == before  # kept, not scored again
    _assert_same_outputs(local, dist, batches_alike=False)
