"""Frozen backbone features on VPDM's grid (``vpdm-paper.md`` Sec. 3.1 and appendix D).

The paper resizes the maps of EfficientNet-b4's stages 1-4 to 32 x 32 and concatenates them (272 channels).
Offline, the project ships EfficientNet-Lite0 (:func:`pradot.backbone.load_backbone`); its feature indices
0-3 (strides 2, 4, 8, 16; the paper's "stage-1 to stage-4") have 16 + 24 + 40 + 112 = 192 channels.

Resizing is bilinear with antialiasing (``align_corners=False``): stages finer than the grid are low-pass
filtered before decimation, coarser ones interpolated.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from pradot.model import as_tensor

__all__ = ["grid_features", "stage_channels"]


def grid_features(features: Mapping[int, np.ndarray | torch.Tensor], stages: Sequence[int], grid: int) -> torch.Tensor:
    """Backbone features ``{stage: (B, D_s, H_s, W_s)}`` -> (B, sum D_s, grid, grid) float32: each stage
    resized to ``grid x grid`` (bilinear, antialiased) and the stages concatenated in ``stages`` order.

    Raises:
        ValueError: a stage is missing, the stages disagree on the image count, or ``grid`` < 1.
    """
    if int(grid) < 1:
        raise ValueError(f"grid must be >= 1 (paper: 32), got {grid}")
    missing = [s for s in stages if s not in features]
    if missing:
        raise ValueError(f"features lack stage(s) {missing}; VPDM needs stages {list(stages)}")
    maps = [as_tensor(features[s]).float() for s in stages]
    counts = {len(m) for m in maps}
    if len(counts) != 1:
        raise ValueError(f"the stages hold different image counts {sorted(counts)}")
    g = int(grid)
    out = [
        m if tuple(m.shape[-2:]) == (g, g) else F.interpolate(m, (g, g), mode="bilinear", antialias=True) for m in maps
    ]
    return torch.cat(out, dim=1)


def stage_channels(channels: Mapping[int, int], stages: Sequence[int]) -> int:
    """The channel count of :func:`grid_features` for a backbone's ``channels`` ({stage: D}) (192 for
    EfficientNet-Lite0 stages 0-3)."""
    return int(sum(int(channels[s]) for s in stages))
