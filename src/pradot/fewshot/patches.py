"""Patch features from backbone stages and score maps back at the input size (FOCT sections 4.1 and 4.3).

FOCT takes "the multi-scale feature maps" of intermediate layers "following [28]" (PatchCore): each
stage's features are averaged over a ``patch_size`` x ``patch_size`` neighbourhood (local context), the
coarser stages are bilinearly upsampled to the finest stage's grid and the stages are concatenated;
optionally the channels are average-pooled to ``feature_dim`` (PatchCore's 1024 for WideResNet-50).

Maps: patch scores (h, w) -> bilinear upsampling to the input size -> Gaussian smoothing, sigma = 4 px
("we smooth the score map with a Gaussian kernel width 4", as PatchCore).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..maps import gaussian_smooth as _smooth
from ..maps import resize_maps

__all__ = ["patch_features", "upsample_scores", "gaussian_smooth", "score_maps"]


def patch_features(
    features: Mapping[int, np.ndarray | torch.Tensor],
    stages: Sequence[int],
    patch_size: int = 3,
    feature_dim: int | None = None,
) -> torch.Tensor:
    """Locally aggregated multi-stage patch features.

    Args:
        features: ``{stage: (B, D_s, H_s, W_s)}`` backbone features (arrays, memmaps or tensors).
        stages: the stages to use, e.g. (2, 3).
        patch_size: neighbourhood of the local average (odd; 1 = none).
        feature_dim: average-pool the concatenated channels to this many (None: keep sum D_s).
    Returns:
        (B, C, h, w) float32 on the features' device, (h, w) = the finest stage's grid.
    Raises:
        ValueError: a stage is missing, patch_size is even or < 1, or feature_dim < 1.
    """
    missing = [s for s in stages if s not in features]
    if missing:
        raise ValueError(f"features of stages {missing} are missing (have {sorted(features)})")
    if int(patch_size) < 1 or int(patch_size) % 2 == 0:
        raise ValueError(f"patch_size must be an odd number >= 1, got {patch_size!r}")
    maps = [
        torch.as_tensor(np.asarray(features[s]) if not isinstance(features[s], torch.Tensor) else features[s]).float()
        for s in stages
    ]
    h, w = max((m.shape[-2:] for m in maps), key=lambda hw: hw[0] * hw[1])
    out = []
    for m in maps:
        if patch_size > 1:
            m = F.avg_pool2d(m, patch_size, stride=1, padding=patch_size // 2, count_include_pad=False)
        if tuple(m.shape[-2:]) != (h, w):
            m = F.interpolate(m, size=(h, w), mode="bilinear", align_corners=False)
        out.append(m)
    x = torch.cat(out, dim=1)
    if feature_dim is not None:
        if int(feature_dim) < 1:
            raise ValueError(f"feature_dim must be >= 1 or null, got {feature_dim!r}")
        b, c = x.shape[:2]
        x = F.adaptive_avg_pool1d(x.permute(0, 2, 3, 1).reshape(-1, 1, c), int(feature_dim))
        x = x.reshape(b, h, w, int(feature_dim)).permute(0, 3, 1, 2)
    return x.contiguous()


def upsample_scores(scores: torch.Tensor, size: int) -> torch.Tensor:
    """(B, h, w) patch scores -> (B, size, size), bilinear with half-pixel centres (PatchCore's code;
    :func:`pradot.maps.resize_maps` with ``"half_pixel"``)."""
    return resize_maps(scores, int(size), "half_pixel")


def gaussian_smooth(maps: torch.Tensor, sigma: float = 4.0) -> torch.Tensor:
    """Gaussian smoothing of (B, H, W) maps, sigma 4 px by default: :func:`pradot.maps.gaussian_smooth`
    (``scipy.ndimage.gaussian_filter``'s filter, borders reflected) on the CPU."""
    return _smooth(maps.detach().float().cpu(), sigma)


def score_maps(patch_scores: torch.Tensor, size: int, sigma: float = 4.0) -> torch.Tensor:
    """FOCT section 4.3: (B, h, w) patch scores -> (B, size, size) maps (bilinear upsampling, then
    Gaussian smoothing with ``sigma`` px)."""
    return gaussian_smooth(upsample_scores(patch_scores, size), sigma)
