"""``model.tiling.*`` (pipelines/tiling.py): off by default, typed settings when on, clear errors naming the key
for bad values, all before any work."""

from __future__ import annotations

import pytest

from pipelines import config
from pipelines.tiling import TilingSettings, tiling_settings

BASE = [
    "experiment=ci",
    "data.image_size=128",
    "model.tiling.enabled=true",
    "model.tiling.tile_size=64",
    "model.tiling.stride=32",
]


def test_off_by_default_and_typed_when_on():
    assert tiling_settings(config.compose("train", [])) is None
    settings = config.train_settings(config.compose("train", BASE))
    assert settings.tiling == TilingSettings(64, 32, "linear", "per_position")
    assert settings.tiling.grid(settings.data.image_size).n_tiles == 9
    assert settings.model.image_size == 128  # the whole image; the tiles' PRADOT is built at tile_size


@pytest.mark.parametrize(
    "override, match",
    [
        ("model.tiling.tile_size=256", r"model.tiling.tile_size=256 is out of range.*larger than the image"),
        ("model.tiling.stride=0", r"model.tiling.stride=0 is out of range.*never advance"),
        ("model.tiling.stride=300", r"model.tiling.stride=300 is out of range.*uncovered"),
        (
            "model.tiling.blend=gauss",
            r"model.tiling.blend='gauss'.*mean, linear; change it with the override model.tiling.blend=",
        ),
        ("model.tiling.banks=each", r"model.tiling.banks='each'.*shared, per_position"),
    ],
)
def test_bad_values_are_refused_naming_the_key(override, match):
    with pytest.raises(config.ConfigError, match=match):
        tiling_settings(config.compose("train", [*BASE, override]))


@pytest.mark.parametrize("override", ["model.tiling.blend=cubic", "model.tiling.banks=each"])
def test_a_bad_choice_is_refused_also_when_tiling_is_off(override):
    """A misspelt choice is refused whether tiling is on or not (it would be logged as the run's setting);
    tile_size and stride are checked against the image only when tiling is on (their defaults exceed small images)."""
    with pytest.raises(config.ConfigError, match=override.split("=")[0]):
        tiling_settings(config.compose("train", ["experiment=ci", override]))
    assert tiling_settings(config.compose("train", ["experiment=ci", "model.tiling.tile_size=9999"])) is None
