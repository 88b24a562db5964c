"""Paths as users write them: one argument is one value (spaces, commas, parentheses, quotes, backslashes,
non-ASCII letters), only ``overrides`` is split (like shell words); relative paths are resolved against the
folder the user ran the command from -- also under ``mlflow run``, which switches to the project folder --
and errors show the absolute path tried."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipelines import config
from pradot.data import DatasetError, load_dataset
from tests.pipelines.test_train import client_for, mlflow_run

AWKWARD = [
    "/data/My Data",
    "/data/a,b",
    "/data/(1)",
    "/data/Bäder/日本",
    "/data/it's",
    r"C:\data\x",
    "/data/a=b",
    "/data/$x",
    "/data/[x]",
    "/data/{x}",
    "/data/a#b",
    "~/data",
    " /data/lead",
    "/data/trail ",
    "/data/a\\'b",
    "/data/end\\",
]


@pytest.mark.parametrize("value", AWKWARD)
def test_one_argument_is_one_value(value):
    (item,) = config.parse_overrides([f"tracking.model_name={value}"])
    assert config.compose("train", [item]).tracking.model_name == value


def test_typed_values_and_interpolations_keep_their_meaning():
    out = config.parse_overrides(
        [
            "model.alpha=0.5",
            "backbone.stages=[2,3]",
            "tracking.register=false",
            "backbone.weights_path=null",
            "tracking.model_name=${category}-x",
        ]
    )
    cfg = config.compose("train", out)
    assert cfg.model.alpha == 0.5 and list(cfg.backbone.stages) == [2, 3] and cfg.tracking.register is False
    assert cfg.backbone.weights_path is None and cfg.tracking.model_name == "screw_bag-x"


def test_only_the_overrides_parameter_is_split_like_shell_words():
    argv = ["data_root=/x/My Data", "overrides=experiment=ci cache.dir='/my cache' tracking.model_name=\"a b\" seed=3"]
    out = config.parse_overrides(argv)
    assert out == ["data_root=/x/My Data", "experiment=ci", "cache.dir=/my cache", "tracking.model_name=a b", "seed=3"]
    cfg = config.compose("train", out)
    assert (cfg.data_root, cfg.cache.dir, cfg.tracking.model_name, cfg.seed) == ("/x/My Data", "/my cache", "a b", 3)
    assert config.parse_overrides(["overrides="]) == []
    with pytest.raises(config.ConfigError, match="No closing quotation"):
        config.parse_overrides(["overrides=data_root='/x seed=1"])


def test_relative_paths_are_resolved_against_workdir_or_the_current_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = config.compose("train", config.parse_overrides(["data_root=My Data", "cache.dir=../c", "data=synthetic"]))
    assert cfg.data_root == str(tmp_path / "My Data") and cfg.cache.dir == str(tmp_path.parent / "c")
    assert cfg.data.root == str(tmp_path / "data" / "synthetic")  # the conf default, where the user stands
    assert cfg.workdir == str(tmp_path)  # logged with the config: where relative paths were resolved
    user = tmp_path / "user dir"
    cfg = config.compose(
        "sweep",
        config.parse_overrides(
            [
                f"workdir={user}",
                "data_root=d",
                "backbone.weights_path=~/w.pth",
                "data.root=file:///x/y",
                "cache.dir=/abs/cache",
                "sweep.resume_from=runs/s1",
            ]
        ),
    )
    assert cfg.workdir == str(user) and cfg.data_root == str(user / "d")
    # the sweep's folders too; a cloud URI stays a URI (Tune reads it)
    assert cfg.sweep.storage_path == str(user / ".ray_results") and cfg.sweep.resume_from == str(user / "runs/s1")
    assert config.compose("sweep", ["sweep.storage_path=s3://bucket/sweeps"]).sweep.storage_path == "s3://bucket/sweeps"
    assert cfg.backbone.weights_path == os.path.expanduser("~/w.pth")
    assert cfg.data.root == "file:///x/y" and cfg.cache.dir == "/abs/cache"  # URIs and absolute paths stay
    assert config.train_settings(
        config.compose("train", [f"workdir={user}", "data_root=d", "backbone=efficientnet_lite0"])
    ).data.root == str(user / "d")


def test_library_errors_show_the_absolute_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DatasetError, match=re.escape(f"data root {tmp_path / 'no such (dir)'} does not exist")):
        load_dataset("mvtec_ad", "no such (dir)", "part")


def _folder_dataset(root: Path) -> None:
    rng = np.random.default_rng(0)
    cat = root / "part"
    for sub in ("train/good", "test/good", "test/scratch", "ground_truth/scratch"):
        (cat / sub).mkdir(parents=True)
    for i in range(6):
        Image.fromarray(rng.integers(90, 140, (64, 64, 3), dtype=np.uint8)).save(cat / "train" / "good" / f"{i}.png")
    for i in range(2):
        Image.fromarray(rng.integers(90, 140, (64, 64, 3), dtype=np.uint8)).save(cat / "test" / "good" / f"{i}.png")
        img = rng.integers(90, 140, (64, 64, 3), dtype=np.uint8)
        img[20:34, 20:34] = (250, 30, 30)
        Image.fromarray(img).save(cat / "test" / "scratch" / f"{i}.png")
        m = np.zeros((64, 64), np.uint8)
        m[20:34, 20:34] = 255
        Image.fromarray(m).save(cat / "ground_truth" / "scratch" / f"{i}_mask.png")


TINY = (
    "overrides=backbone=efficientnet_lite0 backbone.stages=[2] data.image_size=64 model.n=1 model.batch_ratio=4 "
    "model.epochs=1 evaluation.figures=false evaluation.n_overlays=2 tracking.register=false "
    "tracking.include_backbone=false cache.dir='my cache/features'"
)


@pytest.mark.slow
@pytest.mark.usefixtures("sqlite_uri")  # the store at tmp_path/mlflow.db: a copy of the migrated template
def test_mlflow_run_with_a_relative_data_root_that_has_a_space(tmp_path):
    _folder_dataset(tmp_path / "My Data (2024), Bäder")
    proc = mlflow_run(
        tmp_path,
        "dataset=folder",
        "data_root=My Data (2024), Bäder",
        "category=part",
        TINY,
        env_extra={"PRADOT_DATA_ROOT": ""},
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    (run,) = client_for(tmp_path).search_runs([client_for(tmp_path).get_experiment_by_name("e2e").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["data.resolved_root"] == str(tmp_path / "My Data (2024), Bäder")
    params = run.data.params  # workdir: MLflow made "." absolute where `mlflow run` was started (tmp_path)
    assert params.get("resolved.workdir", params.get("workdir")) == str(tmp_path)
    assert (tmp_path / "my cache" / "features").is_dir()  # the relative cache.dir, where the user stands
    assert 0.0 <= run.data.metrics["seg_f1"] <= 1.0  # AD-style data with masks: SegF1 at the pixel threshold


@pytest.mark.usefixtures("sqlite_uri")  # the store at tmp_path/mlflow.db: a copy of the migrated template
def test_mlflow_run_error_shows_the_absolute_path(tmp_path):
    proc = mlflow_run(
        tmp_path, "dataset=folder", "data_root=no such (dir)", "category=part", TINY, env_extra={"PRADOT_DATA_ROOT": ""}
    )
    assert proc.returncode != 0
    assert f"data root {tmp_path / 'no such (dir)'} does not exist" in proc.stderr, proc.stderr[-3000:]


def test_a_config_file_in_another_encoding_is_named(tmp_path):
    from pipelines.paths import not_utf8_message

    (tmp_path / "experiment").mkdir()
    (tmp_path / "experiment" / "ok.yaml").write_text("a: 1\n")
    (tmp_path / "experiment" / "mine.yaml").write_bytes("# café\nmodel:\n  n: 2\n".encode("utf-16"))
    msg = not_utf8_message(tmp_path)
    assert str(tmp_path / "experiment" / "mine.yaml") in msg and "utf-16" in msg and "ok.yaml" not in msg
    assert "Save it as UTF-8" in msg
