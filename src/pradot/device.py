"""Where tensors live: the one rule that turns a device setting into a ``torch.device``."""

from __future__ import annotations

import torch

from .errors import InputError

__all__ = ["DeviceError", "resolve_device"]


class DeviceError(InputError):
    """A device was asked for that this machine does not have; the message says what to use instead."""


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"`` (or ``None`` / ``""``) -> CUDA when available, else the CPU; anything else as given.

    Raises:
        DeviceError: a CUDA device is asked for and CUDA is not available, or the string is not a
            device torch knows.
    """
    if isinstance(device, torch.device):
        device = str(device)
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(str(device))
    except (RuntimeError, ValueError) as exc:
        raise DeviceError(f"device={device!r} is not a device name ({exc}); use auto, cpu or cuda[:N]") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(
            f"device={device!r} requested but CUDA is not available on this machine; use device=cpu or device=auto"
        )
    return dev
