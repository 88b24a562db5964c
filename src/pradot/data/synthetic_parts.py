"""Parts of the synthetic LOCO scenes: fasteners (long/short screw, nut, washer) drawn from signed distance fields
with antialiasing, shading from a light at the top left and soft drop shadows, and their structural damages
(scratch, broken part, dent, colour blotch) with ground-truth masks.

Shared by the scenes: the screw bag (:mod:`pradot.data.synthetic`) and the fastener kit
(:mod:`pradot.data.synthetic_kit`). Sizes are in "design pixels" of a 128 px image, scaled by image_size / 128.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from ..errors import InputError

STRUCTURAL_KINDS: tuple[str, ...] = ("scratch", "broken_part", "dent", "colour_blotch")
DESIGN = 128.0

SCREW_LENGTH = {"long_screw": 34.0, "short_screw": 22.0}
SCREW_HEAD_LEN = 5.0
SCREW_HEAD_HALF = 4.8
SCREW_HALF = 2.5
THREAD_AMP = 0.6
THREAD_PITCH = 2.3
TIP_LEN = 3.0
NUT_R = 8.0  # circumradius
NUT_HOLE = 3.4
WASHER_R = 8.5
WASHER_HOLE = 4.0

LIGHT = np.array([-0.55, -0.7, 0.75])
LIGHT = LIGHT / np.linalg.norm(LIGHT)
SHADOW_SHIFT = (1.8, 2.2)  # design px, away from the light

STEEL_RGB = np.array([0.62, 0.64, 0.68])
NUT_RGB = np.array([0.66, 0.60, 0.48])
WASHER_RGB = np.array([0.80, 0.81, 0.84])
BLOTCH_RGB = (np.array([0.55, 0.22, 0.08]), np.array([0.15, 0.42, 0.45]), np.array([0.20, 0.20, 0.55]))


@dataclass(frozen=True)
class Part:
    """A part placed in the scene (design pixels; angle in degrees)."""

    ptype: str  # long_screw | short_screw | nut | washer
    cx: float
    cy: float
    angle: float
    compartment: int
    damage: dict[str, Any] | None = field(default=None, compare=False)

    @property
    def is_screw(self) -> bool:
        return self.ptype.endswith("screw")


def _part_radius(ptype: str) -> float:
    if ptype in SCREW_LENGTH:
        return SCREW_LENGTH[ptype] / 2 + 1.0
    return NUT_R + 1.0 if ptype == "nut" else WASHER_R + 1.0


class Canvas:
    """Pixel-centre coordinate grids of an image of ``size`` px; ``k`` = real px per design px."""

    def __init__(self, size: int):
        self.size = size
        self.k = size / DESIGN
        c = np.arange(size, dtype=np.float64) + 0.5
        self.Y, self.X = np.meshgrid(c, c, indexing="ij")

    def box(self, cx: float, cy: float, radius: float) -> tuple[slice, slice]:
        """Slices of the square of half-size ``radius`` (design px) around (cx, cy) (design px)."""
        k, n = self.k, self.size
        x0 = max(int(math.floor((cx - radius) * k)) - 1, 0)
        x1 = min(int(math.ceil((cx + radius) * k)) + 2, n)
        y0 = max(int(math.floor((cy - radius) * k)) - 1, 0)
        y1 = min(int(math.ceil((cy + radius) * k)) + 2, n)
        return slice(y0, max(y1, y0)), slice(x0, max(x1, x0))


def _coverage(sdf: np.ndarray) -> np.ndarray:
    """Antialiased coverage of a signed distance field in pixels (negative inside)."""
    return np.clip(0.5 - sdf, 0.0, 1.0)


def _rounded_box(px: np.ndarray, py: np.ndarray, hx: float, hy: float, r: float) -> np.ndarray:
    qx = np.abs(px) - hx + r
    qy = np.abs(py) - hy + r
    outside = np.hypot(np.maximum(qx, 0), np.maximum(qy, 0))
    return outside + np.minimum(np.maximum(qx, qy), 0) - r


def _local(part: Part, X: np.ndarray, Y: np.ndarray, k: float) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Part-local coordinates (u along the part's axis, v across), in real px; light in that frame."""
    t = math.radians(part.angle)
    c, s = math.cos(t), math.sin(t)
    dx, dy = X - part.cx * k, Y - part.cy * k
    u = dx * c + dy * s
    v = -dx * s + dy * c
    lu = LIGHT[0] * c + LIGHT[1] * s
    lv = -LIGHT[0] * s + LIGHT[1] * c
    return u, v, lu, lv


def _tri(x: np.ndarray) -> np.ndarray:
    """Triangle wave in [0, 1] with period 1."""
    f = x - np.floor(x)
    return 1.0 - 2.0 * np.abs(f - 0.5)


