"""Load any scoring model file the project writes: a PRADOT model, a memory bank, an ensemble, a FOCT
(few-shot) model, a PaDiM model, a VPDM model or a tiled model.

```python
from pradot.persistence import load_scoring_model
model = load_scoring_model("model.pt", device="auto")   # any kind of SCORING_FORMATS, in eval mode
maps, scores = model.score(images)                      # (B, S, S), (B,) at model.config.image_size
```

Each class reads and writes its own dict (``state`` / ``from_state``, the contract of :mod:`pradot.base`);
:mod:`pradot.checkpoint` writes and reads the files; this module picks the class from the file's ``"format"``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .base import ScoringModel
from .checkpoint import (
    ENSEMBLE_FORMAT,
    ENSEMBLE_FORMATS,
    MEMORY_BANK_FORMAT,
    MODEL_FORMAT,
    file_format,
    file_info,
    load_state,
)
from .device import resolve_device
from .ensemble import Ensemble
from .errors import InputError
from .fewshot import FOCT, FOCT_FORMAT
from .memory_bank import MemoryBankModel
from .model import PRADOT
from .padim import PaDiMModel
from .tiled import TiledModel
from .vpdm import VPDM

__all__ = ["ScoringModel", "SCORING_FORMATS", "load_scoring_model", "model_file_info", "servable_formats"]


#: file format -> the class that reads it (``from_state``): every :class:`pradot.base.ScoringModel` kind
SCORING_FORMATS: dict[str, type[ScoringModel]] = {
    cls.FORMAT: cls for cls in (PRADOT, MemoryBankModel, Ensemble, FOCT, PaDiMModel, VPDM, TiledModel)
}
SCORING_FORMATS.update({fmt: Ensemble for fmt in ENSEMBLE_FORMATS})  # earlier ensemble files


def servable_formats() -> list[str]:
    """The model file formats :func:`load_scoring_model` reads."""
    return sorted(SCORING_FORMATS)


def model_file_info(path: str | Path) -> dict[str, Any]:
    """``{"format": ..., "config": ...}`` of a model file (tensors are not read).

    Raises:
        ValueError: not a torch file.
    """
    return file_info(path)


def load_scoring_model(path: str | Path, device: str | torch.device | None = "cpu") -> ScoringModel:
    """Load a PRADOT model file (``pradot-model-v1``), a memory bank (``pradot-memory-bank-v1``), an ensemble
    file (``pradot-ensemble-v1``/``-v2``), a FOCT model (``pradot-foct-v1``), a PaDiM model
    (``pradot-padim-v1``), a VPDM model (``pradot-vpdm-v1``) or a tiled model (``pradot-tiled-v1``,
    :class:`pradot.tiled.TiledModel`) as a scorer in eval mode: a
    :class:`pradot.base.ScoringModel` (``score(images) -> (maps, scores)``, ``image_size``, ``describe()``).

    Args:
        path: the model file.
        device: ``"cpu"``, ``"cuda"``, ... or ``"auto"`` (CUDA when available).
    Raises:
        FileNotFoundError: no file at ``path``.
        InputError: a folder, not a torch file, or another format (the message lists the servable ones).
    """
    path = Path(path)
    if path.is_dir():
        raise InputError(
            f"{path} is a directory; a scoring model is one file (a PRADOT .pt or an ensemble .pt, "
            f"formats {servable_formats()})"
        )
    if not path.is_file():
        raise FileNotFoundError(f"no model file at {path}")
    fmt = file_format(path)
    cls = SCORING_FORMATS.get(fmt) if fmt is not None else None
    if cls is None:
        raise InputError(
            f"{path} has format {fmt!r}: neither a PRADOT model file ({MODEL_FORMAT!r}, PRADOT.save) "
            f"nor a PRADOT ensemble file ({ENSEMBLE_FORMAT!r}, Ensemble.save) nor a memory bank "
            f"({MEMORY_BANK_FORMAT!r}, MemoryBankModel.save) nor a FOCT model ({FOCT_FORMAT!r}, FOCT.save); "
            f"servable formats: {servable_formats()}"
        )
    return cls.from_state(load_state(path, fmt), device=resolve_device(device)).eval()
