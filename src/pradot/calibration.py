"""The decision threshold of a model, calibrated on normal images it was not trained on.

```python
from pradot.calibration import Calibration
cal = Calibration.calibrate(validation_scores, quantile=0.99)   # image scores of held-out normals
cal.threshold, cal.normalise(raw_score)                          # raw threshold; score in [0, 1], 0.5 at it
```
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = ["Calibration"]


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
        return cls(threshold=float(np.quantile(s, quantile)), low=float(s.min()), high=float(s.max()),
                   quantile=float(quantile), n_images=int(s.size))

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
        return cls.from_dict(json.loads(Path(path).read_text()))