def _part_field(part: Part, X: np.ndarray, Y: np.ndarray, k: float, shade: bool = True, damage: bool = True):
    """Signed distance (real px) and, with ``shade``, RGB of ``part`` over the coordinate arrays."""
    u, v, lu, lv = _local(part, X, Y, k)
    lz = LIGHT[2]
    dmg = part.damage if damage else None
    if part.is_screw:
        L = SCREW_LENGTH[part.ptype] * k
        if dmg and "length" in dmg:
            L = dmg["length"] * k
        hl, hh, sh = SCREW_HEAD_LEN * k, SCREW_HEAD_HALF * k, SCREW_HALF * k
        u0 = u + L / 2
        sdf_head = _rounded_box(u0 - hl / 2, v, hl / 2, hh, 1.4 * k)
        thread = THREAD_AMP * k * _tri(u0 / (THREAD_PITCH * k))
        taper = np.clip((L - u0) / (TIP_LEN * k), 0.2, 1.0)
        half = (sh + thread) * taper
        sdf_shaft = np.maximum(np.maximum(np.abs(v) - half, hl - 0.6 * k - u0), u0 - L)
        sdf = np.minimum(sdf_head, sdf_shaft)
        if dmg and dmg.get("kind") == "broken_part":
            cut = dmg["cut"] * L + dmg["zig"] * k * _tri(v / (dmg["zig_period"] * k) + dmg["zig_phase"])
            sdf = np.maximum(sdf, u0 - cut)
        if not shade:
            return sdf, None
        is_head = sdf_head < sdf_shaft
        width = np.where(is_head, hh, np.maximum(half, 1e-3))
        nv = np.clip(v / width, -0.98, 0.98) * 0.92
        nz = np.sqrt(1 - nv**2)
        diffuse = np.clip(nv * lv + nz * lz, 0, None)
        bright = 0.28 + 0.72 * diffuse + 0.45 * diffuse**14
        bright *= np.where(is_head, 1.0, 0.82 + 0.18 * np.cos(2 * np.pi * u0 / (THREAD_PITCH * k)))
        bright *= np.where(np.abs(u0 - hl) < 0.6 * k, 0.6, 1.0)  # head/shaft junction
        rgb = bright[..., None] * STEEL_RGB
    else:
        rho = np.hypot(u, v)
        if part.ptype == "nut":
            R, r, base = NUT_R * k, NUT_HOLE * k, NUT_RGB
            apothem = R * math.cos(math.pi / 6)
            phis = np.deg2rad(np.arange(6) * 60.0 + 30.0)
            proj = np.stack([u * math.cos(p) + v * math.sin(p) for p in phis])
            facet = np.argmax(proj, axis=0)
            sdf_out = proj.max(axis=0) - apothem
        else:
            R, r, base = WASHER_R * k, WASHER_HOLE * k, WASHER_RGB
            sdf_out = rho - R
        sdf = np.maximum(sdf_out, r - rho)
        if dmg and dmg.get("kind") == "broken_part":
            phi = np.arctan2(v, u)
            dphi = np.abs((phi - dmg["phi"] + np.pi) % (2 * np.pi) - np.pi)
            jag = dmg["zig"] * k * _tri(rho / (dmg["zig_period"] * k) + dmg["zig_phase"])
            sdf_cut = (dphi - dmg["half_width"]) * np.maximum(rho, 1.0) - jag
            sdf = np.maximum(sdf, -sdf_cut)
        if not shade:
            return sdf, None
        er_u, er_v = u / np.maximum(rho, 1e-6), v / np.maximum(rho, 1e-6)
        if part.ptype == "nut":
            top = 0.30 + 0.72 * lz
            bevel = np.clip(1.0 - (-sdf_out) / (1.6 * k), 0, 1)
            fn = np.cos(phis)[facet] * lu + np.sin(phis)[facet] * lv
            facet_b = 0.30 + 0.72 * np.clip(0.6 * fn + 0.8 * lz, 0, None)
            bright = top * (1 - bevel) + facet_b * bevel
            rim = np.clip(1.0 - (rho - r) / (1.3 * k), 0, 1)
            bright *= 1.0 - 0.45 * rim * (0.7 + 0.3 * np.cos(2 * np.pi * rho / (0.9 * k)))
            bright += 0.25 * np.clip(0.6 * fn + 0.8 * lz, 0, None) ** 12 * bevel
        else:
            t = np.clip((rho - (R + r) / 2) / ((R - r) / 2), -1, 1)
            nr = 0.75 * t
            nz = np.sqrt(1 - nr**2)
            diffuse = np.clip(nr * (er_u * lu + er_v * lv) + nz * lz, 0, None)
            bright = 0.25 + 0.75 * diffuse + 0.4 * diffuse**16
        rgb = bright[..., None] * base
    if dmg:
        rgb = _apply_surface_damage(dmg, rgb, X, Y, k)
    return sdf, rgb


