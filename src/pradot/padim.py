"""A PaDiM-style model (Defard et al., "PaDiM: a Patch Distribution Modeling Framework for Anomaly Detection
and Localization", ICPR 2021) on the same frozen backbone features as PRADOT: one multivariate Gaussian per
position of the feature grid. A position-aware baseline for scenes whose parts sit in fixed places, and a
possible ensemble member.

Method (PaDiM section 3):

* **embedding** (section 3.1): the backbone stages concatenated at the finest grid (coarser stages upsampled,
  :func:`pradot.aggregation.concat_stages`; the paper's code uses nearest upsampling, this one bilinear as the
  memory bank), optionally a random subset of ``n_channels`` of the channels (the paper's random dimensionality
  reduction, drawn once from ``seed``);
* **Gaussian per position** (section 3.2, Eq. 1): for each cell ``ij`` the mean ``mu_ij`` and covariance
  ``Sigma_ij = 1/(N-1) sum_k (x_ij^k - mu_ij)(x_ij^k - mu_ij)^T + eps I`` over the N training images
  (``covariance="eps"``, the paper's regularisation, eps = 0.01), or scikit-learn's Ledoit-Wolf shrinkage
  estimate (``covariance="ledoit_wolf"``, :func:`sklearn.covariance.ledoit_wolf`);
* **patch score** (section 3.3, Eq. 2): the Mahalanobis distance
  ``M(x_ij) = sqrt((x_ij - mu_ij)^T Sigma_ij^-1 (x_ij - mu_ij))``;
* **map**: the (H, W) distances upsampled bilinearly (``align_corners=False``) to the input size and smoothed
  by a Gaussian of ``smoothing_sigma`` pixels (the paper's sigma 4); the image score is the map's maximum (as
  the memory bank and PRADOT, so the three are compared on the same rule).

Same public interface as :class:`pradot.memory_bank.MemoryBankModel`: ``fit_features`` / ``fit``,
``stage_maps``, ``fuse``, ``maps_from_backbone`` (ensemble member), ``maps_from_features``, ``prepare``,
``score``, ``describe``, ``state`` / ``from_state``, ``save`` / ``load`` (format ``pradot-padim-v1``,
read with ``weights_only=True``).

```python
from pradot.padim import PaDiMConfig, PaDiMModel
pd = PaDiMModel(PaDiMConfig(backbone="efficientnet_lite0", stages=(2, 3), image_size=128))
pd.fit_features(cached_features)          # {stage: (N, D, H, W)}, N >= 2
maps, scores = pd.score(images)           # (B, S, S), (B,)
pd.save("padim.pt"); PaDiMModel.load("padim.pt")
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

from .aggregation import FeatureOptions, stage_image_count
from .backbone import Backbone, backbone_state, restore_backbone
from .base import as_tensor
from .checkpoint import load_state, save_state
from .errors import InputError, NotFittedError
from .maps import check_sigma
from .per_stage import PerStageModel

__all__ = [
    "PADIM_FORMAT",
    "COVARIANCES",
    "PaDiMConfig",
    "PaDiMModel",
    "gaussian_parameters",
    "mahalanobis_map",
]

log = logging.getLogger(__name__)

#: the file format of :meth:`PaDiMModel.save`
PADIM_FORMAT = "pradot-padim-v1"
#: covariance estimators: the paper's sample covariance + eps I, or scikit-learn's Ledoit-Wolf shrinkage
COVARIANCES = ("eps", "ledoit_wolf")


@dataclass
class PaDiMConfig:
    """Settings of a PaDiM-style model; the defaults are the paper's (sample covariance + 0.01 I, sigma 4) on
    the project's offline backbone, with every channel kept (``n_channels=None``)."""

    backbone: str = "efficientnet_lite0"
    stages: tuple[int, ...] = (2, 3)
    image_size: int = 224
    n_channels: int | None = None  # random subset of the concatenated channels (paper: 100 of 448); None: all
    covariance: str = "eps"  # "eps" (paper) or "ledoit_wolf" (scikit-learn)
    eps: float = 0.01  # the paper's regularisation (covariance="eps")
    smoothing_sigma: float = 4.0
    seed: int = 0

    def __post_init__(self):
        self.stages = tuple(sorted({int(s) for s in self.stages}))
        if not self.stages:
            raise InputError("a PaDiM model needs at least one backbone stage (e.g. 2 and 3)")
        if self.covariance not in COVARIANCES:
            raise InputError(f"covariance must be one of {COVARIANCES}, got {self.covariance!r}")
        e = float(self.eps)
        if not (math.isfinite(e) and e >= 0):
            raise InputError(f"eps (added to the covariance diagonal) must be a finite number >= 0, got {self.eps!r}")
        self.eps = e
        if self.n_channels is not None:
            if int(self.n_channels) != self.n_channels or int(self.n_channels) < 1:
                raise InputError(f"n_channels must be an integer >= 1 or None (all channels), got {self.n_channels!r}")
            self.n_channels = int(self.n_channels)
        self.smoothing_sigma = check_sigma(self.smoothing_sigma)
        if int(self.image_size) < 16:
            raise InputError(f"image_size must be >= 16, got {self.image_size}")


