"""Which device a command or a run uses: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (torch only; cheap to import, so
profiling and prediction do not pull in the training stack)."""

from __future__ import annotations

import torch

from rgbx.errors import ConfigError


def resolve_device(name: str | torch.device, setting: str = "device") -> torch.device:
    """``auto`` → CUDA when available, else the CPU; any other name checked. ``setting`` names where the value came
    from in the error (``--device``, ``train.device``)."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"{setting} {name!r}: expected auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{setting} {name!r}: CUDA is not available on this machine")
    return device
