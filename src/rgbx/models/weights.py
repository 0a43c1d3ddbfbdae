"""Loading pretrained weights into model parts: safe reading, strict loading with a full report, first-conv
adaptation to other channel counts, and folding a normalisation change into a first convolution."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from rgbx.errors import CheckpointError


def read_weights_file(path: str | Path, safe_globals: tuple = ()) -> object:
    """What a weights file holds: a ``.safetensors`` file's tensors, or a ``torch.save`` file read with
    ``torch.load(weights_only=True)`` (tensors, containers, numbers, strings and ``safe_globals``; no code is
    unpickled). A file it cannot read so is a :class:`CheckpointError` with the reason in one line."""
    try:
        if Path(path).suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        with torch.serialization.safe_globals(list(safe_globals)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 — torch / safetensors raise several types for bad or unsafe files
        raise CheckpointError(f"{path}: cannot read it as weights ({load_failure(e)}); rgbx reads .safetensors files "
                              f"and torch.save files of tensors, never pickled code") from None


def load_failure(error: Exception) -> str:
    """Why ``torch.load(weights_only=True)`` (or safetensors) could not read a file, in one line; torch's advice to
    load with ``weights_only=False`` (unpickling code) is left out."""
    text = str(error)
    refused = re.search(r"WeightsUnpickler error: *(.+)", text, re.S)
    if refused:
        return f"torch.load(weights_only=True) refused it: {refused.group(1).strip().splitlines()[0]}"
    return f"{type(error).__name__}: {text.splitlines()[0] if text else 'the file ends early'}"


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or a ``torch.save`` file (read with ``weights_only=True``: no code is
    unpickled). Nested ``{"state_dict": ...}`` / ``{"model": ...}`` wrappers are unwrapped."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: pretrained weights file not found")
    state = read_weights_file(path)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: expected a dict of tensors (a state dict)")
    return state


def load_strict(module: nn.Module, state: dict[str, torch.Tensor], source: str,
                ignore: tuple[str, ...] = ()) -> None:
    """Load ``state`` into ``module``; any missing, unexpected or mis-shaped tensor is a :class:`CheckpointError`
    listing them all (never a silent ``strict=False``). Keys starting with a prefix in ``ignore`` (parts the caller
    drops, such as a classifier) may be missing or unexpected."""
    own = module.state_dict()
    missing = sorted(k for k in set(own) - set(state) if not k.startswith(ignore) and
                     not k.endswith("num_batches_tracked"))
    unexpected = sorted(k for k in set(state) - set(own) if not k.startswith(ignore))
    mismatched = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                  for k in sorted(set(own) & set(state)) if own[k].shape != state[k].shape]
    if missing or unexpected or mismatched:
        lines = []
        for title, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)):
            if items:
                shown = ", ".join(items[:8]) + (f", ... ({len(items)} in all)" if len(items) > 8 else "")
                lines.append(f"{title}: {shown}")
        raise CheckpointError(f"{source}: weights do not fit this model\n  " + "\n  ".join(lines))
    module.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)


def adapt_conv_weight(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """A first-conv weight (O, 3, kh, kw) for ``in_channels`` inputs, the way timm / smp do: 1 channel = the sum of
    the RGB kernels; otherwise the RGB kernels repeated cyclically and rescaled by 3 / in_channels."""
    if weight.shape[1] == in_channels:
        return weight.clone()
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    reps = -(-in_channels // weight.shape[1])
    return weight.repeat(1, reps, 1, 1)[:, :in_channels] * (weight.shape[1] / in_channels)


def fold_input_normalization(conv: nn.Conv2d, data_mean, data_std, model_mean, model_std) -> None:
    """Make ``conv`` (the first layer) accept inputs normalised with (data_mean, data_std) while computing what it
    computed on inputs normalised with (model_mean, model_std): z = u · s_d / s_m + (m_d − m_m) / s_m, folded into the
    weights (per input channel) and a bias. Exact except at zero-padded borders."""
    w = conv.weight.data
    c = w.shape[1]
    md, sd, mm, sm = (torch.as_tensor(v, dtype=w.dtype).reshape(-1)[:c] for v in
                      (data_mean, data_std, model_mean, model_std))
    scale = (sd / sm).view(1, c, 1, 1)
    shift = ((md - mm) / sm).view(1, c, 1, 1)
    bias = (w * shift).sum(dim=(1, 2, 3))
    conv.weight.data = w * scale
    if conv.bias is None:
        conv.bias = nn.Parameter(bias)
    else:
        conv.bias.data += bias