def gaussian_parameters(
    x: torch.Tensor, covariance: str = "eps", eps: float = 0.01
) -> tuple[torch.Tensor, torch.Tensor]:
    """PaDiM Eq. 1: per position, the mean and the regularised covariance of the training embeddings.

    Args:
        x: (N, P, d) embeddings of N >= 2 images at P positions.
        covariance: ``"eps"`` (unbiased sample covariance + ``eps`` I, the paper) or ``"ledoit_wolf"``
            (:func:`sklearn.covariance.ledoit_wolf` per position, then + ``eps`` I).
    Returns:
        ``(mean, cov)``: (P, d) and (P, d, d), float64.
    Raises:
        ValueError: fewer than two images, or an unknown ``covariance``.
    """
    if x.ndim != 3:
        raise InputError(f"embeddings must be (N, P, d), got {tuple(x.shape)}")
    n, _, d = x.shape
    if n < 2:
        raise InputError(f"a Gaussian per position needs at least 2 training images, got {n}")
    if covariance not in COVARIANCES:
        raise InputError(f"covariance must be one of {COVARIANCES}, got {covariance!r}")
    x = x.double()
    mean = x.mean(0)
    if covariance == "eps":
        xc = x - mean
        cov = torch.einsum("npi,npj->pij", xc, xc) / (n - 1)
    else:
        from sklearn.covariance import ledoit_wolf

        a = x.numpy()
        cov = torch.from_numpy(np.stack([ledoit_wolf(a[:, p])[0] for p in range(a.shape[1])]))
    return mean, cov + float(eps) * torch.eye(d, dtype=torch.float64)


def mahalanobis_map(x: torch.Tensor, mean: torch.Tensor, precision: torch.Tensor) -> torch.Tensor:
    """PaDiM Eq. 2: ``sqrt((x_p - mu_p)^T Sigma_p^-1 (x_p - mu_p))`` at every position.

    Args:
        x: (B, P, d) embeddings; mean: (P, d); precision: (P, d, d) inverse covariances.
    Returns:
        (B, P) distances, in the dtype of ``x``.
    """
    delta = (x - mean.to(x.dtype)).transpose(0, 1)  # (P, B, d)
    q = torch.einsum("pbi,pij,pbj->pb", delta, precision.to(x.dtype), delta)
    return q.clamp_min(0).sqrt().transpose(0, 1)


