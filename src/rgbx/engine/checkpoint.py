"""Checkpoints.

- **Model weights**: the rgbx model file (:mod:`rgbx.models.model_file`, re-exported here): safetensors with the model
  config and dataset info embedded, so ``rgbx eval`` / ``predict`` / :func:`load_model` rebuild the model from the
  file alone.
- **Training state** (``*.state.pt``): model, optimizer, scheduler, scaler state, iteration and config, saved with
  ``torch.save`` and read back with ``torch.load(weights_only=True)`` (no unpickling of code).

Every write goes to a temporary file in the same folder and is then renamed over the target (atomic on POSIX), so a
kill mid-write never leaves a truncated checkpoint and never damages the previous one.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from rgbx.errors import CheckpointError, ConfigError
from rgbx.models.model_file import (  # noqa: F401 — the model-file API, re-exported for the engine and the CLI
    FORMAT,
    atomic_write,
    describe_model,
    differing_class_names,
    load_state_into,
    load_weights,
    read_model_info,
    save_model,
)
from rgbx.models.weights import load_failure


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict]:
    """:func:`rgbx.models.model_file.load_model` (the model rebuilt from the file alone, in eval mode, and the file's
    metadata), and a warning for each plugin the model was trained with whose source has changed since
    (:mod:`rgbx.engine.environment`)."""
    from rgbx.engine.environment import check_plugin_sources
    from rgbx.models.model_file import load_model as load_model_file

    model, info = load_model_file(path, device)
    check_plugin_sources(info.get("environment") or {}, path)
    return model, info


def save_state(path: str | Path, state: dict) -> Path:
    return atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_state(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: training state not found")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: an empty file, not a training state (a copy cut short?)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 — torch raises several types for corrupt / unsafe files
        raise CheckpointError(f"{path}: cannot load training state: not a file torch.save wrote, or a damaged one "
                              f"({load_failure(e)})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: holds a {type(state).__name__}, not a training state")
    return state


def check_classes(num_classes: int, info: dict, classes, model_name, data_name) -> None:
    """A model scored or used on a dataset: a different number of classes is an error; class names the model file
    records that differ from the dataset's (same count, another order or other classes: every figure would be under
    the wrong name) are a warning naming the first differences. Names compare without case, spaces, '-' and '_'."""
    classes = list(classes)
    if len(classes) != num_classes:
        raise ConfigError(f"{model_name} predicts {num_classes} classes but {data_name} has {len(classes)}")
    recorded = list((info.get("dataset") or {}).get("classes") or [])
    if len(recorded) != num_classes:
        return  # no names in the file (a converted release without --classes): nothing to compare
    differ = differing_class_names(recorded, classes)
    if differ:
        shown = ", ".join(f"{i}: {a!r} vs {b!r}" for i, a, b in differ[:4])
        more = f" and {len(differ) - 4} more" if len(differ) > 4 else ""
        warnings.warn(f"{model_name} names its classes otherwise than {data_name} at {len(differ)} of {num_classes} "
                      f"indices (model vs data: {shown}{more}); figures are by index, under the data's names. A "
                      f"model for other classes is fine-tuned with train.init_from (it matches classes by name)",
                      stacklevel=2)
