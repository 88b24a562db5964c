"""``load_dataset(kind, root, category, **options)``: the entry point to every dataset index, one module per
dataset: :mod:`.mvtec_loco`, :mod:`.mvtec_ad`, :mod:`.mpdd`, :mod:`.visa`, :mod:`.folder`,
:mod:`.synthetic_dataset` (the generated LOCO scene), :mod:`.mvtec_ad2`, :mod:`.real_iad`.

``root`` is the folder that holds the categories (``None``: the ``PRADOT_DATA_ROOT`` environment variable).
The dataset classes are re-exported here.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from .base import AnomalyDataset, DatasetError
from .folder import FolderDataset
from .mpdd import MPDDDataset
from .mvtec_ad import MVTecADDataset
from .mvtec_ad2 import MVTecAD2Dataset
from .mvtec_loco import MVTecLOCODataset, read_defects_config
from .real_iad import RealIADDataset
from .synthetic_dataset import SyntheticDataset
from .visa import VisADataset

__all__ = [
    "DATASET_KINDS",
    "FolderDataset",
    "MPDDDataset",
    "MVTecAD2Dataset",
    "MVTecADDataset",
    "MVTecLOCODataset",
    "RealIADDataset",
    "SyntheticDataset",
    "VisADataset",
    "load_dataset",
    "read_defects_config",
]

DATASET_KINDS: tuple[str, ...] = (
    "mvtec_loco",
    "mvtec_ad",
    "visa",
    "mpdd",
    "folder",
    "synthetic",
    "mvtec_ad2",
    "real_iad",
)


_LOADERS: dict[str, Callable[..., AnomalyDataset]] = {
    "mvtec_loco": MVTecLOCODataset,
    "mvtec_ad": MVTecADDataset,
    "mpdd": MPDDDataset,
    "visa": VisADataset,
    "folder": FolderDataset,
    "synthetic": SyntheticDataset,
    "mvtec_ad2": MVTecAD2Dataset,
    "real_iad": RealIADDataset,
}


def load_dataset(kind: str, root: str | Path | None, category: str, **options: Any) -> AnomalyDataset:
    """Index ``category`` of a dataset of ``kind`` (one of ``DATASET_KINDS``) under ``root``.

    Options: ``visa``: ``csv_path`` (default ``split_csv/1cls.csv``); ``synthetic``: ``generate=True``
    plus the generator's parameters (``seed``, ``image_size``, ``n_train``, ...); ``real_iad``:
    ``variant`` (``realiad_jsons``), ``resolution`` (``1024``), ``views`` (e.g. ``"C1,C3"``), ``json_dir``.
    Kinds are also accepted with dashes and in their datasets' own spellings (``mvtec-ad2``, ``mvtec_ad_2``,
    ``real-iad``, ``realiad``). Raises DatasetError with the expected layout when the data are missing or malformed.
    """
    key = str(kind).lower().replace("-", "_")
    key = {"mvtec_ad_2": "mvtec_ad2", "realiad": "real_iad"}.get(key, key)
    if key not in _LOADERS:
        raise DatasetError(f"unknown dataset kind {kind!r}; expected one of {', '.join(DATASET_KINDS)}")
    return _LOADERS[key](root, category, **options)
