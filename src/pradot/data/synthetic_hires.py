"""``fine_weave``: the embedded high-resolution category (issue 24), a texture in the MVTec AD layout written by
:mod:`pradot.data.synthetic_texture`, meant to be generated large (e.g. ``image_size=896``) and scored tiled.

Every size is a fraction of the image side ``L``, so the category looks the same at any ``image_size`` and a test
can generate it small (128 px) while a benchmark generates it large:

- the cloth: a plain weave of period ``L / 80`` (2.8 px at 224 px, 11 px at 896 px: resolved only at the higher
  resolution) with a random phase, yarn noise, and two fixed woven **bands** (a darker warp band across at
  y in [0.30, 0.36] L, a lighter weft band down at x in [0.70, 0.74] L), so what is normal depends on the place;
- ``pinhole``: a dark hole of radius 0.4-0.7 % of L (2-3 px across at 224 px: below the backbone's stride);
- ``snag``: a pulled light thread, 0.2-0.3 % of L half-width (about 1 px at 224 px), 4-8 % of L long;
- ``fleck``: a small coloured fleck of radius 0.8-1.2 % of L.

Each defect changes exactly the pixels of its mask, so the ground truth is the changed region (hard blend).
"""

from __future__ import annotations

import numpy as np

__all__ = ["CATEGORY", "DEFECT_KINDS", "cloth", "defect"]

CATEGORY = "fine_weave"
DEFECT_KINDS: tuple[str, ...] = ("pinhole", "snag", "fleck")

_YARN = (np.array([0.42, 0.46, 0.55]), np.array([0.66, 0.64, 0.58]))
_FLECK = (np.array([0.70, 0.22, 0.16]), np.array([0.20, 0.45, 0.25]))


def _unit_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel centres as fractions of the side: (x, y) each (size, size) in (0, 1)."""
    c = (np.arange(size, dtype=np.float64) + 0.5) / size
    y, x = np.meshgrid(c, c, indexing="ij")
    return x, y


def cloth(rng: np.random.Generator, size: int) -> np.ndarray:
    """A normal image: float RGB (size, size, 3) in about [0, 1] (see the module docstring)."""
    x, y = _unit_grid(size)
    period = 1.0 / 80.0
    px, py = rng.uniform(0, period, 2)
    u, v = (x + px) / period, (y + py) / period
    over = (np.floor(u) + np.floor(v)) % 2 == 0  # plain weave: warp over weft on a checkerboard
    fu, fv = u - np.floor(u), v - np.floor(v)
    bulge = np.where(over, np.sin(np.pi * fu), np.sin(np.pi * fv))
    rgb = np.where(over[..., None], _YARN[0], _YARN[1]) * (0.72 + 0.28 * bulge[..., None])
    band_y = (y >= 0.30) & (y < 0.36)
    band_x = (x >= 0.70) & (x < 0.74)
    rgb = rgb * np.where(band_y, 0.7, 1.0)[..., None] + np.where(band_x, 0.12, 0.0)[..., None]
    return rgb * rng.uniform(0.97, 1.03) + rng.normal(0, 0.02, (size, size, 1))


def defect(kind: str, rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """``(mask (size, size) bool, RGB colour (3,))`` of one defect ``kind`` of :data:`DEFECT_KINDS`."""
    x, y = _unit_grid(size)
    cx, cy = rng.uniform(0.08, 0.92, 2)
    if kind == "pinhole":
        r = rng.uniform(0.004, 0.007)
        return (x - cx) ** 2 + (y - cy) ** 2 <= r**2, np.array([0.05, 0.05, 0.06])
    if kind == "snag":
        length, angle = rng.uniform(0.04, 0.08), rng.uniform(0, np.pi)
        d = np.array([np.cos(angle), np.sin(angle)])
        a = np.array([cx, cy]) - d * length / 2
        t = np.clip((x - a[0]) * d[0] + (y - a[1]) * d[1], 0, length)
        dist = np.hypot(x - (a[0] + t * d[0]), y - (a[1] + t * d[1]))
        return dist <= rng.uniform(0.002, 0.003), np.array([0.93, 0.92, 0.86])
    r = rng.uniform(0.008, 0.012)  # fleck
    return np.hypot(x - cx, y - cy) <= r, _FLECK[int(rng.integers(len(_FLECK)))]
