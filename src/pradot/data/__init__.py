"""Datasets for PRADOT: indexes (MVTec LOCO, MVTec AD, VisA, MPDD, folder, synthetic, MVTec AD 2,
Real-IAD), text files from other tools (``text``), image I/O,
augmentation and the synthetic MVTec LOCO-style generator.

```python
from pradot.data import load_dataset, ImageDataset
ds = load_dataset("mvtec_loco", root, "screw_bag")
train = ImageDataset(ds.samples("train"), 224)
masks = ds.load_channels(ds.samples("test")[-1], size=224)   # (C, 224, 224) bool
```

``read_image`` / ``ImageDataset`` (torch) and ``build_train_augmentation`` (albumentations) are
imported on first use, so that the indexes and the generator load without those libraries.
"""

from __future__ import annotations

from typing import Any

from .base import (
    DATA_ROOT_ENV,
    SPLITS,
    AnomalyDataset,
    DatasetError,
    DefectChannel,
    Sample,
    split_validation,
)
from .loaders import (
    DATASET_KINDS,
    FolderDataset,
    MPDDDataset,
    MVTecADDataset,
    MVTecLOCODataset,
    SyntheticDataset,
    VisADataset,
    load_dataset,
)
from .mvtec_ad2 import PRIVATE_SPLITS, MVTecAD2Dataset
from .real_iad import RealIADDataset

_LAZY = {
    "read_image": ("images", "read_image"),
    "ImageDataset": ("images", "ImageDataset"),
    "build_train_augmentation": ("augment", "build_train_augmentation"),
    "ensure_synthetic": ("synthetic", "ensure_synthetic"),
    "generate_synthetic": ("synthetic", "generate"),
}

__all__ = [
    "DATASET_KINDS",
    "DATA_ROOT_ENV",
    "SPLITS",
    "AnomalyDataset",
    "DatasetError",
    "DefectChannel",
    "FolderDataset",
    "MPDDDataset",
    "MVTecADDataset",
    "MVTecAD2Dataset",
    "MVTecLOCODataset",
    "PRIVATE_SPLITS",
    "RealIADDataset",
    "Sample",
    "SyntheticDataset",
    "VisADataset",
    "load_dataset",
    "split_validation",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(f".{module}", __name__), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
