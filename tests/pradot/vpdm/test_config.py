"""VPDM's settings: the recipes in the library equal conf/vpdm/*.yaml; bad values are refused with the key;
the offline backbone's channel count."""

from dataclasses import asdict
from pathlib import Path

import pytest
import yaml

from pradot.backbone import load_backbone
from pradot.vpdm import RECIPES, VPDM, VPDMConfig
from pradot.vpdm.features import grid_features, stage_channels

CONF = Path(__file__).resolve().parents[3] / "conf" / "vpdm"


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_yaml_recipes_equal_the_library_recipes(name):
    stored = yaml.safe_load((CONF / f"{name}.yaml").read_text())
    expected = asdict(VPDMConfig.recipe(name))
    expected["stages"] = list(expected["stages"])
    assert stored == expected


def test_paper_recipe_is_appendix_d():
    c = VPDMConfig.recipe("paper")
    assert (c.image_size, c.grid, c.downsample, c.n_prototypes) == (224, 32, 4, 50)
    assert (c.timesteps, c.beta_start, c.beta_end, c.lr, c.batch_size) == (1000, 1e-4, 0.02, 1e-3, 32)
    assert c.sampling_steps == c.timesteps
    assert c.start_step == 0  # Algorithm 2 from x^T ~ N(y_hat, I)


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"downsample": 3}, "divide grid"),
        ({"sampling_steps": 2000}, "cannot exceed"),
        ({"condition": "attention"}, "condition must be one of"),
        ({"endpoint": "zero"}, "endpoint must be one of"),
        ({"ot_eps": 0.0}, "ot_eps"),
        ({"ot_weight": -1.0}, "ot_weight"),
        ({"beta_end": 1.5}, "beta_start <= beta_end"),
        ({"n_prototypes": 0}, "n_prototypes"),
        ({"stages": ()}, "stages"),
        ({"start_step": 1001}, "start_step"),
        ({"start_step": -1}, "start_step"),
    ],
)
def test_bad_settings_are_refused(bad, match):
    with pytest.raises(ValueError, match=match):
        VPDMConfig(**bad)


def test_unknown_recipe_or_setting_is_refused():
    with pytest.raises(ValueError, match="unknown VPDM recipe"):
        VPDMConfig.recipe("gpu")
    with pytest.raises(ValueError, match="unknown VPDM setting"):
        VPDMConfig.recipe("cpu", prototypes=3)
    assert VPDMConfig.recipe("cpu", epochs=2).epochs == 2


def test_offline_backbone_gives_192_channels_on_the_grid():
    import torch

    bb = load_backbone("efficientnet_lite0", (0, 1, 2, 3))
    assert stage_channels(bb.channels, (0, 1, 2, 3)) == 16 + 24 + 40 + 112
    x = grid_features(bb(torch.rand(2, 3, 64, 64)), (0, 1, 2, 3), 16)
    assert x.shape == (2, 192, 16, 16)
    model = VPDM(VPDMConfig.recipe("cpu"), backbone=bb)
    assert model.channels == 192 and model.prototypes.shape == (16, 192)
