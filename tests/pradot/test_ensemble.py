"""pradot.ensemble: the paper's map averaging, per-member normalisation, persistence and file dispatch.

Tiny random-weight backbones keep this fast; the rule does not depend on the backbone.
"""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pradot import PRADOT, PRADOTConfig
from pradot.backbone import load_backbone
from pradot.checkpoint import ENSEMBLE_FORMAT, file_format
from pradot.ensemble import Ensemble


def member(stages, alpha, size=32, seed=0, backbone=None):
    bb = backbone if backbone is not None else load_backbone("tiny_random", stages)
    cfg = PRADOTConfig(
        backbone="tiny_random",
        stages=stages,
        image_size=size,
        alpha=alpha,
        n=1,
        batch_size=4,
        epochs=1,
        eta=0.5,
        seed=seed,
    )
    m = PRADOT(cfg, backbone=bb)
    g = torch.Generator().manual_seed(100 + seed)
    m.fit_features(m.backbone(torch.rand(8, 3, size, size, generator=g)), progress=False)
    return m.eval()


def _flat(stats):
    return [float(s[k]) for s in stats for k in ("mean", "std", "n_images")]


@pytest.fixture(scope="module")
def members():
    """The paper's grid on a tiny backbone: (stage 1, 0), (1, 0.3), (2, 0), (2, 0.3)."""
    bb1, bb2 = load_backbone("tiny_random", (1,)), load_backbone("tiny_random", (2,))
    return [
        member((1,), 0.0, backbone=bb1),
        member((1,), 0.3, backbone=bb1, seed=1),
        member((2,), 0.0, backbone=bb2, seed=2),
        member((2,), 0.3, backbone=bb2, seed=3),
    ]


@pytest.fixture(scope="module")
def images():
    return torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(7))


def test_maps_are_the_mean_of_the_members_maps(members, images):
    ens = Ensemble(members)
    maps, scores = ens.score(images, batch_size=2)
    direct = torch.stack([m.score(images)[0] for m in members]).mean(0)
    assert maps.shape == (5, 32, 32) and ens.config.image_size == 32
    torch.testing.assert_close(maps, direct, rtol=0, atol=1e-6)
    torch.testing.assert_close(scores, direct.flatten(1).amax(1), rtol=0, atol=1e-6)
    # members sharing identical backbone weights share one backbone pass: two groups for the four members
    assert len(ens._groups) == 2
    # fuse() from precomputed maps is the same rule
    torch.testing.assert_close(ens.fuse([m.score(images)[0] for m in members])[0], maps, rtol=0, atol=1e-6)


def test_members_of_other_image_sizes_are_resized_to_the_first(images):
    small, large = member((1,), 0.0, size=32), member((2,), 0.3, size=48)
    ens = Ensemble([small, large])
    maps, _ = ens.score(images)
    big = large.score(images)[0]  # large resizes the 32 px input to 48 itself
    assert big.shape[-1] == 48
    down = F.interpolate(big[:, None], size=(32, 32), mode="bilinear", align_corners=False, antialias=True)[:, 0]
    torch.testing.assert_close(maps, (small.score(images)[0] + down) / 2, rtol=0, atol=1e-6)
    assert [m["image_size"] for m in ens.config.members] == [32, 48]


