"""A method (training recipe) = its losses + one training step over the shared model / data / engine pieces.

``Method.step(model, batch, generator)`` returns a dict of named, already weighted loss terms; the engine sums them,
back-propagates and logs each one. Methods register by name in :data:`METHODS` and are built from the experiment's
``method`` config section.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import yaml

from rgbx.data.sample import device_masks, host_masks
from rgbx.errors import CheckpointError, ConfigError
from rgbx.methods.losses import build_segmentation_loss
from rgbx.models.model_file import differing_class_names, load_model, read_model_info
from rgbx.registry import Registry

METHODS: Registry[type] = Registry("method")


class Method:
    """Base class: subclasses implement :meth:`step`.

    A method with settings of its own declares them as a dataclass ``Options``; ``config.options`` (the experiment's
    ``method.options``) is checked against it (unknown keys are a ConfigError naming the valid ones) and stored as
    ``self.options``. A method that needs more than the model (a frozen teacher, extra heads) builds it in
    :meth:`prepare`, which the engine calls once with the model being trained and the device.
    """

    Options = None

    def __init__(self, config, *, ignore_index: int = 255, class_weights: torch.Tensor | None = None):
        self.config = config
        self.ignore_index = ignore_index
        self.class_weights = class_weights
        self.options = parse_options(type(self), dict(getattr(config, "options", None) or {}))
        # the loss against the labels, ``method.loss`` (rgbx.methods.losses), and the name its term is logged under
        self.segmentation_loss = build_segmentation_loss(config, ignore_index, class_weights)
        self.loss_name = getattr(config, "loss", None) or "ce"

    def prepare(self, model: torch.nn.Module, device: torch.device) -> None:
        """Build what the method needs besides ``model`` (default: nothing)."""

    def drops_sensors(self) -> bool:
        """Whether the training step shows the model samples with some of its sensors absent, so that it learns to
        predict without them (default: ``method.modality_dropout > 0``; a method that drops sensors itself says so).
        Recorded in the model file (``training.absent_sensors_seen``)."""
        return bool(getattr(self.config, "modality_dropout", 0.0))

    def trainable_modules(self) -> list[torch.nn.Module]:
        """Modules of the method itself whose parameters the optimizer must also train (default: none)."""
        return []

    def step(self, model: torch.nn.Module, batch, generator: torch.Generator) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    @classmethod
    def complete_config(cls, cfg, train_set=None) -> None:
        """Fill, in place, the options of ``cfg.method`` this method derives from the rest of the experiment (e.g.
        MS3 takes the union's class names from the training data). The trainer calls it with its training set
        before building the method (default: nothing to fill)."""

    def save_run_files(self, root) -> Path | None:
        """Write what the method trained besides the model into the run folder ``root`` after training (e.g. MS3's
        head, for zero-shot prediction); returns the file written, or None (default: nothing)."""
        return None

    def graph_refusal(self) -> str | None:
        """Why this method's step cannot be captured once as a CUDA graph and replayed (``train.cuda_graph_train``),
        or None when it can: such a step runs the same device work at every call, decides nothing on the host from
        the batch or from random draws, and reads nothing back. Default: it cannot."""
        return f"method {self.config.name!r} decides on the host at each step what runs"


def parse_options(method: type, options: dict):
    """``method.options`` → an instance of ``method.Options`` (or {} for a method without options)."""
    import dataclasses

    from rgbx.errors import ConfigError

    if method.Options is None:
        if options:
            raise ConfigError(f"method {method.__name__} takes no options, got {sorted(options)}")
        return {}
    valid = [f.name for f in dataclasses.fields(method.Options)]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ConfigError(f"method.options: unknown key(s) {unknown} for {method.__name__}; valid: {valid}")
    hints = typing.get_type_hints(method.Options)
    for key, value in list(options.items()):
        if key in hints:
            options[key] = _check_option(key, value, hints[key])
    try:
        return method.Options(**options)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"method.options for {method.__name__}: {e}") from None


_NO = object()  # a value that does not conform to the declared type


def _check_option(key: str, value, hint):
    """``value`` of ``method.options.<key>`` checked against its declared type ``hint`` (a float may be given as an
    int; a list as any sequence but a string); returns it (lists as lists, numbers for floats as floats) or raises a
    ConfigError naming the key, the value given and the type expected."""
    conformed = _conform(value, hint)
    if conformed is _NO:
        given = f"{value!r} ({type(value).__name__})"
        quoted = " (unquoted)" if isinstance(value, str) and _conform(_yaml_scalar(value), hint) is not _NO else ""
        raise ConfigError(f"method.options.{key}={given}: expected {_describe(hint)}{quoted}")
    return conformed


def _yaml_scalar(text: str):
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return _NO


def _conform(value, hint):
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is not type(None) and (conformed := _conform(value, arg)) is not _NO:
                return conformed
        return _NO
    if hint is bool:
        return value if isinstance(value, bool) else _NO
    if hint is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else _NO
    if hint is float:
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else _NO
    if hint is str:
        return value if isinstance(value, str) else _NO
    if origin in (list, tuple, Sequence):
        if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Sequence):
            return _NO
        items = [_conform(v, args[0]) if args else v for v in value]
        return _NO if any(v is _NO for v in items) else items
    if origin is dict or hint is dict:
        return dict(value) if isinstance(value, Mapping) else _NO
    return value  # a type this check does not know: the Options dataclass checks it


def _describe(hint) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        parts = [_describe(a) for a in args if a is not type(None)]
        return " or ".join(parts) + (" or null" if type(None) in args else "")
    if origin in (list, tuple) or origin is not None and getattr(origin, "__name__", "") == "Sequence":
        item = {int: "integers", float: "numbers", str: "strings", bool: "true/false values"}.get(
            args[0] if args else None, "values")
        example = {int: "[0, 1]", str: "[a, b]"}.get(args[0] if args else None, "[...]")
        return f"a list of {item} (e.g. {example}; a single value goes in brackets too)"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string",
            dict: "a mapping"}.get(hint, getattr(hint, "__name__", str(hint)))


def drop_modalities(batch, p: float, generator: torch.Generator, min_keep: int = 1):
    """Modality dropout: each modality of each sample is dropped with probability ``p``; every sample keeps at least
    ``min_keep`` of the modalities it had (if a draw drops too many, a random one of its present modalities is put
    back). Returns the batch with dropped modalities marked absent (fill values written in)."""
    if p <= 0 or len(batch.modalities) <= 1:
        return batch
    names = list(batch.modalities)
    on_device = device_masks(batch.present, names)
    if on_device is not None:
        return batch.drop(_drop_on_device(on_device, p, min_keep, names))
    present = host_masks(batch.present, names)  # (B, M) on the CPU, no device read-back
    drop = (torch.rand(present.shape, generator=generator) < p) & present
    kept = present & ~drop
    for i in range(present.shape[0]):
        need = min(min_keep, int(present[i].sum())) - int(kept[i].sum())
        if need > 0:
            candidates = torch.nonzero(drop[i]).flatten()
            order = candidates[torch.randperm(len(candidates), generator=generator)][:need]
            drop[i, order] = False
    return batch.drop({n: drop[:, j] for j, n in enumerate(names)})  # CPU masks: Batch.drop moves them


def _drop_on_device(present: torch.Tensor, p: float, min_keep: int, names: list[str]) -> dict[str, torch.Tensor]:
    """:func:`drop_modalities`' draw made on the masks' device with its default generator, nothing read back (what a
    training step captured as a CUDA graph needs: each replay draws anew). Same distribution as the host draw: each
    present modality dropped with probability ``p``, then, where fewer than ``min_keep`` of a sample's modalities
    are left, that many of its dropped ones put back, chosen uniformly (ranked by a second uniform draw)."""
    drop = (torch.rand(present.shape, device=present.device) < p) & present
    kept = present & ~drop
    need = (torch.clamp(present.sum(1), max=min_keep) - kept.sum(1)).clamp(min=0)  # (B,)
    score = torch.rand(present.shape, device=present.device).masked_fill(~drop, 2.0)  # kept ones rank last
    rank = score.argsort(1).argsort(1)  # 0 = the dropped modality with the lowest draw
    drop = drop & ~(rank < need[:, None])
    return {n: drop[:, j] for j, n in enumerate(names)}


def check_teacher_classes(cfg, train_set) -> None:
    """A distillation teacher (``cfg.method.options.teacher``) whose model file records class names other than the
    training data's (compared as :func:`rgbx.engine.checkpoint.check_classes` does: case, spaces, '-' and '_' do not
    count) is a ConfigError naming the first differences: its predictions would be distilled by class index onto
    other classes. Nothing to check without a training set, a readable teacher file, or names recorded in it (a
    missing or unreadable teacher is the method's ``prepare``'s error)."""
    teacher = (getattr(cfg.method, "options", None) or {}).get("teacher")
    if train_set is None or not isinstance(teacher, str) or not teacher or not Path(teacher).is_file():
        return
    try:
        recorded = list(((read_model_info(teacher, missing_ok=True) or {}).get("dataset") or {}).get("classes") or [])
    except CheckpointError:
        return
    classes = list(train_set.description.classes)
    if not recorded or len(recorded) != len(classes):
        return  # no names recorded; a different count is the prepare's num_classes check
    differ = differing_class_names(recorded, classes)
    if differ:
        shown = ", ".join(f"{i}: {a!r} vs {b!r}" for i, a, b in differ[:4])
        more = f" and {len(differ) - 4} more" if len(differ) > 4 else ""
        data = getattr(getattr(cfg, "data", None), "root", None) or train_set.description.name
        raise ConfigError(f"method.options.teacher={teacher!r} was trained on other classes than the training data "
                          f"{data}: they differ at {len(differ)} of {len(classes)} indices (teacher vs data: "
                          f"{shown}{more}); its predictions would be distilled onto the wrong classes. Train the "
                          f"teacher on the same dataset (same classes, same order)")


def load_frozen_teacher(path: str, device: torch.device, preset_hint: str) -> torch.nn.Module:
    """A teacher for distillation recipes: an rgbx weights file loaded in eval mode with every parameter frozen.
    A missing or unreadable file is a ConfigError naming ``method.options.teacher``."""
    if not Path(path).is_file():
        raise ConfigError(f"method.options.teacher={str(path)!r}: teacher weights not found (train the teacher "
                          f"first, e.g. `rgbx train {preset_hint}`)")
    try:
        teacher, _ = load_model(path, device)
    except CheckpointError as e:
        raise ConfigError(f"method.options.teacher={str(path)!r}: cannot load the teacher ({e})") from None
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher
