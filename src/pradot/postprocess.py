"""Post-processing of anomaly maps: Gaussian smoothing, per-member standardisation and weighted fusion.

* :func:`gaussian_smooth`: the map convolved with a normalised Gaussian of standard deviation ``sigma``
  pixels (at the model's input size), truncated at ``truncate * sigma`` (radius ``int(truncate * sigma +
  0.5)``), with half-sample symmetric borders: the same filter as ``scipy.ndimage.gaussian_filter(map, sigma,
  mode="reflect", truncate=4.0)``, which is its test oracle. Memory-bank methods smooth their maps this way
  (PatchCore: sigma = 4 at 224 px); ``sigma = 0`` leaves the map unchanged (the paper's PRADOT).
* :func:`standardise`: ``(map - mean) / std`` with the statistics of a member's maps on normal validation
  images (no anomaly label is needed).
* :func:`weighted_fusion`: ``sum_k w_k map_k / sum_k w_k`` (weights >= 0, at least one > 0). Equal weights
  give the mean of the maps, the paper's ensemble rule.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "TRUNCATE",
    "check_sigma",
    "gaussian_kernel1d",
    "gaussian_smooth",
    "standardise",
    "check_weights",
    "weighted_fusion",
]

#: the Gaussian is cut at this many standard deviations (scipy's default)
TRUNCATE = 4.0
_STD_FLOOR = 1e-12


def check_sigma(sigma) -> float:
    """``sigma`` as a float, or ValueError when it is not a finite number >= 0."""
    try:
        s = float(sigma)
    except (TypeError, ValueError):
        raise ValueError(f"smoothing sigma must be a number of pixels >= 0, got {sigma!r}") from None
    if not math.isfinite(s) or s < 0:
        raise ValueError(f"smoothing sigma must be a finite number of pixels >= 0 (0 = no smoothing), got {sigma!r}")
    return s


def gaussian_kernel1d(sigma: float, truncate: float = TRUNCATE) -> torch.Tensor:
    """The normalised 1-D Gaussian ``exp(-x^2 / (2 sigma^2))`` on ``x = -r..r``, ``r = int(truncate sigma + 0.5)``
    (float64, sums to 1)."""
    sigma = check_sigma(sigma)
    radius = int(truncate * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    phi = torch.exp(-0.5 * (x / sigma) ** 2) if sigma > 0 else (x == 0).double()
    return phi / phi.sum()


def _symmetric_index(n: int, pad: int, device) -> torch.Tensor:
    """Indices of ``-pad .. n + pad - 1`` folded into ``0 .. n - 1`` by half-sample symmetric reflection
    (``d c b a | a b c d | d c b a``, scipy's ``mode="reflect"``), for any ``pad``."""
    i = torch.arange(-pad, n + pad, device=device) % (2 * n)
    return torch.where(i >= n, 2 * n - 1 - i, i)


def gaussian_smooth(maps: torch.Tensor, sigma: float, truncate: float = TRUNCATE) -> torch.Tensor:
    """Gaussian smoothing of anomaly maps: (B, H, W) -> (B, H, W) (or (H, W) -> (H, W)), separable,
    half-sample symmetric borders; ``sigma`` in pixels of the maps. ``sigma = 0``: the maps themselves.

    Raises:
        ValueError: ``sigma`` is negative or not finite; ``maps`` is not 2-D or 3-D.
    """
    sigma = check_sigma(sigma)
    if sigma == 0:
        return maps
    if maps.ndim not in (2, 3):
        raise ValueError(f"maps must be (B, H, W) or (H, W), got {tuple(maps.shape)}")
    squeeze = maps.ndim == 2
    x = (maps[None] if squeeze else maps).float()
    k = gaussian_kernel1d(sigma, truncate).to(device=x.device, dtype=x.dtype)
    r = (len(k) - 1) // 2
    _, H, W = x.shape
    x = x[:, None]  # (B, 1, H, W)
    x = x.index_select(2, _symmetric_index(H, r, x.device))
    x = F.conv2d(x, k.view(1, 1, -1, 1))
    x = x.index_select(3, _symmetric_index(W, r, x.device))
    x = F.conv2d(x, k.view(1, 1, 1, -1))[:, 0]
    return x[0] if squeeze else x


def standardise(maps: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """``(maps - mean) / std`` (std floored at 1e-12: a constant member does not divide by zero)."""
    return (maps - float(mean)) / max(float(std), _STD_FLOOR)


def check_weights(weights: Sequence[float], n: int) -> list[float]:
    """``n`` finite weights >= 0 with a positive sum, as floats; else ValueError naming what is wrong."""
    w = [float(x) for x in weights]
    if len(w) != n:
        raise ValueError(f"{len(w)} fusion weights for {n} members")
    if any(not math.isfinite(x) or x < 0 for x in w) or sum(w) <= 0:
        raise ValueError(f"fusion weights must be finite, >= 0 and not all 0, got {w}")
    return w


def weighted_fusion(maps: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """``sum_k w_k maps_k / sum_k w_k``: list of K (B, S, S) -> (B, S, S). Members with weight 0 are skipped."""
    w = check_weights(weights, len(maps))
    total = sum(w)
    out = None
    for m, x in zip(maps, w):
        if x == 0:
            continue
        term = m * (x / total)
        out = term if out is None else out + term
    return out
