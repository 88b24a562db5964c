"""Model files on disk: one ``torch.save`` of a plain dict with a ``"format"`` string, written atomically.

Every file the project writes is such a dict (model, ensemble); this module owns writing and reading
them, and probing a file's format without reading its tensors. :mod:`pradot.persistence` builds the
right scorer from a file; the model classes build themselves from the dict (``from_state``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

__all__ = ["MODEL_FORMAT", "ENSEMBLE_FORMAT", "ENSEMBLE_FORMATS", "MEMORY_BANK_FORMAT", "save_state", "load_state", "file_info", "file_format"]

log = logging.getLogger(__name__)

#: a single PRADOT model (``PRADOT.save``)
MODEL_FORMAT = "pradot-model-v1"
#: an ensemble of scoring models (``Ensemble.save``): v2 adds fusion weights and memory-bank members
ENSEMBLE_FORMAT = "pradot-ensemble-v2"
#: every ensemble format ``Ensemble.load`` reads (v1: PRADOT members, plain or standardised mean)
ENSEMBLE_FORMATS = ("pradot-ensemble-v1", ENSEMBLE_FORMAT)
#: a PatchCore-style memory bank (``pradot.memory_bank.MemoryBankModel.save``)
MEMORY_BANK_FORMAT = "pradot-memory-bank-v1"


def save_state(state: dict, path: str | Path) -> Path:
    """Write ``state`` to ``path`` under a temporary name, then rename it into place (atomic on one
    filesystem: a reader never sees half a file). Creates the parent folder. Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(state, tmp)
    tmp.replace(path)
    return path


def _read(path: Path, mmap: bool) -> Any:
    return torch.load(path, map_location="cpu", weights_only=False, mmap=mmap)


def load_state(path: str | Path, expected_format: str | None = None, what: str = "PRADOT model") -> dict:
    """The dict stored in ``path``.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: ``path`` is a folder, not a torch file, not a dict, or (with ``expected_format``) a
            dict of another format; the message names what was found.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a directory; give the {what} file itself")
    if not path.is_file():
        raise FileNotFoundError(f"no {what} file at {path}")
    try:
        state = _read(path, mmap=False)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is "not a model file"
        raise ValueError(f"{path} is not a {what} file (not a torch file: {type(exc).__name__}: {exc})") from None
    found = state.get("format") if isinstance(state, dict) else type(state).__name__
    if not isinstance(state, dict) or (expected_format is not None and found != expected_format):
        raise ValueError(f"{path} is not a {what} file (format {expected_format!r}; found {found!r})")
    return state


def file_info(path: str | Path) -> dict[str, Any]:
    """``{"format": ..., "config": ...}`` of a model file; tensors are memory-mapped, not read.

    Raises:
        ValueError: the file is not a torch file.
    """
    path = Path(path)
    try:
        state = _read(path, mmap=True)
    except Exception:  # noqa: BLE001 - old (non-zip) torch files cannot be memory-mapped
        try:
            state = _read(path, mmap=False)
        except Exception as exc:  # noqa: BLE001
            raise ValueError(f"{path} is not a PRADOT model or ensemble file (not a torch file: "
                             f"{type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict):
        return {"format": None, "config": None}
    return {"format": state.get("format"), "config": state.get("config")}


def file_format(path: str | Path) -> str | None:
    """The ``"format"`` string of a model file (``None`` for a torch file that is not a dict)."""
    return file_info(path)["format"]
