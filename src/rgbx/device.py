"""Which device a command, a run or :func:`rgbx.load_model` uses: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.

Torch only, and below the models in the package, so that loading a model file checks its device as the commands do
and profiling and prediction do not pull in the training stack."""

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
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"{setting} {name!r}: CUDA is not available on this machine")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ConfigError(f"{setting} {name!r}: this machine has {count} CUDA device(s), cuda:0 to "
                              f"cuda:{count - 1}")
        return device
    # another torch device type (mps, xpu, ...): rgbx is tested on cpu and cuda; such a device is let through only
    # when torch can use it here, so that a missing one is this error and not torch's failure on the first tensor
    if not device_available(device.type):
        raise ConfigError(f"{setting} {name!r}: this torch has no usable {device.type} device here; expected auto, "
                          f"cpu, cuda or cuda:N")
    return device


def device_available(device_type: str) -> bool:
    """Whether this torch can use a device of ``device_type`` (``mps``, ``xpu``, ...) on this machine."""
    if device_type == "mps":
        return bool(torch.backends.mps.is_available())
    module = getattr(torch, device_type, None)
    is_available = getattr(module, "is_available", None)
    try:
        return bool(is_available()) if callable(is_available) else False
    except Exception:  # noqa: BLE001 — a backend that cannot even say
        return False
