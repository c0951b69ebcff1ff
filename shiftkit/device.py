"""Which torch device a command or a function runs on: one resolver for the CLI's ``--device`` and the library.

- ``"auto"``: CUDA when a GPU is available, else the CPU (every command's default).
- ``None``: the CPU. Library functions that take ``device=None`` (``mmd_test``) never move to a GPU unasked.
- ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or a :class:`torch.device`: as given; CUDA without a GPU is refused.

Anything else (``tpu``, a typo) is a :class:`DeviceError` naming the choices: a ``ConfigError`` (the CLI prints
one line) and a ``ValueError`` (what the library's numeric functions raised for a bad device before).
"""

from __future__ import annotations

import torch

from shiftkit.errors import ConfigError

DEVICES = ("auto", "cpu", "cuda")


class DeviceError(ConfigError, ValueError):
    """A device that does not exist here or is not one of :data:`DEVICES`."""


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """The device ``device`` names (see the module docstring for what ``auto`` and ``None`` mean)."""
    if device is None:
        return torch.device("cpu")
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        resolved = None
    if resolved is None or resolved.type not in ("cpu", "cuda"):
        raise DeviceError(f"unknown device '{device}' (choose {', '.join(DEVICES[:-1])} or {DEVICES[-1]})")
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"--device {device} was asked for, but no CUDA GPU is available (use --device cpu or auto)")
    return resolved
