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
(and with very few images the normalised score saturates at 0 or 1). ``calibrate`` then logs a warning that says how many normals
the quantile needs; ``n_images`` records the sample size in every saved calibration (and so in the
logged model's calibration and metadata). q = 1 (the maximum) is exempt from the rule.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = ["Calibration", "min_normals"]

log = logging.getLogger(__name__)


def min_normals(quantile: float) -> int:
    """Normal images the ``quantile`` threshold needs: ``ceil(1 / (1 - q))`` so that n (1 - q) >= 1 (module
    docstring); 1 for q = 1 (the maximum). E.g. 0.99 -> 100, 0.95 -> 20, 0.5 -> 2."""
    q = float(quantile)
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile must lie in [0, 1], got {quantile}")
    if q >= 1.0:
        return 1
    return max(1, math.ceil(1.0 / (1.0 - q) - 1e-9))  # 1e-9: 1 / (1 - 0.99) is 100.00000000000009


@dataclass
class Calibration:
    """Maps raw image scores to [0, 1]: 0.5 at ``threshold`` (a quantile of normal validation scores),
    slope ``1 / (high - low)`` (the normal scores' range), clipped."""

    threshold: float
    low: float
    high: float
    quantile: float
    n_images: int

    def __post_init__(self):
        self.threshold, self.low, self.high = float(self.threshold), float(self.low), float(self.high)
        self.quantile, self.n_images = float(self.quantile), int(self.n_images)
        if not all(math.isfinite(v) for v in (self.threshold, self.low, self.high)):
            raise ValueError(f"calibration values must be finite, got {self}")
        if self.high < self.low:
            raise ValueError(f"calibration high {self.high} < low {self.low}")

    @classmethod
    def calibrate(cls, validation_scores, quantile: float = 0.99) -> "Calibration":
        """From the image scores of normal validation images (not seen in training)."""
        if isinstance(validation_scores, torch.Tensor):
            validation_scores = validation_scores.detach().cpu().numpy()
        s = np.asarray(validation_scores, dtype=np.float64).ravel()
        if s.size == 0:
            raise ValueError("calibration needs at least one validation score")
        if not np.all(np.isfinite(s)):
            raise ValueError(f"validation scores contain {int((~np.isfinite(s)).sum())} non-finite values")
        if not 0.0 <= float(quantile) <= 1.0:
            raise ValueError(f"quantile must lie in [0, 1], got {quantile}")
        needed = min_normals(quantile)
        if s.size < needed:
            log.warning("calibrating the %g quantile on %d normal image(s): it needs at least %d (n x (1 - q) >= 1); "
                        "with fewer the threshold is about the largest of these scores and its false-positive rate "
                        "on new normals about 1/(n+1) = %.2f rather than %.2g. Give more validation normals "
                        "(data.validation_fraction, a validation/good folder) or a lower calibration.quantile "
                        "(at most %.3g for %d images).", quantile, s.size, needed, 1.0 / (s.size + 1),
                        1.0 - float(quantile), 1.0 - 1.0 / s.size if s.size > 1 else 0.0, s.size)
        return cls(threshold=float(np.quantile(s, quantile)), low=float(s.min()), high=float(s.max()),
                   quantile=float(quantile), n_images=int(s.size))

    @property
    def sufficient(self) -> bool:
        """Whether ``n_images`` meets :func:`min_normals` for ``quantile``."""
        return self.n_images >= min_normals(self.quantile)

    @property
    def span(self) -> float:
        """``high - low``, or a tiny positive number when all validation scores were equal."""
        return max(self.high - self.low, 1e-9 * max(1.0, abs(self.threshold)))

    def normalise(self, raw):
        """Raw score(s) -> [0, 1]; 0.5 at the threshold. A float for a scalar, else an array."""
        out = np.clip(0.5 + (np.asarray(raw, dtype=np.float64) - self.threshold) / self.span, 0.0, 1.0)
        return float(out) if out.ndim == 0 else out

    def raw_range(self) -> tuple[float, float]:
        """The raw values that normalise to 0 and 1 (the heat map's colour scale)."""
        return self.threshold - 0.5 * self.span, self.threshold + 0.5 * self.span

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Calibration":
        missing = [k for k in ("threshold", "low", "high", "quantile", "n_images") if k not in d]
        if missing:
            raise ValueError(f"calibration is missing {missing} (have {sorted(d)})")
        return cls(**{k: d[k] for k in ("threshold", "low", "high", "quantile", "n_images")})

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Calibration":
        from .data.text import read_json  # a JSON saved by any editor (BOM, UTF-16, CRLF)

        return cls.from_dict(read_json(path))
