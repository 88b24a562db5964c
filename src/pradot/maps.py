"""Anomaly maps: resizing and Gaussian smoothing, in one place, each convention named.

Resizing (:func:`resize_maps`) takes the convention as an argument; the project uses four, on purpose:

========================  ==================================================================================
``"align_corners"``       bilinear, ``align_corners=True``: patch-score maps up to the input size (PRADOT and
                          memory-bank maps; the PRADOT authors' code), so corner patches sit on corner pixels.
``"half_pixel"``          bilinear, ``align_corners=False`` (half-pixel centres, OpenCV / PIL geometry): FOCT's
                          patch scores (PatchCore's code) and feature grids.
``"half_pixel_shrink"``   bilinear, half-pixel centres, antialiased when the map shrinks (a triangle filter as
                          wide as the scale, as PIL does): maps between models of different sizes (ensembles)
                          and maps returned at another size than the model's (serving, submissions).
``"nearest"``             nearest neighbour: label masks (no value may be invented).
========================  ==================================================================================

Images are resized elsewhere (:func:`pradot.model.prepare_images`: bilinear, antialiased; the ONNX export:
PIL-exact on uint8).

Smoothing (:func:`gaussian_smooth`) is the map convolved with a normalised Gaussian of standard deviation
``sigma`` pixels, truncated at ``truncate * sigma`` (radius ``int(truncate * sigma + 0.5)``), with half-sample
symmetric borders: the filter of ``scipy.ndimage.gaussian_filter(map, sigma, mode="reflect", truncate=4.0)``,
its test oracle. Memory-bank methods smooth this way (PatchCore section 3.3 and FOCT section 4.3: sigma = 4
px); ``sigma = 0`` leaves the map unchanged (the PRADOT paper). Every function here is pure torch, so the
ONNX export traces it as it is.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
import torch.nn.functional as F

from .errors import InputError
from .ranges import number

__all__ = [
    "CONVENTIONS",
    "Convention",
    "TRUNCATE",
    "check_sigma",
    "gaussian_kernel1d",
    "gaussian_smooth",
    "resize_maps",
    "maps_at",
]

Convention = Literal["align_corners", "half_pixel", "half_pixel_shrink", "nearest"]
#: the resize conventions :func:`resize_maps` knows (see the module docstring)
CONVENTIONS: tuple[str, ...] = get_args(Convention)
#: the Gaussian is cut at this many standard deviations (scipy's default)
TRUNCATE = 4.0


def _size(size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(size, int):
        return int(size), int(size)
    h, w = size
    return int(h), int(w)


def resize_maps(maps: torch.Tensor, size: int | tuple[int, int], convention: Convention) -> torch.Tensor:
    """Maps (B, h, w) or (h, w) -> (B, H, W) or (H, W) float, ``size`` = S or (H, W), by ``convention``
    (one of :data:`CONVENTIONS`, see the module docstring). Maps already at ``size`` are returned as they
    are (as float), for every convention.

    Raises:
        InputError: an unknown convention, or maps that are not 2-D or 3-D.
    """
    if convention not in CONVENTIONS:
        raise InputError(f"unknown map resize convention {convention!r}; use one of {list(CONVENTIONS)}")
    if maps.ndim not in (2, 3):
        raise InputError(f"maps must be (B, H, W) or (H, W), got {tuple(maps.shape)}")
    h, w = _size(size)
    x = maps.float()
    if tuple(x.shape[-2:]) == (h, w):
        return x
    x4 = x[None, None] if x.ndim == 2 else x[:, None]
    if convention == "nearest":
        out = F.interpolate(x4, size=(h, w), mode="nearest")
    elif convention == "align_corners":
        out = F.interpolate(x4, size=(h, w), mode="bilinear", align_corners=True)
    else:
        shrink = convention == "half_pixel_shrink" and (h < x.shape[-2] or w < x.shape[-1])
        out = F.interpolate(x4, size=(h, w), mode="bilinear", align_corners=False, antialias=shrink)
    return out[0, 0] if x.ndim == 2 else out[:, 0]


def check_sigma(sigma, setting: str = "smoothing_sigma") -> float:
    """``sigma`` as a float.

    Raises:
        pradot.ranges.SettingError: not a finite number >= 0 (named ``setting``).
    """
    return float(number(setting, sigma, lo=0, why="the Gaussian's standard deviation in pixels; 0 = no smoothing"))


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
        InputError: ``sigma`` is negative or not finite; ``maps`` is not 2-D or 3-D.
    """
    sigma = check_sigma(sigma)
    if sigma == 0:
        return maps
    if maps.ndim not in (2, 3):
        raise InputError(f"maps must be (B, H, W) or (H, W), got {tuple(maps.shape)}")
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


def maps_at(
    patch_maps: torch.Tensor, size: int | tuple[int, int], convention: Convention, sigma: float = 0.0
) -> torch.Tensor:
    """Patch-score maps (B, h, w) -> anomaly maps (B, H, W) at the input size: resized by ``convention``,
    then smoothed by a Gaussian of ``sigma`` pixels (0: not at all). The last step of every scoring model."""
    return gaussian_smooth(resize_maps(patch_maps, size, convention), sigma)
