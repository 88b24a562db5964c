"""The FOCT model: patch features, Eq. 8 scores of the served maps, persistence (weights_only-safe, served by
load_scoring_model), the online update switch, the bounded memory over a long stream, and an anomalous query
stream that must not teach the memory its defects."""

import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pradot.fewshot import FOCT, FOCTConfig
from pradot.fewshot.ct import euclidean_cost, forward_transport
from pradot.fewshot.patches import patch_features, score_maps
from pradot.persistence import load_scoring_model

SIZE = 96


def scene(seed: int, blotch: tuple[float, float] | None = None, size: int = SIZE) -> torch.Tensor:
    """A grey-beige striped sheet with noise; ``blotch``: a magenta disc centred there (fractions of the side)."""
    g = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / float(size)
    img = 0.5 + 0.15 * np.sin(40 * xx + g.uniform(-0.2, 0.2))[..., None] * np.array([1.0, 0.8, 0.6])
    img = img + g.normal(0, 0.02, (size, size, 3))
    if blotch is not None:
        img[(yy - blotch[0]) ** 2 + (xx - blotch[1]) ** 2 < 0.12**2] = [0.9, 0.1, 0.8]
    return torch.from_numpy(np.clip(img, 0, 1)).permute(2, 0, 1).float()


def blotch_cells(blotch, grid: int) -> torch.Tensor:
    """The patch cells a blotch covers: (grid * grid,) bool."""
    yy, xx = np.mgrid[:SIZE, :SIZE] / float(SIZE)
    m = torch.from_numpy(((yy - blotch[0]) ** 2 + (xx - blotch[1]) ** 2 < 0.12**2).astype(np.float32))
    return (F.adaptive_max_pool2d(m[None, None], grid)[0, 0] > 0).flatten()


def config(**kw):
    base = dict(
        backbone="efficientnet_lite0",
        stages=(2, 3),
        image_size=SIZE,
        top_foreground=2,
        top_background=4,
        capacity=12,
        hidden=16,
        steps=3,
        lr=1e-3,
        foreground="border",
    )
    return FOCTConfig(**{**base, **kw})


def test_patch_features_average_neighbourhoods_and_upsample_coarse_stages():
    g = torch.Generator().manual_seed(0)
    f2, f3 = torch.randn(1, 2, 6, 6, generator=g), torch.randn(1, 3, 3, 3, generator=g)
    x = patch_features({2: f2, 3: f3}, (2, 3), patch_size=3)
    assert x.shape == (1, 5, 6, 6)
    # interior cell: plain 3 x 3 mean; corner: mean over the 4 cells inside the image
    torch.testing.assert_close(x[0, :2, 2, 3], f2[0, :, 1:4, 2:5].mean((1, 2)))
    torch.testing.assert_close(x[0, :2, 0, 0], f2[0, :, 0:2, 0:2].mean((1, 2)))
    pooled3 = F.avg_pool2d(f3, 3, 1, 1, count_include_pad=False)
    torch.testing.assert_close(x[:, 2:], F.interpolate(pooled3, size=(6, 6), mode="bilinear", align_corners=False))
    assert patch_features({2: f2, 3: f3}, (2, 3), feature_dim=4).shape == (1, 4, 6, 6)
    with pytest.raises(ValueError, match="odd"):
        patch_features({2: f2}, (2,), patch_size=2)


def test_config_refuses_bad_values():
    for bad, phrase in [
        ({"foreground": "salient"}, "foreground"),
        ({"distance": "cos"}, "distance"),
        ({"capacity": 0}, "capacity"),
        ({"compression": 1.0}, "lambda"),
        ({"rho": 2}, "rho"),
        ({"top_foreground": 0, "top_background": 0}, "K"),
    ]:
        with pytest.raises(ValueError, match=phrase):
            config(**bad)


@pytest.fixture(scope="module")
def support():
    return torch.stack([scene(i) for i in range(2)])


def test_scores_are_eq8_on_the_memory_bank_and_maps_their_smoothed_upsampling(effnet_23, support):
    model = FOCT(config(distance="linear"), backbone=effnet_23).fit(support)
    query = scene(50, blotch=(0.5, 0.4))[None]
    maps, scores = model.score(query)
    assert maps.shape == (1, SIZE, SIZE) and scores.shape == (1,)
    feats = model.patches(effnet_23(query))
    q = feats[0].reshape(feats.shape[1], -1).t()
    memory = model.memory_bank()
    c = euclidean_cost(q, memory)
    d = torch.cdist(q, memory) / model.distance.scale  # the linear navigators' distance
    s = (forward_transport(d) * c).sum(1)  # Eq. 8
    assert float(scores[0]) == pytest.approx(float(s.max()), rel=1e-4)
    torch.testing.assert_close(maps, score_maps(s.reshape(1, *feats.shape[-2:]), SIZE, 4.0), rtol=1e-4, atol=1e-4)


