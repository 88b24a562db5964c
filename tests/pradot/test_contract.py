"""The model contract (pradot.base), checked on every model kind, after scikit-learn's ``parametrize_with_checks``:
one list of model kinds (:data:`KINDS`, a factory each) times one list of checks (:data:`CHECKS`).

To add a kind: append a :class:`Kind` to :data:`KINDS` (a factory of an unfitted model, how to fit it and its
inputs); every check then runs on it. Tiny random-weight backbones keep this fast: the contract does not
depend on the network.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np
import pytest
import torch

from pradot.backbone import load_backbone
from pradot.base import DESCRIBE_KEYS, FeatureModel, FeatureScorer, Model, ScoringModel
from pradot.ensemble import Ensemble
from pradot.errors import InputError
from pradot.fewshot import FOCT, FOCTConfig
from pradot.memory_bank import MemoryBankConfig, MemoryBankModel
from pradot.model import PRADOT, PRADOTConfig, PrototypeModel
from pradot.padim import PaDiMConfig, PaDiMModel
from pradot.persistence import SCORING_FORMATS, load_scoring_model
from pradot.tiled import TiledModel
from pradot.tiling import TileGrid
from pradot.vpdm import VPDM, VPDMConfig

SIZE = 32
STAGES = (1, 2)


def _images(n: int, seed: int) -> torch.Tensor:
    return torch.rand(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


@cache
def _backbone():
    return load_backbone("tiny_random", STAGES)


def _pradot_config(**kw) -> PRADOTConfig:
    base = dict(backbone="tiny_random", stages=STAGES, image_size=SIZE, alpha=0.3, n=1, batch_size=4, epochs=1)
    return PRADOTConfig(**{**base, **kw, "eta": 0.5})


def _train_features():
    return _backbone()(_images(8, 1))


@dataclass(frozen=True)
class Kind:
    """A model kind under test: ``make()`` an unfitted model, ``fit(model)`` (returns what the model's fit
    returns), ``inputs()`` what it scores (images for a ScoringModel, backbone features for a FeatureScorer)."""

    name: str
    make: Callable[[], Any]
    fit: Callable[[Any], Any]
    inputs: Callable[[], Any]


def _fit_features(model):
    return model.fit_features(_train_features(), progress=False)


def _vpdm_config() -> VPDMConfig:
    """A tiny VPDM (4 x 4 grid, 20 timesteps, 2 sampling steps, one epoch): the contract, not the quality."""
    return VPDMConfig(
        backbone="tiny_random",
        stages=STAGES,
        image_size=SIZE,
        grid=4,
        downsample=2,
        n_prototypes=4,
        ot_iter=10,
        timesteps=20,
        sampling_steps=2,
        width=8,
        blocks=1,
        epochs=1,
        batch_size=4,
        score_pool=4,
    )


def _make_ensemble():
    a = PRADOT(_pradot_config(), backbone=_backbone()).fit_features(_train_features(), progress=False)
    mb_config = MemoryBankConfig(backbone="tiny_random", stages=STAGES, image_size=SIZE, aggregation=1)
    b = MemoryBankModel(mb_config, backbone=_backbone()).fit_features(_train_features(), progress=False)
    return Ensemble([a.eval(), b.eval()], normalisation="per_member", weights=[2.0, 1.0])


def _fit_ensemble(ens):
    ens.fit_normalisation(_images(3, 5))
    return ens


def _make_tiled():
    """PRADOT (alpha > 0) at 16 px tiles, one bank per position of the 3 x 3 overlapping tiles of a SIZE image."""
    tile = PRADOT(_pradot_config(image_size=SIZE // 2), backbone=_backbone())
    return TiledModel.build(tile, TileGrid(SIZE, SIZE // 2, SIZE // 4, "linear"), banks="per_position")


#: every model kind of the project
KINDS = [
    Kind("PRADOT", lambda: PRADOT(_pradot_config(), backbone=_backbone()), _fit_features, lambda: _images(3, 9)),
    Kind(
        "PRADOT-mahalanobis",
        lambda: PRADOT(_pradot_config(feature_metric="mahalanobis"), backbone=_backbone()),
        _fit_features,
        lambda: _images(3, 9),
    ),
    Kind(
        "PrototypeModel",
        lambda: PrototypeModel.for_features(_pradot_config(), _train_features()),
        _fit_features,
        lambda: _backbone()(_images(3, 9)),
    ),
    Kind(
        "MemoryBankModel",
        lambda: MemoryBankModel(
            MemoryBankConfig(backbone="tiny_random", stages=STAGES, image_size=SIZE, coreset_ratio=0.5),
            backbone=_backbone(),
        ),
        _fit_features,
        lambda: _images(3, 9),
    ),
    Kind(
        "FOCT",
        lambda: FOCT(
            FOCTConfig(backbone="tiny_random", stages=STAGES, image_size=SIZE, distance="linear", steps=2, capacity=8),
            backbone=_backbone(),
        ),
        lambda m: m.fit(_images(2, 1)),
        lambda: _images(3, 9),
    ),
    Kind("Ensemble", _make_ensemble, _fit_ensemble, lambda: _images(3, 9)),
    Kind(
        "PaDiMModel",
        lambda: PaDiMModel(
            PaDiMConfig(backbone="tiny_random", stages=STAGES, image_size=SIZE, n_channels=8), backbone=_backbone()
        ),
        _fit_features,
        lambda: _images(3, 9),
    ),
    Kind("VPDM", lambda: VPDM(_vpdm_config(), backbone=_backbone()), _fit_features, lambda: _images(3, 9)),
    Kind("TiledModel", _make_tiled, lambda m: m.fit(_images(4, 1), progress=False), lambda: _images(3, 9)),
]
_BY_NAME = {k.name: k for k in KINDS}


@cache
def fitted(name: str):
    """One fitted model per kind, shared by the checks (they must not change it)."""
    kind = _BY_NAME[name]
    model = kind.make()
    kind.fit(model)
    return model.eval()


def _score(model, x):
    return model.score(x) if isinstance(model, ScoringModel) else model.maps_from_features(x)


# ---------------------------------------------------------------------------------------------- the checks
def check_declares_the_contract(kind: Kind, tmp_path):
    model = fitted(kind.name)
    assert isinstance(model, Model) and isinstance(model, (ScoringModel, FeatureScorer))
    assert isinstance(type(model).KIND, str) and type(model).KIND
    assert isinstance(type(model).FORMAT, str) and type(model).FORMAT.startswith("pradot-")
    assert model.image_size == int(model.config.image_size) == SIZE
    assert model.fitted is True
    assert isinstance(model.device, torch.device)
    for key in ("image_size", "backbone", "stages"):
        assert hasattr(model.config, key), key


def check_fit_returns_self(kind: Kind, tmp_path):
    model = kind.make()
    if not isinstance(model, FeatureScorer):
        pytest.skip(f"{kind.name} is not fitted on features (its members are)")
    assert not model.fitted
    assert kind.fit(model) is model and model.fitted


def check_score_shapes_and_dtypes(kind: Kind, tmp_path):
    model = fitted(kind.name)
    x = kind.inputs()
    maps, scores = _score(model, x)
    assert maps.shape == (3, SIZE, SIZE) and maps.dtype == torch.float32 and maps.device.type == "cpu"
    assert scores.shape == (3,) and scores.dtype == torch.float32
    assert torch.isfinite(maps).all() and torch.isfinite(scores).all()


def check_score_is_deterministic(kind: Kind, tmp_path):
    model = fitted(kind.name)
    x = kind.inputs()
    first, again = _score(model, x), _score(model, x)
    torch.testing.assert_close(again[0], first[0], rtol=0, atol=0)
    torch.testing.assert_close(again[1], first[1], rtol=0, atol=0)


def check_score_equals_features_path(kind: Kind, tmp_path):
    """A feature model's ``score(images)`` is ``maps_from_features`` of its backbone's features."""
    model = fitted(kind.name)
    if not isinstance(model, FeatureModel):
        pytest.skip(f"{kind.name} is not a feature model")
    x = kind.inputs()
    feats = model.backbone(model.prepare(x))
    by_features = model.maps_from_features(feats)
    by_images = model.score(x)
    torch.testing.assert_close(by_features[0], by_images[0], rtol=0, atol=0)
    torch.testing.assert_close(by_features[1], by_images[1], rtol=0, atol=0)
    torch.testing.assert_close(model.maps_from_backbone(feats), by_images[0], rtol=0, atol=0)


def check_state_round_trip(kind: Kind, tmp_path):
    """save -> a plain file (torch.load with weights_only reads it) -> load scores exactly as before; so does
    from_state(state())."""
    model = fitted(kind.name)
    x = kind.inputs()
    want = _score(model, x)
    path = model.save(tmp_path / "model.pt")
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert raw["format"] == type(model).FORMAT
    for back in (type(model).load(path), type(model).from_state(model.state())):
        assert type(back) is type(model) and back.describe() == model.describe()
        got = _score(back.eval(), x)
        torch.testing.assert_close(got[0], want[0], rtol=0, atol=0)
        torch.testing.assert_close(got[1], want[1], rtol=0, atol=0)
    if type(model).FORMAT in SCORING_FORMATS:  # servable kinds load through the one dispatcher too
        served = load_scoring_model(path)
        assert type(served) is type(model)
        torch.testing.assert_close(served.score(x)[0], want[0], rtol=0, atol=0)


def check_prepare_is_idempotent(kind: Kind, tmp_path):
    model = fitted(kind.name)
    if not isinstance(model, ScoringModel):
        pytest.skip(f"{kind.name} scores features, not images")
    big = torch.rand(2, 3, SIZE + 9, SIZE + 3, generator=torch.Generator().manual_seed(3))
    once = model.prepare(big)
    assert once.shape == (2, 3, SIZE, SIZE) and once.dtype == torch.float32
    torch.testing.assert_close(model.prepare(once), once, rtol=0, atol=0)
    u8 = (big * 255).round().to(torch.uint8)
    torch.testing.assert_close(model.prepare(u8), model.prepare(u8.float() / 255), rtol=0, atol=0)
    torch.testing.assert_close(model.prepare(big[0]), once[:1], rtol=0, atol=0)  # one (3, H, W) image


def check_describe(kind: Kind, tmp_path):
    model = fitted(kind.name)
    d = model.describe()
    assert set(DESCRIBE_KEYS) <= set(d), sorted(d)
    assert d["image_size"] == SIZE and list(d["stages"]) == list(model.config.stages)
    assert d["backbone"] == model.config.backbone
    assert d["kind"] == type(model).KIND
    json.dumps(d)  # small and plain


def check_refuses_bad_input_with_input_error(kind: Kind, tmp_path):
    model = fitted(kind.name)
    if isinstance(model, ScoringModel):
        with pytest.raises(InputError, match="RGB"):
            model.score(torch.rand(2, 1, SIZE, SIZE))  # grayscale
        with pytest.raises(InputError, match="tensor"):
            model.score([[0.5]])  # not a tensor
        with pytest.raises(TypeError):  # the type error is also a TypeError
            model.score("image.png")
    if isinstance(model, FeatureScorer):
        feats = _backbone()(_images(2, 4))
        with pytest.raises(InputError, match="missing"):
            model.maps_from_features({STAGES[0]: feats[STAGES[0]]})
        with pytest.raises(InputError, match="image counts|different"):
            model.maps_from_features({STAGES[0]: feats[STAGES[0]], STAGES[1]: feats[STAGES[1]][:1]})
    with pytest.raises(InputError, match="format|not a"):
        torch.save({"format": "something-else"}, tmp_path / "other.pt")
        type(model).load(tmp_path / "other.pt")


def check_arrays_score_as_tensors(kind: Kind, tmp_path):
    model = fitted(kind.name)
    x = kind.inputs()
    as_array = x.numpy() if isinstance(x, torch.Tensor) else {s: np.asarray(f) for s, f in x.items()}
    torch.testing.assert_close(_score(model, as_array)[0], _score(model, x)[0], rtol=0, atol=0)


CHECKS = [
    check_declares_the_contract,
    check_fit_returns_self,
    check_score_shapes_and_dtypes,
    check_score_is_deterministic,
    check_score_equals_features_path,
    check_state_round_trip,
    check_prepare_is_idempotent,
    check_describe,
    check_refuses_bad_input_with_input_error,
    check_arrays_score_as_tensors,
]


@pytest.mark.parametrize(
    "kind, check",
    [(k, c) for k in KINDS for c in CHECKS],
    ids=[f"{k.name}-{c.__name__}" for k in KINDS for c in CHECKS],
)
def test_model_contract(kind: Kind, check, tmp_path):
    check(kind, tmp_path)
