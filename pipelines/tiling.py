"""``model.tiling.*``: high-resolution images by tiles in the training entry point (:mod:`pradot.tiled`).

With ``model.tiling.enabled=true`` the images are read at ``data.image_size`` (the whole image's working side: set
it below the native size to downscale first), cut into ``model.tiling.tile_size`` tiles ``model.tiling.stride``
apart, and PRADOT (at ``image_size = tile_size``) is trained on the tiles: one bank per tile position
(``banks=per_position``, the default: PRADOT's local prototypes stay local in the whole image) or one for all
(``banks=shared``). The model file is a :class:`pradot.tiled.TiledModel` (format ``pradot-tiled-v1``); ``predict``
and serving read it like any other model, at ``data.image_size``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from omegaconf import DictConfig

from pipelines import checks
from pipelines.checks import ConfigError
from pradot.errors import InputError
from pradot.tiled import BANKS
from pradot.tiling import BLENDS, TileGrid

__all__ = ["TilingSettings", "tiling_settings", "train_tiled"]


@dataclass(frozen=True)
class TilingSettings:
    """The tile grid and the banks rule, checked (``model.tiling.*``)."""

    tile_size: int
    stride: int
    blend: str = "linear"
    banks: str = "per_position"

    def grid(self, image_size: int) -> TileGrid:
        return TileGrid(int(image_size), self.tile_size, self.stride, self.blend)


def tiling_settings(cfg: DictConfig) -> TilingSettings | None:
    """``model.tiling`` of a composed config: None when absent or ``enabled: false``.

    Raises:
        ConfigError: a value of the wrong type or out of range, naming the key: ``tile_size`` not in
            [16, data.image_size] (a tile larger than the image), ``stride`` not in [1, tile_size], an unknown
            ``blend`` or ``banks``.
    """
    t = cfg.model.get("tiling")
    if not t:
        return None
    blend, banks = str(t.get("blend", "linear")), str(t.get("banks", "per_position"))
    for key, value, allowed in (("blend", blend, BLENDS), ("banks", banks, BANKS)):  # checked even when off
        if value not in allowed:
            raise ConfigError(
                f"model.tiling.{key}={value!r}: must be one of {', '.join(allowed)}; "
                f"{checks.how_to_set(f'model.tiling.{key}')}"
            )
    if not bool(t.get("enabled", False)):
        return None  # tile_size and stride are checked against the image size only when tiling is on
    size = int(cfg.data.image_size)
    tile = checks.number(
        "model.tiling.tile_size",
        t.get("tile_size"),
        integer=True,
        lo=16,
        hi=size,
        why=f"the tiles' side, px: at most data.image_size={size} (a tile larger than the image has nothing to cut)",
    )
    stride = checks.number(
        "model.tiling.stride",
        t.get("stride"),
        integer=True,
        lo=1,
        hi=tile,
        why="px between tiles: below 1 tiles never advance, above tile_size pixels are left uncovered",
    )
    return TilingSettings(int(tile), int(stride), blend, banks)


def train_tiled(settings, splits, device, callback=None):
    """Train a tiled PRADOT on the training split (images at ``data.image_size``): returns the engine's
    :class:`pradot.engine.TrainResult` (no feature cache: tiles' features are extracted once in memory)."""
    import time

    from pradot.backbone import load_backbone
    from pradot.data import ImageDataset
    from pradot.engine import TrainResult
    from pradot.model import PRADOT
    from pradot.tiled import TiledModel

    t = settings.tiling
    config = dataclasses.replace(settings.model, image_size=t.tile_size)
    t0 = time.perf_counter()
    backbone = load_backbone(config.backbone, config.stages, weights_path=settings.weights_path, device=device)
    try:
        model = TiledModel.build(
            PRADOT(config, backbone=backbone, device=device), t.grid(settings.data.image_size), t.banks
        )
    except InputError as e:
        raise ConfigError(f"model.tiling: {e}") from None
    t1 = time.perf_counter()
    model.fit(ImageDataset(list(splits.train), settings.data.image_size), progress=True)
    history = model.models[0].history_
    if callback is not None:
        for stats in history:
            callback(stats)
    t2 = time.perf_counter()
    timings = {"backbone_load_seconds": t1 - t0, "train_seconds": t2 - t1}
    return TrainResult(model, history, timings, None)
