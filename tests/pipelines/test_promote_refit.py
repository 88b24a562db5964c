"""Refit-after-selection (pipelines.promote.refit): the chosen members refitted on every normal, fusion kept."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipelines.promote.refit import held_back, refit_ensemble


def _ad_layout(root: Path, n_train: int = 8) -> Path:
    """An MVTec-AD-style category without a validation folder: random 32 px images."""
    for i, folder in [*((i, "train/good") for i in range(n_train)), (50, "test/good")]:
        path = root / "part" / folder / f"{i:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(path)
    return root


def test_refit_uses_every_normal_and_keeps_the_fusion(tmp_path, tiny_backbone):
    from pradot.data import ImageDataset
    from pradot.engine import DataSpec, open_splits
    from pradot.ensemble import Ensemble
    from pradot.features import extract_features
    from pradot.memory_bank import MemoryBankConfig, MemoryBankModel

    root = _ad_layout(tmp_path)
    splits = open_splits(DataSpec("mvtec_ad", str(root), "part", 32, validation_fraction=0.25))
    assert held_back(splits) and len(splits.train) == 6 and len(splits.validation) == 2
    cfg = MemoryBankConfig(backbone="tiny_random", stages=(2,), image_size=32)
    chosen = MemoryBankModel(cfg, backbone=tiny_backbone).fit(ImageDataset(splits.train, 32), progress=False)
    stats = [{"mean": 1.5, "std": 0.5, "n_images": 2}]
    ens = Ensemble([chosen], normalisation="per_member", stats=stats, labels=["mb/1"], weights=[1.0])
    before = chosen.memory[2].clone()

    refit = refit_ensemble(ens, splits)

    member = refit.members[0]
    assert member is not chosen and torch.equal(chosen.memory[2], before)  # the chosen model is untouched
    assert (refit.stats, refit.weights, refit.labels, refit.normalisation) == (stats, [1.0], ["mb/1"], "per_member")
    # the bank of a direct fit on train + held-back normals (features of every normal, each cell once)
    every = ImageDataset([*splits.train, *splits.validation], 32)
    direct = MemoryBankModel(cfg, backbone=tiny_backbone).fit_features(extract_features(tiny_backbone, every))
    assert len(member.memory[2]) == len(direct.memory[2]) == 8 * len(before) // 6
    assert torch.allclose(member.memory[2], direct.memory[2])


def test_refit_refuses_data_with_a_validation_folder(tmp_path):
    from types import SimpleNamespace

    from pradot.ensemble import Ensemble

    class _Dataset:
        def samples(self, split):
            return ["a validation image"] if split == "validation" else []

    splits = SimpleNamespace(train=["t"], validation=["v"], dataset=_Dataset())
    assert not held_back(splits)
    with pytest.raises(ValueError, match="selection.refit needs normals held back"):
        refit_ensemble(Ensemble.__new__(Ensemble), splits)
