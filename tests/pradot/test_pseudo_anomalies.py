"""Synthetic anomalies for the sweep objective (pradot.data.pseudo_anomalies)."""

from __future__ import annotations

import numpy as np
import pytest

from pradot.data.pseudo_anomalies import KIND_STYLE, KINDS, ArrayImageDataset, make_pseudo_anomalies, pseudo_identity


def _scene(seed: int, size: int = 64) -> np.ndarray:
    """A textured image with objects (a flat background alone would make some edits invisible)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    img = np.stack([(xx * 3 + seed * 7) % 256, (yy * 2 + 40) % 256, ((xx + yy) * 2) % 256], -1).astype(np.float64)
    for _ in range(6):
        cy, cx, r = rng.integers(8, size - 8, 2).tolist() + [int(rng.integers(3, 8))]
        img[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = rng.integers(0, 256, 3)
    return img.astype(np.uint8)


@pytest.fixture(scope="module")
def normals():
    return [_scene(i) for i in range(5)]


def test_every_kind_is_made_and_edits_stay_inside_the_mask(normals):
    pa = make_pseudo_anomalies(normals, per_image=2, seed=3)
    assert len(pa) == 10 and pa.images.shape == (10, 64, 64, 3) and pa.images.dtype == np.uint8
    assert pa.masks.shape == (10, 64, 64) and pa.masks.dtype == bool
    assert set(pa.kinds) == set(KINDS)  # round-robin: every kind once there are >= 5 anomalies
    assert pa.styles() == [KIND_STYLE[k] for k in pa.kinds]
    for img, mask, kind, src, donor in zip(pa.images, pa.masks, pa.kinds, pa.sources, pa.donors):
        changed = np.any(img != normals[src], axis=-1)
        assert mask.any(), kind
        assert changed.any(), kind  # the image did change ...
        assert not (changed & ~mask).any(), kind  # ... only where the mask says
        assert changed[mask].mean() > 0.5, kind  # and most of the masked region really differs
        assert mask.mean() < 0.5, kind  # a local defect, not the whole image
        assert (donor >= 0) == (kind == "cutpaste")
        if kind == "cutpaste":
            assert donor != src  # the patch comes from another image


def test_deterministic_per_seed(normals):
    a = make_pseudo_anomalies(normals, seed=7)
    b = make_pseudo_anomalies(normals, seed=7)
    c = make_pseudo_anomalies(normals, seed=8)
    assert np.array_equal(a.images, b.images) and np.array_equal(a.masks, b.masks) and a.kinds == b.kinds
    assert not np.array_equal(a.masks, c.masks)
    # anomaly j of image i does not depend on the other images (except a cut-paste's donor, drawn among them)
    sub = make_pseudo_anomalies(normals[:2], seed=7)
    assert sub.kinds == a.kinds[:2] == ["cutpaste", "noise"]
    assert np.array_equal(sub.images[1], a.images[1]) and np.array_equal(sub.masks[1], a.masks[1])


def test_selected_kinds_and_a_single_image():
    img = _scene(0)
    pa = make_pseudo_anomalies([img], kinds=["cutpaste", "shuffle"], per_image=4, seed=0)
    assert pa.kinds == ["cutpaste", "shuffle", "cutpaste", "shuffle"]
    for out, mask in zip(pa.images, pa.masks):
        changed = np.any(out != img, axis=-1)
        assert changed.any() and not (changed & ~mask).any()


def test_bad_arguments_are_refused(normals):
    with pytest.raises(ValueError, match="unknown pseudo-anomaly kinds"):
        make_pseudo_anomalies(normals, kinds=["scratch"])
    with pytest.raises(ValueError, match="no normal images"):
        make_pseudo_anomalies([])
    with pytest.raises(ValueError, match="one size"):
        make_pseudo_anomalies([normals[0], _scene(1, 48)])
    with pytest.raises(ValueError, match="uint8"):
        make_pseudo_anomalies([normals[0].astype(np.float32)])
    with pytest.raises(ValueError, match="per_image"):
        make_pseudo_anomalies(normals, per_image=0)


def test_identity_and_dataset(normals):
    assert pseudo_identity(seed=1) != pseudo_identity(seed=2)
    assert pseudo_identity(kinds=["noise"]) != pseudo_identity()
    pa = make_pseudo_anomalies(normals, seed=0)
    ds = ArrayImageDataset(pa.images, [1] * len(pa))
    item = ds[2]
    assert len(ds) == 5 and item["label"] == 1 and item["index"] == 2
    assert item["image"].shape == (3, 64, 64) and float(item["image"].max()) <= 1.0
    assert np.allclose(item["image"].permute(1, 2, 0).numpy() * 255, pa.images[2], atol=1e-3)