def test_state_round_trip_is_served_and_weights_only(effnet_23, support, tmp_path):
    model = FOCT(config(), backbone=effnet_23).fit(support)
    stream = torch.stack([scene(60 + i) for i in range(4)])
    model.score(stream, update=True)
    assert len(model.episodic) > 0
    path = model.save(tmp_path / "foct.pt")
    state = torch.load(path, weights_only=True)  # plain tensors, numbers and strings: no code can run
    assert state["format"] == "pradot-foct-v1"
    served = load_scoring_model(path)
    assert isinstance(served, FOCT) and served.config.image_size == SIZE
    torch.testing.assert_close(served.episodic.features, model.episodic.features)
    queries = torch.stack([scene(70), scene(71, blotch=(0.3, 0.6))])
    torch.testing.assert_close(served.score(queries)[1], model.score(queries)[1], rtol=1e-4, atol=1e-4)


def test_updates_only_when_asked_and_under_the_gate(effnet_23, support):
    model = FOCT(config(), backbone=effnet_23).fit(support)
    normal, anomalous = scene(80)[None], scene(81, blotch=(0.5, 0.5))[None]
    model.score(torch.cat([normal, anomalous]))
    assert len(model.episodic) == 0 and model.queries_seen == 0  # the default leaves the memory alone
    _, s = model.score(normal)
    threshold = float(s[0]) * 1.01
    model.score(anomalous, update=True, update_below=threshold)
    assert len(model.episodic) == 0 and [len(i) for i in model.last_added] == [0]
    model.score(normal, update=True, update_below=threshold)
    assert len(model.episodic) == 6 and model.queries_seen == 1
    model.reset_memory()
    assert len(model.episodic) == 0


def test_online_memory_is_bounded_and_time_per_query_does_not_grow(effnet_23, support):
    model = FOCT(config(capacity=10, top_foreground=2, top_background=2, steps=1), backbone=effnet_23).fit(support)
    feats = effnet_23(torch.stack([scene(100 + i) for i in range(50)]))
    sizes, seconds = [], []
    for i in range(50):
        t0 = time.process_time()  # CPU time: robust to other processes on a shared machine
        model.maps_from_features({s: f[i : i + 1] for s, f in feats.items()}, update=True)
        seconds.append(time.process_time() - t0)
        sizes.append(len(model.episodic))
    assert max(sizes) < 10 and model.episodic.compressions >= 10 and model.queries_seen == 50
    early, late = np.median(seconds[5:20]), np.median(seconds[-15:])
    assert late < 2.0 * early, (early, late)


def _anomalous_stream(model, effnet, n=24, **score_kw):
    """Stream n scenes with a blotch at seeded places; returns (added in the blotch, added, blotch share)."""
    rng = np.random.default_rng(0)
    grid = model.patches(effnet(scene(0)[None])).shape[-1]
    inside = added_total = 0
    share = []
    for i in range(n):
        where = tuple(rng.uniform(0.25, 0.75, 2))
        model.score(scene(300 + i, blotch=where)[None], update=True, **score_kw)
        (added,) = model.last_added
        cells = blotch_cells(where, grid)
        inside += int(cells[added].sum())
        added_total += len(added)
        share.append(float(cells.float().mean()))
    return inside, added_total, float(np.mean(share))


def test_top_k_selects_normal_looking_features_from_an_anomalous_stream(effnet_23, support):
    """The paper's rule alone (no gate), 24 anomalous queries: Eq. 6 picks features from the defect far
    less often than their share of the image, and a new anomalous image still scores close to before.
    (The linear distance: Eq. 6 reads the transport probabilities, which the learned one only sharpens.)"""
    model = FOCT(config(capacity=40, distance="linear"), backbone=effnet_23).fit(support)
    probe = scene(200, blotch=(0.45, 0.55))[None]
    _, before = model.score(probe)
    inside, added, share = _anomalous_stream(model, effnet_23)
    assert added == 24 * 6
    assert inside / added < 0.25 * share, (inside, added, share)  # chance would be ~ share
    _, after = model.score(probe)
    assert float(after[0]) > 0.8 * float(before[0]), (float(before[0]), float(after[0]))


def test_the_served_gate_keeps_anomalous_images_out_of_the_memory(effnet_23, support):
    """With the calibrated threshold as gate (what online_update does when served), an anomalous stream
    adds nothing and scores stay exactly the same; normal images still calibrate the memory."""
    model = FOCT(config(capacity=40, distance="linear"), backbone=effnet_23).fit(support)
    _, normal_scores = model.score(torch.stack([scene(400 + i) for i in range(8)]))
    threshold = float(normal_scores.max()) * 1.05
    probe = scene(200, blotch=(0.45, 0.55))[None]
    _, before = model.score(probe)
    inside, added, _ = _anomalous_stream(model, effnet_23, update_below=threshold)
    assert added == 0 and len(model.episodic) == 0 and model.queries_seen == 0
    assert torch.equal(model.score(probe)[1], before)
    model.score(torch.stack([scene(500 + i) for i in range(3)]), update=True, update_below=threshold)
    assert model.queries_seen == 3 and len(model.episodic) == 18


def test_an_unfitted_model_says_to_fit_it(tiny_backbone):
    model = FOCT(config(backbone="tiny_random", stages=(2,)), backbone=tiny_backbone)
    with pytest.raises(RuntimeError, match="call fit"):
        model.score(torch.rand(1, 3, SIZE, SIZE))
    with pytest.raises(ValueError, match="at least one support image"):
        model.fit_features({2: torch.zeros(0, 8, 24, 24)})
