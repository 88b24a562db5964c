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


def test_graded_sizes_and_contrasts(normals):
    """Sizes down to a few pixels, contrasts from faint to full, all drawn per seed; (1, 1) is the full edit."""
    pa = make_pseudo_anomalies(normals, per_image=8, seed=2, patch_fraction=(0.02, 0.3), contrast=(0.15, 1.0))
    assert np.all((pa.contrasts >= 0.15) & (pa.contrasts <= 1.0)) and pa.contrasts.std() > 0.1
    areas = pa.masks.reshape(len(pa), -1).sum(1)
    assert areas.min() <= 36 and areas.max() >= 100  # a few pixels (the 4 px minimum side) up to large regions
    again = make_pseudo_anomalies(normals, per_image=8, seed=2, patch_fraction=(0.02, 0.3), contrast=(0.15, 1.0))
    assert np.array_equal(pa.contrasts, again.contrasts) and np.array_equal(pa.images, again.images)
    full = make_pseudo_anomalies(normals, per_image=8, seed=2, patch_fraction=(0.02, 0.3), contrast=(1.0, 1.0))
    assert np.array_equal(full.masks, pa.masks)  # the same regions, faded
    for img, strong, mask, c, src in zip(pa.images, full.images, pa.masks, pa.contrasts, pa.sources):
        s = normals[src].astype(np.float64)
        expected = np.clip(np.rint(s + c * (strong.astype(np.float64) - s)), 0, 255)
        assert np.array_equal(img, expected.astype(np.uint8))  # source + c (edit - source), nothing outside the mask
        assert np.array_equal(img[~mask], normals[src][~mask])
    with pytest.raises(ValueError, match="contrast"):
        make_pseudo_anomalies(normals, contrast=(0.0, 1.0))
    with pytest.raises(ValueError, match="contrast"):
        make_pseudo_anomalies(normals, contrast=(0.5, 1.5))
    assert pseudo_identity(contrast=(1.0, 1.0)) != pseudo_identity()


def _fixture_scene(seed: int, size: int = 64) -> np.ndarray:
    """Three parts in fixed slots (one pixel of jitter) on a striped background, with sensor noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    img = np.full((size, size, 3), 90.0)
    img[..., 1] += 30 * np.sin(xx / 5.0)
    for cy, cx, r, colour in ((16, 16, 7, (200, 40, 40)), (16, 46, 6, (40, 200, 40)), (46, 30, 9, (40, 40, 220))):
        dy, dx = rng.integers(-1, 2, 2)
        img[(yy - cy - dy) ** 2 + (xx - cx - dx) ** 2 <= r * r] = colour
    img += rng.normal(0, 4, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def test_graded_objective_separates_a_degraded_model():
    """Issue 25: on large full-strength edits a weak model's image AUROC saturates; on the graded set it does
    not, and a model that sees the scene through a heavy blur ranks below one that sees every pixel."""
    from scipy.ndimage import gaussian_filter

    from pradot.metrics.pseudo import pseudo_metrics

    train = np.stack([_fixture_scene(100 + i) for i in range(24)]).astype(np.float64)
    mu, sd = train.mean(0), train.std(0) + 4.0

    def good(x):  # a per-pixel Gaussian on raw pixels: |z| summed over channels, lightly smoothed
        z = np.abs((x.astype(np.float64) - mu) / sd).sum(-1)
        return np.stack([gaussian_filter(m, 1) for m in z])

    def degraded(x):  # the distance to the mean image after a sigma-4 blur: small or faint edits vanish
        blur = np.stack([gaussian_filter(im.astype(np.float64), (4, 4, 0)) for im in x])
        return np.abs(blur - gaussian_filter(mu, (4, 4, 0))).sum(-1)

    normals = [_fixture_scene(i) for i in range(12)]

    def objective(model, localisation=True, **kw):
        pa = make_pseudo_anomalies(normals, per_image=2, seed=0, **kw)
        images = np.concatenate([np.stack(normals), pa.images])
        masks = np.concatenate([np.zeros((len(normals), 64, 64), bool), pa.masks])
        maps = model(images)
        groups, styles = ["good"] * len(normals) + pa.kinds, ["good"] * len(normals) + pa.styles()
        if not localisation:
            return pseudo_metrics(groups, styles, maps.reshape(len(maps), -1).max(1))
        return pseudo_metrics(groups, styles, maps.reshape(len(maps), -1).max(1), maps=maps, masks=masks)

    easy = objective(good, localisation=False, patch_fraction=(0.15, 0.3), contrast=(1.0, 1.0))
    assert easy["val_auroc_structural"] == 1.0  # the old set: saturated
    g, d = objective(good), objective(degraded)
    assert g["val_auroc"] < 0.95 and g["val_auroc_structural"] < 0.95  # not saturated
    assert d["val_auroc"] < g["val_auroc"] - 0.05 and d["val_objective"] < g["val_objective"] - 0.05
