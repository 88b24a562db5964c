"""Synthetic MVTec LOCO-style scene ``fixture_plate``: a near-rigid layout, parts held in machined pockets.

The scene: a brushed metal plate with six pockets, 2 rows x 3 columns, each shaped for one part type and
holding it at a fixed orientation with at most :data:`POS_JITTER` design px of play (about a pixel at
128 px, under a stride-8 feature cell)::

    long screw    nut            washer
    washer        short screw    nut

Unlike the loose scenes (``screw_bag``: parts anywhere in a compartment; ``fastener_kit``: parts on a
plain board with a few pixels of jitter and free rotation), every position of the image always shows the
same thing: a per-position model of the normal appearance (PaDiM) is in its element here, and the scene
tells whether PRADOT's local prototypes keep up with it where spatial slack is not needed.

Logical anomalies (every part looks normal):

============== ========== ==============================================================
kind            rule        what
============== ========== ==============================================================
missing_part    count       a pocket is empty
wrong_part      pairing     a pocket holds a part of another type (it does not fit)
reversed_screw  pose        a screw lies head down in its pocket
extra_part      count       a seventh part lies on the plate between the rows
============== ========== ==============================================================

Structural anomalies damage one part locally (the screw bag's: scratch, broken part, dent, colour
blotch). Ground truth follows :mod:`pradot.data.synthetic`'s conventions: a missing part's region is
its pocket, saturated at the part's area (absolute); the others saturate at their whole area (relative
1.0). Written by ``pradot.data.synthetic.generate(root, "fixture_plate", ...)`` (MVTec LOCO layout; same
parameters -> byte-identical PNGs).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from ..errors import InputError
from . import synthetic_parts as sb

__all__ = [
    "CATEGORY",
    "LOGICAL_KINDS",
    "STRUCTURAL_KINDS",
    "DEFECTS",
    "LAYOUT",
    "POS_JITTER",
    "seat_center",
    "seat_type",
    "pocket_mask",
    "render",
    "part_areas",
    "defects_config",
    "describe",
]

CATEGORY = "fixture_plate"
LOGICAL_KINDS: tuple[str, ...] = ("missing_part", "wrong_part", "reversed_screw", "extra_part")
STRUCTURAL_KINDS: tuple[str, ...] = sb.STRUCTURAL_KINDS

# defect_name -> (pixel_value, relative_saturation, relative threshold or None for "part area")
DEFECTS: dict[str, tuple[int, bool, float | None]] = {
    "missing_long_screw": (255, False, None),
    "missing_nut": (240, False, None),
    "missing_washer": (225, False, None),
    "missing_short_screw": (210, False, None),
    "wrong_part": (195, True, 1.0),
    "reversed_screw": (180, True, 1.0),
    "extra_part": (165, True, 1.0),
    "scratch": (150, True, 1.0),
    "broken_part": (135, True, 1.0),
    "dent": (120, True, 1.0),
    "colour_blotch": (105, True, 1.0),
}

# ---- geometry, in design pixels of a 128 px image ------------------------------------------------
SEAT_X = (24.0, 64.0, 104.0)
SEAT_Y = (34.0, 94.0)
LAYOUT: tuple[tuple[str, str, str], tuple[str, str, str]] = (
    ("long_screw", "nut", "washer"),
    ("washer", "short_screw", "nut"),
)
POS_JITTER = 1.0  # play of a part in its pocket
ANGLE_JITTER = 2.0  # degrees (screws and nuts; washers are round)
POCKET_MARGIN = 2.5  # pocket wall distance from the nominal part outline
EXTRA_Y = 64.0  # the plate between the rows: where an extra part lies
EXTRA_X = (44.0, 84.0)
EXTRA_JITTER = 3.0

PLATE_RGB = np.array([0.60, 0.61, 0.63])
FLOOR_RGB = np.array([0.40, 0.41, 0.43])


def seat_center(seat: int) -> tuple[float, float]:
    """Pocket ``seat`` (0-5, row-major) centre in design px."""
    row, col = divmod(seat, 3)
    return SEAT_X[col], SEAT_Y[row]


def seat_type(seat: int) -> str:
    row, col = divmod(seat, 3)
    return LAYOUT[row][col]


def _seated(ptype: str, seat: int, rng: np.random.Generator, head_down: bool = False) -> sb.Part:
    """A part of ``ptype`` in pocket ``seat``: the pocket's pose with its play."""
    cx, cy = seat_center(seat)
    cx += rng.uniform(-POS_JITTER, POS_JITTER)
    cy += rng.uniform(-POS_JITTER, POS_JITTER)
    jitter = rng.uniform(-ANGLE_JITTER, ANGLE_JITTER)
    if ptype.endswith("screw"):
        angle = (270.0 if head_down else 90.0) + jitter
    elif ptype == "nut":
        angle = jitter
    else:
        angle = rng.uniform(0.0, 360.0)
    return sb.Part(ptype, cx, cy, angle, seat)


