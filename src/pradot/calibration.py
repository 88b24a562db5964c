"""The decision threshold of a model, calibrated on normal images it was not trained on.

```python
from pradot.calibration import Calibration
cal = Calibration.calibrate(validation_scores, quantile=0.99)   # image scores of held-out normals
cal.threshold, cal.normalise(raw_score)                          # raw threshold; score in [0, 1], 0.5 at it
```

Sample size. The threshold is the empirical ``quantile`` q of n normal scores (NumPy's linear
interpolation between order statistics). It estimates the score that a fraction 1 - q of new normals
exceed only when the sample is expected to hold at least one normal from that tail: n (1 - q) >= 1, i.e.
``n >= min_normals(q) = ceil(1 / (1 - q))`` (q = 0.99 needs 100 normals, 0.95 needs 20, 0.9 needs 10).
With fewer, the tail is usually not in the sample at all: the threshold is (an interpolation toward) the
largest of the n scores, and even the largest is exceeded by a new normal with probability 1 / (n + 1)
(exchangeable scores) >= 1 - q -- 0.5 for one image -- so the false-positive rate cannot reach 1 - q
(and with very few images the normalised score saturates at 0 or 1). ``calibrate`` then logs a warning that
says how many normals the quantile needs; ``n_images`` records the sample size in every saved calibration (and so in the
logged model's calibration and metadata). q = 1 (the maximum) is exempt from the rule.

Pixel threshold and operating points. Given the normals' anomaly maps (``pixel_maps``), ``calibrate`` also
sets ``pixel_threshold``: the ``pixel_quantile`` (default: ``quantile``) of all their pixel values pooled, so
that a fraction 1 - q of normal pixels lie above it; masks are ``map > pixel_threshold``. Without maps (a
sweep's checkpoints, files of earlier releases) it is None and masks use the image threshold (the pixels at
the level that makes an image anomalous, the image score being the map's maximum).

The normals' image-score and pixel-score quantiles are kept in a table (``levels``, ``image_quantiles``,
``pixel_quantiles``) so that another operating point can be chosen without the normals
(:meth:`Calibration.operating_point`). Levels (:data:`QUANTILE_LEVELS`): false-positive rates 1 - q from 50 %
down to 0.01 % in steps of about 1-2-2.5-5 per decade, and the maximum (q = 1); plus the calibrated
quantile(s) themselves, so that asking for them gives the calibrated thresholds exactly. A decision
threshold below the normals' median would flag most normal parts, so the table starts at q = 0.5; between
levels the value is interpolated linearly in q. With n normal images the image levels above 1 - 1/n are
interpolations toward the largest score (the sample-size rule above).

```python
cal = Calibration.calibrate(val_scores, quantile=0.99, pixel_maps=val_maps)   # val_maps: (N, S, S)
op = cal.operating_point(quantile=0.995)          # or threshold=<raw score>, or neither: the calibrated one
op.threshold, op.mask_threshold                    # image decision: raw > threshold; mask: map > mask_threshold
```
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

__all__ = ["Calibration", "OperatingPoint", "QUANTILE_LEVELS", "min_normals", "quantile_table"]

log = logging.getLogger(__name__)

#: quantile levels of the stored table (module docstring): 1 - q = 50 % ... 0.01 %, and the maximum
QUANTILE_LEVELS: tuple[float, ...] = (
    0.5,
    0.6,
    0.7,
    0.75,
    0.8,
    0.85,
    0.9,
    0.925,
    0.95,
    0.96,
    0.97,
    0.975,
    0.98,
    0.985,
    0.99,
    0.9925,
    0.995,
    0.9975,
    0.998,
    0.999,
    0.9995,
    0.9999,
    1.0,
)


def min_normals(quantile: float) -> int:
    """Normal images the ``quantile`` threshold needs: ``ceil(1 / (1 - q))`` so that n (1 - q) >= 1 (module
    docstring); 1 for q = 1 (the maximum). E.g. 0.99 -> 100, 0.95 -> 20, 0.5 -> 2."""
    q = float(quantile)
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile must lie in [0, 1], got {quantile}")
    if q >= 1.0:
        return 1
    return max(1, math.ceil(1.0 / (1.0 - q) - 1e-9))  # 1e-9: 1 / (1 - 0.99) is 100.00000000000009


def quantile_table(values, levels) -> tuple[float, ...]:
    """``np.quantile`` of ``values`` (any shape, pooled) at each level (linear interpolation between order
    statistics, NumPy's default), as floats."""
    v = np.asarray(values).ravel()
    if v.size == 0:
        raise ValueError("a quantile table needs at least one value")
    if not np.all(np.isfinite(v)):
        raise ValueError(f"scores contain {int((~np.isfinite(v)).sum())} non-finite values")
    return tuple(float(x) for x in np.quantile(v, list(levels)))


@dataclass(frozen=True)
class OperatingPoint:
    """The thresholds one request uses: ``threshold`` (image: ``raw_score > threshold``), ``mask_threshold``
    (pixels: ``map > mask_threshold``) and the ``quantile`` they were read at (None for a raw threshold)."""

    threshold: float
    mask_threshold: float
    quantile: float | None
    source: str  # "calibrated" | "quantile" | "threshold"


def _number(name: str, value) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a number, got {value!r} ({type(value).__name__})")
    x = float(value)
    if not math.isfinite(x):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return x


@dataclass
class Calibration:
    """Maps raw image scores to [0, 1]: 0.5 at ``threshold`` (a quantile of normal validation scores),
    slope ``1 / (high - low)`` (the normal scores' range), clipped. Optionally a ``pixel_threshold`` and the
    quantile table of the normals' image and pixel scores (module docstring).

    Raises:
        ValueError: non-finite values, ``high < low``, or a quantile table that does not fit its levels.
    """

    threshold: float
    low: float
    high: float
    quantile: float
    n_images: int
    pixel_threshold: float | None = None
    pixel_quantile: float | None = None
    levels: tuple[float, ...] = field(default=())
    image_quantiles: tuple[float, ...] = field(default=())
    pixel_quantiles: tuple[float, ...] = field(default=())

    def __post_init__(self):
        self.threshold, self.low, self.high = float(self.threshold), float(self.low), float(self.high)
        self.quantile, self.n_images = float(self.quantile), int(self.n_images)
        if not all(math.isfinite(v) for v in (self.threshold, self.low, self.high)):
            raise ValueError(f"calibration values must be finite, got {self}")
        if self.high < self.low:
            raise ValueError(f"calibration high {self.high} < low {self.low}")
        if self.pixel_threshold is not None:
            self.pixel_threshold = _number("pixel_threshold", self.pixel_threshold)
        if self.pixel_quantile is not None:
            self.pixel_quantile = float(self.pixel_quantile)
        self.levels = tuple(float(x) for x in self.levels)
        self.image_quantiles = tuple(float(x) for x in self.image_quantiles)
        self.pixel_quantiles = tuple(float(x) for x in self.pixel_quantiles)
        for name in ("image_quantiles", "pixel_quantiles"):
            table = getattr(self, name)
            if table and len(table) != len(self.levels):
                raise ValueError(f"calibration {name} has {len(table)} values for {len(self.levels)} levels")
            if table and (not all(math.isfinite(x) for x in table) or np.any(np.diff(table) < 0)):
                raise ValueError(f"calibration {name} must be finite and non-decreasing, got {table}")
        if self.levels and np.any(np.diff(self.levels) <= 0):
            raise ValueError(f"calibration levels must be increasing, got {self.levels}")

    @classmethod
    def calibrate(
        cls, validation_scores, quantile: float = 0.99, pixel_maps=None, pixel_quantile: float | None = None
    ) -> Calibration:
        """From the image scores of normal validation images (not seen in training) and, optionally, their
        anomaly maps ``pixel_maps`` ((N, S, S) array or tensor, or a list of 2-D maps): the pixel threshold at
        ``pixel_quantile`` (default ``quantile``) of their pooled pixels, and the quantile table.

        Raises:
            ValueError: no score, non-finite scores or maps, a quantile outside [0, 1].
        """
        if isinstance(validation_scores, torch.Tensor):
            validation_scores = validation_scores.detach().cpu().numpy()
        s = np.asarray(validation_scores, dtype=np.float64).ravel()
        if s.size == 0:
            raise ValueError("calibration needs at least one validation score")
        if not np.all(np.isfinite(s)):
            raise ValueError(f"validation scores contain {int((~np.isfinite(s)).sum())} non-finite values")
        for name, q in (("quantile", quantile), ("pixel_quantile", pixel_quantile)):
            if q is not None and not 0.0 <= float(q) <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {q}")
        needed = min_normals(quantile)
        if s.size < needed:
            log.warning(
                "calibrating the %g quantile on %d normal image(s): it needs at least %d (n x (1 - q) >= 1); "
                "with fewer the threshold is about the largest of these scores and its false-positive rate "
                "on new normals about 1/(n+1) = %.2f rather than %.2g. Give more validation normals "
                "(data.validation_fraction, a validation/good folder) or a lower calibration.quantile "
                "(at most %.3g for %d images).",
                quantile,
                s.size,
                needed,
                1.0 / (s.size + 1),
                1.0 - float(quantile),
                1.0 - 1.0 / s.size if s.size > 1 else 0.0,
                s.size,
            )
        q_pix = float(quantile if pixel_quantile is None else pixel_quantile)
        levels = tuple(sorted(set(QUANTILE_LEVELS) | {float(quantile), q_pix}))
        pixel = {}
        if pixel_maps is not None:
            maps = _pooled(pixel_maps)
            table = quantile_table(maps, levels)
            pixel = {"pixel_threshold": table[levels.index(q_pix)], "pixel_quantile": q_pix, "pixel_quantiles": table}
        return cls(
            threshold=float(np.quantile(s, quantile)),
            low=float(s.min()),
            high=float(s.max()),
            quantile=float(quantile),
            n_images=int(s.size),
            levels=levels,
            image_quantiles=quantile_table(s, levels),
            **pixel,
        )

    @property
    def sufficient(self) -> bool:
        """Whether ``n_images`` meets :func:`min_normals` for ``quantile``."""
        return self.n_images >= min_normals(self.quantile)

    @property
    def span(self) -> float:
        """``high - low``, or a tiny positive number when all validation scores were equal."""
        return max(self.high - self.low, 1e-9 * max(1.0, abs(self.threshold)))

    @property
    def mask_threshold(self) -> float:
        """The calibrated pixel threshold, or the image threshold when there is none (module docstring)."""
        return self.pixel_threshold if self.pixel_threshold is not None else self.threshold

    def quantile_range(self) -> tuple[float, float]:
        """The quantiles :meth:`operating_point` accepts: the table's first and last level.

        Raises:
            ValueError: no table (a calibration of an earlier release).
        """
        if not self.image_quantiles:
            raise ValueError(
                "this model's calibration has no quantile table (it was calibrated by an earlier "
                "release); choose the operating point with a raw threshold instead, or re-calibrate"
            )
        return self.levels[0], self.levels[-1]

    def _at(self, table: tuple[float, ...], q: float) -> float:
        return float(np.interp(q, self.levels, table))

    def operating_point(self, quantile=None, threshold=None) -> OperatingPoint:
        """The thresholds of a request: neither given, the calibrated ones (``threshold``, ``mask_threshold``);
        ``quantile`` q, the image and pixel tables at q (the pixel table only when the calibration has one,
        else the image value); ``threshold`` t (a raw score), t for both (the image score is the map's maximum:
        the mask marks the pixels at or above the level that makes the image anomalous; at the returned size a
        peak narrower than a returned pixel may be smoothed below it).

        Raises:
            ValueError: both given, not a finite number, a quantile outside the table's levels, or no table.
        """
        if quantile is not None and threshold is not None:
            raise ValueError(
                f"give quantile or threshold, not both (got quantile={quantile!r}, threshold={threshold!r})"
            )
        if threshold is not None:
            t = _number("threshold", threshold)
            return OperatingPoint(t, t, None, "threshold")
        if quantile is None:
            return OperatingPoint(self.threshold, self.mask_threshold, self.quantile, "calibrated")
        q = _number("quantile", quantile)
        lo, hi = self.quantile_range()
        if not lo <= q <= hi:
            raise ValueError(
                f"quantile must lie in [{lo:g}, {hi:g}] (the levels of the stored quantile table of "
                f"the normals' scores; e.g. 0.995 flags about 0.5 % of normal parts), got {quantile!r}"
            )
        t = self._at(self.image_quantiles, q)
        return OperatingPoint(t, self._at(self.pixel_quantiles, q) if self.pixel_quantiles else t, q, "quantile")

    def normalise(self, raw, threshold: float | None = None):
        """Raw score(s) -> [0, 1]; 0.5 at ``threshold`` (default: the calibrated one), slope 1 / span.
        A float for a scalar, else an array."""
        t = self.threshold if threshold is None else float(threshold)
        out = np.clip(0.5 + (np.asarray(raw, dtype=np.float64) - t) / self.span, 0.0, 1.0)
        return float(out) if out.ndim == 0 else out

    def raw_range(self, threshold: float | None = None) -> tuple[float, float]:
        """The raw values that normalise to 0 and 1 (the heat map's colour scale), around ``threshold``
        (default: the calibrated one)."""
        t = self.threshold if threshold is None else float(threshold)
        return t - 0.5 * self.span, t + 0.5 * self.span

    #: the keys every calibration.json has (files of earlier releases have only these)
    REQUIRED = ("threshold", "low", "high", "quantile", "n_images")
    OPTIONAL = ("pixel_threshold", "pixel_quantile", "levels", "image_quantiles", "pixel_quantiles")

    def to_dict(self) -> dict:
        d = asdict(self)
        for k in ("levels", "image_quantiles", "pixel_quantiles"):
            d[k] = list(d[k])
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Calibration:
        """Read :meth:`to_dict`'s output, also the five-key dicts of earlier releases (no pixel threshold, no
        table). Raises ValueError when a required key is missing."""
        missing = [k for k in cls.REQUIRED if k not in d]
        if missing:
            raise ValueError(f"calibration is missing {missing} (have {sorted(d)})")
        return cls(
            **{k: d[k] for k in cls.REQUIRED},
            **{k: (tuple(d[k]) if isinstance(d[k], list) else d[k]) for k in cls.OPTIONAL if d.get(k) is not None},
        )

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> Calibration:
        from .data.text import read_json  # a JSON saved by any editor (BOM, UTF-16, CRLF)

        return cls.from_dict(read_json(path))


def _pooled(maps) -> np.ndarray:
    """Every pixel of ``maps`` as one float32 vector."""
    if isinstance(maps, torch.Tensor):
        return maps.detach().float().cpu().numpy().ravel()
    if isinstance(maps, np.ndarray):
        return maps.astype(np.float32, copy=False).ravel()
    parts = [
        np.asarray(m.detach().cpu().numpy() if isinstance(m, torch.Tensor) else m, np.float32).ravel() for m in maps
    ]
    if not parts:
        raise ValueError("pixel calibration needs at least one map")
    return np.concatenate(parts)
