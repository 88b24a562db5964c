"""What the few-shot runs read: the backbone features of the support pool, the test split and the calibration
normals, extracted once (through the feature cache when ``cache.enabled``), and images for mask sources that
need pixels (SAM).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from pipelines.fewshot.plan import FewShotPlan

__all__ = ["FeatureSet", "support_pool", "split_features", "load_features", "images_of"]


@dataclass
class FeatureSet:
    """Features ``{stage: (N, D, H, W)}`` of some samples, and the row of each sample index."""

    samples: list
    features: dict
    rows: dict[int, int]  # sample index (in the split) -> row of ``features``

    def take(self, indices: Sequence[int]) -> dict[int, np.ndarray]:
        rows = [self.rows[int(i)] for i in indices]
        return {s: np.ascontiguousarray(np.asarray(f[rows])) for s, f in self.features.items()}

    def samples_at(self, indices: Sequence[int]) -> list:
        return [self.samples[self.rows[int(i)]] for i in indices]


def support_pool(plan: FewShotPlan, n_train: int) -> list[int]:
    """Every train index some (shots, split) support uses (sorted): only these images need features."""
    pool = set()
    for shots in plan.shots:
        for split in range(plan.splits):
            pool.update(int(i) for i in plan.support(n_train, shots, split))
    return sorted(pool)


def split_features(plan: FewShotPlan, backbone, samples: Sequence, split: str, device) -> dict:
    """``{stage: (N, D, H, W)}`` of ``samples`` (memory-mapped from the feature cache when enabled)."""
    from pradot.data import ImageDataset
    from pradot.engine import feature_identity
    from pradot.features import FeatureCache, extract_features

    dataset = ImageDataset(list(samples), plan.data.image_size)
    if plan.cache_dir is None:
        return extract_features(backbone, dataset, num_workers=plan.num_workers, device=device)
    ident = feature_identity(plan.data, backbone.name, backbone.stages, samples, split, plan.weights_path)
    return FeatureCache(plan.cache_dir).get_or_compute(
        ident, backbone, dataset, num_workers=plan.num_workers, device=device
    )


def load_features(
    plan: FewShotPlan, backbone, samples: Sequence, indices: Sequence[int], split: str, device
) -> FeatureSet:
    """The features of ``samples[i]`` for ``i`` in ``indices``."""
    chosen = [samples[int(i)] for i in indices]
    feats = split_features(plan, backbone, chosen, split, device)
    return FeatureSet(chosen, feats, {int(i): r for r, i in enumerate(indices)})


def images_of(samples: Sequence, image_size: int) -> torch.Tensor:
    """(N, 3, S, S) float images in [0, 1] (for mask sources that read pixels)."""
    from pradot.data import ImageDataset

    ds = ImageDataset(list(samples), image_size)
    return (
        torch.stack([ds[i]["image"] for i in range(len(ds))]) if len(ds) else torch.zeros(0, 3, image_size, image_size)
    )
