"""Synthetic MVTec LOCO-style scene ``fastener_kit``: logical anomalies a memory bank of patches cannot see.

The scene: a plain foam board (it fills the image: no tray edge, no compartment walls, no seat marks) with
six fasteners at fixed seats, 2 rows x 3 columns, with a free band between the rows::

    nut          washer        short screw
    ................ free board ................
    washer       short screw   nut

Every part type sits at two seats, in both rows, and every seat's surroundings are plain board. So each
local patch of an anomalous image (a part on the board, or empty board) also occurs in normal images,
at another place: a memory bank of patches, which compares a patch with every normal patch wherever it
was, sees nothing wrong. Only *where* a patch is tells it apart, which is what PRADOT's spatial cost
(alpha > 0) measures.

Logical anomalies (every part looks normal):

============= ========== ===================================================================
kind           rule        what
============= ========== ===================================================================
missing_part   count       a seat is empty (5 parts)
extra_part     count       a seventh part lies in the free band
shifted_part   position    a part left its seat for the free band (its seat is empty)
swapped_parts  pairing     two parts of different types exchanged seats
============= ========== ===================================================================

Structural anomalies damage one part locally (the screw bag's: scratch, broken part, dent, colour
blotch), which a memory bank sees well.

Ground truth follows the screw bag's conventions (``pradot.data.synthetic``): a missing part's region is
where the part can lie, saturated at the part's area (absolute); a swapped pair is two channels (each
seat); the others saturate at their whole area (relative 1.0). Output, stamp and determinism are the
screw bag's: ``pradot.data.synthetic.generate(root, "fastener_kit", ...)`` writes the MVTec LOCO layout,
same parameters -> byte-identical PNGs.
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
    "seat_center",
    "seat_type",
    "render",
    "part_areas",
    "defects_config",
    "describe",
]

CATEGORY = "fastener_kit"
LOGICAL_KINDS: tuple[str, ...] = ("missing_part", "extra_part", "shifted_part", "swapped_parts")
STRUCTURAL_KINDS: tuple[str, ...] = sb.STRUCTURAL_KINDS

# defect_name -> (pixel_value, relative_saturation, relative threshold or None for "part area")
DEFECTS: dict[str, tuple[int, bool, float | None]] = {
    "missing_nut": (255, False, None),
    "missing_washer": (240, False, None),
    "missing_short_screw": (225, False, None),
    "extra_part": (210, True, 1.0),
    "shifted_part": (195, True, 1.0),
    "swapped_parts": (180, True, 1.0),
    "scratch": (150, True, 1.0),
    "broken_part": (135, True, 1.0),
    "dent": (120, True, 1.0),
    "colour_blotch": (105, True, 1.0),
}

# ---- scene geometry, in design pixels of a 128 px image --------------------------------------
SEAT_X = (24.0, 64.0, 104.0)
SEAT_Y = (30.0, 98.0)
LAYOUT: tuple[tuple[str, str, str], tuple[str, str, str]] = (
    ("nut", "washer", "short_screw"),
    ("washer", "short_screw", "nut"),
)
FREE_Y = 64.0  # the free band between the rows
FREE_X = (14.0, 34.0, 54.0, 74.0, 94.0, 114.0)  # where an extra or shifted part may lie in it
FREE_JITTER = 3.0
POS_JITTER = 2.5
SCREW_ANGLE_JITTER = 8.0
ENVELOPE_MARGIN = 3.0

BOARD_RGB = np.array([0.29, 0.32, 0.37])


def seat_center(seat: int) -> tuple[float, float]:
    row, col = divmod(seat, 3)
    return SEAT_X[col], SEAT_Y[row]


def seat_type(seat: int) -> str:
    row, col = divmod(seat, 3)
    return LAYOUT[row][col]


def _placed(ptype: str, cx: float, cy: float, seat: int, rng: np.random.Generator) -> sb.Part:
    """A part of ``ptype`` at (cx, cy) with the screw bag's jitter of position and rotation."""
    cx += rng.uniform(-POS_JITTER, POS_JITTER)
    cy += rng.uniform(-POS_JITTER, POS_JITTER)
    if ptype.endswith("screw"):
        angle = 90.0 + rng.uniform(-SCREW_ANGLE_JITTER, SCREW_ANGLE_JITTER)
    elif ptype == "nut":
        angle = rng.uniform(0.0, 60.0)
    else:
        angle = rng.uniform(0.0, 360.0)
    return sb.Part(ptype, cx, cy, angle, seat)


def _normal_parts(rng: np.random.Generator) -> list[sb.Part]:
    return [_placed(seat_type(s), *seat_center(s), s, rng) for s in range(6)]


def _envelope(ptype: str, seat: int, canvas: sb.Canvas) -> np.ndarray:
    """Where a part of ``ptype`` can lie at ``seat`` (nominal footprint grown by the jitter range)."""
    cx, cy = seat_center(seat)
    k = canvas.k
    if ptype in sb.SCREW_LENGTH:
        return sb._footprint(sb.Part(ptype, cx, cy, 90.0, seat), canvas, grow=ENVELOPE_MARGIN * k)
    radius = (sb.NUT_R if ptype == "nut" else sb.WASHER_R) + ENVELOPE_MARGIN
    return np.hypot(canvas.X - cx * k, canvas.Y - cy * k) < radius * k