def _segment_distance(X, Y, a, b):
    ax, ay = a
    bx, by = b
    dx, dy = bx - ax, by - ay
    t = np.clip(((X - ax) * dx + (Y - ay) * dy) / max(dx * dx + dy * dy, 1e-9), 0, 1)
    return np.hypot(X - (ax + t * dx), Y - (ay + t * dy))


def _damage_field(dmg: dict[str, Any], X: np.ndarray, Y: np.ndarray, k: float) -> np.ndarray | None:
    """Where a surface damage lies, in [0, 1] (None for damages that change the outline)."""
    kind = dmg.get("kind")
    if kind == "scratch":
        a = (dmg["a"][0] * k, dmg["a"][1] * k)
        b = (dmg["b"][0] * k, dmg["b"][1] * k)
        d = _segment_distance(X, Y, a, b)
        return np.clip(0.5 - (d - dmg["width"] * k / 2), 0, 1)
    if kind == "dent":
        d = np.hypot(X - dmg["c"][0] * k, Y - dmg["c"][1] * k) / (dmg["r"] * k)
        return np.clip((1.0 - d) * dmg["r"] * k + 0.5, 0, 1)
    if kind == "colour_blotch":
        f = np.zeros_like(X)
        for (cx, cy), s, w in zip(dmg["centres"], dmg["sigmas"], dmg["weights"]):
            f += w * np.exp(-((X - cx * k) ** 2 + (Y - cy * k) ** 2) / (2 * (s * k) ** 2))
        return np.clip((f - 0.5) * 4.0 + 0.5, 0, 1)
    return None


def _apply_surface_damage(dmg: dict[str, Any], rgb: np.ndarray, X: np.ndarray, Y: np.ndarray, k: float) -> np.ndarray:
    kind = dmg.get("kind")
    if kind == "scratch":
        core = _damage_field(dmg, X, Y, k)
        a = (dmg["a"][0] * k, dmg["a"][1] * k)
        b = (dmg["b"][0] * k, dmg["b"][1] * k)
        d = _segment_distance(X, Y, a, b)
        halo = np.clip(0.5 - (d - dmg["width"] * k / 2 - 0.9 * k), 0, 1) - core
        rgb = rgb * (1 - core[..., None]) + 0.10 * core[..., None]
        return np.clip(rgb + 0.30 * halo[..., None], 0, 1.2)
    if kind == "dent":
        cx, cy, r = dmg["c"][0] * k, dmg["c"][1] * k, dmg["r"] * k
        dx, dy = (X - cx) / r, (Y - cy) / r
        d = np.hypot(dx, dy)
        inside = d < 1.0
        nx, ny = -0.85 * dx, -0.85 * dy  # a depression: normals point to its centre
        nz = np.sqrt(np.clip(1 - nx**2 - ny**2, 0.05, 1))
        lit = np.clip(nx * LIGHT[0] + ny * LIGHT[1] + nz * LIGHT[2], 0, None)
        factor = (0.15 + 1.1 * lit) / (0.15 + 1.1 * LIGHT[2])
        factor = factor * (1.0 - 0.5 * np.clip((d - 0.75) / 0.25, 0, 1))  # dark rim
        factor = np.where(inside, factor, 1.0)
        return rgb * factor[..., None]
    if kind == "colour_blotch":
        blob = _damage_field(dmg, X, Y, k)
        colour = np.asarray(dmg["rgb"])
        lum = rgb.mean(axis=2, keepdims=True)
        stained = np.clip(colour * (0.55 + 0.6 * lum), 0, 1)
        a = 0.9 * blob[..., None]
        return rgb * (1 - a) + stained * a
    return rgb


def _to_uint8(rgb: np.ndarray) -> np.ndarray:
    return np.rint(rgb * 255.0).astype(np.uint8)


def _footprint(part: Part, canvas: Canvas, grow: float = 0.0, damage: bool = True) -> np.ndarray:
    """Full-size bool mask of ``part`` (sdf < grow real px)."""
    out = np.zeros((canvas.size, canvas.size), dtype=bool)
    ys, xs = canvas.box(part.cx, part.cy, _part_radius(part.ptype) + grow / canvas.k + 1)
    sdf, _ = _part_field(part, canvas.X[ys, xs], canvas.Y[ys, xs], canvas.k, shade=False, damage=damage)
    out[ys, xs] = sdf < grow
    return out


