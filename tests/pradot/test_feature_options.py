"""Feature options (pradot.aggregation) against direct formulas, and in PRADOT: trained from cached features
or from images alike, saved with the model, and old model files without them score as before."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pradot import PRADOT, PRADOTConfig
from pradot.aggregation import FeatureOptions, concat_stages, local_aggregate
from pradot.backbone import load_backbone
from pradot.checkpoint import save_state


def _aggregate_direct(x: np.ndarray, k: int) -> np.ndarray:
    """Mean over the k x k cells around each cell that lie inside the grid, one cell at a time."""
    B, D, H, W = x.shape
    r = k // 2
    out = np.zeros_like(x, dtype=np.float64)
    for i in range(H):
        for j in range(W):
            block = x[:, :, max(0, i - r) : i + r + 1, max(0, j - r) : j + r + 1]
            out[:, :, i, j] = block.reshape(B, D, -1).mean(-1)
    return out


def _bilinear_direct(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize with align_corners=False (half-pixel centres, edge-clamped), written out per pixel."""
    B, D, h, w = x.shape
    H, W = size
    out = np.zeros((B, D, H, W))
    for i in range(H):
        sy = max((i + 0.5) * h / H - 0.5, 0.0)
        y0 = min(int(np.floor(sy)), h - 1)
        y1, fy = min(y0 + 1, h - 1), sy - y0
        for j in range(W):
            sx = max((j + 0.5) * w / W - 0.5, 0.0)
            x0 = min(int(np.floor(sx)), w - 1)
            x1, fx = min(x0 + 1, w - 1), sx - x0
            out[:, :, i, j] = (1 - fy) * ((1 - fx) * x[:, :, y0, x0] + fx * x[:, :, y0, x1]) + fy * (
                (1 - fx) * x[:, :, y1, x0] + fx * x[:, :, y1, x1]
            )
    return out


@pytest.mark.parametrize("k", [1, 3, 5])
def test_local_aggregation_is_the_mean_of_the_neighbourhood_inside_the_grid(k):
    x = torch.randn(2, 3, 6, 7, generator=torch.Generator().manual_seed(k))
    got = local_aggregate(x, k)
    assert got.shape == x.shape
    np.testing.assert_allclose(got.numpy(), _aggregate_direct(x.numpy(), k), rtol=1e-5, atol=1e-6)
    if k == 1:
        assert got is x  # the paper: the features themselves


def test_concatenation_upsamples_the_coarser_stage_bilinearly_to_the_finest_grid():
    g = torch.Generator().manual_seed(0)
    f2, f3 = torch.randn(2, 3, 8, 8, generator=g), torch.randn(2, 5, 4, 4, generator=g)
    got = concat_stages({3: f3, 2: f2}, [2, 3])  # the order of `stages`, whatever the mapping's
    assert got.shape == (2, 8, 8, 8)
    torch.testing.assert_close(concat_stages({2: f2, 3: f3}, [3, 2])[:, 5:], f2, rtol=0, atol=0)
    np.testing.assert_array_equal(got[:, :3].numpy(), f2.numpy())
    np.testing.assert_allclose(got[:, 3:].numpy(), _bilinear_direct(f3.numpy(), (8, 8)), rtol=1e-5, atol=1e-6)
    opts = FeatureOptions(aggregation=3, concat=True)
    out = opts.apply({2: f2, 3: f3}, (2, 3))
    assert list(out) == [2] and opts.bank_stages((2, 3)) == (2,)
    expected = np.concatenate(
        [_aggregate_direct(f2.numpy(), 3), _bilinear_direct(_aggregate_direct(f3.numpy(), 3), (8, 8))], axis=1
    )
    np.testing.assert_allclose(out[2].numpy(), expected, rtol=1e-5, atol=1e-5)
    assert opts.bank_shapes({2: (3, (8, 8)), 3: (5, (4, 4))}, (2, 3)) == {2: (8, (8, 8))}
    assert FeatureOptions(concat=True).bank_stages((3,)) == (3,)  # one stage: nothing to concatenate


@pytest.mark.parametrize("bad", [0, 2, -1, 1.5, "x"])
def test_bad_aggregation_is_refused(bad):
    with pytest.raises(ValueError, match="odd integer"):
        FeatureOptions(aggregation=bad)
    with pytest.raises(ValueError, match="odd integer"):
        PRADOTConfig(aggregation=bad)


def _config(**kw):
    base = dict(
        backbone="tiny_random", stages=(1, 2), image_size=32, alpha=0.3, n=1, batch_size=4, epochs=2, eta=0.5, seed=0
    )
    return PRADOTConfig(**{**base, **kw})


class _Images(torch.utils.data.Dataset):
    def __init__(self, x):
        self.x = x

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"image": self.x[i], "label": 0, "index": i}