def _free_spot(rng: np.random.Generator, ptype: str, seat: int = -1) -> sb.Part:
    x = FREE_X[int(rng.integers(0, len(FREE_X)))] + rng.uniform(-FREE_JITTER, FREE_JITTER)
    y = FREE_Y + rng.uniform(-FREE_JITTER, FREE_JITTER)
    return _placed(ptype, x, y, seat, rng)  # upright, as at a seat: only its place is wrong


def _logical(kind: str, rng: np.random.Generator, canvas: sb.Canvas):
    parts = _normal_parts(rng)
    if kind == "missing_part":
        seat = int(rng.integers(0, 6))
        ptype = parts[seat].ptype
        del parts[seat]
        return parts, [(f"missing_{ptype}", _envelope(ptype, seat, canvas))], {"part": ptype, "seat": seat}
    if kind == "extra_part":
        ptype = str(rng.choice(["nut", "washer", "short_screw"]))
        extra = _free_spot(rng, ptype)
        parts.append(extra)
        return parts, [("extra_part", sb._footprint(extra, canvas, grow=1.0))], {"part": ptype}
    if kind == "shifted_part":
        seat = int(rng.integers(0, 6))
        ptype = parts[seat].ptype
        moved = _free_spot(rng, ptype, seat)
        parts[seat] = moved
        mask = sb._footprint(moved, canvas, grow=1.0) | _envelope(ptype, seat, canvas)
        return parts, [("shifted_part", mask)], {"part": ptype, "seat": seat}
    if kind == "swapped_parts":
        pairs = [(a, b) for a in range(6) for b in range(a + 1, 6) if seat_type(a) != seat_type(b)]
        a, b = pairs[int(rng.integers(0, len(pairs)))]
        channels = []
        for seat, other in ((a, b), (b, a)):
            parts[seat] = _placed(seat_type(other), *seat_center(seat), seat, rng)
            mask = sb._footprint(parts[seat], canvas, grow=1.0) | _envelope(seat_type(seat), seat, canvas)
            channels.append(("swapped_parts", mask))
        return parts, channels, {"seats": [a, b], "parts": [seat_type(b), seat_type(a)]}
    raise InputError(f"unknown logical anomaly {kind!r}")


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


def _draw(parts: list[sb.Part], light: dict[str, Any], canvas: sb.Canvas) -> np.ndarray:
    """Render the parts on the board as an (S, S, 3) float image in [0, 1]."""
    import PIL.Image

    k, X, Y = canvas.k, canvas.X, canvas.Y
    rgb = np.broadcast_to(BOARD_RGB * light["table_gain"], X.shape + (3,)).copy()
    rgb *= (1.0 + 0.04 * light["texture"])[..., None]  # fine foam texture
    sx, sy = sb.SHADOW_SHIFT[0] * k, sb.SHADOW_SHIFT[1] * k
    for part in parts:
        ys, xs = canvas.box(part.cx + sb.SHADOW_SHIFT[0], part.cy + sb.SHADOW_SHIFT[1], sb._part_radius(part.ptype) + 2)
        sdf, _ = sb._part_field(part, X[ys, xs] - sx, Y[ys, xs] - sy, k, shade=False)
        rgb[ys, xs] *= 1 - 0.5 * np.clip(0.5 - sdf / (1.6 * k), 0, 1)[..., None]
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
    rgb *= (1.0 + 0.04 * low)[..., None]
    rgb += light["noise"] * 0.012
    return np.clip(rgb, 0.0, 1.0)


def _light(rng: np.random.Generator, size: int) -> dict[str, Any]:
    return {
        "table_gain": float(rng.uniform(0.92, 1.08)),
        "low": rng.normal(size=(5, 5)),
        "texture": rng.normal(size=(size, size)),
        "noise": rng.normal(size=(size, size, 1)),
    }


def render(kind: str, rng: np.random.Generator, canvas: sb.Canvas):
    """One image: ``kind`` "" (normal), a logical or a structural kind. Returns (uint8 image, channels, info)."""
    parts, channels, info = sb.scene_parts(kind, rng, canvas, _normal_parts, _logical, _structural, LOGICAL_KINDS)
    return sb._to_uint8(_draw(parts, _light(rng, canvas.size), canvas)), channels, info


def part_areas(image_size: int) -> dict[str, int]:
    """Area in pixels of each part type at its first seat, upright (the missing-part saturation thresholds)."""
    canvas = sb.Canvas(image_size)
    areas = {}
    for seat in (0, 1, 2):
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
        f"Synthetic MVTec LOCO-style {CATEGORY} scene generated by pradot.data.synthetic_kit "
        f"(seed={seed}, image_size={image_size}).\n"
    )
