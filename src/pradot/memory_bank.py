"""A PatchCore-style memory bank (Roth et al., "Towards total recall in industrial anomaly detection",
CVPR 2022) on the same frozen backbone features as PRADOT: the baseline PRADOT is compared with, and a
possible ensemble member.

Method (PatchCore section 3):

* **memory bank**: every patch feature of every training image, after local neighbourhood aggregation
  (``aggregation``, PatchCore: 3, zero-padded at the grid's border as in PatchCore's code:
  ``aggregation_border``) and, by default, with the stages concatenated at the finest grid
  (:class:`pradot.aggregation.FeatureOptions`), optionally reduced to a greedy min-max coreset
  (``coreset_ratio`` < 1, :func:`pradot.coreset.greedy_coreset`, with a random projection to
  ``projection_dim`` dimensions for the selection);
* **patch score**: the Euclidean distance of a test patch feature to its nearest neighbour in the bank
  (``scikit-learn``'s :class:`~sklearn.neighbors.NearestNeighbors`; ``torch.cdist`` is the test oracle);
* **map**: the (H, W) patch scores upsampled bilinearly to the input size (``align_corners=False`` by default,
  PatchCore's and anomalib's ``F.interpolate``: cell centres at their pixel positions; ``True`` as PRADOT's
  maps), averaged over banks when the stages are not concatenated, then smoothed by a Gaussian of
  ``smoothing_sigma`` pixels (PatchCore: 4 at 224 px); the image score is the map's maximum.

Defaults and the direct recipe: ``tests/pradot/test_memory_bank.py`` has an independent oracle of the recipe
(torch average pooling and interpolation, scikit-learn nearest neighbours, scipy's Gaussian filter) that this
model equals to float tolerance. Files written before ``aggregation_border`` and ``align_corners`` existed load
with the rule they were fitted with (``"inside"``, ``True``).

PatchCore's image-score reweighting by the neighbourhood density is left out: the image score is the max of
the map, as for PRADOT, so the two are compared on the same rule.

```python
from pradot.memory_bank import MemoryBankConfig, MemoryBankModel
mb = MemoryBankModel(MemoryBankConfig(backbone="efficientnet_lite0", stages=(2, 3), image_size=128))
mb.fit_features(cached_features)          # {stage: (N, D, H, W)}, e.g. the training features' cache entry
maps, scores = mb.score(images)           # (B, S, S), (B,)
mb.save("memory_bank.pt"); MemoryBankModel.load("memory_bank.pt")   # format pradot-memory-bank-v1
```
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from .aggregation import FeatureOptions, check_aggregation, check_border, stage_image_count
from .backbone import Backbone, backbone_state, restore_backbone
from .base import as_tensor
from .checkpoint import MEMORY_BANK_FORMAT, load_state, save_state
from .coreset import greedy_coreset
from .errors import InputError, NotFittedError
from .maps import Convention, check_sigma
from .per_stage import PerStageModel

__all__ = ["MEMORY_BANK_FORMAT", "MemoryBankConfig", "MemoryBankModel", "nearest_distances"]

log = logging.getLogger(__name__)

#: what memory-bank files written before these options existed were fitted and scored with
LEGACY_OPTIONS = {"aggregation_border": "inside", "align_corners": True}


@dataclass
class MemoryBankConfig:
    """Settings of a memory bank; the defaults are PatchCore's (stages 2+3, 3x3 zero-padded aggregation, one
    concatenated bank, bilinear map upsampling without corner alignment, sigma 4) with the full bank
    (``coreset_ratio`` = 1) and the project's offline backbone."""

    backbone: str = "efficientnet_lite0"
    stages: tuple[int, ...] = (2, 3)
    image_size: int = 224
    aggregation: int = 3
    concat_stages: bool = True
    coreset_ratio: float = 1.0  # share of the patch features kept (greedy coreset); 1: every feature
    projection_dim: int | None = 128  # random projection used by the coreset selection (None: none)
    smoothing_sigma: float = 4.0
    seed: int = 0
    aggregation_border: str = "zero"  # cells outside the grid: "zero" (PatchCore) or "inside" (left out)
    align_corners: bool = False  # bilinear map upsampling: False (PatchCore, anomalib) or True (PRADOT's maps)

    def __post_init__(self):
        self.stages = tuple(sorted({int(s) for s in self.stages}))
        if not self.stages:
            raise InputError("a memory bank needs at least one backbone stage (PatchCore: 2 and 3)")
        self.aggregation = check_aggregation(self.aggregation)
        self.aggregation_border = check_border(self.aggregation_border)
        self.align_corners = bool(self.align_corners)
        self.concat_stages = bool(self.concat_stages)
        self.smoothing_sigma = check_sigma(self.smoothing_sigma)
        r = float(self.coreset_ratio)
        if not (math.isfinite(r) and 0.0 < r <= 1.0):
            raise InputError(f"coreset_ratio must lie in (0, 1] (1 = the full bank), got {self.coreset_ratio!r}")
        self.coreset_ratio = r
        if self.projection_dim is not None and int(self.projection_dim) < 1:
            raise InputError(f"projection_dim must be >= 1 or None, got {self.projection_dim!r}")
        if int(self.image_size) < 16:
            raise InputError(f"image_size must be >= 16, got {self.image_size}")