def test_pradot_with_options_trains_the_same_from_cached_features_as_from_images(tmp_path):
    """The cache holds raw backbone features (the options are applied after the read): a model trained from a
    FeatureCache entry equals one trained on images, and both score an image as the formula says."""
    from pradot.features import FeatureCache

    bb = load_backbone("tiny_random", (1, 2))
    images = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    cfg = _config(aggregation=3, concat_stages=True)
    a = PRADOT(cfg, backbone=bb)
    a.fit(_Images(images), progress=False)
    cache = FeatureCache(tmp_path)
    feats = cache.get_or_compute({"stages": [1, 2], "what": "test"}, bb, _Images(images), progress=False)
    assert feats[1].shape[1:] == (16, 8, 8) and feats[2].shape[1:] == (24, 4, 4)  # raw backbone features
    b = PRADOT(cfg, backbone=bb)
    b.fit_features(feats, progress=False)
    assert list(a.banks) == ["1"] and a.banks["1"].config.dim == 16 + 24 and a.banks["1"].config.grid == (8, 8)
    torch.testing.assert_close(a.banks["1"].features, b.banks["1"].features, rtol=0, atol=0)
    test = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    maps, scores = a.score(test)
    torch.testing.assert_close(b.maps_from_features(bb(test))[0], maps, rtol=0, atol=0)
    # the map is Eq. 6 on the aggregated, concatenated features, upsampled (align_corners=True)
    from pradot.scoring import assignment_scores_reference, upsample_maps

    raw = bb(test)
    z = torch.from_numpy(
        np.concatenate(
            [_aggregate_direct(raw[1].numpy(), 3), _bilinear_direct(_aggregate_direct(raw[2].numpy(), 3), (8, 8))],
            axis=1,
        )
    ).float()
    ref, _ = assignment_scores_reference(a.banks["1"], z)
    torch.testing.assert_close(maps, upsample_maps(ref.reshape(2, 8, 8), 32), rtol=1e-4, atol=1e-5)
    # saved with the model
    back = PRADOT.load(a.save(tmp_path / "m.pt"))
    assert back.config.aggregation == 3 and back.config.concat_stages
    torch.testing.assert_close(back.score(test)[0], maps, rtol=0, atol=0)


def test_engine_train_model_cached_equals_uncached_with_options(tmp_path):
    from pradot.engine import DataSpec, open_splits, train_model
    from pradot.features import FeatureCache

    spec = DataSpec(
        "synthetic",
        str(tmp_path / "data"),
        "screw_bag",
        64,
        generator={
            "image_size": 64,
            "n_train": 8,
            "n_validation": 0,
            "n_test_good": 1,
            "n_test_logical": 1,
            "n_test_structural": 1,
        },
    )
    splits = open_splits(spec)
    cfg = _config(image_size=64, aggregation=3, stages=(2,), smoothing_sigma=2.0)
    bb = load_backbone("tiny_random", (2,))
    cached = train_model(cfg, spec, splits.train, backbone=bb, cache=FeatureCache(tmp_path / "c"), progress=False)
    again = train_model(cfg, spec, splits.train, backbone=bb, cache=FeatureCache(tmp_path / "c"), progress=False)
    plain = train_model(cfg, spec, splits.train, backbone=bb, cache=None, progress=False)
    for r in (again, plain):
        torch.testing.assert_close(r.model.banks["2"].features, cached.model.banks["2"].features, rtol=0, atol=0)


def test_old_model_files_without_the_options_load_and_score_as_before(tmp_path):
    bb = load_backbone("tiny_random", (1, 2))
    m = PRADOT(_config(), backbone=bb)
    m.fit_features(bb(torch.rand(8, 3, 32, 32)), progress=False)
    test = torch.rand(3, 3, 32, 32)
    maps, scores = m.score(test)
    state = m.state()
    for key in ("aggregation", "concat_stages", "smoothing_sigma"):  # as files of earlier releases
        del state["config"][key]
    back = PRADOT.load(save_state(state, tmp_path / "old.pt"))
    assert (back.config.aggregation, back.config.concat_stages, back.config.smoothing_sigma) == (1, False, 0.0)
    torch.testing.assert_close(back.score(test)[0], maps, rtol=0, atol=0)
    # and the paper's computation is untouched: Eq. 6 per stage, upsampled, averaged
    from pradot.scoring import assignment_scores_reference, upsample_maps

    raw = bb(test)
    ref = [
        upsample_maps(assignment_scores_reference(m.banks[str(s)], raw[s])[0].reshape(3, *raw[s].shape[-2:]), 32)
        for s in (1, 2)
    ]
    torch.testing.assert_close(maps, (ref[0] + ref[1]) / 2, rtol=1e-4, atol=1e-5)
