"""Checkpoints.

- **Model weights**: the rgbx model file (:mod:`rgbx.models.model_file`, re-exported here): safetensors with the model
  config and dataset info embedded, so ``rgbx eval`` / ``predict`` / :func:`load_model` rebuild the model from the
  file alone.
- **Training state** (``*.state.pt``): model, optimizer, scheduler, scaler state, iteration and config, saved with
  ``torch.save`` and read back with ``torch.load(weights_only=True)`` (no unpickling of code).

Every write goes to a temporary file in the same folder and is then renamed over the target (atomic on POSIX), so a
kill mid-write never leaves a truncated checkpoint and never damages the previous one; the temporary file such a kill
leaves behind is deleted by :func:`remove_unfinished_writes` (the trainer's job at start / resume). A training state
that cannot be read names the model weights saved with it (``last.safetensors``) to start a new run from
(``train.init_from``).
"""

from __future__ import annotations

import re
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
    remove_unfinished_writes,
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


STATE_SUFFIX = ".state.pt"
WEIGHTS_SUFFIX = ".safetensors"


def state_weights(path: str | Path) -> Path | None:
    """The model file written with a training state (the trainer saves ``last.safetensors`` next to
    ``last.state.pt`` at every checkpoint); None for a state file not named ``<name>.state.pt``."""
    path = Path(path)
    if not path.name.endswith(STATE_SUFFIX) or path.name == STATE_SUFFIX:
        return None
    return path.with_name(path.name[:-len(STATE_SUFFIX)] + WEIGHTS_SUFFIX)


def _way_out(path: Path) -> str:
    """How to go on from a training state that cannot be read: a new run from the model weights saved with it."""
    weights = state_weights(path)
    if weights is None or not weights.is_file():
        return (f"; no model weights saved with it{f' ({weights})' if weights else ''} to start from: move it away "
                f"to start the run afresh")
    return (f". The model weights of that checkpoint are in {weights}: train.init_from={weights} starts a new run "
            f"from them (in another output_dir, or after moving {path.name} away; the optimizer and scheduler state "
            f"and the iteration count are lost)")


def _short(reason: str, limit: int = 160) -> str:
    """torch's reason in brief: its first sentence (its advice about corrupted files, e.g. after miniz's "internal
    error", says less than the message around it), at most ``limit`` characters."""
    reason = re.split(r"(?<=[a-z)])\. (?=[A-Z])", reason.strip(), maxsplit=1)[0].rstrip(".")
    return reason if len(reason) <= limit else reason[:limit - 1].rstrip() + "…"


def load_state(path: str | Path) -> dict:
    """A training state written by :func:`save_state`; a missing, empty or damaged file is a
    :class:`CheckpointError` that says how to go on (a new run from the model weights saved with it)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: training state not found")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: an empty file, not a training state (a copy cut short?){_way_out(path)}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 — torch raises several types for corrupt / unsafe files
        raise CheckpointError(f"{path}: cannot load training state: not a file torch.save wrote, or a damaged one "
                              f"({_short(load_failure(e))}){_way_out(path)}") from None
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
