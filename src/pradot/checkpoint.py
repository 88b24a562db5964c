"""Model files on disk: one ``torch.save`` of a plain dict with a ``"format"`` string, written atomically.

Every file the project writes is such a dict (model, ensemble); this module owns writing and reading
them, and probing a file's format without reading its tensors. :mod:`pradot.persistence` builds the
right scorer from a file; the model classes build themselves from the dict (``from_state``).

Files are read with ``torch.load(..., weights_only=True)``: only dicts, lists, tuples, strings, numbers
and tensors are rebuilt, never arbitrary objects, so a crafted file in a registry or given on the
command line cannot run code when it is inspected or loaded (it is refused as "not a PRADOT model
file"). :func:`save_state` refuses to write a state that would not load that way.
"""

from __future__ import annotations

import logging
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from .errors import InputError
from .io import atomic_write

__all__ = [
    "MODEL_FORMAT",
    "ENSEMBLE_FORMAT",
    "ENSEMBLE_FORMATS",
    "MEMORY_BANK_FORMAT",
    "PROTOTYPES_FORMAT",
    "save_state",
    "load_state",
    "file_info",
    "file_format",
    "check_plain_state",
]

log = logging.getLogger(__name__)

#: a single PRADOT model (``PRADOT.save``)
MODEL_FORMAT = "pradot-model-v1"
#: an ensemble of scoring models (``Ensemble.save``): v2 adds fusion weights and memory-bank members
ENSEMBLE_FORMAT = "pradot-ensemble-v2"
#: every ensemble format ``Ensemble.load`` reads (v1: PRADOT members, plain or standardised mean)
ENSEMBLE_FORMATS = ("pradot-ensemble-v1", ENSEMBLE_FORMAT)
#: a PatchCore-style memory bank (``pradot.memory_bank.MemoryBankModel.save``)
MEMORY_BANK_FORMAT = "pradot-memory-bank-v1"
#: PRADOT's banks alone, without a backbone (``pradot.model.PrototypeModel.save``; not servable)
PROTOTYPES_FORMAT = "pradot-prototypes-v1"


#: leaf types a state may hold besides tensors (what ``weights_only=True`` rebuilds)
_PLAIN = (str, int, float, bool, type(None), torch.dtype, torch.Size)


def check_plain_state(state: Any, where: str = "state") -> None:
    """Raise ``TypeError`` naming the first value of ``state`` that ``torch.load(weights_only=True)``
    would refuse: only dicts (string or integer keys), lists, tuples, strings, numbers, booleans, None
    and tensors are allowed."""
    if isinstance(state, torch.Tensor) or isinstance(state, _PLAIN):
        return
    if isinstance(state, dict):
        for k, v in state.items():
            if not isinstance(k, (str, int)):
                raise TypeError(f"{where}: key {k!r} is a {type(k).__name__}, not a string or an integer")
            check_plain_state(v, f"{where}[{k!r}]")
        return
    if isinstance(state, (list, tuple)):
        for i, v in enumerate(state):
            check_plain_state(v, f"{where}[{i}]")
        return
    raise TypeError(
        f"{where} is a {type(state).__module__}.{type(state).__name__}: model files hold only dicts, "
        f"lists, strings, numbers and tensors (so that they load with weights_only=True)"
    )


def save_state(state: dict, path: str | Path) -> Path:
    """Write ``state`` to ``path`` under a temporary name, then rename it into place (atomic on one
    filesystem: a reader never sees half a file). Creates the parent folder. Returns the path.

    Raises:
        TypeError: ``state`` holds a value other than plain data and tensors (see :func:`check_plain_state`).
    """
    check_plain_state(state)
    path = Path(path)
    with atomic_write(path) as tmp:
        torch.save(state, tmp)
    return path


def _read(path: Path, mmap: bool) -> Any:
    # weights_only: plain data and tensors only; a pickled object (code) is refused, never run
    return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)


def _refusal(path: Path, what: str, exc: Exception) -> InputError:
    """The error for a file ``torch.load(weights_only=True)`` cannot read: a pickled object is named (and
    was not loaded); anything else is "not a torch file"."""
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
    if found or isinstance(exc, pickle.UnpicklingError) and zipfile.is_zipfile(path):
        held = (
            f"a pickled Python object ({found.group(1)})"
            if found
            else "Python objects other than plain data and tensors"
        )
        return InputError(
            f"{path} is not a {what} file: it holds {held}; PRADOT model files hold only plain data "
            f"and tensors, and this file was not loaded because unpickling it could run code"
        )
    detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
    if "WeightsUnpickler" in str(exc):
        detail = "not a torch.save archive"
    return InputError(f"{path} is not a {what} file (not a torch file: {type(exc).__name__}: {detail})")


def load_state(path: str | Path, expected_format: str | None = None, what: str = "PRADOT model") -> dict:
    """The dict stored in ``path``.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: ``path`` is a folder, not a torch file, not a dict, or (with ``expected_format``) a
            dict of another format; the message names what was found.
    """
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path} is a directory; give the {what} file itself")
    if not path.is_file():
        raise FileNotFoundError(f"no {what} file at {path}")
    try:
        state = _read(path, mmap=False)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is "not a model file"
        raise _refusal(path, what, exc) from None
    found = state.get("format") if isinstance(state, dict) else type(state).__name__
    if not isinstance(state, dict) or (expected_format is not None and found != expected_format):
        raise InputError(f"{path} is not a {what} file (format {expected_format!r}; found {found!r})")
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
            raise _refusal(path, "PRADOT model or ensemble", exc) from None
    if not isinstance(state, dict):
        return {"format": None, "config": None}
    return {"format": state.get("format"), "config": state.get("config")}


def file_format(path: str | Path) -> str | None:
    """The ``"format"`` string of a model file (``None`` for a torch file that is not a dict)."""
    return file_info(path)["format"]
