"""The one rule for what a numeric setting may be: :func:`number` checks a value against its range and raises
:class:`SettingError`, which names the setting, the value given and the valid range with the reason for it.

The library's settings classes (:class:`pradot.model_config.PRADOTConfig`, ...) check their own fields with
it, once; the orchestration (``pipelines.checks``) catches :class:`SettingError`, adds the configuration key
and how to change it (the override and the MLproject parameter) and checks its own keys with the same rule,
so every range error reads the same: ``alpha=2 is out of range: it must be a number in [0, 1] (...)``.
"""

from __future__ import annotations

import math
from typing import Any

from .errors import InputError

__all__ = ["SettingError", "number", "range_text", "IMAGE_SIZE_RANGE", "WHY_SIZE", "MAX_N"]

#: input side in pixels: below 16 the deepest stages have no feature cell left (stride 32); above 4096 one
#: image's stage-2 features alone take 0.5 GB (ResNet-50: 512 channels at stride 8) and training cannot fit
#: a batch in memory. The paper works at 256-512 px.
IMAGE_SIZE_RANGE = (16, 4096)
WHY_SIZE = "pixels a side; the deepest stages need >= 16, and above 4096 one image's features alone take gigabytes"
#: prototypes per feature cell: a batch needs at least n images (B >= n, the paper's B = 4n) and no dataset
#: in the field has more than a few thousand training images per category; the paper uses 16.
MAX_N = 1024


class SettingError(InputError):
    """A setting's value is not allowed. ``setting`` is its name in the settings class (``alpha``), ``value``
    the value given, ``reason`` what is wrong with it (``is out of range: it must be a number in [0, 1] (...)``);
    the message is ``f"{setting}={value!r} {reason}"``, one line."""

    def __init__(self, setting: str, value: Any, reason: str):
        self.setting, self.value, self.reason = setting, value, reason
        super().__init__(f"{setting}={value!r} {reason}")


def range_text(lo: float | None, hi: float | None, lo_open: bool = False, hi_open: bool = False) -> str:
    """``"in [0, 1]"``, ``"in (0, 1024]"``, ``">= 1"``, ``"> 0"``, ``"<= 5"`` (empty without bounds)."""
    if lo is not None and hi is not None:
        return f"in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
    if lo is not None:
        return f"{'>' if lo_open else '>='} {lo}"
    if hi is not None:
        return f"{'<' if hi_open else '<='} {hi}"
    return ""


def number(
    setting: str,
    value: Any,
    *,
    integer: bool = False,
    lo: float | None = None,
    hi: float | None = None,
    lo_open: bool = False,
    hi_open: bool = False,
    why: str = "",
) -> int | float:
    """``value`` as an int (``integer``) or a finite float within the bounds.

    Raises:
        SettingError: not a number (not a whole number with ``integer``; booleans are not numbers), not
            finite, or outside the bounds; the message names ``setting``, the value, the range and ``why``.
    """
    what = "an integer" if integer else "a number"
    valid = range_text(lo, hi, lo_open, hi_open)
    must = f"it must be {what}{' ' + valid if valid else ''}{f' ({why})' if why else ''}"
    try:
        if isinstance(value, bool):
            raise ValueError
        x = float(value)
        if integer and not (math.isfinite(x) and x.is_integer()):
            raise ValueError
    except (TypeError, ValueError):
        raise SettingError(setting, value, f"is not {what}; {must}") from None
    ok = (
        math.isfinite(x)
        and (lo is None or (x > lo if lo_open else x >= lo))
        and (hi is None or (x < hi if hi_open else x <= hi))
    )
    if not ok:
        raise SettingError(setting, value, f"is out of range: {must}")
    return int(x) if integer else x
