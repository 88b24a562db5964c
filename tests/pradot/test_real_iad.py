"""Real-IAD on a small generated copy in its exact layout (realiad_jsons/<variant>/<category>.json, images under
realiad_<resolution>/<prefix>/{OK,NG/<defect>}/S<id>/ with masks next to NG images): json variants, view
subsets, per-image samples and the per-sample (max over views) AUROC, and the errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

from pradot.data import DatasetError, load_dataset
from pradot.data.real_iad import parse_views
from pradot.engine import DataSpec, open_splits
from pradot.metrics.dataset import dataset_metrics

H, W = 12, 16
CAT = "audiojack"


def _jpg(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (H, W, 3), dtype=np.uint8)).save(path)


def _entry(folder: str, sid: int, view: int, cls: str, mask: str | None = "auto") -> dict:
    name = f"{CAT}_{sid:04d}_{'OK' if cls == 'OK' else 'NG'}_C{view}_2023102110{sid:02d}{view:02d}"
    image = f"{folder}/S{sid:04d}/{name}.jpg"
    mask_path = None if cls == "OK" else (f"{folder}/S{sid:04d}/{name}.png" if mask == "auto" else mask)
    return {"category": CAT, "anomaly_class": cls, "image_path": image, "mask_path": mask_path}


def make_real_iad(root: Path, resolution: str = "256") -> Path:
    """Two normal training samples, a normal and two defective test samples (5 views each); the json
    variants realiad_jsons (that split), realiad_jsons_sv (one view per sample) and realiad_jsons_fuiad_0.1
    (one defective sample in train)."""
    base = root / f"realiad_{resolution}" / CAT
    train = [_entry("OK", s, v, "OK") for s in (1, 3) for v in range(1, 6)]
    test = (
        [_entry("OK", 4, v, "OK") for v in range(1, 6)]
        + [_entry("NG/AK", 2, v, "AK") for v in range(1, 6)]
        + [_entry("NG/QS", 5, v, "QS") for v in range(1, 6)]
    )
    for i, e in enumerate(train + test):
        _jpg(base / e["image_path"], i)
        if e["mask_path"]:
            m = np.zeros((H, W), np.uint8)
            if not e["image_path"].endswith("01.jpg"):  # the defect is not visible from view C1: blank mask
                m[2:6, 3:9] = 255
            (base / e["mask_path"]).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(m).save(base / e["mask_path"])
    meta = {"prefix": CAT, "normal_class": "OK"}
    variants = {
        "realiad_jsons": {"meta": meta, "train": train, "test": test},
        "realiad_jsons_sv": {"meta": meta, "train": train[::5], "test": test[::5]},
        "realiad_jsons_fuiad_0.1": {"meta": meta, "train": train + test[5:10], "test": test[:5] + test[10:]},
    }
    for variant, doc in variants.items():
        path = root / "realiad_jsons" / variant / f"{CAT}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(doc, indent=1))
    return root


def test_every_view_is_a_sample(tmp_path):
    ds = load_dataset("real_iad", make_real_iad(tmp_path), CAT, resolution=256)
    assert load_dataset("realiad", tmp_path, CAT, resolution="256").kind == "real_iad"
    train, test = ds.samples("train"), ds.samples("test")
    assert len(train) == 10 and {s.label for s in train} == {0} and ds.samples("validation") == []
    assert len(test) == 15 and [s.anomaly_type for s in test].count("good") == 5
    ak = [s for s in test if s.anomaly_type == "AK"]
    assert len(ak) == 5 and all(s.label == 1 and s.defects for s in ak)
    assert (
        ak[0].image_path
        == tmp_path / "realiad_256" / CAT / "NG" / "AK" / "S0002" / f"{CAT}_0002_NG_C1_2023102110{2:02d}01.jpg"
    )
    assert ak[0].defects[0].mask_path == ak[0].image_path.with_suffix(".png")
    assert ds.load_channels(ak[1]).sum() == 24 and ds.load_channels(ak[0]).sum() == 0  # C1: blank
    assert len({ds.sample_group(s) for s in test}) == 3


def test_views_and_variants(tmp_path):
    make_real_iad(tmp_path)
    two = load_dataset("real_iad", tmp_path, CAT, resolution="256", views="C1,c3")
    assert len(two.samples("train")) == 4 and len(two.samples("test")) == 6
    assert {s.image_path.name.split("_")[3] for s in two.samples("test")} == {"C1", "C3"}
    assert parse_views([2, "C5"]) == ("C2", "C5") and parse_views(None) is None
    with pytest.raises(ValueError, match="unknown Real-IAD camera view 'C6'"):
        parse_views("C6")
    sv = load_dataset("real_iad", tmp_path, CAT, resolution="256", variant="realiad_jsons_sv")
    assert len(sv.samples("train")) == 2 and len(sv.samples("test")) == 3
    fuiad = load_dataset("real_iad", tmp_path, CAT, resolution="256", variant="realiad_jsons_fuiad_0.1")
    assert sorted(s.label for s in fuiad.samples("train")) == [0] * 10 + [1] * 5  # kept: the protocol's point
    explicit = load_dataset(
        "real_iad", tmp_path, CAT, resolution="256", json_dir=tmp_path / "realiad_jsons" / "realiad_jsons_sv"
    )
    assert explicit.json_path == sv.json_path


def test_per_image_and_per_sample_auroc(tmp_path):
    ds = load_dataset("real_iad", make_real_iad(tmp_path), CAT, resolution="256")
    test = ds.samples("test")
    # one defect is visible in a single view: per image it ranks badly, per sample (max over views) it is found
    score = {s.image_path: 0.1 * i for i, s in enumerate(test)}
    for s in test:
        if s.anomaly_type == "AK":
            score[s.image_path] = 0.0 if not s.image_path.stem.endswith("03") else 5.0
    maps = [np.full((H, W), score[s.image_path]) for s in test]
    metrics, notes = dataset_metrics(ds, test, maps)
    labels = [s.label for s in test]
    assert metrics["image_auroc"] == pytest.approx(roc_auc_score(labels, [score[s.image_path] for s in test]))
    groups: dict[str, list] = {}
    for s in test:
        groups.setdefault(str(s.image_path.parent), []).append(s)
    g_labels = [max(s.label for s in g) for g in groups.values()]
    g_scores = [max(score[s.image_path] for s in g) for g in groups.values()]
    assert metrics["sample_auroc"] == pytest.approx(roc_auc_score(g_labels, g_scores)) == 1.0
    assert metrics["image_auroc"] < 1.0
    assert any("2 anomalous test images have blank masks" in n for n in notes)  # the C1 views


def test_open_splits_with_loader_options(tmp_path):
    make_real_iad(tmp_path)
    spec = DataSpec(
        kind="real_iad",
        root=str(tmp_path),
        category=CAT,
        image_size=32,
        validation_fraction=0.25,
        options={"resolution": "256", "views": "C2,C4"},
    )
    splits = open_splits(spec)
    assert len(splits.train) + len(splits.validation) == 4 and len(splits.validation) == 1
    assert len(splits.test) == 6


def test_errors_say_what_was_expected(tmp_path):
    make_real_iad(tmp_path)
    with pytest.raises(
        DatasetError,
        match=r"Image folders found under .*: realiad_256 \(choose one with the "
        r"resolution option",
    ):
        load_dataset("real_iad", tmp_path, CAT)  # default resolution 1024
    with pytest.raises(
        DatasetError,
        match=r"Split files in .*realiad_jsons/realiad_jsons found: audiojack\. "
        r"Known real_iad categories: audiojack, bottle_cap",
    ):
        load_dataset("real_iad", tmp_path, "bottle_cap", resolution="256")
    with pytest.raises(
        DatasetError,
        match=r"variant 'realiad_jsons_xx' not found.*Variants found under .*: "
        r"realiad_jsons, realiad_jsons_fuiad_0\.1, realiad_jsons_sv",
    ):
        load_dataset("real_iad", tmp_path, CAT, resolution="256", variant="realiad_jsons_xx")
    doc_path = tmp_path / "realiad_jsons" / "realiad_jsons" / f"{CAT}.json"
    doc = json.loads(doc_path.read_text())
    doc["test"][7]["mask_path"] = doc["test"][7]["mask_path"].replace(".png", "_x.png")
    doc_path.write_text(json.dumps(doc))
    with pytest.raises(DatasetError, match=r"has no ground-truth mask: expected .*_x\.png"):
        load_dataset("real_iad", tmp_path, CAT, resolution="256")


def test_the_evaluator_takes_the_loaders_options(tmp_path, capsys):
    """python -m pradot.evaluate --dataset real_iad --option resolution=256 --option views=C1,C3: the maps of
    that selection are found and scored; without the option the 1024-px folder is missing (a clear error);
    an option the loader does not take is named."""
    import tifffile

    from pradot.evaluate import main

    make_real_iad(tmp_path)
    ds = load_dataset("real_iad", tmp_path, CAT, resolution="256", views="C1,C3")
    maps = tmp_path / "maps"
    for s in ds.samples("test"):
        path = maps / CAT / "test" / s.anomaly_type / f"{s.image_path.stem}.tiff"
        path.parent.mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(path, np.full((H, W), 1.0 if s.label else 0.0, np.float32))
    argv = [
        "--dataset",
        "real_iad",
        "--dataset-root",
        str(tmp_path),
        "--category",
        CAT,
        "--anomaly-maps",
        str(maps),
        "--output-dir",
        str(tmp_path / "out"),
        "--no-progress",
    ]
    assert main([*argv, "--option", "resolution=256", "--option", "views=C1,C3"]) == 0
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["image_auroc"] == 1.0
    assert main(argv) == 2 and "realiad_1024" in capsys.readouterr().err
    assert main([*argv, "--option", "resolution=256", "--option", "colour=red"]) == 2
    assert "does not take the loader option(s) ['colour', 'resolution']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*argv, "--option", "resolution"])
