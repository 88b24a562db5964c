"""MPDD, Metal Parts Defect Detection (Jezek et al., ICUMT 2021): the MVTec AD layout."""

from __future__ import annotations

from .mvtec_ad import MVTecADDataset

__all__ = ["MPDDDataset"]


class MPDDDataset(MVTecADDataset):
    """MPDD (Metal Parts Defect Detection): the MVTec AD layout."""

    kind = "mpdd"
