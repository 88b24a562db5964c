"""Settings and records of a PRADOT model: :class:`PRADOTConfig` (hyper-parameters, checked once here),
:class:`EpochStats` (one training epoch) and :class:`FeatureShape` (what a bank needs of a backbone stage).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

from .aggregation import check_aggregation
from .errors import InputError
from .maps import check_sigma
from .ranges import IMAGE_SIZE_RANGE, MAX_N, WHY_SIZE, SettingError, number

__all__ = ["PRADOTConfig", "EpochStats", "FeatureShape", "FEATURE_METRICS"]

#: the feature terms of Eq. 3 that scoring can use (``PRADOTConfig.feature_metric``)
FEATURE_METRICS = ("cosine", "mahalanobis")


@dataclass
class PRADOTConfig:
    """Hyper-parameters of one PRADOT model. The defaults equal the paper's (and ``conf/``'s).

    Raises:
        pradot.ranges.SettingError: a value out of its range (an :class:`InputError`; the message names the
            setting, the value, the range and the paper's requirement). These checks are the only range checks
            of the settings: the banks, the cost functions and the pipelines rely on them.
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
    # the feature term of Eq. 3 in scoring: "cosine" (the paper) or "mahalanobis" (each cell's precision of the
    # training residuals, PaDiM Eq. 2; pradot.local_covariance), fitted after the OT epochs
    feature_metric: str = "cosine"

    def __post_init__(self):
        # the one range check of these settings (pipelines add the configuration key and the override to the
        # SettingError); convert first so a saved or composed value of another numeric type reads the same
        self.stages = tuple(int(s) for s in self.stages)
        self.image_size = int(number("image_size", self.image_size, integer=True, lo=IMAGE_SIZE_RANGE[0], why=WHY_SIZE))
        self.alpha = number("alpha", self.alpha, lo=0, hi=1, why="0 = global prototypes, > 0 = local; Eq. 1/3")
        self.n = number(
            "n",
            self.n,
            lo=0,
            lo_open=True,
            hi=MAX_N,
            why="prototypes per feature cell (n < 1: one prototype per 1/n x 1/n cells); a batch needs >= n images",
        )
        if self.n >= 1:
            if not float(self.n).is_integer():
                raise SettingError(
                    "n", self.n, "is not allowed: n >= 1 must be an integer number of prototypes per cell"
                )
            self.n = int(self.n)
        self.eta = number("eta", self.eta, lo=0, hi=1, why="EMA momentum of the prototypes, Eq. 5")
        self.epsilon = number("epsilon", self.epsilon, lo=0, lo_open=True, why="entropic regularisation, Eq. 2")
        self.sinkhorn_iters = int(number("sinkhorn_iters", self.sinkhorn_iters, integer=True, lo=1))
        self.batch_size = int(number("batch_size", self.batch_size, integer=True, lo=1))
        self.epochs = int(number("epochs", self.epochs, integer=True, lo=0, why="passes over the training images"))
        self.seed = int(number("seed", self.seed, integer=True))
        self.aggregation = check_aggregation(self.aggregation)
        self.concat_stages = bool(self.concat_stages)
        self.smoothing_sigma = check_sigma(self.smoothing_sigma)
        self._check_feature_metric()
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

    def _check_feature_metric(self) -> None:
        if self.feature_metric not in FEATURE_METRICS:
            raise SettingError(
                "feature_metric",
                self.feature_metric,
                f"is not allowed: it must be one of {list(FEATURE_METRICS)} (the feature term of Eq. 3 in scoring: "
                f"cosine = the paper, mahalanobis = each cell's precision of the training residuals)",
            )
        if self.feature_metric == "mahalanobis" and (self.n < 1 or self.learn_coordinates):
            raise SettingError(
                "feature_metric",
                self.feature_metric,
                f"needs per-cell prototypes (n >= 1 and learn_coordinates off; got n={self.n}, "
                f"learn_coordinates={self.learn_coordinates}): its precisions are estimated per grid cell",
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
