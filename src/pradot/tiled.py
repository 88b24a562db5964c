"""A tiled model: any feature model (PRADOT, memory bank, PaDiM) scoring a high-resolution image tile by tile.

```python
from pradot.tiled import TiledModel
from pradot.tiling import TileGrid
grid = TileGrid(size=448, tile=224, stride=112)          # 3 x 3 overlapping tiles of a 448 px image
model = TiledModel.build(PRADOT(config_at_224, backbone=bb), grid, banks="per_position").fit(train_dataset)
maps, scores = model.score(images)                      # (B, 448, 448), (B,): stitched maps, their max
model.save("tiled.pt"); load_scoring_model("tiled.pt")  # format pradot-tiled-v1
```

How it fits the model contract (:mod:`pradot.base`): a :class:`~pradot.base.ScoringModel` of its own kind
(``KIND = "tiled"``, ``FORMAT = "pradot-tiled-v1"``) wrapping one or more tile models (feature models of the kinds an
ensemble holds, :data:`pradot.ensemble.MEMBER_CLASSES`) that share one backbone. Its ``image_size`` is the side
``S`` of the whole (resized) image and of its maps; the tile models' ``image_size`` is the tile side ``T``.
Training: ``fit(data)`` (a Dataset of ``{"image": (3, S, S)}`` items) cuts every image into tiles
(:func:`pradot.tiling.cut_tiles`), runs the backbone once per tile and fits the tile model(s) on those features.
Scoring: ``score(images)`` -> tiles -> backbone -> each tile model's ``maps_from_backbone`` -> stitched
(:func:`pradot.tiling.stitch_maps`) -> image score = max of the stitched map.

Banks (``banks``):

* ``"shared"``: one tile model for every tile position (trained on all tiles of all images). PRADOT's spatial
  term then uses the tile-local grid: a prototype is local to a place *in the tile*, whatever the tile.
* ``"per_position"``: one tile model per tile position (model ``k`` trained on tile ``k`` of every image): the
  tile's position enters through the bank, so PRADOT's local prototypes (``alpha > 0``) stay local in the
  whole image, as they are in the untiled model. This is the choice for ``alpha > 0`` (measured in
  ``benchmarks/results/tiling.json``): with balanced transport (uniform marginals, Eq. 4) every embedding of a
  tile must be carried to prototypes, so one bank with image-wide coordinates would spread each tile's mass over
  prototypes of other places; a bank per position keeps the transport between a tile and its own prototypes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from .backbone import restore_backbone
from .base import FeatureModel, ScoringModel
from .errors import InputError, NotFittedError
from .scoring import image_scores
from .tiling import TileGrid, cut_tiles, stitch_maps

__all__ = ["BANKS", "TILED_FORMAT", "TiledConfig", "TiledModel"]

TILED_FORMAT = "pradot-tiled-v1"
#: one tile model for all positions, or one per tile position
BANKS = ("shared", "per_position")


@dataclass
class TiledConfig:
    """What the tiled model is: the grid (whole-image side ``image_size`` = S, ``tile_size`` = T, ``stride``,
    ``blend``), the ``banks`` rule, and the tile models' backbone and stages (for the contract's metadata).

    Raises:
        InputError: a bad grid (:class:`pradot.tiling.TileGrid`) or an unknown ``banks``.
    """

    image_size: int
    tile_size: int
    stride: int
    blend: str = "mean"
    banks: str = "per_position"
    backbone: str = ""
    stages: tuple[int, ...] = ()

    def __post_init__(self):
        self.stages = tuple(int(s) for s in self.stages)
        if self.banks not in BANKS:
            raise InputError(f"tiling banks must be one of {', '.join(BANKS)}, got {self.banks!r}")
        self.grid  # noqa: B018 - validates the geometry now

    @property
    def grid(self) -> TileGrid:
        return TileGrid(int(self.image_size), int(self.tile_size), int(self.stride), self.blend)

    def to_dict(self) -> dict:
        return {
            "image_size": int(self.image_size),
            "tile_size": int(self.tile_size),
            "stride": int(self.stride),
            "blend": self.blend,
            "banks": self.banks,
            "backbone": self.backbone,
            "stages": list(self.stages),
        }


def _member_classes():
    from .ensemble import MEMBER_CLASSES  # late: ensemble imports the model kinds

    return MEMBER_CLASSES


class TiledModel(nn.Module, ScoringModel):
    """Tile models scoring the tiles of an image, their maps stitched (module docstring)."""

    KIND = "tiled"
    FORMAT = TILED_FORMAT

    def __init__(self, config: TiledConfig, tile_models: Sequence[FeatureModel]):
        super().__init__()
        models: list[Any] = list(tile_models)
        want = 1 if config.banks == "shared" else config.grid.n_tiles
        if len(models) != want:
            raise InputError(f"banks={config.banks!r} on {config.grid.n_tiles} tiles needs {want} tile models")
        for m in models:
            if not isinstance(m, FeatureModel) or type(m).FORMAT not in _member_classes():
                raise InputError(
                    f"a tile model must be a feature model of {sorted(_member_classes())}, got {type(m).__name__}"
                )
            if m.image_size != config.tile_size:
                raise InputError(f"tile models must score {config.tile_size} px tiles, got image_size {m.image_size}")
            if m.backbone is not models[0].backbone:
                raise InputError("the tile models must share one backbone object (one pass per tile)")
        self.config = config
        self.modules_ = nn.ModuleList(models)  # eval() and to() reach the tile models
        self.models: list[Any] = models  # the tile models, typed as what they are
        self.grid = config.grid

    @classmethod
    def build(cls, model: FeatureModel, grid: TileGrid, banks: str = "per_position") -> TiledModel:
        """A tiled model of unfitted ``model`` (at ``image_size == grid.tile``): itself (``"shared"``) or one copy
        per tile position sharing its backbone (``"per_position"``)."""
        config = TiledConfig(
            grid.size, grid.tile, grid.stride, grid.blend, banks, str(model.config.backbone), model.config.stages
        )
        n = 1 if banks == "shared" else grid.n_tiles
        kind: Any = type(model)
        models = [model] + [kind(model.config, backbone=model.backbone, device=model.device) for _ in range(n - 1)]
        return cls(config, models)

    @property
    def backbone(self):
        return self.models[0].backbone

    @property
    def device(self) -> torch.device:  # type: ignore[override]
        return torch.device(self.models[0].device)

    @property
    def fitted(self) -> bool:  # type: ignore[override]
        return all(m.fitted for m in self.models)

    # ------------------------------------------------------------------ training
    @torch.no_grad()
    def tile_features(self, images, batch_size: int = 16) -> dict[int, np.ndarray]:
        """Backbone features of every tile: ``{stage: (B, K, D, h, w)}`` float32 arrays, ``batch_size`` images a
        time (``images``: anything :meth:`prepare` takes, or a Dataset of ``{"image"}`` items)."""
        out: dict[int, list[np.ndarray]] = {}
        n = len(images)
        for i in range(0, n, batch_size):
            if isinstance(images, torch.utils.data.Dataset):
                batch = torch.stack([images[j]["image"] for j in range(i, min(i + batch_size, n))])
            else:
                batch = images[i : i + batch_size]
            tiles = cut_tiles(self.prepare(batch), self.grid)  # (b, K, 3, T, T)
            b, K = tiles.shape[:2]
            feats = self.backbone(tiles.reshape(b * K, *tiles.shape[2:]).to(self.device))
            for s, f in feats.items():
                out.setdefault(int(s), []).append(f.reshape(b, K, *f.shape[1:]).float().cpu().numpy())
        return {s: np.concatenate(v) for s, v in out.items()}

    def fit(self, data, progress: bool = True, batch_size: int = 16) -> TiledModel:
        """Fit the tile model(s) on the tiles of ``data`` (a Dataset of ``{"image": (3, S, S)}`` items or images
        (N, 3, H, W)): ``"shared"`` on all N x K tiles, ``"per_position"`` model k on the N tiles at position k.
        Returns ``self``."""
        feats = self.tile_features(data, batch_size)
        if self.config.banks == "shared":
            self.models[0].fit_features({s: f.reshape(-1, *f.shape[2:]) for s, f in feats.items()}, progress=progress)
        else:
            for k, m in enumerate(self.models):  # one progress bar (the first bank's): the others take as long
                m.fit_features(
                    {s: np.ascontiguousarray(f[:, k]) for s, f in feats.items()}, progress=progress and k == 0
                )
        return self

    # ------------------------------------------------------------------ scoring
    @torch.no_grad()
    def tile_maps(self, features: Mapping[int, torch.Tensor], n_images: int) -> torch.Tensor:
        """Tile maps (B, K, T, T) from the backbone features of the B x K tiles ``{stage: (B * K, D, h, w)}``
        (image-major, row-major tiles)."""
        K, T = self.grid.n_tiles, self.grid.tile
        if self.config.banks == "shared":
            return self.models[0].maps_from_backbone(features).reshape(n_images, K, T, T)
        per = {s: f.reshape(n_images, K, *f.shape[1:]) for s, f in features.items()}
        return torch.stack(
            [m.maps_from_backbone({s: f[:, k] for s, f in per.items()}) for k, m in enumerate(self.models)], 1
        )

    @torch.no_grad()
    def score(self, images, batch_size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
        """Stitched anomaly maps (B, S, S) float32 (CPU) at ``image_size`` S and image scores (B,), the max of
        each stitched map. ``batch_size`` counts whole images (each K tiles).

        Raises:
            InputError: not RGB images. NotFittedError: a tile model is not fitted.
        """
        if not self.fitted:
            raise NotFittedError("the TiledModel is not fitted yet: call fit(...)")
        images = self.prepare(images)
        S = self.image_size
        out = []
        for i in range(0, len(images), batch_size):
            tiles = cut_tiles(images[i : i + batch_size], self.grid)
            b, K = tiles.shape[:2]
            feats = self.backbone(tiles.reshape(b * K, *tiles.shape[2:]).to(self.device))
            out.append(stitch_maps(self.tile_maps(feats, b).float(), self.grid).cpu())
        maps = torch.cat(out) if out else torch.zeros(0, S, S)
        return maps, image_scores(maps)

    def describe(self) -> dict:
        """Kind, backbone, stages, image size (the whole image), the grid and the tile model's description."""
        return {
            "kind": self.KIND,
            "backbone": self.config.backbone,
            "stages": list(self.config.stages),
            "image_size": self.image_size,
            "tile_size": int(self.config.tile_size),
            "stride": int(self.config.stride),
            "blend": self.config.blend,
            "banks": self.config.banks,
            "n_tiles": self.grid.n_tiles,
            "tile_model": self.models[0].describe(),
        }

    # ------------------------------------------------------------------ persistence
    def state(self, include_backbone: bool = True) -> dict:
        """``{"format", "config", "models": [tile model states without backbone], "backbone": the shared one}``."""
        return {
            "format": TILED_FORMAT,
            "config": self.config.to_dict(),
            "models": [m.state(include_backbone=False) for m in self.models],
            "backbone": self.models[0].state(include_backbone=include_backbone)["backbone"],
        }

    def save(self, path, include_backbone: bool = True, **options):
        return super().save(path, include_backbone=include_backbone)

    @classmethod
    def from_state(cls, state: Mapping, device: str | torch.device = "cpu") -> TiledModel:
        """Inverse of :meth:`state`: one backbone object shared by the tile models.

        Raises:
            InputError: a tile model of a format no tiled model holds.
        """
        classes = _member_classes()
        backbone = restore_backbone(state["backbone"]).to(device)
        models = []
        for ms in state["models"]:
            fmt = ms.get("format")
            if fmt not in classes:
                raise InputError(f"tile model of unknown format {fmt!r} (known: {sorted(classes)})")
            models.append(classes[fmt].from_state(ms, device=device, backbone=backbone))
        return cls(TiledConfig(**{**state["config"], "stages": tuple(state["config"]["stages"])}), models).eval()
