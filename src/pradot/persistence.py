"""Load any scoring model file the project writes: a PRADOT model, a memory bank or an ensemble.

```python
from pradot.persistence import load_scoring_model
model = load_scoring_model("model.pt", device="auto")   # PRADOT, MemoryBankModel or Ensemble, in eval mode
maps, scores = model.score(images)                      # (B, S, S), (B,) at model.config.image_size
```

Both classes read and write their own dicts (``state`` / ``from_state``); :mod:`pradot.checkpoint`
writes and reads the files; this module picks the class from the file's ``"format"``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import torch

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
from .fewshot import FOCT, FOCT_FORMAT
from .memory_bank import MemoryBankModel
from .model import PRADOT
from .vpdm import VPDM, VPDM_FORMAT

__all__ = ["ScoringModel", "SCORING_FORMATS", "load_scoring_model", "model_file_info", "servable_formats"]


class ScoringModel(Protocol):
    """What a served model offers: ``score`` and ``config.image_size``."""

    config: Any  # with .image_size (int)

    def score(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...


#: file format -> the class that reads it (``from_state``)
SCORING_FORMATS: dict[str, Any] = {MODEL_FORMAT: PRADOT, ENSEMBLE_FORMAT: Ensemble}
SCORING_FORMATS.update({fmt: Ensemble for fmt in ENSEMBLE_FORMATS})  # earlier ensemble files
SCORING_FORMATS[MEMORY_BANK_FORMAT] = MemoryBankModel  # the memory-bank baseline (pradot.memory_bank)
SCORING_FORMATS[FOCT_FORMAT] = FOCT  # a few-shot model (pradot.fewshot)
SCORING_FORMATS[VPDM_FORMAT] = VPDM  # one model for many categories (pradot.vpdm)


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
    """Load a PRADOT model file (``pradot-model-v1``), a memory bank (``pradot-memory-bank-v1``) or an ensemble
    file (``pradot-ensemble-v1``/``-v2``) as a scorer in eval mode: each has ``score(images) -> (maps, scores)``
    and ``config.image_size``.

    Args:
        path: the model file.
        device: ``"cpu"``, ``"cuda"``, ... or ``"auto"`` (CUDA when available).
    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: a folder, not a torch file, or another format (the message lists the servable ones).
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(
            f"{path} is a directory; a scoring model is one file (a PRADOT .pt or an ensemble .pt, "
            f"formats {servable_formats()})"
        )
    if not path.is_file():
        raise FileNotFoundError(f"no model file at {path}")
    fmt = file_format(path)
    cls = SCORING_FORMATS.get(fmt)
    if cls is None:
        raise ValueError(
            f"{path} has format {fmt!r}: neither a PRADOT model file ({MODEL_FORMAT!r}, PRADOT.save) "
            f"nor a PRADOT ensemble file ({ENSEMBLE_FORMAT!r}, Ensemble.save) nor a memory bank "
            f"({MEMORY_BANK_FORMAT!r}, MemoryBankModel.save); servable formats: {servable_formats()}"
        )
    return cls.from_state(load_state(path, fmt), device=resolve_device(device)).eval()
