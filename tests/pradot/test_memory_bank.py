"""The memory-bank scorer (pradot.memory_bank) against a brute-force torch.cdist oracle; coreset; files;
as an ensemble member next to PRADOT banks; and ensemble files of the previous format."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pradot import PRADOT, PRADOTConfig
from pradot.aggregation import FeatureOptions
from pradot.backbone import load_backbone
from pradot.checkpoint import MEMORY_BANK_FORMAT, file_format, save_state
from pradot.coreset import greedy_coreset
from pradot.ensemble import Ensemble
from pradot.memory_bank import MemoryBankConfig, MemoryBankModel
from pradot.persistence import load_scoring_model
from pradot.postprocess import gaussian_smooth


@pytest.fixture(scope="module")
def bb():
    return load_backbone("tiny_random", (1, 2))


@pytest.fixture(scope="module")
def train_images():
    return torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def test_images():
    return torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _direct_recipe(train_feats, test_feats, stages, size, k=3, sigma=4.0, zero_pad=True, align=False, concat=True):
    """The PatchCore recipe written directly, independent of pradot: per stage a k x k average pool (zero
    padding counted when ``zero_pad``, torch's AvgPool2d), coarser stages interpolated bilinearly onto the
    finest grid and concatenated (or one bank per stage), scikit-learn's exact nearest neighbour (L2) over
    every training patch, bilinear upsampling to the input size, scipy's Gaussian filter, max of the map."""
    from scipy.ndimage import gaussian_filter
    from sklearn.neighbors import NearestNeighbors

    def embed(feats):
        pool = torch.nn.AvgPool2d(k, stride=1, padding=k // 2, count_include_pad=zero_pad)
        pooled = [pool(feats[s].double()) for s in sorted(stages)]
        if not concat:
            return pooled
        grid = pooled[0].shape[-2:]
        return [torch.cat([torch.nn.functional.interpolate(p, size=grid, mode="bilinear") for p in pooled], 1)]

    per_bank = []
    for tr, te in zip(embed(train_feats), embed(test_feats)):
        D, (B, _, H, W) = tr.shape[1], te.shape
        nn_ = NearestNeighbors(n_neighbors=1, algorithm="brute").fit(tr.permute(0, 2, 3, 1).reshape(-1, D).numpy())
        dist = nn_.kneighbors(te.permute(0, 2, 3, 1).reshape(-1, D).numpy())[0].reshape(B, 1, H, W)
        up = torch.nn.functional.interpolate(
            torch.from_numpy(dist), size=(size, size), mode="bilinear", align_corners=align
        )
        per_bank.append(up[:, 0].numpy())
    maps = np.stack([gaussian_filter(m, sigma, mode="reflect") for m in np.mean(per_bank, 0)])
    return torch.from_numpy(maps).float(), torch.from_numpy(maps.reshape(len(maps), -1).max(1)).float()


def _oracle(bb, train, test, cfg: MemoryBankConfig, keep=None):
    """Brute force on the model's own feature options (for the coreset): every training patch feature in the
    bank (or those at ``keep``), torch.cdist to each test patch, min, upsample, mean over banks, smooth, max."""
    opts = FeatureOptions(cfg.aggregation, cfg.concat_stages, cfg.aggregation_border)
    tr, te = opts.apply(bb(train), cfg.stages), opts.apply(bb(test), cfg.stages)
    maps = []
    for s in opts.bank_stages(cfg.stages):
        D = tr[s].shape[1]
        bank = tr[s].permute(0, 2, 3, 1).reshape(-1, D).double()
        if keep is not None:
            bank = bank[keep]
        B, _, H, W = te[s].shape
        q = te[s].permute(0, 2, 3, 1).reshape(-1, D).double()
        d = torch.cdist(q, bank).min(1).values.reshape(B, 1, H, W).float()
        maps.append(
            torch.nn.functional.interpolate(d, size=cfg.image_size, mode="bilinear", align_corners=cfg.align_corners)[
                :, 0
            ]
        )
    m = gaussian_smooth(torch.stack(maps).mean(0), cfg.smoothing_sigma)
    return m, m.flatten(1).amax(1)


@pytest.mark.parametrize(
    "concat,aggregation,sigma,border,align",
    [
        (True, 3, 4.0, "zero", False),
        (False, 3, 2.0, "zero", False),
        (True, 3, 4.0, "inside", True),
        (False, 5, 1.0, "inside", False),
    ],
)
def test_memory_bank_equals_the_direct_recipe(bb, train_images, test_images, concat, aggregation, sigma, border, align):
    """Issue 25: the project's memory bank gives the direct recipe's maps and scores on the same features."""
    cfg = MemoryBankConfig(
        backbone="tiny_random",
        stages=(1, 2),
        image_size=32,
        aggregation=aggregation,
        concat_stages=concat,
        smoothing_sigma=sigma,
        aggregation_border=border,
        align_corners=align,
    )
    mb = MemoryBankModel(cfg, backbone=bb).fit_features(bb(train_images))
    maps, scores = mb.score(test_images, batch_size=2)
    ref_maps, ref_scores = _direct_recipe(
        bb(train_images), bb(test_images), (1, 2), 32, aggregation, sigma, border == "zero", align, concat
    )
    torch.testing.assert_close(maps, ref_maps, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(scores, ref_scores, rtol=1e-4, atol=1e-4)
    n_patches = 6 * 8 * 8
    assert {s: len(m) for s, m in mb.memory.items()} == ({1: n_patches} if concat else {1: n_patches, 2: 6 * 4 * 4})
    # a training image scores ~0 before smoothing: each of its patches is in the bank
    assert float(mb.stage_maps(bb(train_images[:1]))[1].abs().max()) < 1e-3


def test_default_is_patchcore_and_old_files_keep_their_rule(bb, train_images, test_images, tmp_path):
    """The defaults are the recipe's (zero-padded pooling, align_corners=False), and a file written before those
    options existed (no keys in its config) still scores with the rule it was fitted with."""
    cfg = MemoryBankConfig(backbone="tiny_random", stages=(1, 2), image_size=32)
    assert (cfg.aggregation_border, cfg.align_corners) == ("zero", False)
    mb = MemoryBankModel(cfg, backbone=bb).fit_features(bb(train_images))
    ref = _direct_recipe(bb(train_images), bb(test_images), (1, 2), 32)[0]
    torch.testing.assert_close(mb.score(test_images)[0], ref, rtol=1e-4, atol=1e-4)
    old = MemoryBankModel(
        MemoryBankConfig(
            backbone="tiny_random", stages=(1, 2), image_size=32, aggregation_border="inside", align_corners=True
        ),
        backbone=bb,
    ).fit_features(bb(train_images))
    state = old.state()
    for key in ("aggregation_border", "align_corners"):
        del state["config"][key]
    save_state(state, tmp_path / "old.pt")
    back = load_scoring_model(tmp_path / "old.pt")
    assert (back.config.aggregation_border, back.config.align_corners) == ("inside", True)
    torch.testing.assert_close(back.score(test_images)[0], old.score(test_images)[0], rtol=0, atol=0)
    with pytest.raises(ValueError, match="border"):
        MemoryBankConfig(aggregation_border="reflect")


def test_coreset_bank_is_the_greedy_coreset(bb, train_images, test_images):
    cfg = MemoryBankConfig(
        backbone="tiny_random", stages=(1, 2), image_size=32, coreset_ratio=0.25, projection_dim=8, seed=3
    )
    mb = MemoryBankModel(cfg, backbone=bb).fit_features(bb(train_images))
    full = FeatureOptions(3, True, "zero").apply(bb(train_images), (1, 2))[1]
    flat = full.permute(0, 2, 3, 1).reshape(-1, full.shape[1])
    keep = greedy_coreset(flat, int(round(0.25 * len(flat))), projection_dim=8, seed=3)
    torch.testing.assert_close(mb.memory[1], flat[keep], rtol=0, atol=0)
    ref_maps, _ = _oracle(bb, train_images, test_images, cfg, keep=keep)
    torch.testing.assert_close(mb.score(test_images)[0], ref_maps, rtol=1e-4, atol=1e-4)


def test_files_fit_from_images_and_errors(bb, train_images, test_images, tmp_path):
    cfg = MemoryBankConfig(backbone="tiny_random", stages=(1, 2), image_size=32)

    class Images(torch.utils.data.Dataset):
        def __len__(self):
            return len(train_images)

        def __getitem__(self, i):
            return {"image": train_images[i]}

    mb = MemoryBankModel(cfg, backbone=bb).fit(Images(), progress=False)
    maps, scores = mb.score(test_images)
    path = mb.save(tmp_path / "mb.pt")
    assert file_format(path) == MEMORY_BANK_FORMAT
    back = load_scoring_model(path)  # the backbone comes from the file
    assert isinstance(back, MemoryBankModel) and back.config == cfg and not back.training
    torch.testing.assert_close(back.score(test_images)[0], maps, rtol=0, atol=0)
    torch.testing.assert_close(back.maps_from_features(bb(test_images))[1], scores, rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="empty"):
        MemoryBankModel(cfg, backbone=bb).score(test_images)
    with pytest.raises(ValueError, match="coreset_ratio"):
        MemoryBankConfig(coreset_ratio=0)
    with pytest.raises(ValueError, match="stages"):
        MemoryBankModel(MemoryBankConfig(backbone="tiny_random", stages=(2,)), backbone=bb)
    with pytest.raises(ValueError, match="missing"):
        MemoryBankModel(cfg, backbone=bb).fit_features({1: bb(train_images)[1]})
    with pytest.raises(ValueError, match="not a memory bank file"):
        MemoryBankModel.load(
            PRADOT(
                PRADOTConfig(backbone="tiny_random", stages=(1, 2), image_size=32, n=1, batch_size=2), backbone=bb
            ).save(tmp_path / "p.pt")
        )


def _pradot(bb, stages, alpha, images, seed=0):
    cfg = PRADOTConfig(
        backbone="tiny_random",
        stages=stages,
        image_size=32,
        alpha=alpha,
        n=1,
        batch_size=3,
        epochs=1,
        eta=0.5,
        seed=seed,
    )
    m = PRADOT(cfg, backbone=bb)
    m.fit_features(bb(images), progress=False)
    return m.eval()


def test_memory_bank_is_an_ensemble_member_next_to_pradot_banks(bb, train_images, test_images, tmp_path):
    mb = MemoryBankModel(
        MemoryBankConfig(backbone="tiny_random", stages=(1, 2), image_size=32), backbone=bb
    ).fit_features(bb(train_images))
    pr = _pradot(bb, (1, 2), 0.3, train_images)
    ens = Ensemble([pr, mb], normalisation="per_member", weights=[0.7, 0.3], labels=["p/1", "mb/1"])
    ens.fit_normalisation(train_images)
    assert len(ens._groups) == 1  # one backbone pass serves both
    maps, scores = ens.score(test_images)
    z = [(m.score(test_images)[0] - s["mean"]) / s["std"] for m, s in zip([pr, mb], ens.stats)]
    torch.testing.assert_close(maps, 0.7 * z[0] + 0.3 * z[1], rtol=1e-5, atol=1e-5)
    assert [m["kind"] for m in ens.config.members] == ["pradot", "memory_bank"]
    back = load_scoring_model(ens.save(tmp_path / "e.pt"))
    assert isinstance(back.members[1], MemoryBankModel) and back.members[0].backbone is back.members[1].backbone
    torch.testing.assert_close(back.score(test_images)[0], maps, rtol=0, atol=0)


def test_ensemble_files_of_the_previous_format_load_and_score_as_before(bb, train_images, test_images, tmp_path):
    """A pradot-ensemble-v1 file (PRADOT members whose configs predate the feature options, no weights key)."""
    b1 = load_backbone("tiny_random", (1,))
    members = [_pradot(b1, (1,), 0.0, train_images), _pradot(b1, (1,), 0.3, train_images, seed=1)]
    state = Ensemble(members).state()
    state["format"] = "pradot-ensemble-v1"
    del state["weights"]
    for ms in state["members"]:
        for key in ("aggregation", "concat_stages", "smoothing_sigma"):
            del ms["config"][key]
    old = load_scoring_model(save_state(state, tmp_path / "v1.pt"))
    assert isinstance(old, Ensemble) and old.weights is None
    expected = torch.stack([m.score(test_images)[0] for m in members]).mean(0)
    torch.testing.assert_close(old.score(test_images)[0], expected, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(
        Ensemble.load(tmp_path / "v1.pt").score(test_images)[1].numpy(), old.score(test_images)[1].numpy()
    )
