"""Settings and records of a PRADOT model: :class:`PRADOTConfig` (hyper-parameters, checked once here),
:class:`EpochStats` (one training epoch) and :class:`FeatureShape` (what a bank needs of a backbone stage).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

from .aggregation import check_aggregation
from .cost import check_alpha
from .errors import InputError
from .maps import check_sigma

__all__ = ["PRADOTConfig", "EpochStats", "FeatureShape"]


@dataclass
class PRADOTConfig:
    """Hyper-parameters of one PRADOT model. The defaults equal the paper's (and ``conf/``'s).

    Raises:
        InputError: a value out of its range (the message names it and the paper's requirement).
    """

    backbone: str = "resnet50"
    stages: tuple[int, ...] = (2, 3)
    image_size: int = 224
    alpha: float = 0.3
    n: float = 16
    eta: float = 0.95
    epsilon: float = 0.01
    sinkhorn_iters: int = 100
    batch_size: int = 64
    epochs: int = 50
    seed: int = 0
    learn_coordinates: bool = False
    warm_start: bool = False  # reuse Sinkhorn potentials across batches (the paper: no)
    # feature options (pradot.aggregation) and post-processing (pradot.postprocess); the defaults are the paper's
    aggregation: int = 1  # k x k local averaging of the backbone features before the banks (1: none)
    concat_stages: bool = False  # one bank of the stages concatenated at the finest grid (False: a bank per stage)
    smoothing_sigma: float = 0.0  # Gaussian smoothing of the map, in pixels at image_size (0: none)

    def __post_init__(self):
        self.stages = tuple(int(s) for s in self.stages)
        check_alpha(self.alpha)
        self.aggregation = check_aggregation(self.aggregation)
        self.concat_stages = bool(self.concat_stages)
        self.smoothing_sigma = check_sigma(self.smoothing_sigma)
        if isinstance(self.n, float) and self.n.is_integer():
            self.n = int(self.n)
        if not (self.n > 0):
            raise InputError(f"n (prototypes per cell) must be > 0, got {self.n!r}")
        if not (math.isfinite(float(self.epsilon)) and float(self.epsilon) > 0):
            raise InputError(f"epsilon must be > 0, got {self.epsilon!r}")
        if not (0.0 <= float(self.eta) <= 1.0):
            raise InputError(f"eta must lie in [0, 1], got {self.eta!r}")
        if int(self.batch_size) < 1 or int(self.epochs) < 0 or int(self.image_size) < 16:
            raise InputError(
                f"batch_size >= 1, epochs >= 0 and image_size >= 16 are required, got "
                f"{self.batch_size}, {self.epochs}, {self.image_size}"
            )
        if self.n >= 1 and int(self.batch_size) < self.n:
            raise InputError(
                f"batch size {self.batch_size} < n={self.n}: with fewer embeddings than prototypes per cell "
                f"the transport plan splits every embedding over several prototypes and the barycentres "
                f"collapse (the paper requires B >= n; it uses B = 4n). Raise batch_size (batch_ratio) or "
                f"lower n."
            )
        if self.n >= 1 and int(self.batch_size) < 2 * self.n:
            warnings.warn(
                f"batch size {self.batch_size} < 2 n = {2 * self.n}: the paper's Fig. 3a shows a "
                f"clear loss of accuracy below a batch/n ratio of 2",
                stacklevel=3,
            )


@dataclass
class EpochStats:
    """One training epoch (Algorithm 1): per bank stage the mean transport cost and prototype change, and
    the time spent (seconds) in all, in the backbone and in the transport."""

    epoch: int
    ot_loss: dict[int, float]  # stage -> mean <M, T> over the epoch's batches
    change: dict[int, float]  # stage -> mean relative prototype change per batch
    seconds: float
    feature_seconds: float
    ot_seconds: float


@dataclass(frozen=True)
class FeatureShape:
    """What a bank needs of a backbone stage: the feature dimension D and the grid (H, W) at the model's
    input size."""

    dim: int
    grid: tuple[int, int]

    @classmethod
    def of(cls, features) -> FeatureShape:
        """From a (N, D, H, W) array or tensor of features."""
        _, d, h, w = features.shape
        return cls(int(d), (int(h), int(w)))
