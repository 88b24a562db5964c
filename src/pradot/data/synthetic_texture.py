"""Procedural texture categories of the embedded synthetic dataset, in the MVTec AD layout: ``woven_fabric`` (a
twill-like weave of two yarn colours) and ``wood_grain`` (warped growth rings), each with three structural
defect types of different sizes (and ``fine_weave``, the high-resolution category with its own defects,
:mod:`pradot.data.synthetic_hires`):

- ``spot``: a dark pinhole of 1.5-3 design px radius (a few pixels at 128-224 px: the small defects),
- ``scratch``: a light line 1-2 px wide and 15-40 design px long,
- ``stain``: a colour blotch of 8-16 design px radius (the large defects).

Sizes are in design pixels of a 128 px image, scaled by image_size / 128. Every defect changes exactly the
pixels of its mask (hard blend), so the ground truth is the changed region. Same seed and sizes -> the same
bytes. Textures have no logical anomalies: a category's anomalous test images number ``n_test_logical +
n_test_structural`` (the object scenes' anomalous total, so one recipe gives every category the same test
size), cycling through the defect types.

Layout written (``write``): ``train/good``, ``validation/good`` (the generator's held-out normals, which
MVTec AD does not ship), ``test/good``, ``test/<defect>``, ``ground_truth/<defect>/<id>_mask.png`` (255 =
anomalous).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..errors import InputError
from . import synthetic_hires as _hires

__all__ = ["AD_CATEGORIES", "DEFECT_KINDS", "TEXTURES", "defect_kinds", "describe", "render", "write"]

TEXTURES: tuple[str, ...] = ("woven_fabric", "wood_grain")
#: every category this module writes: the textures and the high-resolution ``fine_weave``
AD_CATEGORIES: tuple[str, ...] = (*TEXTURES, _hires.CATEGORY)
DEFECT_KINDS: tuple[str, ...] = ("spot", "scratch", "stain")
DESIGN = 128.0

_YARN = (np.array([0.30, 0.36, 0.52]), np.array([0.72, 0.70, 0.62]))
_WOOD = (np.array([0.55, 0.36, 0.20]), np.array([0.78, 0.60, 0.38]))
_STAIN_RGB = (np.array([0.62, 0.18, 0.12]), np.array([0.16, 0.40, 0.22]), np.array([0.90, 0.86, 0.35]))


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    c = (np.arange(size, dtype=np.float64) + 0.5) * (DESIGN / size)  # design px
    y, x = np.meshgrid(c, c, indexing="ij")
    return x, y


def _fabric(rng: np.random.Generator, size: int) -> np.ndarray:
    """A twill weave: over/under cells of two yarns on a diagonal, a random phase per image, thread noise."""
    x, y = _grid(size)
    period = 6.0
    px, py = rng.uniform(0, period, 2)
    u, v = (x + px) / period, (y + py) / period
    warp = (np.floor(u) + np.floor(v)) % 2 == 0
    fu, fv = u - np.floor(u), v - np.floor(v)
    bulge = np.where(warp, np.sin(np.pi * fu), np.sin(np.pi * fv))  # yarn roundness across the thread
    base = np.where(warp[..., None], _YARN[0], _YARN[1])
    shade = 0.75 + 0.25 * bulge[..., None]
    noise = rng.normal(0, 0.025, (size, size, 1))
    return base * shade * rng.uniform(0.95, 1.05) + noise


def _wood(rng: np.random.Generator, size: int) -> np.ndarray:
    """Growth rings: a sinusoid across y warped by a slow wave in x, random phase, fine grain noise."""
    x, y = _grid(size)
    f1, f2 = rng.uniform(0.28, 0.34), rng.uniform(0.03, 0.05)
    warp = rng.uniform(3.0, 5.0) * np.sin(f2 * x + rng.uniform(0, 2 * np.pi))
    rings = 0.5 + 0.5 * np.sin(f1 * (y + warp) + rng.uniform(0, 2 * np.pi))
    grain = rng.normal(0, 0.03, (size, size))
    t = np.clip(rings**2 + grain, 0, 1)[..., None]
    return _WOOD[0] + (_WOOD[1] - _WOOD[0]) * t


def _spot(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    x, y = _grid(size)
    k = size / DESIGN
    r = max(rng.uniform(1.5, 3.0), 0.8 / k)  # at least ~1.6 real px across
    cx, cy = rng.uniform(12, DESIGN - 12, 2)
    mask = (x - cx) ** 2 + (y - cy) ** 2 <= r**2
    return mask, np.array([0.06, 0.05, 0.05])


def _scratch(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    x, y = _grid(size)
    k = size / DESIGN
    length, angle = rng.uniform(15, 40), rng.uniform(0, np.pi)
    cx, cy = rng.uniform(25, DESIGN - 25, 2)
    d = np.array([np.cos(angle), np.sin(angle)])
    a, b = np.array([cx, cy]) - d * length / 2, np.array([cx, cy]) + d * length / 2
    t = np.clip(((x - a[0]) * d[0] + (y - a[1]) * d[1]) / length, 0, 1)
    dist = np.hypot(x - (a[0] + t * (b[0] - a[0])), y - (a[1] + t * (b[1] - a[1])))
    half = max(rng.uniform(0.5, 1.0), 0.6 / k)
    return dist <= half, np.array([0.95, 0.94, 0.90])


def _stain(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    x, y = _grid(size)
    r = rng.uniform(8, 16)
    cx, cy = rng.uniform(20, DESIGN - 20, 2)
    theta = np.arctan2(y - cy, x - cx)
    wobble = 1 + 0.2 * np.sin(3 * theta + rng.uniform(0, 2 * np.pi)) + 0.1 * np.sin(5 * theta + rng.uniform(0, 6))
    mask = np.hypot(x - cx, y - cy) <= r * wobble
    return mask, _STAIN_RGB[int(rng.integers(len(_STAIN_RGB)))]


_DEFECTS = {"spot": _spot, "scratch": _scratch, "stain": _stain}
_TEXTURE = {"woven_fabric": _fabric, "wood_grain": _wood}


def defect_kinds(category: str) -> tuple[str, ...]:
    """The defect types of a texture category (``fine_weave`` has its own: :mod:`pradot.data.synthetic_hires`)."""
    return _hires.DEFECT_KINDS if category == _hires.CATEGORY else DEFECT_KINDS


def render(category: str, kind: str, rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray | None]:
    """One image of a texture ``category``: ``kind`` "" (normal) or one of :data:`DEFECT_KINDS`.

    Returns:
        (uint8 RGB image (size, size, 3), bool mask (size, size) of the changed pixels, or None when normal).

    Raises:
        InputError: an unknown category or defect kind.
    """
    if category not in AD_CATEGORIES:
        raise InputError(f"unknown texture category {category!r}; expected one of {', '.join(AD_CATEGORIES)}")
    kinds = defect_kinds(category)
    if kind and kind not in kinds:
        raise InputError(f"unknown {category} defect {kind!r}; expected one of {', '.join(kinds)}")
    hires = category == _hires.CATEGORY
    rgb = _hires.cloth(rng, size) if hires else _TEXTURE[category](rng, size)
    mask = None
    if kind:
        mask, colour = _hires.defect(kind, rng, size) if hires else _DEFECTS[kind](rng, size)
        if not mask.any():  # a defect thinner than a pixel: widen it to the nearest pixel centre
            mask = np.zeros((size, size), bool)
            mask[size // 2, size // 2] = True
        rgb[mask] = colour + rng.normal(0, 0.02, (int(mask.sum()), 3))
    return (np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8), mask


def _save(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="PNG", compress_level=6)


def write(out: Path, category: str, seed: int, image_size: int, counts: dict[str, int]) -> dict[str, Any]:
    """Write a texture category into ``out`` (the layout in the module docstring); returns the metadata (what
    each anomalous test image holds). The random stream of an image depends only on (seed, split, index)."""
    jobs = [("train/good", "", i, 0) for i in range(counts["n_train"])]
    jobs += [("validation/good", "", i, 1) for i in range(counts["n_validation"])]
    jobs += [("test/good", "", i, 2) for i in range(counts["n_test_good"])]
    n_bad = counts["n_test_logical"] + counts["n_test_structural"]
    kinds = defect_kinds(category)
    jobs += [(f"test/{kinds[i % len(kinds)]}", kinds[i % len(kinds)], i, 5) for i in range(n_bad)]
    metadata: dict[str, Any] = {}
    for folder, kind, index, stream in jobs:
        rng = np.random.default_rng([int(seed), stream, index])
        image, mask = render(category, kind, rng, image_size)
        _save(image, out / folder / f"{index:03d}.png")
        if mask is not None:
            _save(mask.astype(np.uint8) * 255, out / "ground_truth" / kind / f"{index:03d}_mask.png")
            metadata[f"{kind}/{index:03d}"] = {"anomaly": kind, "area_px": int(mask.sum())}
    return metadata


def describe(category: str, seed: int, image_size: int) -> str:
    """The README.txt of a generated texture category."""
    if category == _hires.CATEGORY:
        return (
            f"Synthetic high-resolution texture '{category}' (pradot.data.synthetic_hires), seed {seed}, "
            f"{image_size}px, MVTec AD layout plus validation/good.\nDefects: pinhole, snag, fleck (0.4-1.2 % of the "
            "side: a few px at 224 px); ground_truth/<defect>/<id>_mask.png marks exactly the changed pixels.\n"
        )
    return (
        f"Synthetic texture '{category}' (pradot.data.synthetic_texture), seed {seed}, {image_size}px, MVTec AD "
        "layout plus validation/good.\nDefects: spot (pinhole, a few px), scratch (thin line), stain (colour "
        "blotch); ground_truth/<defect>/<id>_mask.png marks exactly the changed pixels.\n"
    )
