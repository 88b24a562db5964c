"""Settings of a VPDM model (``vpdm-paper.md`` appendix D) and the two recipes: ``paper`` (the dataclass
defaults) and ``cpu`` (a tiny recipe that trains on two CPU cores in minutes). ``conf/vpdm/*.yaml`` holds the
same values for the pipelines (a test keeps them equal).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

__all__ = ["VPDMConfig", "RECIPES", "CONDITIONS", "ENDPOINTS", "ABLATIONS"]

#: how the condition is built: VPOT (paper), nearest prototype (Table 3 "prototype without OT"), the low-passed
#: features themselves (Table 3 "vague only", no prototypes)
CONDITIONS = ("ot", "nearest", "low_pass")
#: the process endpoint: N(y_hat, I) (Eq. 12, paper) or N(0, I) (Table 3 "DDPM"; y_hat still enters the network)
ENDPOINTS = ("vague", "standard")


#: Table 3's rows (other than the full model): row name -> the settings that differ from the full model
ABLATIONS: dict[str, dict] = {
    "vague_only": {"condition": "low_pass"},
    "no_ot": {"condition": "nearest", "ot_weight": 0.0},
    "no_ot_loss": {"ot_weight": 0.0},
    "ddpm": {"endpoint": "standard"},
    "no_low_pass": {"low_pass": False},
}


@dataclass
class VPDMConfig:
    """VPDM's settings; the defaults are the paper's (appendix D) where it gives them.

    Backbone features: ``backbone`` stages ``stages`` resized to ``grid`` x ``grid`` and concatenated
    (paper: EfficientNet-b4 stages 1-4 at 32 x 32, 272 channels; here EfficientNet-Lite0 indices 0-3, 192
    channels, offline), ``image_size`` px input (paper: 224).
    VPOT: ``downsample`` (paper: 4), ``n_prototypes`` K (paper: 50), Sinkhorn ``ot_eps`` (Eq. 11 prints weight 1)
    and ``ot_iter`` iterations, ``ot_weight`` of the OT loss in Eq. 17 (paper: 1; 0 = "without OT loss").
    ``low_pass``: the vague (low-pass) step ``T_down`` / ``T_up`` (paper: on; off = Table 3's "without the vague
    process": the plan is computed from the full-grid features), ``condition`` (:data:`CONDITIONS`) and
    ``endpoint`` (:data:`ENDPOINTS`); Table 3's rows are named in :data:`ABLATIONS`.
    Diffusion: ``timesteps`` T (paper: 1000) on a linear schedule ``beta_start``..``beta_end`` (1e-4..0.02),
    ``sampling_steps`` of Algorithm 2 (respaced; T = the paper), ``start_step``: 0 or T start Algorithm 2 from
    ``x^T ~ N(y_hat, I)`` (the paper); ``t0`` < T starts it from ``x^t0`` drawn by Eq. 14 from the image's own
    features (partial noising, not in the paper; the respaced steps above ``t0`` are skipped), ``sigma`` of the
    sampler ("beta": Algorithm 2), ``n_draws``: reconstructions per image (noise seeds ``seed + k``) whose maps
    are averaged (1: the paper),
    ``clip_x0``: clamp Algorithm 2's estimate of ``x^0`` to the per-channel range of the training features (not in
    the paper; DDPM's clamp of images to [-1, 1]; without it an imperfect network's error, divided by
    ``sqrt(alpha^t)`` ~ 0.006 at t = T, can make the reconstruction diverge).
    Network (not in the paper, see :mod:`pradot.vpdm.network`): ``width``, ``blocks``; ``eps_skip``: add the
    Gaussian pass-through ``sqrt(1 - alpha^t) (x^t - y_hat)`` to the network's noise prediction
    (:meth:`pradot.vpdm.VPDM.eps`) so that it learns a residual (not in the paper, which leaves the network open).
    Training (Algorithm 1): Adam ``lr`` (paper: 1e-3), ``batch_size`` (paper: 32), ``epochs`` (not in the paper).
    Scoring (Sec. 3.4): the map's ``score_pool`` px average pool before the max; optional Gaussian
    ``smoothing_sigma`` px (0: none, as the paper). ``standardise``: features standardised per channel with the
    training statistics (so that the endpoint's unit variance matches the data's scale).
    """

    backbone: str = "efficientnet_lite0"
    stages: tuple[int, ...] = (0, 1, 2, 3)
    image_size: int = 224
    grid: int = 32
    downsample: int = 4
    n_prototypes: int = 50
    ot_eps: float = 1.0
    ot_iter: int = 100
    ot_weight: float = 1.0
    low_pass: bool = True
    condition: str = "ot"
    endpoint: str = "vague"
    timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    sampling_steps: int = 1000
    start_step: int = 0
    n_draws: int = 1
    sigma: str = "beta"
    clip_x0: bool = True
    eps_skip: bool = True
    width: int = 128
    blocks: int = 6
    lr: float = 1e-3
    batch_size: int = 32
    epochs: int = 200
    score_pool: int = 16
    smoothing_sigma: float = 0.0
    standardise: bool = True
    seed: int = 0

    def __post_init__(self):
        self.stages = tuple(int(s) for s in self.stages)
        if not self.stages or len(set(self.stages)) != len(self.stages):
            raise ValueError(f"stages must be distinct backbone feature indices (paper: 0-3), got {self.stages}")
        self._check_counts()
        self._check_numbers()
        for name, allowed in (("condition", CONDITIONS), ("endpoint", ENDPOINTS), ("sigma", ("beta", "beta_tilde"))):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")

    def ablated(self, row: str) -> VPDMConfig:
        """These settings with Table 3's ablation ``row`` applied (:data:`ABLATIONS`;
        ``full``: unchanged).

        Raises:
            ValueError: an unknown row name.
        """
        if row == "full":
            return replace(self)
        if row not in ABLATIONS:
            raise ValueError(f"unknown VPDM ablation {row!r}; Table 3's rows: full, {', '.join(ABLATIONS)}")
        return replace(self, **ABLATIONS[row])

    def _check_counts(self) -> None:
        counts = (
            "image_size",
            "grid",
            "downsample",
            "n_prototypes",
            "ot_iter",
            "timesteps",
            "sampling_steps",
            "n_draws",
        )
        for name in (*counts, "width", "blocks", "batch_size", "score_pool"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if int(self.epochs) < 0:
            raise ValueError(f"epochs must be >= 0, got {self.epochs!r}")
        if self.grid % self.downsample:
            raise ValueError(
                f"downsample ({self.downsample}) must divide grid ({self.grid}) (paper: grid 32, downsample 4)"
            )
        if not 0 <= int(self.start_step) <= self.timesteps:
            raise ValueError(
                f"start_step must lie in 0..timesteps ({self.timesteps}; 0: T, the paper), got {self.start_step}"
            )
        if self.sampling_steps > self.timesteps:
            raise ValueError(f"sampling_steps ({self.sampling_steps}) cannot exceed timesteps ({self.timesteps})")

    def _check_numbers(self) -> None:
        for name in ("ot_eps", "lr"):
            v = float(getattr(self, name))
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {getattr(self, name)!r}")
        if not (math.isfinite(float(self.ot_weight)) and self.ot_weight >= 0):
            raise ValueError(f"ot_weight must be >= 0 (paper: 1; 0 = without the OT loss), got {self.ot_weight!r}")
        if not (0.0 < self.beta_start <= self.beta_end < 1.0):
            raise ValueError(
                f"need 0 < beta_start <= beta_end < 1 (paper: 1e-4, 0.02), got {self.beta_start}, {self.beta_end}"
            )
        if not (math.isfinite(float(self.smoothing_sigma)) and self.smoothing_sigma >= 0):
            raise ValueError(f"smoothing_sigma must be >= 0 (0: no smoothing), got {self.smoothing_sigma!r}")

    @classmethod
    def recipe(cls, name: str, **overrides) -> VPDMConfig:
        """The settings of a named recipe (:data:`RECIPES`) with ``overrides`` applied.

        Raises:
            ValueError: an unknown recipe or setting name.
        """
        if name not in RECIPES:
            raise ValueError(f"unknown VPDM recipe {name!r}; available: {sorted(RECIPES)}")
        known = {f.name for f in fields(cls)}
        bad = sorted(set(overrides) - known)
        if bad:
            raise ValueError(f"unknown VPDM setting(s) {bad}; settings: {sorted(known)}")
        return replace(cls(**RECIPES[name]), **overrides)


#: recipe name -> the settings that differ from the defaults (the paper)
RECIPES: dict[str, dict] = {
    "paper": {},
    "cpu": {
        "image_size": 128,
        "grid": 16,
        "n_prototypes": 16,
        "sampling_steps": 20,
        "start_step": 400,
        "n_draws": 4,
        "width": 64,
        "blocks": 4,
        "batch_size": 16,
        "epochs": 30,
        "score_pool": 8,
    },
}
