"""The harder synthetic LOCO scene ``fastener_kit`` (pradot.data.synthetic_kit): layout, masks, rules,
determinism, speed; and that it tells a memory bank of stride-8 patches from PRADOT's local prototypes."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pradot.data import load_dataset
from pradot.data import synthetic as syn
from pradot.data import synthetic_kit as kit

CAT = "fastener_kit"
SMALL = dict(n_train=3, n_validation=1, n_test_good=2, n_test_logical=8, n_test_structural=8)


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("kit")
    syn.generate(root, CAT, seed=0, **SMALL)
    return root


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.png"))}


def test_loco_layout_masks_and_defects_config(small):
    ds = load_dataset("synthetic", small, CAT)
    assert ds.has_saturation and len(ds.samples("train")) == 3 and len(ds.samples("validation")) == 1
    entries = {e["defect_name"]: e for e in json.loads((small / CAT / "defects_config.json").read_text())}
    assert set(entries) == set(kit.DEFECTS)
    areas = kit.part_areas(128)
    meta = json.loads((small / CAT / "metadata.json").read_text())
    kinds = set()
    for s in ds.samples("test"):
        if s.label == 0:
            assert s.defects == ()
            continue
        kinds.add(meta[s.relative_id]["anomaly"])
        channels = ds.load_channels(s)
        for d, ch in zip(s.defects, channels):
            raw = np.asarray(Image.open(d.mask_path))
            assert set(np.unique(raw).tolist()) == {0, entries[d.defect_name]["pixel_value"]} and ch.sum() > 0
            if d.defect_name.startswith("missing_"):  # absolute saturation at the part's area
                assert not d.relative_saturation and d.saturation_threshold == areas[d.defect_name[8:]]
                assert ch.sum() > d.saturation_threshold
        if meta[s.relative_id]["anomaly"] == "swapped_parts":
            assert len(s.defects) == 2
    assert kinds == set(kit.LOGICAL_KINDS) | set(kit.STRUCTURAL_KINDS)


def test_logical_rules_change_counts_positions_and_pairings_of_normal_looking_parts():
    """Each logical kind, drawn from many seeds: the parts are the normal ones (types, sizes, upright), only
    their number, place or seat assignment changes."""
    canvas = syn.Canvas(128)
    seats = {kit.seat_center(s): kit.seat_type(s) for s in range(6)}

    def at_seat(p):
        return min(seats, key=lambda c: np.hypot(c[0] - p.cx, c[1] - p.cy))

    def near(p, c, tol=kit.POS_JITTER + 1e-9):
        return abs(p.cx - c[0]) <= tol and abs(p.cy - c[1]) <= tol

    for i in range(12):
        normal = kit._normal_parts(np.random.default_rng([0, i]))
        assert all(near(p, at_seat(p)) and seats[at_seat(p)] == p.ptype for p in normal)
        for kind in kit.LOGICAL_KINDS:
            parts, channels, info = kit._logical(kind, np.random.default_rng([1, i]), canvas)
            assert all(p.damage is None and p.ptype in ("nut", "washer", "short_screw") for p in parts)
            assert all(abs(p.angle - 90) <= kit.SCREW_ANGLE_JITTER for p in parts if p.is_screw)  # upright
            in_band = [p for p in parts if abs(p.cy - kit.FREE_Y) <= kit.FREE_JITTER + kit.POS_JITTER]
            seated = [p for p in parts if p not in in_band]
            wrong_type = [p for p in seated if seats[at_seat(p)] != p.ptype]
            if kind == "missing_part":
                assert len(parts) == 5 and not in_band and not wrong_type
            elif kind == "extra_part":
                assert len(parts) == 7 and len(in_band) == 1 and not wrong_type
            elif kind == "shifted_part":
                assert len(parts) == 6 and len(in_band) == 1 and len({at_seat(p) for p in seated}) == 5
                assert in_band[0].ptype == seats[kit.seat_center(info["seat"])]  # the part of the emptied seat
            else:  # swapped_parts: two seats hold each other's type
                assert len(parts) == 6 and not in_band and len(wrong_type) == 2 and len(channels) == 2
                assert sorted(p.ptype for p in wrong_type) == sorted(seats[at_seat(p)] for p in wrong_type)
            assert all(m.any() for _, m in channels)


def test_free_band_is_plain_board_in_normal_images(small):
    """Nothing lies between the rows in normal images: the band looks like the board everywhere."""
    for p in sorted((small / CAT / "train" / "good").glob("*.png")):
        img = np.asarray(Image.open(p)).astype(float)
        band = img[int(kit.FREE_Y) - 10 : int(kit.FREE_Y) + 10]
        assert band.mean(axis=2).max() < 125 and band.std() < 12  # dark, textured board: no metal part


def test_deterministic_per_seed_and_fast(tmp_path):
    tiny = dict(n_train=2, n_validation=1, n_test_good=1, n_test_logical=4, n_test_structural=4)
    a = _files(syn.generate(tmp_path / "a", CAT, seed=5, **tiny))
    b = _files(syn.generate(tmp_path / "b", CAT, seed=5, **tiny))
    c = _files(syn.generate(tmp_path / "c", CAT, seed=6, **tiny))
    assert a == b and a != c
    start = time.perf_counter()
    syn.generate(tmp_path / "d", CAT)  # the defaults: 140 images at 128 px
    assert time.perf_counter() - start < 60
    assert syn.ensure_synthetic(tmp_path / "d", CAT) == tmp_path / "d" / CAT  # stamp matches: not regenerated


@pytest.mark.slow
def test_a_memory_bank_of_patches_does_not_localise_what_local_prototypes_do(tmp_path):
    """Stage-2 features (stride 8), 3x3 aggregation: PRADOT with the spatial cost (alpha 0.3) localises the
    logical anomalies (AU-sPRO@0.05) much better than a memory bank on the same features, whose patches all
    look normal somewhere; on structural damage the memory bank is not worse than chance."""
    import torch

    from pradot import PRADOT, PRADOTConfig
    from pradot.backbone import load_backbone
    from pradot.data import ImageDataset
    from pradot.engine import DataSpec, open_splits
    from pradot.features import extract_features
    from pradot.memory_bank import MemoryBankConfig, MemoryBankModel
    from pradot.metrics.dataset import dataset_metrics, flat_metrics

    spec = DataSpec(
        "synthetic",
        str(tmp_path),
        CAT,
        128,
        generator=dict(n_train=30, n_validation=0, n_test_good=8, n_test_logical=12, n_test_structural=8),
    )
    splits = open_splits(spec)
    bb = load_backbone("efficientnet_lite0", (2,))
    train = extract_features(bb, ImageDataset(splits.train, 128), progress=False)
    test = extract_features(bb, ImageDataset(splits.test, 128), progress=False)
    torch.manual_seed(0)
    pr = PRADOT(
        PRADOTConfig(
            backbone="efficientnet_lite0",
            stages=(2,),
            image_size=128,
            alpha=0.3,
            n=2,
            batch_size=8,
            epochs=6,
            eta=0.8,
            aggregation=3,
        ),
        backbone=bb,
    )
    pr.fit_features(train, progress=False)
    mb = MemoryBankModel(
        MemoryBankConfig(backbone="efficientnet_lite0", stages=(2,), image_size=128, smoothing_sigma=0.0), backbone=bb
    ).fit_features(train)

    def metrics(model):
        maps = model.maps_from_features(test)[0]
        return flat_metrics(dataset_metrics(splits.dataset, splits.test, list(maps.numpy()), gt_size=128)[0])

    p, m = metrics(pr), metrics(mb)
    print({k: (round(p[k], 3), round(m[k], 3)) for k in p if k.endswith(("_anomalies",)) and "0.05" in k})
    assert p["au_spro_0.05_logical_anomalies"] > m["au_spro_0.05_logical_anomalies"] + 0.15
