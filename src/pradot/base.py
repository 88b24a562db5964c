"""The model contract: what every model kind of the project offers, written once.

Three abstract classes, in the spirit of scikit-learn's estimator contract (``fit`` returns ``self``; what
``fit`` learns is an attribute, the training history ``history_``) and of anomalib's memory-bank models (a
model that learns from backbone features next to the network that computes them):

* :class:`Model`: what any model is. ``KIND`` (a short name: ``"pradot"``, ``"memory_bank"``, ...) and
  ``FORMAT`` (the ``"format"`` of its files, :mod:`pradot.checkpoint`); ``config`` (a dataclass with at least
  ``image_size``, ``backbone`` and ``stages``); ``image_size`` (int, pixels: the side of the square images it
  scores and of its maps); ``fitted`` (bool); ``describe()`` (a small dict: at least :data:`DESCRIBE_KEYS`);
  the state round trip ``state()`` -> ``from_state(state, device)`` (a plain dict of data and tensors that
  ``torch.load(weights_only=True)`` reads back; the restored model scores exactly as the saved one) and
  ``save(path)`` / ``load(path, device)`` (one file, written atomically).
* :class:`ScoringModel` (a :class:`Model`): scores images. ``prepare(images)`` -> float (B, 3, S, S) in
  [0, 1] (the one input rule, :func:`prepare_images`; idempotent: preparing prepared images changes
  nothing); ``score(images, batch_size=16)`` -> ``(maps, scores)``: maps (B, S, S) float32 on the CPU, at
  ``S = image_size``, higher = more anomalous; scores (B,) float32, the image anomaly scores. Scoring is
  deterministic (same images, same model: same numbers). This is what serving, calibration, evaluation
  and the pyfunc use.
* :class:`FeatureScorer` (a :class:`Model`): learns from and scores **backbone features**
  ``{stage: (B, D, H, W)}`` (arrays, memmaps or tensors, e.g. the feature cache), with no network.
  ``fit_features(features)`` -> ``self``; ``maps_from_features(features, batch_size=16)`` -> ``(maps,
  scores)`` as ``score``; ``maps_from_backbone(features)`` -> maps (B, S, S) of one batch (what an
  ensemble calls once per shared backbone pass); ``stage_maps(features)`` -> ``{bank stage: (B, h, w)}``,
  the per-stage patch scores before resizing (models that have stages).
* :class:`FeatureModel` (both): a frozen ``backbone`` (:class:`pradot.backbone.Backbone`) and a feature
  scorer. ``fit(data)`` -> ``self`` (backbone features of a Dataset of ``{"image": (3, S, S)}`` items, or of
  a DataLoader over one), and ``score(images) == maps_from_features(backbone(prepare(images)))``.

Errors (:mod:`pradot.errors`): bad input (images of the wrong shape, missing stages, a file of another
format) raises :class:`~pradot.errors.InputError`; scoring before ``fit`` raises
:class:`~pradot.errors.NotFittedError` for models that cannot score unfitted.

Every model class of the project implements this (``tests/pradot/test_contract.py`` checks each one):
:class:`pradot.model.PRADOT` and :class:`pradot.memory_bank.MemoryBankModel` (feature models),
:class:`pradot.model.PrototypeModel` (a feature scorer: PRADOT's banks), :class:`pradot.fewshot.FOCT` (a
feature model whose ``score`` may also update its memory), :class:`pradot.padim.PaDiMModel` (a feature
model), :class:`pradot.vpdm.VPDM` (a feature model, one model for many categories, whose image score is the max
of the pooled map), :class:`pradot.ensemble.Ensemble` (a scoring model over members that are feature models)
and :class:`pradot.tiled.TiledModel` (a scoring model over tile models that are feature models, maps stitched).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from .checkpoint import load_state, save_state
from .errors import InputError, InputTypeError, NotFittedError
from .scoring import image_scores

__all__ = [
    "DESCRIBE_KEYS",
    "Model",
    "ScoringModel",
    "FeatureScorer",
    "FeatureModel",
    "as_tensor",
    "prepare_images",
]

#: keys every ``describe()`` has: the kind, the backbone's name, its stages and the image size
DESCRIBE_KEYS = ("kind", "backbone", "stages", "image_size")


def as_tensor(x) -> torch.Tensor:
    """A tensor of ``x`` (tensor, array or memmap slice); read-only arrays (cached features) are copied first,
    so torch never wraps memory it may not write."""
    if isinstance(x, torch.Tensor):
        return x
    a = np.asarray(x)
    return torch.from_numpy(a if a.flags.writeable else np.array(a))


def prepare_images(images, size: int) -> torch.Tensor:
    """(B, 3, H, W) (or (3, H, W)) float in [0, 1] or uint8, tensor or array -> float (B, 3, size, size):
    resized (bilinear, half-pixel centres, antialiased) when needed. The one input rule of every scoring model.

    Raises:
        InputTypeError: not a tensor or array (also a ``TypeError``).
        InputError: not RGB images of shape (B, 3, H, W) (also a ``ValueError``).
    """
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    if not isinstance(images, torch.Tensor):
        raise InputTypeError(f"images must be a tensor (B, 3, H, W) in [0, 1], got {type(images).__name__}")
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[1] != 3:
        raise InputError(
            f"expected RGB images of shape (B, 3, H, W) in [0, 1], got {tuple(images.shape)}; "
            f"convert grayscale/RGBA images to RGB first (pradot.data.read_image does)"
        )
    if images.dtype == torch.uint8:
        images = images.float() / 255.0
    images = images.float()
    S = int(size)
    if images.shape[-2:] != (S, S):
        images = F.interpolate(images, size=(S, S), mode="bilinear", align_corners=False, antialias=True)
    return images


class Model(ABC):
    """What any model kind is: kind, file format, config, image size, ``describe``, the state round trip."""

    #: short name of the model kind (``describe()["kind"]``)
    KIND: ClassVar[str]
    #: the ``"format"`` of the files :meth:`save` writes
    FORMAT: ClassVar[str]
    config: Any
    fitted: bool
    device: torch.device

    @property
    def image_size(self) -> int:
        """The side, in pixels, of the square images the model scores and of its maps (``config.image_size``)."""
        return int(self.config.image_size)

    def check_fitted(self) -> None:
        """Raise :class:`~pradot.errors.NotFittedError` unless the model is fitted."""
        if not self.fitted:
            raise NotFittedError(f"the {type(self).__name__} is not fitted yet: call fit(...) or fit_features(...)")

    @abstractmethod
    def describe(self) -> dict:
        """A small JSON-able dict of what the model is: at least :data:`DESCRIBE_KEYS`."""

    @abstractmethod
    def state(self) -> dict:
        """A plain dict (data and tensors) from which :meth:`from_state` rebuilds the model."""

    @classmethod
    @abstractmethod
    def from_state(cls, state: Mapping, device: str | torch.device = "cpu"):
        """Inverse of :meth:`state`."""

    def save(self, path: str | Path, **options) -> Path:
        """Write :meth:`state` (``options`` go to it) to one file, atomically (:func:`pradot.checkpoint.save_state`).

        Raises:
            TypeError: the state holds a value that ``torch.load(weights_only=True)`` would refuse.
        """
        return save_state(self.state(**options), path)

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu", **options):
        """Read a :meth:`save` file (``options`` go to :meth:`from_state`).

        Raises:
            FileNotFoundError: no file at ``path``.
            InputError: not a file of this kind (``FORMAT``).
        """
        return cls.from_state(load_state(path, cls.FORMAT, what=f"{cls.__name__} model"), device=device, **options)


class ScoringModel(Model):
    """A model that scores images: ``prepare`` and ``score`` (see the module docstring)."""

    def prepare(self, images) -> torch.Tensor:
        """Images as the model takes them: float (B, 3, S, S) in [0, 1] at :attr:`image_size`
        (:func:`prepare_images`).

        Raises:
            InputError: not RGB images (B, 3, H, W) / (3, H, W), tensor or array.
        """
        return prepare_images(images, self.image_size)

    @abstractmethod
    def score(self, images, batch_size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
        """Anomaly maps (B, S, S) float32 (CPU) and image scores (B,) of (B, 3, H, W) images."""


class FeatureScorer(Model):
    """A model that learns from and scores backbone features ``{stage: (B, D, H, W)}`` (module docstring)."""

    @abstractmethod
    def fit_features(self, features: Mapping[int, Any], *args, **kwargs):
        """Learn from the training images' backbone features; returns ``self``."""

    @abstractmethod
    def maps_from_backbone(self, features: Mapping[int, torch.Tensor]) -> torch.Tensor:
        """Anomaly maps (B, S, S) of one batch of backbone features."""

    def check_features(self, features: Mapping[int, Any]) -> int:
        """The image count of ``features``.

        Raises:
            InputError: not a mapping, a stage of ``config.stages`` is missing, or the stages differ in
                image count.
        """
        if not isinstance(features, Mapping):
            raise InputTypeError(f"features must be a mapping {{stage: (B, D, H, W)}}, got {type(features).__name__}")
        stages = tuple(int(s) for s in self.config.stages)
        missing = [s for s in stages if s not in features]
        if missing:
            raise InputError(f"features of stages {missing} are missing (have {sorted(features)}; need {list(stages)})")
        counts = {s: len(features[s]) for s in stages}
        if len(set(counts.values())) > 1:
            raise InputError(f"the stages' features hold different image counts: {counts}")
        return counts[stages[0]]

    def maps_from_features(
        self, features: Mapping[int, Any], batch_size: int = 16
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Anomaly maps (B, S, S) float32 (CPU) and image scores (B,) (max of the map) from precomputed
        backbone features ``{stage: (B, D, H, W)}``, ``batch_size`` images at a time.

        Raises:
            InputError: see :meth:`check_features`.
        """
        n = self.check_features(features)
        stages = tuple(int(s) for s in self.config.stages)
        out = [
            self.maps_from_backbone({s: as_tensor(features[s][i : i + batch_size]) for s in stages})
            for i in range(0, n, batch_size)
        ]
        S = self.image_size
        maps = torch.cat(out) if out else torch.zeros(0, S, S)
        return maps, image_scores(maps)


class FeatureModel(ScoringModel, FeatureScorer):
    """A frozen backbone and a feature scorer: ``score(images)`` through the backbone (module docstring)."""

    backbone: Any  # pradot.backbone.Backbone

    def fit(self, data, batch_size: int = 32, num_workers: int = 0, progress: bool = True):
        """Learn from training images (a Dataset of ``{"image": (3, S, S)}`` items, or a DataLoader over one):
        their backbone features (:func:`pradot.features.extract_features`, without gradients), then
        :meth:`fit_features`; returns ``self``. Kinds that train differently (PRADOT's epochs, FOCT's support)
        override it."""
        from torch.utils.data import DataLoader

        from .features import extract_features

        if isinstance(data, DataLoader):
            data = data.dataset
        with torch.no_grad():
            feats = extract_features(
                self.backbone,
                data,
                batch_size=batch_size,
                num_workers=num_workers,
                device=self.device,
                progress=progress,
            )
        return self.fit_features(feats, progress=progress)

    @torch.no_grad()
    def backbone_features(self, images, batch_size: int = 16):
        """``(prepared images, features)``: the images through :meth:`prepare`, then the backbone, ``batch_size``
        at a time; ``features`` is a list of per-batch ``{stage: (b, D, H, W)}``."""
        images = self.prepare(images)
        return images, [
            self.backbone(images[i : i + batch_size].to(self.device)) for i in range(0, len(images), batch_size)
        ]

    @torch.no_grad()
    def score(self, images, batch_size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
        """Anomaly maps (B, S, S) float32 (CPU) at :attr:`image_size` and image scores (B,) (the max of the map).

        Args:
            images: (B, 3, H, W) (or (3, H, W)) float in [0, 1] or uint8, resized to ``image_size`` if needed.
        Raises:
            InputError: not RGB images. NotFittedError: the model cannot score before ``fit``.
        """
        _, feats = self.backbone_features(images, batch_size)
        S = self.image_size
        maps = torch.cat([self.maps_from_backbone(f) for f in feats]) if feats else torch.zeros(0, S, S)
        return maps, image_scores(maps)
