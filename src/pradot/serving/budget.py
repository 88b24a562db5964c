"""Request budgets: their defaults, the upper bounds of a returned map's and mask's size, how a request is
charged as its rows' headers are read, and the budgets a batch of maps needs."""

from __future__ import annotations

from typing import Protocol

from .encode import map_size
from .errors import RequestTooLarge

__all__ = [
    "BUDGET_NAMES",
    "DEFAULT_MAX_IN_FLIGHT",
    "DEFAULT_MAX_MAP_SIDE",
    "DEFAULT_MAX_REQUEST_PIXELS",
    "DEFAULT_MAX_RESPONSE_BYTES",
    "DEFAULT_WAIT_S",
    "batch_budgets",
    "map_bytes",
    "mask_bytes",
]

#: decoded pixels over all rows of one request (four images at the per-image limit)
DEFAULT_MAX_REQUEST_PIXELS = 100_000_000
#: the longer side of a returned map (larger inputs get their map scaled down)
DEFAULT_MAX_MAP_SIDE = 1024
#: bytes of returned maps in one answer (e.g. five 1024 x 1024 ``.npy`` maps, or ten PNG ones)
DEFAULT_MAX_RESPONSE_BYTES = 32 * 1024 * 1024
#: requests decoded and scored at once per process, and how long a request waits for its turn (seconds)
DEFAULT_MAX_IN_FLIGHT = 1
DEFAULT_WAIT_S = 30.0
#: the budgets of a :class:`~pradot.serving.Scorer` (its constructor's keyword arguments)
BUDGET_NAMES = (
    "batch_size",
    "max_pixels",
    "max_rows",
    "max_request_pixels",
    "max_map_side",
    "max_response_bytes",
    "max_in_flight",
    "wait_s",
)


def map_bytes(h: int, w: int, map_format: str) -> int:
    """Upper bound of one returned map's base64 size: the ``.npy`` (float32 + header), or 3 bytes a pixel
    (an uncompressed RGB PNG) for a PNG map."""
    raw = h * w * 4 + 128 if map_format == "npy" else h * w * 3 + 1024
    return 4 * ((raw + 2) // 3)


def mask_bytes(h: int, w: int) -> int:
    """Upper bound of one returned mask's base64 size: an uncompressed 8-bit grayscale PNG."""
    return 4 * ((h * w + h + 1024 + 2) // 3)


class _Limits(Protocol):
    """The budgets a request is charged against (a :class:`~pradot.serving.Scorer` has them)."""

    max_request_pixels: int
    max_map_side: int
    max_response_bytes: int


class _Budget:
    """A request's budgets, charged as each row's header is read (before its pixels are decoded)."""

    def __init__(self, scorer: _Limits, map_format: str | None, masks: bool = False):
        self.scorer, self.map_format, self.masks = scorer, map_format, masks
        self.pixels = self.bytes = 0

    def charge(self, w: int, h: int) -> None:
        sc = self.scorer
        self.pixels += w * h
        if self.pixels > sc.max_request_pixels:
            raise RequestTooLarge(
                f"the request's images hold more than the {sc.max_request_pixels} decoded pixels "
                f"allowed per request (max_request_pixels; this row brings the total to "
                f"{self.pixels}); send fewer or smaller images per request"
            )
        if self.map_format is not None or self.masks:
            mh, mw = map_size(h, w, sc.max_map_side)
            self.bytes += map_bytes(mh, mw, self.map_format) if self.map_format is not None else 0
            self.bytes += mask_bytes(mh, mw) if self.masks else 0
            if self.bytes > sc.max_response_bytes:
                other = " or PNG maps (3 bytes a pixel, not 4)" if self.map_format == "npy" else ""
                raise RequestTooLarge(
                    f"the maps asked for would exceed the {sc.max_response_bytes} bytes of maps allowed per answer "
                    f"(max_response_bytes; {self.bytes} bytes with this row, map_format={self.map_format!r}, maps "
                    f"at most {sc.max_map_side} px a side); ask for the maps of fewer or smaller images per "
                    f"request{other}"
                )


def batch_budgets(budgets: dict, batch_size: int, max_map_side: int) -> dict:
    """Budgets that let one request of ``batch_size`` rows through with a ``.npy`` map and a mask each, maps at
    most ``max_map_side`` pixels a side (what ``pradot-predict`` sends): ``max_map_side`` set, and
    ``max_rows``, ``max_request_pixels`` (``batch_size`` images at ``max_pixels``) and ``max_response_bytes``
    raised to fit (never lowered); the other budgets as given.

    Args:
        budgets: a scorer's budgets (:attr:`Scorer.budgets`, keys :data:`BUDGET_NAMES`).
        batch_size: rows per request (>= 1); max_map_side: the longer side of a returned map (>= 1).
    Returns:
        a new dict with the same keys, for :meth:`Scorer.with_budgets`.
    Raises:
        ValueError: ``batch_size`` or ``max_map_side`` below 1.
    """
    bs, side = int(batch_size), int(max_map_side)
    if bs < 1 or side < 1:
        raise ValueError(f"batch_size and max_map_side must be >= 1, got {batch_size!r} and {max_map_side!r}")
    out = dict(budgets)
    out["max_map_side"] = side
    out["max_rows"] = max(int(budgets["max_rows"]), bs)
    out["max_request_pixels"] = max(int(budgets["max_request_pixels"]), bs * int(budgets["max_pixels"]))
    out["max_response_bytes"] = max(
        int(budgets["max_response_bytes"]), bs * (map_bytes(side, side, "npy") + mask_bytes(side, side))
    )
    return out
