"""VPDM's anomaly map and image score (``vpdm-paper.md`` Sec. 3.4)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pradot.postprocess import gaussian_smooth
from pradot.scoring import upsample_maps

__all__ = ["anomaly_map", "image_map", "image_score"]


def anomaly_map(x0: torch.Tensor, x0_rec: torch.Tensor) -> torch.Tensor:
    """Sec. 3.4, ``S = ||x^0 - x^0_rec||_2`` over the channels: (B, C, H, W) twice -> (B, H, W), in the units of
    the (standardised) features."""
    if x0.shape != x0_rec.shape:
        raise ValueError(f"features {tuple(x0.shape)} and reconstruction {tuple(x0_rec.shape)} differ in shape")
    return torch.linalg.vector_norm(x0 - x0_rec, dim=1)


def image_map(S: torch.Tensor, size: int, smoothing_sigma: float = 0.0) -> torch.Tensor:
    """Sec. 3.4: ``S`` (B, h, w) up-sampled bilinearly to (B, size, size) (``align_corners=True`` as the
    project's other maps), then optionally smoothed by a Gaussian of ``smoothing_sigma`` px (0: none)."""
    return gaussian_smooth(upsample_maps(S, int(size)), float(smoothing_sigma))


def image_score(maps: torch.Tensor, pool: int) -> torch.Tensor:
    """Sec. 3.4: the maximum of the ``pool`` x ``pool`` average-pooled map (stride 1): (B, H, W) -> (B,).
    The kernel is clipped to the map's size."""
    k = max(1, min(int(pool), maps.shape[-1], maps.shape[-2]))
    return F.avg_pool2d(maps[:, None].float(), k, stride=1).flatten(1).amax(1)