def _interior_point(part: Part, canvas: Canvas, rng: np.random.Generator, depth: float) -> tuple[float, float] | None:
    """A random point (design px) at least ``depth`` real px inside ``part``."""
    ys, xs = canvas.box(part.cx, part.cy, _part_radius(part.ptype))
    sdf, _ = _part_field(part, canvas.X[ys, xs], canvas.Y[ys, xs], canvas.k, shade=False, damage=False)
    iy, ix = np.nonzero(sdf < -depth)
    if iy.size == 0:
        iy, ix = np.nonzero(sdf < 0)
        if iy.size == 0:
            return None
    j = int(rng.integers(0, iy.size))
    k = canvas.k
    return (canvas.X[ys, xs][iy[j], ix[j]] / k, canvas.Y[ys, xs][iy[j], ix[j]] / k)


def _structural_damage(kind: str, part: Part, canvas: Canvas, rng: np.random.Generator) -> dict[str, Any]:
    k = canvas.k
    if kind == "scratch":
        if part.is_screw:
            angle = math.radians(part.angle + rng.uniform(-20, 20))
            length = rng.uniform(0.45, 0.7) * SCREW_LENGTH[part.ptype]
            centre = (part.cx + rng.uniform(-1, 1), part.cy + rng.uniform(-1, 1))
        else:
            angle = rng.uniform(0, math.pi)
            length = rng.uniform(1.5, 2.0) * (NUT_R if part.ptype == "nut" else WASHER_R)
            off = rng.uniform(2.0, 4.0)  # pass beside the hole, across the ring
            centre = (part.cx - off * math.sin(angle), part.cy + off * math.cos(angle))
        dx, dy = math.cos(angle) * length / 2, math.sin(angle) * length / 2
        return {
            "kind": "scratch",
            "a": (centre[0] - dx, centre[1] - dy),
            "b": (centre[0] + dx, centre[1] + dy),
            "width": max(1.5, 1.2 / k),
        }
    if kind == "broken_part":
        common = {"zig": rng.uniform(0.8, 1.5), "zig_period": rng.uniform(1.5, 2.5), "zig_phase": rng.uniform(0, 1)}
        if part.is_screw:
            return {"kind": "broken_part", "cut": rng.uniform(0.45, 0.65), **common}
        return {
            "kind": "broken_part",
            "phi": rng.uniform(-math.pi, math.pi),
            "half_width": math.radians(rng.uniform(35, 50)),
            **common,
        }
    if kind == "dent":
        r = rng.uniform(3.2, 4.2)
        c = _interior_point(part, canvas, rng, depth=0.8 * k)
        return {"kind": "dent", "c": c, "r": r}
    if kind == "colour_blotch":
        c = _interior_point(part, canvas, rng, depth=1.0 * k)
        n = int(rng.integers(2, 4))
        centres = [(c[0] + rng.uniform(-2, 2), c[1] + rng.uniform(-2, 2)) for _ in range(n)]
        return {
            "kind": "colour_blotch",
            "centres": centres,
            "sigmas": [rng.uniform(2.2, 3.2) for _ in range(n)],
            "weights": [rng.uniform(0.7, 1.0) for _ in range(n)],
            "rgb": BLOTCH_RGB[int(rng.integers(0, len(BLOTCH_RGB)))].tolist(),
        }
    raise InputError(f"unknown structural anomaly {kind!r}")


def _damage_mask(part: Part, canvas: Canvas) -> np.ndarray:
    """Full-size bool ground truth of a damaged part."""
    dmg = part.damage or {}
    k = canvas.k
    if dmg.get("kind") == "broken_part":
        whole = _footprint(part, canvas, damage=False)
        left = _footprint(part, canvas, grow=0.0, damage=True)
        missing = whole & ~left
        return ndimage.binary_dilation(missing, iterations=1) & _footprint(part, canvas, grow=1.0, damage=False)
    ys, xs = canvas.box(part.cx, part.cy, _part_radius(part.ptype))
    field_ = _damage_field(dmg, canvas.X[ys, xs], canvas.Y[ys, xs], k)
    sdf, _ = _part_field(part, canvas.X[ys, xs], canvas.Y[ys, xs], k, shade=False)
    out = np.zeros((canvas.size, canvas.size), dtype=bool)
    out[ys, xs] = (field_ > 0.25) & (sdf < 0)
    if dmg.get("kind") == "scratch":  # scratches are thin: one pixel of margin
        out = ndimage.binary_dilation(out, iterations=1) & _footprint(part, canvas, grow=0.5)
    return out


def scene_parts(
    kind: str, rng: np.random.Generator, canvas: Canvas, normal, logical, structural, logical_kinds
) -> tuple[list, list[tuple[str, np.ndarray]], dict[str, Any]]:
    """A scene's parts with their ground truth: ``kind`` "" (``normal(rng)``, no channel), a logical kind
    (``logical(kind, rng, canvas)``) or a structural one (``structural(...)``) -> (parts, channels, info)."""
    if not kind:
        return normal(rng), [], {}
    if kind in logical_kinds:
        return logical(kind, rng, canvas)
    return structural(kind, rng, canvas)