def _normal_parts(rng: np.random.Generator) -> list[sb.Part]:
    return [_seated(seat_type(s), s, rng) for s in range(6)]


def _pocket_sdf(seat: int, X: np.ndarray, Y: np.ndarray, k: float) -> np.ndarray:
    """Signed distance (real px, negative inside) to the wall of pocket ``seat``."""
    cx, cy = seat_center(seat)
    ptype = seat_type(seat)
    px, py = X - cx * k, Y - cy * k
    if ptype in sb.SCREW_LENGTH:  # upright: long along y
        hx = (sb.SCREW_HEAD_HALF + POCKET_MARGIN) * k
        hy = (sb.SCREW_LENGTH[ptype] / 2 + POCKET_MARGIN) * k
        return sb._rounded_box(px, py, hx, hy, 2.0 * k)
    radius = (sb.NUT_R if ptype == "nut" else sb.WASHER_R) + POCKET_MARGIN
    return np.hypot(px, py) - radius * k


def pocket_mask(seat: int, canvas: sb.Canvas) -> np.ndarray:
    """Full-size bool mask of pocket ``seat`` (where its part can lie: the missing-part region)."""
    return _pocket_sdf(seat, canvas.X, canvas.Y, canvas.k) < 0


def _extra_spot(rng: np.random.Generator, ptype: str) -> sb.Part:
    x = EXTRA_X[int(rng.integers(0, len(EXTRA_X)))] + rng.uniform(-EXTRA_JITTER, EXTRA_JITTER)
    y = EXTRA_Y + rng.uniform(-EXTRA_JITTER, EXTRA_JITTER)
    angle = rng.uniform(0.0, 360.0) if ptype != "short_screw" else rng.uniform(-20.0, 20.0)  # screw lies across
    return sb.Part(ptype, x, y, angle, -1)


def _logical(kind: str, rng: np.random.Generator, canvas: sb.Canvas):
    parts = _normal_parts(rng)
    if kind == "missing_part":
        seat = int(rng.integers(0, 6))
        ptype = parts[seat].ptype
        del parts[seat]
        return parts, [(f"missing_{ptype}", pocket_mask(seat, canvas))], {"part": ptype, "seat": seat}
    if kind == "wrong_part":
        seat = int(rng.integers(0, 6))
        others = [t for t in ("nut", "washer", "short_screw") if t != seat_type(seat)]
        ptype = others[int(rng.integers(0, len(others)))]
        parts[seat] = _seated(ptype, seat, rng)
        mask = sb._footprint(parts[seat], canvas, grow=1.0) | pocket_mask(seat, canvas)
        return parts, [("wrong_part", mask)], {"part": ptype, "seat": seat}
    if kind == "reversed_screw":
        seat = int(rng.choice([s for s in range(6) if seat_type(s).endswith("screw")]))
        parts[seat] = _seated(seat_type(seat), seat, rng, head_down=True)
        return parts, [("reversed_screw", sb._footprint(parts[seat], canvas, grow=1.0))], {"seat": seat}
    if kind == "extra_part":
        ptype = str(rng.choice(["nut", "washer", "short_screw"]))
        extra = _extra_spot(rng, ptype)
        parts.append(extra)
        return parts, [("extra_part", sb._footprint(extra, canvas, grow=1.0))], {"part": ptype}
    raise InputError(f"unknown logical anomaly {kind!r}; expected one of {', '.join(LOGICAL_KINDS)}")


def _structural(kind: str, rng: np.random.Generator, canvas: sb.Canvas):
    parts = _normal_parts(rng)
    min_area = max(6, int(round(8 * canvas.k**2)))
    for _ in range(50):
        seat = int(rng.integers(0, 6))
        dmg = sb._structural_damage(kind, parts[seat], canvas, rng)
        if dmg.get("c", ()) is None:
            continue
        damaged = replace(parts[seat], damage=dmg)
        mask = sb._damage_mask(damaged, canvas)
        if mask.sum() >= min_area:
            parts[seat] = damaged
            return parts, [(kind, mask)], {"part": damaged.ptype, "seat": seat}
    raise RuntimeError(f"could not place a visible {kind} defect")  # pragma: no cover


def _plate(light: dict[str, Any], canvas: sb.Canvas) -> np.ndarray:
    """The plate with its pockets: brushed metal (streaks along x), darker pocket floors, a lit and a shaded
    wall (light from the top left)."""
    k, X, Y = canvas.k, canvas.X, canvas.Y
    rgb = np.broadcast_to(PLATE_RGB * light["gain"], X.shape + (3,)).copy()
    rgb *= (1.0 + 0.05 * light["brush"])[..., None]
    for seat in range(6):
        cx, cy = seat_center(seat)
        ys, xs = canvas.box(cx, cy, sb._part_radius(seat_type(seat)) + POCKET_MARGIN + 2)
        x, y = X[ys, xs], Y[ys, xs]
        sdf = _pocket_sdf(seat, x, y, k)
        inside = sb._coverage(sdf)[..., None]
        floor = FLOOR_RGB * light["gain"] * (1.0 + 0.03 * light["brush"][ys, xs])[..., None]
        rgb[ys, xs] = rgb[ys, xs] * (1 - inside) + floor * inside
        # the wall: a band just inside the edge, shaded on the side facing away from the light
        wall = np.clip(1.0 - np.abs(sdf + 0.8 * k) / (0.9 * k), 0, 1)
        side = np.sign((x - cx * k) * sb.LIGHT[0] + (y - cy * k) * sb.LIGHT[1])  # +: wall faces the light
        rgb[ys, xs] *= (1.0 + 0.25 * wall * side)[..., None]
    return rgb


