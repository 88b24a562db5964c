"""Post-processing of anomaly maps: per-member standardisation and weighted fusion (and, re-exported from
:mod:`pradot.maps` where they live, Gaussian smoothing and its sigma check).

* :func:`standardise`: ``(map - mean) / std`` with the statistics of a member's maps on normal validation
  images (no anomaly label is needed).
* :func:`weighted_fusion`: ``sum_k w_k map_k / sum_k w_k`` (weights >= 0, at least one > 0). Equal weights
  give the mean of the maps, the paper's ensemble rule.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .errors import InputError
from .maps import TRUNCATE, check_sigma, gaussian_kernel1d, gaussian_smooth

__all__ = [
    "TRUNCATE",
    "check_sigma",
    "gaussian_kernel1d",
    "gaussian_smooth",
    "standardise",
    "check_weights",
    "weighted_fusion",
]

_STD_FLOOR = 1e-12


def standardise(maps: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """``(maps - mean) / std`` (std floored at 1e-12: a constant member does not divide by zero)."""
    return (maps - float(mean)) / max(float(std), _STD_FLOOR)


def check_weights(weights: Sequence[float], n: int) -> list[float]:
    """``n`` finite weights >= 0 with a positive sum, as floats.

    Raises:
        InputError: another count, a negative or non-finite weight, or all weights 0.
    """
    w = [float(x) for x in weights]
    if len(w) != n:
        raise InputError(f"{len(w)} fusion weights for {n} members")
    if any(not math.isfinite(x) or x < 0 for x in w) or sum(w) <= 0:
        raise InputError(f"fusion weights must be finite, >= 0 and not all 0, got {w}")
    return w


def weighted_fusion(maps: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """``sum_k w_k maps_k / sum_k w_k``: list of K (B, S, S) -> (B, S, S). Members with weight 0 are skipped."""
    w = check_weights(weights, len(maps))
    total = sum(w)
    out: torch.Tensor | None = None
    for m, x in zip(maps, w):
        if x == 0:
            continue
        term = m * (x / total)
        out = term if out is None else out + term
    assert out is not None  # check_weights: a positive sum
    return out
