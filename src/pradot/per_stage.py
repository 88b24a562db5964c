"""The shared base of the feature models that score each bank stage on its own feature grid and fuse the maps
the same way: :class:`MemoryBankModel` (PatchCore-style) and :class:`PaDiMModel`.

What differs between them is how a stage is scored (:meth:`PerStageModel.stage_maps`: nearest-neighbour
distance, Mahalanobis distance), the resize convention of the maps (:attr:`PerStageModel.map_convention`)
and their own settings (:meth:`PerStageModel.settings`); the backbone set-up, the fusion (resize to the image
size, mean over the stages, Gaussian smoothing), ``maps_from_backbone`` and ``describe`` are written here once.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping
from typing import Any

import torch

from .aggregation import FeatureOptions
from .backbone import Backbone, load_backbone
from .base import FeatureModel
from .errors import InputError
from .maps import Convention, gaussian_smooth, resize_maps
from .scoring import fuse_maps

__all__ = ["PerStageModel"]


class PerStageModel(FeatureModel):
    """A frozen backbone, feature options and one scorer per bank stage; the maps of the stages are resized to
    the image size (:attr:`map_convention`), averaged and smoothed (``config.smoothing_sigma``, pixels).

    Subclasses set ``KIND``, ``FORMAT``, :meth:`stage_maps`, :meth:`settings` and, where it is not
    ``half_pixel``, :attr:`map_convention`; their config has ``backbone``, ``stages``, ``image_size`` and
    ``smoothing_sigma``.
    """

    options: FeatureOptions
    bank_stages: tuple[int, ...]

    def _set_backbone(
        self, config: Any, backbone: Backbone | None, device: str | torch.device, options: FeatureOptions
    ) -> None:
        """``config``, ``device``, the backbone (loaded for ``config.backbone`` when None, moved to ``device``),
        the feature options and the bank stages they give.

        Raises:
            InputError: the backbone's stages are not the config's.
        """
        self.config = config
        self.device = torch.device(device)
        self.backbone = backbone if backbone is not None else load_backbone(config.backbone, config.stages)
        if tuple(self.backbone.stages) != tuple(config.stages):
            raise InputError(f"backbone stages {self.backbone.stages} != config stages {config.stages}")
        self.backbone.to(self.device)
        self.options = options
        self.bank_stages = options.bank_stages(config.stages)

    @property
    def map_convention(self) -> Convention:
        """How a stage's map is resized to the image size (:func:`pradot.maps.resize_maps`)."""
        return "half_pixel"

    @abstractmethod
    def stage_maps(self, features: Mapping[int, torch.Tensor]) -> dict[int, torch.Tensor]:
        """Scores at feature resolution: backbone features ``{stage: (B, D, H, W)}`` -> ``{bank stage: (B, H, W)}``
        (CPU)."""

    @abstractmethod
    def settings(self) -> dict:
        """This kind's own settings for :meth:`describe` (JSON-able)."""

    def fuse(self, per_stage: Mapping[int, torch.Tensor]) -> torch.Tensor:
        """Per-bank maps -> (B, S, S): each resized to the image size (:attr:`map_convention`), averaged over
        the bank stages, then smoothed (``config.smoothing_sigma``)."""
        S = self.image_size
        maps = [resize_maps(per_stage[s], S, self.map_convention) for s in self.bank_stages]
        return gaussian_smooth(fuse_maps(maps), self.config.smoothing_sigma)

    @torch.no_grad()
    def maps_from_backbone(self, features: Mapping[int, torch.Tensor]) -> torch.Tensor:
        """The maps (B, S, S) from this model's backbone features (an ensemble's shared backbone pass)."""
        return self.fuse(self.stage_maps(features))

    def describe(self) -> dict:
        """What an ensemble records of this member: kind, backbone, stages, image size, smoothing (no ``alpha``
        nor ``n``: not a PRADOT bank) and :meth:`settings`."""
        c = self.config
        return {
            "kind": self.KIND,
            "backbone": c.backbone,
            "stages": list(c.stages),
            "alpha": None,
            "n": None,
            "image_size": int(c.image_size),
            "smoothing_sigma": float(c.smoothing_sigma),
            **self.settings(),
        }