def _draw(parts: list[sb.Part], light: dict[str, Any], canvas: sb.Canvas) -> np.ndarray:
    """Render the plate and the parts as an (S, S, 3) float image in [0, 1]."""
    import PIL.Image

    k, X, Y = canvas.k, canvas.X, canvas.Y
    rgb = _plate(light, canvas)
    sx, sy = 0.5 * sb.SHADOW_SHIFT[0] * k, 0.5 * sb.SHADOW_SHIFT[1] * k  # parts sit low: short shadows
    for part in parts:
        ys, xs = canvas.box(part.cx + sb.SHADOW_SHIFT[0], part.cy + sb.SHADOW_SHIFT[1], sb._part_radius(part.ptype) + 2)
        sdf, _ = sb._part_field(part, X[ys, xs] - sx, Y[ys, xs] - sy, k, shade=False)
        rgb[ys, xs] *= 1 - 0.45 * np.clip(0.5 - sdf / (1.2 * k), 0, 1)[..., None]
    for part in parts:
        ys, xs = canvas.box(part.cx, part.cy, sb._part_radius(part.ptype))
        sdf, prgb = sb._part_field(part, X[ys, xs], Y[ys, xs], k)
        a = sb._coverage(sdf)[..., None]
        rgb[ys, xs] = rgb[ys, xs] * (1 - a) + prgb * a
    low = np.asarray(
        PIL.Image.fromarray(light["low"].astype(np.float32)).resize(
            (canvas.size, canvas.size), PIL.Image.Resampling.BILINEAR
        ),
        dtype=np.float64,
    )
    rgb *= (1.0 + 0.03 * low)[..., None]
    rgb += light["noise"] * 0.01
    return np.clip(rgb, 0.0, 1.0)


def _light(rng: np.random.Generator, size: int) -> dict[str, Any]:
    """Per-image light and surface: gain, slow shading, brushing streaks (noise smoothed along x), pixel noise."""
    streaks = rng.normal(size=(size, size))
    kernel = np.ones(9) / 9.0
    brush = np.apply_along_axis(lambda r: np.convolve(np.pad(r, 4, mode="wrap"), kernel, "valid"), 1, streaks)
    return {
        "gain": float(rng.uniform(0.94, 1.06)),
        "low": rng.normal(size=(4, 4)),
        "brush": brush * 2.0,
        "noise": rng.normal(size=(size, size, 1)),
    }


def render(kind: str, rng: np.random.Generator, canvas: sb.Canvas):
    """One image: ``kind`` "" (normal), a logical or a structural kind. Returns (uint8 image, channels, info)."""
    parts, channels, info = sb.scene_parts(kind, rng, canvas, _normal_parts, _logical, _structural, LOGICAL_KINDS)
    return sb._to_uint8(_draw(parts, _light(rng, canvas.size), canvas)), channels, info


def part_areas(image_size: int) -> dict[str, int]:
    """Area in pixels of each part type in its pocket's pose (the missing-part saturation thresholds)."""
    canvas = sb.Canvas(image_size)
    areas = {}
    for seat in range(6):
        ptype = seat_type(seat)
        cx, cy = seat_center(seat)
        part = sb.Part(ptype, cx, cy, 90.0 if ptype.endswith("screw") else 0.0, seat)
        ys, xs = canvas.box(cx, cy, sb._part_radius(ptype))
        sdf, _ = sb._part_field(part, canvas.X[ys, xs], canvas.Y[ys, xs], canvas.k, shade=False)
        areas[ptype] = int(round(float(sb._coverage(sdf).sum())))
    return areas


def defects_config(image_size: int) -> list[dict[str, Any]]:
    """The ``defects_config.json`` entries for ``image_size``."""
    areas = part_areas(image_size)
    out = []
    for name, (value, relative, threshold) in DEFECTS.items():
        if threshold is None:
            threshold = float(areas[name[len("missing_") :]])
        out.append(
            {
                "defect_name": name,
                "pixel_value": value,
                "saturation_threshold": threshold,
                "relative_saturation": relative,
            }
        )
    return out


def describe(seed: int, image_size: int) -> str:
    return (
        f"Synthetic MVTec LOCO-style {CATEGORY} scene generated by pradot.data.synthetic_fixture "
        f"(seed={seed}, image_size={image_size}): parts in machined pockets, near-rigid layout.\n"
    )