class PaDiMModel(nn.Module, PerStageModel):
    """A frozen backbone and one Gaussian per feature position (see the module docstring); a
    :class:`pradot.per_stage.PerStageModel` (a :class:`pradot.base.FeatureModel`)."""

    KIND = "padim"
    FORMAT = PADIM_FORMAT

    def __init__(self, config: PaDiMConfig, backbone: Backbone | None = None, device: str | torch.device = "cpu"):
        super().__init__()
        self._set_backbone(config, backbone, device, FeatureOptions(1, True))
        self.channels: torch.Tensor | None = None  # (d,) indices of the kept channels (None: all)
        self.mean: torch.Tensor | None = None  # (P, d) float32
        self.precision: torch.Tensor | None = None  # (P, d, d) float32, the inverse covariances
        self.grid: tuple[int, int] | None = None  # (H, W) of the fitted feature grid
        self.fitted = False

    # ------------------------------------------------------------------ features
    def transform(self, features: Mapping[int, np.ndarray | torch.Tensor]) -> dict[int, torch.Tensor]:
        """Backbone features ``{stage: (B, D, H, W)}`` -> ``{bank stage: (B, d, H, W)}``: stages concatenated
        at the finest grid, then the kept channels."""
        feats = {s: as_tensor(features[s]).float() for s in self.config.stages}
        out = self.options.apply(feats, self.config.stages)
        if self.channels is not None:
            out = {s: f.index_select(1, self.channels.to(f.device)) for s, f in out.items()}
        return out

    def _choose_channels(self, total: int) -> None:
        k = self.config.n_channels
        if k is None or k >= total:
            if k is not None and k > total:
                log.warning("n_channels=%d > the %d channels of the features: every channel is kept", k, total)
            self.channels = None
            return
        g = torch.Generator().manual_seed(int(self.config.seed))
        self.channels = torch.randperm(total, generator=g)[:k].sort().values

    def fit_features(
        self, features: Mapping[int, np.ndarray | torch.Tensor], chunk: int = 32, progress: bool = True
    ) -> PaDiMModel:
        """Fit the Gaussians from backbone features ``{stage: (N, D, H, W)}`` (arrays, memmaps or tensors) of
        the N >= 2 training images, ``chunk`` images at a time (:func:`gaussian_parameters`).

        Raises:
            InputError: a stage is missing, the stages have different image counts, or N < 2.
        """
        n = stage_image_count(features, self.config.stages)
        if n < 2:
            raise InputError(f"a PaDiM model needs at least 2 normal training images, got {n}")
        self.channels = None
        parts = []
        for i in range(0, n, chunk):
            f = self.transform({s: features[s][i : i + chunk] for s in self.config.stages})[self.bank_stages[0]]
            if i == 0:
                self._choose_channels(f.shape[1])
                if self.channels is not None:
                    f = f.index_select(1, self.channels)
            parts.append(f.flatten(2).transpose(1, 2).contiguous())  # (b, P, d)
            if i == 0:
                self.grid = (int(f.shape[-2]), int(f.shape[-1]))
        mean, cov = gaussian_parameters(torch.cat(parts), self.config.covariance, self.config.eps)
        self.mean = mean.float()
        # the covariances are symmetric positive definite (eps I or Ledoit-Wolf shrinkage): their inverses through
        # the Cholesky factors (batched LU inverses failed at random in torch's CPU path: "Pivots given to lu_solve")
        self.precision = torch.cholesky_inverse(torch.linalg.cholesky(cov)).float()
        self.fitted = True
        return self

    # ------------------------------------------------------------------ scoring
    def check_fitted(self) -> None:
        if not self.fitted or self.mean is None or self.precision is None:
            raise NotFittedError("the PaDiM model is not fitted: call fit(...) or fit_features(...) first")

    @torch.no_grad()
    def stage_maps(self, features: Mapping[int, torch.Tensor]) -> dict[int, torch.Tensor]:
        """Mahalanobis distances at feature resolution: backbone features ``{stage: (B, D, H, W)}`` ->
        ``{bank stage: (B, H, W)}`` (CPU).

        Raises:
            InputError: the feature grid is not the one fitted (another image size).
        """
        self.check_fitted()
        out = {}
        for s, f in self.transform(features).items():
            B, _, H, W = f.shape
            if (H, W) != self.grid:
                raise InputError(
                    f"features on a {H}x{W} grid, the model was fitted on {self.grid}: score images at "
                    f"image_size={self.config.image_size} (model.prepare resizes them)"
                )
            x = f.flatten(2).transpose(1, 2).cpu()
            out[s] = mahalanobis_map(x, self.mean, self.precision).reshape(B, H, W)  # type: ignore[arg-type]
        return out

    def settings(self) -> dict:
        """PaDiM's own settings for :meth:`describe`: channels, covariance, the fitted grid."""
        c = self.config
        return {
            "n_channels": c.n_channels,
            "covariance": c.covariance,
            "eps": float(c.eps),
            "grid": list(self.grid) if self.grid else None,
        }

    # ------------------------------------------------------------------ persistence
    def state(self, include_backbone: bool = True) -> dict:
        """The dict :meth:`save` writes: format, config, the Gaussians and (by default) the backbone's weights."""
        cfg = asdict(self.config)
        cfg["stages"] = list(self.config.stages)
        return {
            "format": PADIM_FORMAT,
            "config": cfg,
            "fitted": self.fitted,
            "grid": list(self.grid) if self.grid else None,
            "channels": self.channels,
            "mean": self.mean,
            "precision": self.precision,
            "backbone": backbone_state(self.backbone, include_backbone),
        }

    def save(self, path: str | Path, include_backbone: bool = True, **options) -> Path:
        """One self-describing file (format ``pradot-padim-v1``)."""
        return save_state(self.state(include_backbone), path)

    @classmethod
    def from_state(
        cls, state: Mapping, device: str | torch.device = "cpu", backbone: Backbone | None = None
    ) -> PaDiMModel:
        """Inverse of :meth:`state`; ``backbone`` replaces the stored one (e.g. a shared network)."""
        cfg = dict(state["config"])
        cfg["stages"] = tuple(cfg["stages"])
        model = cls(PaDiMConfig(**cfg), backbone=restore_backbone(state["backbone"], backbone), device=device)
        model.grid = tuple(state["grid"]) if state.get("grid") else None
        model.channels = torch.as_tensor(state["channels"]).long() if state.get("channels") is not None else None
        model.mean = torch.as_tensor(state["mean"]).float() if state.get("mean") is not None else None
        model.precision = torch.as_tensor(state["precision"]).float() if state.get("precision") is not None else None
        model.fitted = bool(state.get("fitted", True)) and model.mean is not None
        return model.eval()

    @classmethod
    def load(
        cls, path: str | Path, device: str | torch.device = "cpu", backbone: Backbone | None = None, **options
    ) -> PaDiMModel:
        """Read a :meth:`save` file. Raises FileNotFoundError / InputError (not a PaDiM file)."""
        return cls.from_state(load_state(path, PADIM_FORMAT, what="PaDiM model"), device=device, backbone=backbone)
