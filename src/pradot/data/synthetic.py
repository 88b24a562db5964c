"""Synthetic MVTec LOCO-style dataset: a screw-bag-like tray with a fixed set of parts.

The scene: a tray with six compartments (3 columns x 2 rows) under a translucent bag. Each
compartment holds one part at a fixed place (small, random jitter of position and rotation)::

    +-------------+-------------+-------------+
    | long screw  |    nut      |   washer    |
    +-------------+-------------+-------------+
    | short screw |   washer    |    nut      |
    +-------------+-------------+-------------+

Small parts (nut, washer, short screw) sit in the upper part of their compartment; the long screw
is centred. Parts are drawn from signed distance fields with antialiasing, shading from a light at
the top left and soft drop shadows, so they look like objects rather than flat blobs.

Logical anomalies break the layout rules with parts that look perfectly normal (they need spatial
context): a missing part, an additional part in a compartment's free space, a screw of the wrong
length, two parts swapped between compartments. Structural anomalies damage one part locally: a
scratch, a broken part (a piece missing), a dent, a colour blotch.

Output (``generate``): ``<root>/<category>/`` in the MVTec LOCO AD layout, one ground-truth PNG per
defect (``ground_truth/<type>/<id>/000.png`` ...) valued with the defect's ``pixel_value`` in
``defects_config.json``. Following the MVTec LOCO convention, a missing part's region is the area
where the part can lie and its saturation threshold is the part's area in pixels (absolute), so
detecting a part-sized piece of the region saturates; other defects saturate at their whole area
(relative 1.0). Same parameters -> byte-identical PNGs. ``metadata.json`` records what was done to
each test image; ``.pradot_synthetic.json`` is the stamp ``ensure_synthetic`` compares.

A second scene, ``fastener_kit`` (:mod:`pradot.data.synthetic_kit`), is written by the same ``generate``:
parts at fixed seats on a plain board, whose logical anomalies a memory bank of patches cannot see.

CLI: ``python -m pradot.data.synthetic --root DIR --category screw_bag [--seed S --image-size PX ...]``
(also installed as ``pradot-synthetic``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image
from scipy import ndimage

GENERATOR_VERSION = 1
STAMP_NAME = ".pradot_synthetic.json"
SCENES: tuple[str, ...] = ("screw_bag", "fastener_kit")  # fastener_kit: pradot.data.synthetic_kit
DEFAULTS: dict[str, int] = {
    "image_size": 128,
    "n_train": 60,
    "n_validation": 20,
    "n_test_good": 20,
    "n_test_logical": 20,
    "n_test_structural": 20,
}

LOGICAL = "logical_anomalies"
STRUCTURAL = "structural_anomalies"
LOGICAL_KINDS: tuple[str, ...] = ("missing", "additional", "wrong_length", "swapped")
STRUCTURAL_KINDS: tuple[str, ...] = ("scratch", "broken_part", "dent", "colour_blotch")

# defect_name -> (pixel_value, relative_saturation, relative threshold or None for "part area")
DEFECTS: dict[str, tuple[int, bool, float | None]] = {
    "missing_long_screw": (255, False, None),
    "missing_short_screw": (240, False, None),
    "missing_nut": (225, False, None),
    "missing_washer": (210, False, None),
    "additional_part": (195, True, 1.0),
    "screw_wrong_length": (180, True, 1.0),
    "part_in_wrong_region": (165, True, 1.0),
    "scratch": (150, True, 1.0),
    "broken_part": (135, True, 1.0),
    "dent": (120, True, 1.0),
    "colour_blotch": (105, True, 1.0),
}

# ---- scene geometry, in "design pixels" of a 128 px image (scaled by image_size / 128) ----------
DESIGN = 128.0
TRAY = (5.0, 5.0, 123.0, 123.0)  # x0, y0, x1, y1
TRAY_RADIUS = 7.0
COL_EDGES = (9.0, 45.0, 83.0, 119.0)
ROW_EDGES = (9.0, 64.0, 119.0)
WALL_HALF = 1.1
LAYOUT: tuple[tuple[str, str, str], tuple[str, str, str]] = (
    ("long_screw", "nut", "washer"),
    ("short_screw", "washer", "nut"),
)
SMALL_OFFSET = -8.0  # small parts sit this far above their compartment's centre
EXTRA_OFFSET = 15.0  # an additional part sits this far below the compartment's centre
POS_JITTER = 2.5
SCREW_ANGLE_JITTER = 8.0
ENVELOPE_MARGIN = 3.0  # missing-part region = nominal footprint grown by the jitter range

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

TABLE_RGB = np.array([0.24, 0.23, 0.22])
TRAY_RGB = np.array([0.80, 0.79, 0.74])
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


def _compartment_center(comp: int) -> tuple[float, float]:
    row, col = divmod(comp, 3)
    return (COL_EDGES[col] + COL_EDGES[col + 1]) / 2, (ROW_EDGES[row] + ROW_EDGES[row + 1]) / 2


def _layout_type(comp: int) -> str:
    row, col = divmod(comp, 3)
    return LAYOUT[row][col]


def nominal_pose(ptype: str, comp: int) -> tuple[float, float, float]:
    """Where a part of ``ptype`` sits in compartment ``comp`` when everything is normal."""
    cx, cy = _compartment_center(comp)
    if ptype == "long_screw":
        return cx, cy, 90.0
    return cx, cy + SMALL_OFFSET, 90.0 if ptype == "short_screw" else 0.0


def _jittered(ptype: str, comp: int, rng: np.random.Generator) -> Part:
    cx, cy, angle = nominal_pose(ptype, comp)
    cx += rng.uniform(-POS_JITTER, POS_JITTER)
    cy += rng.uniform(-POS_JITTER, POS_JITTER)
    if ptype.endswith("screw"):
        angle += rng.uniform(-SCREW_ANGLE_JITTER, SCREW_ANGLE_JITTER)
    elif ptype == "nut":
        angle = rng.uniform(0.0, 60.0)
    else:
        angle = rng.uniform(0.0, 360.0)
    return Part(ptype, cx, cy, angle, comp)


def _part_radius(ptype: str) -> float:
    if ptype in SCREW_LENGTH:
        return SCREW_LENGTH[ptype] / 2 + 1.0
    return NUT_R + 1.0 if ptype == "nut" else WASHER_R + 1.0


# ---------------------------------------------------------------------------------------------
# rendering
# ---------------------------------------------------------------------------------------------

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


@dataclass
class Scene:
    parts: list[Part]
    bag: dict[str, Any]


def _draw(scene: Scene, canvas: Canvas) -> np.ndarray:
    """Render ``scene`` as an (S, S, 3) float image in [0, 1]."""
    k, X, Y = canvas.k, canvas.X, canvas.Y
    bag = scene.bag
    # table and tray
    rgb = np.broadcast_to(TABLE_RGB * bag["table_gain"], X.shape + (3,)).copy()
    x0, y0, x1, y1 = (t * k for t in TRAY)
    tray_sdf = _rounded_box(X - (x0 + x1) / 2, Y - (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2, TRAY_RADIUS * k)
    tray_a = _coverage(tray_sdf)
    rim = np.clip(1.0 + tray_sdf / (2.2 * k), 0, 1)  # 1 at the edge, 0 inside
    gx, gy = (X - (x0 + x1) / 2) / (x1 - x0), (Y - (y0 + y1) / 2) / (y1 - y0)
    tray_shade = 1.0 - 0.08 * (gx + gy) - 0.25 * rim * np.clip(-(LIGHT[0] * np.sign(gx) + LIGHT[1] * np.sign(gy)), 0, 1)
    tray_rgb = TRAY_RGB * bag["tray_gain"] * tray_shade[..., None]
    rgb = rgb * (1 - tray_a[..., None]) + tray_rgb * tray_a[..., None]
    # compartment walls: a light ridge with a shadow towards the bottom right
    walls = []
    for cx in COL_EDGES[1:-1]:
        walls.append((cx, ROW_EDGES[0], cx, ROW_EDGES[-1]))
    walls.append((COL_EDGES[0], ROW_EDGES[1], COL_EDGES[-1], ROW_EDGES[1]))
    for ax, ay, bx, by in walls:
        d_sh = _segment_distance(X - 1.2 * k, Y - 1.2 * k, (ax * k, ay * k), (bx * k, by * k))
        shadow = np.clip(0.5 - (d_sh - WALL_HALF * k) / (1.2 * k), 0, 1)
        rgb *= 1 - 0.25 * shadow[..., None]
        d = _segment_distance(X, Y, (ax * k, ay * k), (bx * k, by * k))
        wall = _coverage(d - WALL_HALF * k)
        rgb = rgb * (1 - wall[..., None]) + (TRAY_RGB * 1.1)[None, None] * wall[..., None]
    # parts: shadows first, then the parts
    sx, sy = SHADOW_SHIFT[0] * k, SHADOW_SHIFT[1] * k
    for part in scene.parts:
        ys, xs = canvas.box(part.cx + SHADOW_SHIFT[0], part.cy + SHADOW_SHIFT[1], _part_radius(part.ptype) + 2)
        sdf, _ = _part_field(part, X[ys, xs] - sx, Y[ys, xs] - sy, k, shade=False)
        shadow = np.clip(0.5 - sdf / (1.6 * k), 0, 1)
        rgb[ys, xs] *= 1 - 0.42 * shadow[..., None]
    for part in scene.parts:
        ys, xs = canvas.box(part.cx, part.cy, _part_radius(part.ptype))
        sdf, prgb = _part_field(part, X[ys, xs], Y[ys, xs], k)
        a = _coverage(sdf)[..., None]
        rgb[ys, xs] = rgb[ys, xs] * (1 - a) + prgb * a
    # translucent bag: low-frequency brightness and a few soft highlights, over everything
    low = np.asarray(
        Image.fromarray(bag["low"].astype(np.float32)).resize((canvas.size, canvas.size), Image.BILINEAR),
        dtype=np.float64,
    )
    rgb *= (1.0 + 0.035 * low)[..., None]
    for ang, off, amp, width in bag["streaks"]:
        n = (math.cos(ang), math.sin(ang))
        d = (X / k - 64.0) * n[0] + (Y / k - 64.0) * n[1] - off
        rgb += (amp * np.exp(-0.5 * (d / width) ** 2))[..., None] * tray_a[..., None]
    rgb += bag["noise"] * 0.012
    return np.clip(rgb, 0.0, 1.0)


def _to_uint8(rgb: np.ndarray) -> np.ndarray:
    return np.rint(rgb * 255.0).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# scenes and anomalies
# ---------------------------------------------------------------------------------------------

def _bag(rng: np.random.Generator, size: int) -> dict[str, Any]:
    n_streaks = int(rng.integers(0, 3))
    streaks = [
        (float(rng.uniform(0, math.pi)), float(rng.uniform(-45, 45)), float(rng.uniform(0.02, 0.05)), float(rng.uniform(2, 5)))
        for _ in range(n_streaks)
    ]
    return {
        "table_gain": float(rng.uniform(0.9, 1.1)),
        "tray_gain": float(rng.uniform(0.96, 1.03)),
        "low": rng.normal(size=(5, 5)),
        "streaks": streaks,
        "noise": rng.normal(size=(size, size, 1)),
    }


def _normal_parts(rng: np.random.Generator) -> list[Part]:
    return [_jittered(_layout_type(c), c, rng) for c in range(6)]


def _footprint(part: Part, canvas: Canvas, grow: float = 0.0, damage: bool = True) -> np.ndarray:
    """Full-size bool mask of ``part`` (sdf < grow real px)."""
    out = np.zeros((canvas.size, canvas.size), dtype=bool)
    ys, xs = canvas.box(part.cx, part.cy, _part_radius(part.ptype) + grow / canvas.k + 1)
    sdf, _ = _part_field(part, canvas.X[ys, xs], canvas.Y[ys, xs], canvas.k, shade=False, damage=damage)
    out[ys, xs] = sdf < grow
    return out


def _envelope(ptype: str, comp: int, canvas: Canvas) -> np.ndarray:
    """Where a part of ``ptype`` can lie in compartment ``comp`` (nominal footprint + jitter range)."""
    cx, cy, angle = nominal_pose(ptype, comp)
    k = canvas.k
    if ptype in SCREW_LENGTH:
        return _footprint(Part(ptype, cx, cy, angle, comp), canvas, grow=ENVELOPE_MARGIN * k)
    radius = (NUT_R if ptype == "nut" else WASHER_R) + ENVELOPE_MARGIN
    return np.hypot(canvas.X - cx * k, canvas.Y - cy * k) < radius * k


def part_areas(image_size: int) -> dict[str, int]:
    """Area in pixels of each part type at its nominal pose (the missing-part saturation thresholds)."""
    canvas = Canvas(image_size)
    areas = {}
    for ptype, comp in (("long_screw", 0), ("short_screw", 3), ("nut", 1), ("washer", 2)):
        cx, cy, angle = nominal_pose(ptype, comp)
        part = Part(ptype, cx, cy, angle, comp)
        ys, xs = canvas.box(cx, cy, _part_radius(ptype))
        sdf, _ = _part_field(part, canvas.X[ys, xs], canvas.Y[ys, xs], canvas.k, shade=False)
        areas[ptype] = int(round(float(_coverage(sdf).sum())))
    return areas


def _logical(kind: str, rng: np.random.Generator, canvas: Canvas) -> tuple[list[Part], list[tuple[str, np.ndarray]], dict]:
    parts = _normal_parts(rng)
    if kind == "missing":
        comp = int(rng.integers(0, 6))
        ptype = parts[comp].ptype
        del parts[comp]
        return parts, [(f"missing_{ptype}", _envelope(ptype, comp, canvas))], {"part": ptype, "compartment": comp}
    if kind == "additional":
        comp = int(rng.choice([1, 2, 3, 4, 5]))
        ptype = str(rng.choice(["nut", "washer"]))
        cx, cy = _compartment_center(comp)
        extra = Part(
            ptype,
            cx + rng.uniform(-2.0, 2.0),
            cy + EXTRA_OFFSET + rng.uniform(-1.5, 1.5),
            rng.uniform(0.0, 60.0 if ptype == "nut" else 360.0),
            comp,
        )
        parts.append(extra)
        return parts, [("additional_part", _footprint(extra, canvas, grow=1.0))], {"part": ptype, "compartment": comp}
    if kind == "wrong_length":
        comp = int(rng.choice([0, 3]))
        expected = parts[comp]
        wrong_type = "short_screw" if expected.ptype == "long_screw" else "long_screw"
        wrong = replace(expected, ptype=wrong_type)
        parts[comp] = wrong
        mask = _footprint(wrong, canvas, grow=1.0) | _footprint(expected, canvas, grow=1.0)
        return parts, [("screw_wrong_length", mask)], {"part": wrong_type, "compartment": comp}
    if kind == "swapped":
        pairs = [(a, b) for a in range(6) for b in range(a + 1, 6) if _layout_type(a) != _layout_type(b)]
        a, b = pairs[int(rng.integers(0, len(pairs)))]
        channels = []
        for comp, other in ((a, b), (b, a)):
            moved = _jittered(_layout_type(other), comp, rng)
            parts[comp] = moved
            mask = _footprint(moved, canvas, grow=1.0) | _envelope(_layout_type(comp), comp, canvas)
            channels.append(("part_in_wrong_region", mask))
        return parts, channels, {"compartments": [a, b], "parts": [_layout_type(b), _layout_type(a)]}
    raise ValueError(f"unknown logical anomaly {kind!r}")


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
        return {"kind": "broken_part", "phi": rng.uniform(-math.pi, math.pi), "half_width": math.radians(rng.uniform(35, 50)), **common}
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
    raise ValueError(f"unknown structural anomaly {kind!r}")


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


def _structural(kind: str, rng: np.random.Generator, canvas: Canvas) -> tuple[list[Part], list[tuple[str, np.ndarray]], dict]:
    parts = _normal_parts(rng)
    min_area = max(6, int(round(8 * canvas.k**2)))
    for _ in range(50):
        comp = int(rng.integers(0, 6))
        dmg = _structural_damage(kind, parts[comp], canvas, rng)
        if dmg.get("c", ()) is None:
            continue
        damaged = replace(parts[comp], damage=dmg)
        mask = _damage_mask(damaged, canvas)
        if mask.sum() >= min_area:
            parts[comp] = damaged
            return parts, [(kind, mask)], {"part": damaged.ptype, "compartment": comp}
    raise RuntimeError(f"could not place a visible {kind} defect")  # pragma: no cover


# ---------------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------------

def defects_config(image_size: int, category: str = "screw_bag") -> list[dict[str, Any]]:
    """The ``defects_config.json`` entries of a scene for ``image_size``."""
    scene = _scene(category)
    if scene is not None:
        return scene.defects_config(image_size)
    areas = part_areas(image_size)
    entries = []
    for name, (value, relative, threshold) in DEFECTS.items():
        if threshold is None:
            threshold = float(areas[name[len("missing_"):]])
        entries.append(
            {"defect_name": name, "pixel_value": value, "saturation_threshold": threshold, "relative_saturation": relative}
        )
    return entries


def _save_png(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="PNG", compress_level=6)


def _params(category: str, seed: int, image_size: int, counts: dict[str, int]) -> dict[str, Any]:
    return {"generator_version": GENERATOR_VERSION, "category": category, "seed": int(seed), "image_size": int(image_size), **counts}


def _checked_counts(category: str, seed: int, image_size: int, n_train: int, n_validation: int, n_test_good: int,
                    n_test_logical: int, n_test_structural: int) -> dict[str, int]:
    """The split sizes as a dict, after checking every argument."""
    counts = {"n_train": int(n_train), "n_validation": int(n_validation), "n_test_good": int(n_test_good),
              "n_test_logical": int(n_test_logical), "n_test_structural": int(n_test_structural)}
    _check_args(category, seed, image_size, counts)
    return counts


def _check_args(category: str, seed: int, image_size: int, counts: dict[str, int]) -> None:
    if category not in SCENES:
        raise ValueError(f"unknown synthetic category {category!r}; available scenes: {', '.join(SCENES)}")
    if int(seed) < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if int(image_size) < 64:
        raise ValueError(f"image_size must be >= 64, got {image_size}")
    for name, n in counts.items():
        if int(n) < 0:
            raise ValueError(f"{name} must be >= 0, got {n}")
    if counts["n_train"] < 1:
        raise ValueError("n_train must be >= 1")


def _scene(category: str):
    """The module of a scene other than the screw bag (None for the screw bag, which lives here)."""
    if category == "fastener_kit":
        from . import synthetic_kit

        return synthetic_kit
    return None


def _render(kind: str, rng: np.random.Generator, canvas: Canvas):
    """One screw-bag image: ``kind`` "" (normal), a logical or a structural kind -> (uint8, channels, info)."""
    channels: list[tuple[str, np.ndarray]] = []
    info: dict[str, Any] = {}
    if not kind:
        parts = _normal_parts(rng)
    elif kind in LOGICAL_KINDS:
        parts, channels, info = _logical(kind, rng, canvas)
    else:
        parts, channels, info = _structural(kind, rng, canvas)
    scene = Scene(parts, _bag(rng, canvas.size))
    return _to_uint8(_draw(scene, canvas)), channels, info


def _write_all(out: Path, seed: int, image_size: int, counts: dict[str, int], progress: bool,
               category: str = "screw_bag") -> dict[str, Any]:
    canvas = Canvas(image_size)
    scene = _scene(category)
    logical, structural = (scene.LOGICAL_KINDS, scene.STRUCTURAL_KINDS) if scene else (LOGICAL_KINDS, STRUCTURAL_KINDS)
    render = scene.render if scene else _render
    defects = scene.DEFECTS if scene else DEFECTS
    jobs: list[tuple[str, str, int, int]] = []  # (folder, anomaly kind, index, stream)
    jobs += [("train/good", "", i, 0) for i in range(counts["n_train"])]
    jobs += [("validation/good", "", i, 1) for i in range(counts["n_validation"])]
    jobs += [("test/good", "", i, 2) for i in range(counts["n_test_good"])]
    jobs += [(f"test/{LOGICAL}", logical[i % len(logical)], i, 3) for i in range(counts["n_test_logical"])]
    jobs += [(f"test/{STRUCTURAL}", structural[i % len(structural)], i, 4) for i in range(counts["n_test_structural"])]
    values = {name: spec[0] for name, spec in defects.items()}
    metadata: dict[str, Any] = {}
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(jobs), desc=f"synthetic {category}", unit="img", leave=False)
    for folder, kind, index, stream in jobs:
        rng = np.random.default_rng([int(seed), stream, index])
        image_id = f"{index:03d}"
        image, channels, info = render(kind, rng, canvas)
        _save_png(image, out / folder / f"{image_id}.png")
        if channels:
            anomaly_type = folder.split("/")[1]
            for c, (name, mask) in enumerate(channels):
                if not mask.any():  # pragma: no cover - guarded by construction
                    raise RuntimeError(f"empty ground truth for {folder}/{image_id} ({name})")
                png = (mask.astype(np.uint8) * values[name]).astype(np.uint8)
                _save_png(png, out / "ground_truth" / anomaly_type / image_id / f"{c:03d}.png")
            metadata[f"{anomaly_type}/{image_id}"] = {"anomaly": kind, "defects": [n for n, _ in channels], **info}
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return metadata


def generate(
    root: str | Path,
    category: str = "screw_bag",
    seed: int = 0,
    image_size: int = DEFAULTS["image_size"],
    n_train: int = DEFAULTS["n_train"],
    n_validation: int = DEFAULTS["n_validation"],
    n_test_good: int = DEFAULTS["n_test_good"],
    n_test_logical: int = DEFAULTS["n_test_logical"],
    n_test_structural: int = DEFAULTS["n_test_structural"],
    progress: bool = False,
) -> Path:
    """Write the synthetic dataset to ``<root>/<category>`` and return that folder.

    The data are written to a temporary sibling folder first and moved into place at the end, so
    a reader never sees half a dataset. An existing ``<root>/<category>`` made by this generator is
    replaced; any other non-empty folder there is left alone (ValueError).
    """
    counts = _checked_counts(category, seed, image_size, n_train, n_validation, n_test_good, n_test_logical,
                             n_test_structural)
    root = Path(root).expanduser()
    target = root / category
    if target.exists() and any(target.iterdir()) and not (target / STAMP_NAME).is_file():
        raise ValueError(f"{target} exists and was not made by the synthetic generator; refusing to overwrite it")
    root.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    tmp = root / f".{category}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir()
        metadata = _write_all(tmp, int(seed), int(image_size), counts, progress, category)
        (tmp / "defects_config.json").write_text(json.dumps(defects_config(int(image_size), category), indent=2) + "\n")
        (tmp / "metadata.json").write_text(json.dumps(metadata, indent=1, sort_keys=True) + "\n")
        scene = _scene(category)
        (tmp / "README.txt").write_text(
            scene.describe(seed, image_size) if scene else
            "Synthetic MVTec LOCO-style screw_bag scene generated by pradot.data.synthetic "
            f"(seed={seed}, image_size={image_size}).\n"
        )
        params = _params(category, int(seed), int(image_size), counts)
        (tmp / STAMP_NAME).write_text(json.dumps(params, indent=1, sort_keys=True) + "\n")
        if target.exists():
            shutil.rmtree(target)
        try:
            os.replace(tmp, target)
        except OSError:
            # another process put a dataset there meanwhile: keep it if it is the same one
            if _read_stamp(target) != params:
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    n = sum(counts.values())
    if progress:
        print(
            f"synthetic {category}: {n} images ({counts['n_train']} train, {counts['n_validation']} validation, "
            f"{counts['n_test_good']} good / {counts['n_test_logical']} logical / {counts['n_test_structural']} structural "
            f"test) at {image_size}px, seed {seed}, in {time.perf_counter() - start:.1f}s -> {target}"
        )
    return target


def _read_stamp(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / STAMP_NAME).read_text())
    except (OSError, ValueError):
        return None


def ensure_synthetic(
    root: str | Path,
    category: str = "screw_bag",
    seed: int = 0,
    image_size: int = DEFAULTS["image_size"],
    n_train: int = DEFAULTS["n_train"],
    n_validation: int = DEFAULTS["n_validation"],
    n_test_good: int = DEFAULTS["n_test_good"],
    n_test_logical: int = DEFAULTS["n_test_logical"],
    n_test_structural: int = DEFAULTS["n_test_structural"],
    progress: bool = False,
) -> Path:
    """``<root>/<category>``, generated only when it is missing or its stamp has other parameters."""
    counts = _checked_counts(category, seed, image_size, n_train, n_validation, n_test_good, n_test_logical,
                             n_test_structural)
    target = Path(root).expanduser() / category
    if _read_stamp(target) == _params(category, int(seed), int(image_size), counts):
        return target
    return generate(root, category, int(seed), int(image_size), progress=progress, **counts)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="pradot-synthetic",
        description="Generate a synthetic MVTec LOCO-style dataset (logical + structural anomalies): the screw_bag "
                    "scene or the fastener_kit scene.",
    )
    parser.add_argument("--root", required=True, help="folder that will hold <category>/")
    parser.add_argument("--category", default="screw_bag", choices=SCENES)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, default=DEFAULTS["image_size"])
    parser.add_argument("--n-train", type=int, default=DEFAULTS["n_train"])
    parser.add_argument("--n-validation", type=int, default=DEFAULTS["n_validation"])
    parser.add_argument("--n-test-good", type=int, default=DEFAULTS["n_test_good"])
    parser.add_argument("--n-test-logical", type=int, default=DEFAULTS["n_test_logical"])
    parser.add_argument("--n-test-structural", type=int, default=DEFAULTS["n_test_structural"])
    parser.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    args = parser.parse_args(argv)
    try:
        generate(
            args.root,
            args.category,
            seed=args.seed,
            image_size=args.image_size,
            n_train=args.n_train,
            n_validation=args.n_validation,
            n_test_good=args.n_test_good,
            n_test_logical=args.n_test_logical,
            n_test_structural=args.n_test_structural,
            progress=not args.quiet,
        )
    except ValueError as exc:
        parser.error(str(exc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