def test_per_member_normalisation(members, images):
    val = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(11))
    ens = Ensemble(members, normalisation="per_member")
    with pytest.raises(RuntimeError, match="fit_normalisation"):
        ens.score(images)
    stats = ens.fit_normalisation(val, batch_size=4)
    for m, s in zip(members, stats):
        vm = m.score(val)[0].double()
        assert s["mean"] == pytest.approx(float(vm.mean()), rel=1e-6)
        assert s["std"] == pytest.approx(float(vm.std(unbiased=False)), rel=1e-5)
        assert s["n_images"] == 6
    maps, scores = ens.score(images)
    z = [(m.score(images)[0] - s["mean"]) / s["std"] for m, s in zip(members, stats)]
    expected = torch.stack(z).mean(0)
    torch.testing.assert_close(maps, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(scores, expected.flatten(1).amax(1), rtol=1e-5, atol=1e-5)
    # the same statistics from an iterable of batches, or from precomputed maps
    again = Ensemble(members, normalisation="per_member")
    assert _flat(again.fit_normalisation([val[:3], val[3:]])) == pytest.approx(_flat(stats))
    again2 = Ensemble(members, normalisation="per_member")
    assert _flat(again2.fit_normalisation(member_maps=[m.score(val)[0].numpy() for m in members])) == pytest.approx(
        _flat(stats)
    )
    # standardised: each member's validation maps have mean 0 and std 1 after normalisation
    for k, m in enumerate(members):
        zk = ens._normalise(k, m.score(val)[0]).double()
        assert float(zk.mean()) == pytest.approx(0.0, abs=1e-5) and float(zk.std(unbiased=False)) == pytest.approx(
            1.0, rel=1e-4
        )


def test_save_load_round_trip_dedupes_backbone_weights(members, images, tmp_path):
    ens = Ensemble(members, normalisation="per_member", labels=["a/1", "a/2", "a/3", "a/4"])
    ens.fit_normalisation(images)
    path = ens.save(tmp_path / "ens.pt")
    assert file_format(path) == ENSEMBLE_FORMAT
    back = Ensemble.load(path)
    assert back.labels == ["a/1", "a/2", "a/3", "a/4"] and back.normalisation == "per_member"
    assert _flat(back.stats) == pytest.approx(_flat(ens.stats))
    m0, s0 = ens.score(images)
    m1, s1 = back.score(images)
    torch.testing.assert_close(m1, m0, rtol=0, atol=0)
    torch.testing.assert_close(s1, s0, rtol=0, atol=0)
    for a, b in zip(members, back.members):
        assert a.config == b.config
        for s in a.config.stages:
            torch.testing.assert_close(a.banks[str(s)].features, b.banks[str(s)].features, rtol=0, atol=0)
    # weights stored once: the stage-1 net's tensors are a prefix of the stage-2 net's
    state = torch.load(path, weights_only=True)  # every file the project writes loads this way
    n_refs = sum(len(m["backbone"]["state_refs"]) for m in state["members"])
    assert len(state["tensors"]) == len(members[2].backbone.net.state_dict()) < n_refs
    # one Backbone object per distinct network after loading (two here)
    assert len({id(m.backbone) for m in back.members}) == 2
    # smaller than the four member files together
    sizes = sum(m.save(tmp_path / f"m{i}.pt").stat().st_size for i, m in enumerate(members))
    assert path.stat().st_size < sizes


def test_served_by_the_scorer_with_the_single_bank_contract(members, tmp_path):
    from PIL import Image

    from pradot.serving import Calibration, Scorer

    ens = Ensemble(members)
    rgb = (np.random.default_rng(0).random((40, 50, 3)) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    _, val = ens.score(torch.rand(4, 3, 32, 32))
    out = Scorer(ens, Calibration.calibrate(val, 0.99)).predict(
        [base64.b64encode(buf.getvalue()).decode()], return_map=True, map_format="npy"
    )
    assert set(out[0]) == {"score", "raw_score", "is_anomaly", "threshold", "anomaly_map"}
    amap = np.load(io.BytesIO(base64.b64decode(out[0]["anomaly_map"])))
    assert amap.shape == (40, 50) and np.isfinite(out[0]["raw_score"])


def test_bad_inputs(members):
    with pytest.raises(ValueError, match="at least one member"):
        Ensemble([])
    with pytest.raises(TypeError, match="PRADOT models"):
        Ensemble([members[0], object()])
    with pytest.raises(ValueError, match="normalisation"):
        Ensemble(members, normalisation="zscore")
    with pytest.raises(ValueError, match="statistics for"):
        Ensemble(members, normalisation="per_member", stats=[{"mean": 0.0, "std": 1.0}])
    with pytest.raises(ValueError, match="labels"):
        Ensemble(members, labels=["only-one"])
    with pytest.raises(ValueError, match="exactly one"):
        Ensemble(members).fit_normalisation()
    with pytest.raises(ValueError, match="member maps for"):
        Ensemble(members).fuse([torch.zeros(1, 32, 32)])