def nearest_distances(index, queries: torch.Tensor) -> torch.Tensor:
    """Euclidean distance of each (Q, D) query to its nearest neighbour in a fitted
    :class:`sklearn.neighbors.NearestNeighbors` ``index``: (Q,) float32."""
    dist, _ = index.kneighbors(
        np.ascontiguousarray(queries.detach().cpu().numpy(), dtype=np.float32), n_neighbors=1, return_distance=True
    )
    return torch.from_numpy(np.asarray(dist[:, 0], dtype=np.float32))


class MemoryBankModel(nn.Module, PerStageModel):
    """A frozen backbone and one memory bank per bank stage (see the module docstring).

    A :class:`pradot.per_stage.PerStageModel` (a :class:`pradot.base.FeatureModel`, as
    :class:`pradot.model.PRADOT`): ``fit``/``fit_features`` (return ``self``), ``score(images) -> (maps,
    scores)``, ``maps_from_features``, ``maps_from_backbone`` (ensemble member), ``state``/``from_state``,
    ``save``/``load``.
    """

    KIND = "memory_bank"
    FORMAT = MEMORY_BANK_FORMAT

    def __init__(self, config: MemoryBankConfig, backbone: Backbone | None = None, device: str | torch.device = "cpu"):
        super().__init__()
        self._set_backbone(
            config,
            backbone,
            device,
            FeatureOptions(config.aggregation, config.concat_stages, config.aggregation_border),
        )
        self.memory: dict[int, torch.Tensor] = {}  # bank stage -> (M, D) float32 on the CPU
        self._index: dict[int, object] = {}  # bank stage -> fitted NearestNeighbors (rebuilt after loading)
        self.fitted = False

    # ------------------------------------------------------------------ features
    def transform(self, features: Mapping[int, np.ndarray | torch.Tensor]) -> dict[int, torch.Tensor]:
        """Backbone features ``{stage: (B, D, H, W)}`` -> bank features ``{bank stage: (B, D', H', W')}``."""
        feats = {s: as_tensor(features[s]).float() for s in self.config.stages}
        return self.options.apply(feats, self.config.stages)

    def fit_features(
        self, features: Mapping[int, np.ndarray | torch.Tensor], chunk: int = 32, progress: bool = True
    ) -> MemoryBankModel:
        """Fill the banks from backbone features ``{stage: (N, D, H, W)}`` (arrays, memmaps or tensors) of the
        training images, ``chunk`` images at a time; then the coreset when ``coreset_ratio`` < 1.

        Raises:
            InputError: a stage is missing, the stages have different image counts, or there is no image.
        """
        n = stage_image_count(features, self.config.stages)
        if n == 0:
            raise InputError("the training set is empty: a memory bank needs at least one normal image")
        parts: dict[int, list[torch.Tensor]] = {s: [] for s in self.bank_stages}
        for i in range(0, n, chunk):
            batch = self.transform({s: features[s][i : i + chunk] for s in self.config.stages})
            for s, f in batch.items():
                parts[s].append(f.permute(0, 2, 3, 1).reshape(-1, f.shape[1]).contiguous())
        self.memory, self._index = {}, {}
        for s in self.bank_stages:
            mem = torch.cat(parts[s])
            if self.config.coreset_ratio < 1.0:
                k = max(1, int(round(self.config.coreset_ratio * len(mem))))
                idx = greedy_coreset(mem, k, projection_dim=self.config.projection_dim, seed=self.config.seed)
                log.info("memory bank stage %s: coreset of %d of %d patch features", s, k, len(mem))
                mem = mem[idx].contiguous()
            self.memory[s] = mem
        self.fitted = True
        return self

    def _nn(self, stage: int):
        """The nearest-neighbour index of a bank (built on first use)."""
        if stage not in self._index:
            from sklearn.neighbors import NearestNeighbors

            self._index[stage] = NearestNeighbors(n_neighbors=1).fit(self.memory[stage].numpy())
        return self._index[stage]

    # ------------------------------------------------------------------ scoring
    def check_fitted(self) -> None:
        if not self.fitted or not self.memory:
            raise NotFittedError("the memory bank is empty: call fit(...) or fit_features(...) first")

    @torch.no_grad()
    def stage_maps(self, features: Mapping[int, torch.Tensor]) -> dict[int, torch.Tensor]:
        """Patch scores per bank at feature resolution: backbone features ``{stage: (B, D, H, W)}`` ->
        ``{bank stage: (B, H, W)}`` (distance to the nearest bank feature, CPU)."""
        self.check_fitted()
        out = {}
        for s, f in self.transform(features).items():
            B, D, H, W = f.shape
            q = f.permute(0, 2, 3, 1).reshape(-1, D)
            out[s] = nearest_distances(self._nn(s), q).reshape(B, H, W)
        return out

    @property
    def map_convention(self) -> Convention:
        """Bilinear with ``config.align_corners`` (PatchCore's own code: True)."""
        return "align_corners" if self.config.align_corners else "half_pixel"

    def settings(self) -> dict:
        """The memory bank's own settings for :meth:`describe`: feature options, coreset, bank sizes."""
        c = self.config
        return {
            "aggregation": int(c.aggregation),
            "concat_stages": bool(c.concat_stages),
            "aggregation_border": c.aggregation_border,
            "align_corners": bool(c.align_corners),
            "coreset_ratio": float(c.coreset_ratio),
            "bank_size": {int(s): int(len(m)) for s, m in self.memory.items()},
        }

    # ------------------------------------------------------------------ persistence
    def state(self, include_backbone: bool = True) -> dict:
        """The dict :meth:`save` writes: format, config, the banks and (by default) the backbone's weights."""
        cfg = asdict(self.config)
        cfg["stages"] = list(self.config.stages)
        return {
            "format": MEMORY_BANK_FORMAT,
            "config": cfg,
            "fitted": self.fitted,
            "memory": {int(s): m.contiguous() for s, m in self.memory.items()},
            "backbone": backbone_state(self.backbone, include_backbone),
        }

    def save(self, path: str | Path, include_backbone: bool = True, **options) -> Path:
        """One self-describing file (format ``pradot-memory-bank-v1``)."""
        return save_state(self.state(include_backbone), path)

    @classmethod
    def from_state(
        cls, state: Mapping, device: str | torch.device = "cpu", backbone: Backbone | None = None
    ) -> MemoryBankModel:
        """Inverse of :meth:`state`; ``backbone`` replaces the stored one (e.g. a shared network)."""
        cfg = {**LEGACY_OPTIONS, **state["config"]}  # files from before these options: the rule they were fitted with
        cfg["stages"] = tuple(cfg["stages"])
        config = MemoryBankConfig(**cfg)
        backbone = restore_backbone(state["backbone"], backbone)
        model = cls(config, backbone=backbone, device=device)
        model.memory = {int(s): torch.as_tensor(m).float().contiguous() for s, m in state["memory"].items()}
        model.fitted = bool(state.get("fitted", True)) and bool(model.memory)
        return model.eval()

    @classmethod
    def load(
        cls, path: str | Path, device: str | torch.device = "cpu", backbone: Backbone | None = None, **options
    ) -> MemoryBankModel:
        """Read a :meth:`save` file. Raises FileNotFoundError / InputError (not a memory-bank file)."""
        return cls.from_state(
            load_state(path, MEMORY_BANK_FORMAT, what="memory bank"), device=device, backbone=backbone
        )
