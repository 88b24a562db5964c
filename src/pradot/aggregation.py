"""Feature options applied to backbone features before a bank: local neighbourhood aggregation and stage
concatenation (PatchCore, Roth et al. 2022, section 3.1, "locally aware patch features").

* :func:`local_aggregate`: every feature of a stage's (H, W) grid is replaced by the mean of the ``k x k``
  features around it (stride 1, the grid keeps its size). At the border the mean is over the cells that lie
  inside the grid (``border="inside"``, the default), or over all ``k x k`` cells with those outside the grid
  counted as zeros (``border="zero"``: PatchCore's official code and anomalib, a zero-padded average pool).
  The inside mean leaves border features means of fewer cells, noisier than inner ones; in a memory bank
  they then carry the largest distances of normal images (the maximum of every normal map at the border on
  the embedded data); zero padding shrinks them and their distances (``benchmarks/README.md``, issue 25:
  the memory bank's parity with the direct PatchCore recipe). ``k = 1`` leaves the features
  unchanged: the paper's PRADOT.
* :func:`concat_stages`: several stages (each aggregated on its own grid first, as PatchCore does) become
  one feature map at the finest stage's grid: the coarser stages are upsampled bilinearly
  (``align_corners=False``) and concatenated along the channels, in stage order. One bank then sees
  ``D_2 + D_3`` dimensional features at stride 8.

:class:`FeatureOptions` bundles both and is what the models (``PRADOTConfig.aggregation`` /
``concat_stages``, ``MemoryBankConfig``) apply to backbone features, in training and scoring alike.
The feature cache (:mod:`pradot.features`) stores the raw backbone features: the options are applied
after the cache read, inside the model, so one cache entry serves every option and a model gives the
same maps from cached features as from images.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from .errors import InputError
from .ranges import SettingError, number

__all__ = [
    "BORDERS",
    "check_aggregation",
    "check_border",
    "local_aggregate",
    "concat_stages",
    "stage_image_count",
    "FeatureOptions",
]


def check_aggregation(k) -> int:
    """``k`` as an int.

    Raises:
        pradot.ranges.SettingError: not an odd integer >= 1 (the neighbourhood is centred on the cell).
    """
    why = "the k x k neighbourhood centred on the cell: 1 = none, the paper; 3 = PatchCore's"
    k_int = int(number("aggregation", k, integer=True, lo=1, why=f"an odd integer, {why}"))
    if k_int % 2 == 0:
        raise SettingError("aggregation", k, f"is not allowed: it must be an odd integer >= 1 ({why})")
    return k_int


#: how :func:`local_aggregate` treats cells outside the grid: left out of the mean, or counted as zeros
BORDERS = ("inside", "zero")


def check_border(border) -> str:
    """``border`` if it is one of :data:`BORDERS`, else ValueError naming them."""
    if border not in BORDERS:
        raise ValueError(
            f"aggregation border must be one of {BORDERS} ('inside': mean over the cells inside the grid; "
            f"'zero': zero padding counted, PatchCore's), got {border!r}"
        )
    return str(border)


def local_aggregate(features: torch.Tensor, k: int, border: str = "inside") -> torch.Tensor:
    """Local neighbourhood aggregation: (B, D, H, W) -> (B, D, H, W), each feature the mean of the ``k x k``
    features centred on it; cells outside the grid are left out of the mean (``border="inside"``) or count
    as zeros (``border="zero"``, PatchCore's ``avg_pool2d`` with zero padding).

    Raises:
        ValueError: ``k`` is not an odd integer >= 1, ``border`` is not one of :data:`BORDERS`, or
            ``features`` is not 4-D.
    """
    k = check_aggregation(k)
    border = check_border(border)
    if features.ndim != 4:
        raise ValueError(f"features must be (B, D, H, W), got {tuple(features.shape)}")
    if k == 1:
        return features
    return F.avg_pool2d(features, kernel_size=k, stride=1, padding=k // 2, count_include_pad=border == "zero")


def stage_image_count(features: Mapping[int, Any], stages: Sequence[int]) -> int:
    """The number of images in ``{stage: (N, D, H, W)}`` features (arrays, memmaps or tensors), checked to be
    the same for every one of ``stages``.

    Raises:
        ValueError: a stage is missing, or the stages have different numbers of images.
    """
    missing = [s for s in stages if s not in features]
    if missing:
        raise InputError(f"features for stages {missing} are missing (have {sorted(features)})")
    counts = {s: len(features[s]) for s in stages}
    if len(set(counts.values())) != 1:
        raise InputError(f"stages have different numbers of images: {counts}")
    return next(iter(counts.values()))


def concat_stages(features: Mapping[int, torch.Tensor], stages: Sequence[int]) -> torch.Tensor:
    """Stages concatenated at the finest grid: ``{stage: (B, D_s, H_s, W_s)}`` -> (B, sum D_s, H, W), with
    (H, W) the largest grid; coarser stages upsampled bilinearly (``align_corners=False``), in ``stages`` order.

    Raises:
        ValueError: a stage is missing or the stages have different batch sizes.
    """
    stages = [int(s) for s in stages]
    missing = [s for s in stages if s not in features]
    if missing:
        raise InputError(f"features for stages {missing} are missing (have {sorted(features)})")
    maps = [features[s] for s in stages]
    if any(m.shape[0] != maps[0].shape[0] for m in maps[1:]):  # no int(): a traced batch size stays symbolic
        raise InputError(f"stages have different batch sizes: {[tuple(m.shape) for m in maps]}")
    grid = max((tuple(m.shape[-2:]) for m in maps), key=lambda g: g[0] * g[1])
    out = [
        m if tuple(m.shape[-2:]) == grid else F.interpolate(m, size=grid, mode="bilinear", align_corners=False)
        for m in maps
    ]
    return torch.cat(out, dim=1)


@dataclass(frozen=True)
class FeatureOptions:
    """What is done to backbone features before a bank: ``aggregation`` (k of :func:`local_aggregate`; 1 =
    none) with its ``border`` rule, and ``concat`` (one bank of the stages concatenated at the finest grid,
    :func:`concat_stages`; with a single stage it changes nothing).

    Banks are keyed by stage: without ``concat`` one bank per stage; with it one bank keyed by the finest
    stage (the smallest index), holding every stage's channels.
    """

    aggregation: int = 1
    concat: bool = False
    border: str = "inside"

    def __post_init__(self):
        object.__setattr__(self, "aggregation", check_aggregation(self.aggregation))
        object.__setattr__(self, "border", check_border(self.border))
        object.__setattr__(self, "concat", bool(self.concat))

    @property
    def identity(self) -> bool:
        """True when the options leave the features unchanged (the paper's PRADOT)."""
        return self.aggregation == 1 and not self.concat

    def bank_stages(self, stages: Sequence[int]) -> tuple[int, ...]:
        """The banks' keys for backbone ``stages``."""
        stages = tuple(int(s) for s in stages)
        return (min(stages),) if self.concat and len(stages) > 1 else stages

    def apply(self, features: Mapping[int, torch.Tensor], stages: Sequence[int]) -> dict[int, torch.Tensor]:
        """``{stage: (B, D, H, W)}`` backbone features -> ``{bank stage: (B, D', H', W')}`` bank features."""
        stages = tuple(int(s) for s in stages)
        agg = {s: local_aggregate(torch.as_tensor(features[s]), self.aggregation, self.border) for s in stages}
        if self.concat and len(stages) > 1:
            return {min(stages): concat_stages(agg, sorted(stages))}
        return agg

    def bank_shapes(
        self, shapes: Mapping[int, tuple[int, tuple[int, int]]], stages: Sequence[int]
    ) -> dict[int, tuple[int, tuple[int, int]]]:
        """``{stage: (D, (H, W))}`` of the backbone -> the same for the banks (aggregation keeps shapes)."""
        stages = tuple(int(s) for s in stages)
        shapes = {int(s): (int(v[0]), (int(v[1][0]), int(v[1][1]))) for s, v in shapes.items()}
        if self.concat and len(stages) > 1:
            grid = max((shapes[s][1] for s in stages), key=lambda g: g[0] * g[1])
            return {min(stages): (sum(shapes[s][0] for s in stages), grid)}
        return {s: shapes[s] for s in stages}
