"""Synthetic MVTec LOCO-style scene ``screw_bag``: a tray with a fixed set of parts under a translucent bag.

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

Written by :func:`pradot.data.synthetic.generate` (``category="screw_bag"``), like the ``fastener_kit`` scene
of :mod:`pradot.data.synthetic_kit`: both modules give ``LOGICAL_KINDS``, ``STRUCTURAL_KINDS``, ``DEFECTS``,
``render`` and ``defects_config``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from PIL import Image

from ..errors import InputError
from . import synthetic_parts as _parts
from .synthetic_parts import (  # the parts and their damages, shared with the fastener kit scene
    LIGHT,
    NUT_R,
    SCREW_LENGTH,
    SHADOW_SHIFT,
    WASHER_R,
    Canvas,
    Part,
    _coverage,
    _damage_mask,
    _footprint,
    _part_field,
    _part_radius,
    _rounded_box,
    _segment_distance,
    _structural_damage,
    _to_uint8,
)

CATEGORY = "screw_bag"
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

TABLE_RGB = np.array([0.24, 0.23, 0.22])
TRAY_RGB = np.array([0.80, 0.79, 0.74])


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
        Image.fromarray(bag["low"].astype(np.float32)).resize((canvas.size, canvas.size), Image.Resampling.BILINEAR),
        dtype=np.float64,
    )
    rgb *= (1.0 + 0.035 * low)[..., None]
    for ang, off, amp, width in bag["streaks"]:
        n = (math.cos(ang), math.sin(ang))
        d = (X / k - 64.0) * n[0] + (Y / k - 64.0) * n[1] - off
        rgb += (amp * np.exp(-0.5 * (d / width) ** 2))[..., None] * tray_a[..., None]
    rgb += bag["noise"] * 0.012
    return np.clip(rgb, 0.0, 1.0)


# ---------------------------------------------------------------------------------------------
# scenes and anomalies
# ---------------------------------------------------------------------------------------------


def _bag(rng: np.random.Generator, size: int) -> dict[str, Any]:
    n_streaks = int(rng.integers(0, 3))
    streaks = [
        (
            float(rng.uniform(0, math.pi)),
            float(rng.uniform(-45, 45)),
            float(rng.uniform(0.02, 0.05)),
            float(rng.uniform(2, 5)),
        )
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


def _logical(
    kind: str, rng: np.random.Generator, canvas: Canvas
) -> tuple[list[Part], list[tuple[str, np.ndarray]], dict]:
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
    raise InputError(f"unknown logical anomaly {kind!r}")


def _structural(
    kind: str, rng: np.random.Generator, canvas: Canvas
) -> tuple[list[Part], list[tuple[str, np.ndarray]], dict]:
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


def render(kind: str, rng: np.random.Generator, canvas: Canvas):
    """One screw-bag image: ``kind`` "" (normal), a logical or a structural kind -> (uint8, channels, info)."""
    parts, channels, info = _parts.scene_parts(kind, rng, canvas, _normal_parts, _logical, _structural, LOGICAL_KINDS)
    scene = Scene(parts, _bag(rng, canvas.size))
    return _to_uint8(_draw(scene, canvas)), channels, info


def defects_config(image_size: int) -> list[dict[str, Any]]:
    """The ``defects_config.json`` entries of the screw bag for ``image_size``: missing parts saturate at the
    part's area in pixels (absolute), other defects at their whole area (relative 1.0)."""
    areas = part_areas(image_size)
    entries = []
    for name, (value, relative, threshold) in DEFECTS.items():
        if threshold is None:
            threshold = float(areas[name[len("missing_") :]])
        entries.append(
            {
                "defect_name": name,
                "pixel_value": value,
                "saturation_threshold": threshold,
                "relative_saturation": relative,
            }
        )
    return entries


def describe(seed: int, image_size: int) -> str:
    """The README of a generated screw-bag folder."""
    return (
        f"Synthetic MVTec LOCO-style {CATEGORY} scene generated by pradot.data.synthetic "
        f"(seed={seed}, image_size={image_size}).\n"
    )
