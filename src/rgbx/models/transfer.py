"""Starting a model from another trained model's weights: fine-tuning to other classes or another set of sensors.

A model trained on a benchmark (an rgbx run's ``model.safetensors``, or a released checkpoint after ``rgbx
convert``) is the usual start for a user's own data, whose classes and sensors differ from the benchmark's.
:func:`transfer_weights` copies every tensor that fits and says exactly what happened to the rest:

* **by name**: a tensor of the same name and shape is copied;
* **classifier by class name**: when both sides name their classes, the final 1×1 classifier's row for a class is
  copied from the file's row for the class of the same name; classes the file lacks keep a fresh initialisation
  (names unknown on either side: copied by position when the class counts agree, fresh otherwise);
* **another sensor's weights**: a sensor the file's model lacks starts from the weights of a sensor it has (every
  per-sensor module is named by its modality, e.g. ``encoder.branches.thermal``), ``{"thermal": "depth"}``, and by
  default from the file's only supplementary sensor, or from RGB when the file has RGB alone; a first convolution
  whose input channels differ is adapted the way ImageNet weights are (:func:`adapt_conv_weight`);
* **fresh**: whatever does not fit keeps the initialisation the model was created with (random, or
  ``model.pretrained``), e.g. fusion modules whose shape depends on the number of sensors;
* **unused**: the file's tensors nothing took, e.g. a sensor the new model drops.

A file whose encoder does not fit at all (another backbone or fusion) is refused, naming both models: loading only
the head would look like a fine-tune and be a training from scratch.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from rgbx.errors import CheckpointError, ConfigError
from rgbx.models.model_file import describe_model, read_model_info
from rgbx.models.weights import adapt_conv_weight, read_state_dict

__all__ = ["TransferReport", "transfer_weights"]

KEEP_OWN = ("none", "")  # init_modality_from value: the new sensor keeps the initialisation it was created with


@dataclass
class TransferReport:
    """What :func:`transfer_weights` did with each tensor (model and file keys)."""

    source: str
    source_model: str = "a state dict without rgbx metadata"
    total: int = 0
    loaded: list[str] = field(default_factory=list)
    adapted: list[str] = field(default_factory=list)  # first convolutions with another input-channel count
    from_modality: dict[str, str] = field(default_factory=dict)  # new sensor → the file's sensor it started from
    from_modality_keys: list[str] = field(default_factory=list)
    classifier: str = ""  # one line on how the classifier was initialised
    fresh: dict[str, str] = field(default_factory=dict)  # model key → why it kept its initialisation
    unused: list[str] = field(default_factory=list)
    input_encoding: list[str] = field(default_factory=list)  # sensors fed otherwise than the file's model was
    # new sensor → the file's sensors it could have started from, when no single one was the default or named
    unsourced: dict[str, list[str]] = field(default_factory=dict)

    def summary(self) -> str:
        lines = [f"init_from {self.source} ({self.source_model}): {len(self.loaded)} of {self.total} tensors "
                 f"copied by name"]
        for new, old in self.from_modality.items():
            n = sum(1 for k in self.from_modality_keys if _has_component(k, new))
            lines.append(f"  {new} <- the file's {old} weights: {n} tensors")
        if self.adapted:
            lines.append("  first convolutions adapted to another channel count:")
            lines += [f"    {a}" for a in self.adapted]
        if self.classifier:
            lines.append(f"  classifier: {self.classifier}")
        if self.fresh:
            groups = Counter((_module_group(k), why) for k, why in self.fresh.items())
            lines.append(f"  kept their initialisation ({len(self.fresh)} tensors):")
            lines += _group_lines([f"{g} ({n}: {why})" for (g, why), n in groups.items()])
        if self.unused:
            groups = Counter(_module_group(k) for k in self.unused)
            lines.append(f"  unused from the file ({len(self.unused)} tensors):")
            lines += _group_lines([f"{g} ({n})" for g, n in groups.items()])
        for new, candidates in self.unsourced.items():
            lines.append(f"  note: {new} is new and the file has several sensors ({', '.join(candidates)}): it keeps "
                         f"its own initialisation; train.init_modality_from={{{new}: {candidates[-1]}}} starts it "
                         f"from one of them ({new}: none keeps this and drops the note)")
        if self.input_encoding:
            lines.append("  note: the file's model saw these sensors through another input encoding than this "
                         "model (model.input_encoding; rgbx info FILE shows the file's):")
            lines += [f"    {line}" for line in self.input_encoding]
        return "\n".join(lines)


def _group_lines(items: list[str], most: int = 10) -> list[str]:
    return [f"    {item}" for item in items[:most]] + (
        [f"    ... ({len(items) - most} more groups)"] if len(items) > most else [])


def _has_component(key: str, name: str) -> bool:
    return name in key.split(".")


def _replace_component(key: str, old: str, new: str) -> str:
    return ".".join(new if part == old else part for part in key.split("."))


def _module_group(key: str) -> str:
    """The level a report names: ``encoder.branches.thermal.*`` (a sensor's branch), ``encoder.rectify.*`` (every
    stage's rectify module), ``head.classifier.weight``."""
    parts = key.split(".")
    head = ["*" if p.isdigit() else p for p in parts[:3]]
    while len(head) > 1 and head[-1] == "*":
        head.pop()
    return ".".join(head) + (".*" if len(parts) > len(head) else "")


def _read(source: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """The file's tensors and its rgbx metadata ({} for a plain state dict)."""
    path = Path(source)
    if path.is_dir():
        read_model_info(path)  # names the model files in a run folder
    if not path.is_file():
        raise CheckpointError(f"{path}: init_from file not found")
    info = read_model_info(path, missing_ok=True) if path.suffix == ".safetensors" else {}
    return read_state_dict(path), info


def _modality_sources(model_modalities: Sequence[str], file_modalities: Sequence[str],
                      requested: Mapping[str, str]) -> dict[str, str]:
    """For each model sensor the file lacks, the file's sensor to start it from (absent: keep its initialisation)."""
    new = [m for m in model_modalities if m not in file_modalities]
    keep = {m for m, s in requested.items() if s in KEEP_OWN}
    requested = {m: s for m, s in requested.items() if s not in KEEP_OWN}
    for m in keep:
        if m not in new:
            raise ConfigError(f"init_modality_from: {m!r}: none keeps the initialisation of a sensor the file lacks "
                              f"({', '.join(new) or 'none here'})")
    for m, s in requested.items():
        if m not in model_modalities:
            raise ConfigError(f"init_modality_from: {m!r} is not a modality of the model "
                              f"({', '.join(model_modalities)})")
        if m in file_modalities:
            raise ConfigError(f"init_modality_from: the file already has {m!r} weights; only a sensor it lacks "
                              f"({', '.join(new) or 'none here'}) can start from another sensor's weights")
        if s not in file_modalities:
            raise ConfigError(f"init_modality_from: {m!r} <- {s!r}, but the file's model has no {s!r} "
                              f"(it has {', '.join(file_modalities) or 'no modality metadata'})")
    supplementary = [s for s in file_modalities if s != "rgb"]
    default = supplementary[0] if len(supplementary) == 1 else ("rgb" if list(file_modalities) == ["rgb"] else None)
    sources = {}
    for m in new:
        if m in keep:
            continue
        s = requested.get(m, default)
        if s is not None:
            sources[m] = s
    return sources


def _classifier_name(model: nn.Module) -> str | None:
    head = getattr(model, "head", None)
    classifier = getattr(head, "classifier", None)
    if classifier is None:
        return None
    return next((name for name, module in model.named_modules() if module is classifier), None)


def transfer_weights(model: nn.Module, source: str | Path, *, classes: Sequence[str] | None = None,
                     modality_from: Mapping[str, str] | None = None) -> TransferReport:
    """Copy the weights of the model in ``source`` that fit ``model`` into it; returns what was done.

    Args:
        model: a :class:`~rgbx.models.Segmentor` as created for training.
        source: an rgbx model file (``.safetensors`` with its metadata: model config and classes), or any state
            dict file (``.safetensors``, ``.pth``; read without unpickling code) with rgbx's parameter names.
        classes: the class names of the data ``model`` will be trained on (its classifier's rows, in order);
            matched by name against the file's classes.
        modality_from: for sensors of ``model`` the file's model lacks, which of the file's sensors to start from
            (default: its only supplementary sensor, or RGB when it has RGB alone); ``"none"``: keep the
            initialisation the model was created with (random, or ``model.pretrained``).

    Raises:
        CheckpointError: the file cannot be read, or none of its encoder tensors fit ``model``.
        ConfigError: ``modality_from`` names a sensor that is not new to the model, or that the file lacks.
    """
    state, info = _read(source)
    file_cfg = info.get("model") or {}
    ours = getattr(model, "config", None)
    report = TransferReport(source=str(source))
    if file_cfg:
        report.source_model = describe_model(file_cfg)
    if file_cfg and ours is not None and file_cfg.get("backbone") != ours.backbone:
        raise CheckpointError(
            f"{source}: init_from holds {describe_model(file_cfg)}, but this model's backbone is {ours.backbone}: "
            f"its encoder cannot start from that one (use the same backbone, or model.pretrained for backbone "
            f"weights from another source)")
    model_modalities = list(getattr(model, "modalities", ()))
    file_modalities = list(file_cfg.get("modalities", [])) if file_cfg else [
        m for m in model_modalities if any(_has_component(k, m) for k in state)]
    sources = _modality_sources(model_modalities, file_modalities, dict(modality_from or {}))
    report.from_modality = dict(sources)
    named = dict(modality_from or {})
    report.unsourced = {m: file_modalities for m in model_modalities
                        if m not in file_modalities and m not in sources and m not in named and len(file_modalities) > 1}

    classifier = _classifier_name(model)
    classifier_keys = {f"{classifier}.weight", f"{classifier}.bias"} if classifier else set()
    file_classes = list((info.get("dataset") or {}).get("classes") or [])
    own = model.state_dict()
    report.total = len(own)
    taken: set[str] = set()
    new_state: dict[str, torch.Tensor] = {}

    for key, tensor in own.items():
        if key in classifier_keys:
            continue
        if key in state and state[key].shape == tensor.shape:
            new_state[key] = state[key]
            report.loaded.append(key)
            taken.add(key)
            continue
        new_modality = next((m for m in sources if _has_component(key, m)), None)
        file_key = _replace_component(key, new_modality, sources[new_modality]) if new_modality else key
        if file_key not in state:
            report.fresh[key] = "not in the file"
            continue
        theirs = state[file_key]
        if theirs.shape == tensor.shape:
            new_state[key] = theirs
        elif (new_modality or any(_has_component(key, m) for m in model_modalities)) and theirs.dim() == 4 \
                and theirs.shape[0] == tensor.shape[0] and theirs.shape[2:] == tensor.shape[2:]:
            # a sensor's first convolution, built for another channel count
            new_state[key] = adapt_conv_weight(theirs, tensor.shape[1])
            report.adapted.append(f"{key} ({theirs.shape[1]} -> {tensor.shape[1]} channels)")
        else:
            report.fresh[key] = "shape differs"
            continue
        taken.add(file_key)
        (report.from_modality_keys if new_modality else report.loaded).append(key)

    if classifier:
        report.classifier = _transfer_classifier(own, state, classifier, list(classes or []), file_classes,
                                                 new_state, taken)
    encoder_loaded = [k for k in new_state if k.startswith("encoder.")]
    encoder_keys = [k for k in own if k.startswith("encoder.")]
    if encoder_keys and not encoder_loaded:
        ours_text = describe_model(ours.to_dict()) if ours is not None else "this model"
        raise CheckpointError(
            f"{source}: none of the file's encoder tensors fit {ours_text} (the file holds "
            f"{report.source_model}; e.g. {next(iter(state), 'no tensors')}): init_from needs a model of the same "
            f"backbone and fusion (model.pretrained takes a MiT backbone's weights from a model of another fusion)")
    report.unused = sorted(k for k in state if k not in taken)
    report.input_encoding = _encoding_differences(file_cfg, ours, sources)
    with torch.no_grad():
        for key, value in new_state.items():
            own[key].copy_(value)
    return report


def _encoding_differences(file_cfg: Mapping, ours, sources: Mapping[str, str]) -> list[str]:
    """One line per sensor of the new model whose weights come from a file sensor fed through another input
    encoding (:mod:`rgbx.models.input_encoding`): those weights will see inputs they were not trained on."""
    from rgbx.models.input_encoding import check_input_encoding, describe_input_encoding

    if not file_cfg or ours is None:
        return []
    file_modalities = list(file_cfg.get("modalities", []))
    theirs_raw = dict(file_cfg.get("input_encoding") or {})
    own_raw = dict(getattr(ours, "input_encoding", None) or {})
    theirs = check_input_encoding(theirs_raw, file_modalities)
    own = check_input_encoding(own_raw, list(ours.modalities))
    lines = []
    for m in ours.modalities:
        source = sources.get(m, m)
        if source not in file_modalities or (source != m and source in theirs):
            continue  # a sensor new to the model, started from another one: its inputs differ anyway
        if theirs.get(source) != own.get(m):
            plain = "as rgbx normalises it"
            was = describe_input_encoding(source, theirs_raw[source]) if source in theirs else f"{source}: {plain}"
            now = describe_input_encoding(m, own_raw[m]) if m in own else plain
            lines.append(f"{was}; here {m} is fed {now}")
    return lines


def _transfer_classifier(own: dict[str, torch.Tensor], state: dict[str, torch.Tensor], prefix: str,
                         classes: list[str], file_classes: list[str], new_state: dict[str, torch.Tensor],
                         taken: set[str]) -> str:
    """Fill ``new_state`` with the classifier rows that carry over; returns the report's line."""
    weight, bias = f"{prefix}.weight", f"{prefix}.bias"
    if weight not in state:
        return "not in the file: initialised fresh"
    ours_w, theirs_w = own[weight], state[weight]
    n_ours, n_theirs = ours_w.shape[0], theirs_w.shape[0]
    if theirs_w.shape[1:] != ours_w.shape[1:]:
        return f"input width differs ({tuple(theirs_w.shape)} in the file, {tuple(ours_w.shape)} here): fresh"
    has_bias = bias in own and bias in state
    if classes and file_classes:
        if len(file_classes) != n_theirs:
            return (f"the file names {len(file_classes)} classes for {n_theirs} classifier rows: initialised "
                    f"fresh")
        index = {name: j for j, name in enumerate(file_classes)}
        rows = [(i, index[name]) for i, name in enumerate(classes) if name in index]
        if not rows:
            return f"none of the {n_ours} classes is among the file's {n_theirs}: initialised fresh"
        w, b = ours_w.clone(), own[bias].clone() if has_bias else None
        for i, j in rows:
            w[i] = theirs_w[j]
            if b is not None:
                b[i] = state[bias][j]
        new_state[weight] = w
        taken.add(weight)
        if b is not None:
            new_state[bias] = b
            taken.add(bias)
        shared = [classes[i] for i, _ in rows]
        new = [c for c in classes if c not in index]
        if len(rows) == n_ours == n_theirs and all(i == j for i, j in rows):
            return f"the same {n_ours} classes: copied"
        return (f"{len(rows)} of {n_ours} classes from the file's rows of the same name ({_names(shared)})"
                + (f"; new, initialised fresh: {_names(new)}" if new else ""))
    if n_ours == n_theirs:
        new_state[weight] = theirs_w
        taken.add(weight)
        if has_bias:
            new_state[bias] = state[bias]
            taken.add(bias)
        return f"{n_ours} classes copied by position (class names unknown on one side)"
    return f"{n_theirs} classes in the file, {n_ours} here, names unknown: initialised fresh"


def _names(names: list[str], most: int = 8) -> str:
    return ", ".join(names[:most]) + (f", ... ({len(names)} in all)" if len(names) > most else "")
