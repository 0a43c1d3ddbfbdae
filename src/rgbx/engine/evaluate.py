"""Evaluation: one pass over a loader, confusion matrices per modality subset and per sample attribute.

The **anymodal** evaluation scores every non-empty subset of the model's modalities (a rig where only those
sensors work) in the same pass; subsets are named by joining modality names with ``+`` in the model's order.
Predictions are made at the label's resolution (the evaluation transform does not resize).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch

from rgbx.data.sample import host_masks
from rgbx.engine.calibration import DEFAULT_BINS, ReliabilityHistogram, TemperatureScaling
from rgbx.engine.inference import CMX_NOT_PROBABILITIES, SlidingWindow, class_probabilities, predict_logits
from rgbx.engine.metrics import ConfusionMatrix, SegMetrics
from rgbx.errors import ConfigError
from rgbx.modalities.subsets import all_subsets, subset_name

__all__ = ["EvalResult", "all_subsets", "evaluate", "evaluate_dataset", "scored_samples", "subset_name", "unscored_note"]


@dataclass
class EvalResult:
    """Confusion matrices keyed by subset name, then by group (``"all"`` or ``"<attr>=<value>"``); with
    ``reliability``, confidence histograms (:mod:`rgbx.engine.calibration`) keyed the same way, then by kind:
    ``"uncalibrated"`` and, for a calibrated model, ``"calibrated"``. ``unscored``: per subset, how many samples had
    none of its sensors (no prediction from that rig: not in its scores), where any had none; ``screened``: per
    sensor, how many samples the dataset's sensor checks left it out of (``meta["screened"]``, set by
    :class:`~rgbx.data.sensor_health.FrameScreen`); ``samples``: how many samples were evaluated."""

    num_classes: int
    ignore_index: int
    matrices: dict[str, dict[str, ConfusionMatrix]] = field(default_factory=dict)
    reliability: dict[str, dict[str, dict[str, ReliabilityHistogram]]] = field(default_factory=dict)
    bins: int = DEFAULT_BINS
    unscored: dict[str, int] = field(default_factory=dict)
    screened: dict[str, int] = field(default_factory=dict)
    samples: int = 0

    def matrix(self, subset: str, group: str = "all") -> ConfusionMatrix:
        groups = self.matrices.setdefault(subset, {})
        if group not in groups:
            groups[group] = ConfusionMatrix(self.num_classes, self.ignore_index)
        return groups[group]

    def histogram(self, subset: str, kind: str, group: str = "all") -> ReliabilityHistogram:
        kinds = self.reliability.setdefault(subset, {}).setdefault(group, {})
        if kind not in kinds:
            kinds[kind] = ReliabilityHistogram(self.num_classes, self.ignore_index, self.bins)
        return kinds[kind]

    def calibration(self, group: str = "all") -> dict[str, dict]:
        """Sensor set → ``{"uncalibrated": CalibrationMetrics, "calibrated": ...}`` for one group."""
        return {s: {k: h.compute() for k, h in groups[group].items()}
                for s, groups in self.reliability.items() if group in groups}

    def miou(self, subset: str | None = None, group: str = "all", convention: str = "present") -> float:
        """The mIoU (0-1) of one sensor set (default: the first scored, all of the model's sensors) and group."""
        subset = next(iter(self.matrices)) if subset is None else subset
        if subset not in self.matrices or group not in self.matrices[subset]:
            scored = {s: list(g) for s, g in self.matrices.items()}
            raise KeyError(f"no result for sensor set {subset!r}, group {group!r}; scored: {scored}")
        return self.matrices[subset][group].compute(convention).miou

    def metrics(self, convention: str = "present") -> dict[str, dict[str, SegMetrics]]:
        return {s: {g: cm.compute(convention) for g, cm in groups.items()} for s, groups in self.matrices.items()}

    @property
    def groups(self) -> list[str]:
        seen = []
        for groups in self.matrices.values():
            for g in groups:
                if g not in seen:
                    seen.append(g)
        return ["all"] + sorted(g for g in seen if g != "all")

    def all_reduce(self) -> None:
        """Sum the matrices (and confidence histograms) over all ranks of a distributed run. Ranks may have seen
        different groups (a condition only in one rank's share), so the union of their keys is agreed first and
        every rank reduces the same matrices in the same order."""
        dist = torch.distributed
        if not (dist.is_available() and dist.is_initialized()):
            return
        keys = ([("matrix", s, g, "") for s, groups in self.matrices.items() for g in groups]
                + [("histogram", s, g, k) for s, groups in self.reliability.items() for g, kinds in groups.items()
                   for k in kinds])
        everyone: list = [None] * dist.get_world_size()
        dist.all_gather_object(everyone, keys)
        union = sorted({tuple(k) for rank_keys in everyone for k in rank_keys})
        for what, subset, group, kind in union:
            if what == "matrix":
                self.matrix(subset, group).all_reduce()
            else:
                self.histogram(subset, kind, group).all_reduce()
        counts: list = [None] * dist.get_world_size()
        dist.all_gather_object(counts, (self.unscored, self.screened, self.samples))
        self.unscored, self.screened = ({s: n for s in dict.fromkeys(s for c in counts for s in c[i])
                                         if (n := sum(c[i].get(s, 0) for c in counts))} for i in (0, 1))
        self.samples = sum(c[2] for c in counts)

    def to_dict(self, class_names: list[str] | None = None, convention: str = "present") -> dict:
        data = {
            "miou_convention": convention,
            "subsets": {
                s: {g: m.to_dict(class_names) for g, m in groups.items()}
                for s, groups in self.metrics(convention).items()
            },
        }
        if self.reliability:
            data["calibration"] = {s: {g: {k: h.compute().to_dict() for k, h in kinds.items()}
                                       for g, kinds in groups.items()}
                                   for s, groups in self.reliability.items()}
        if self.unscored:
            data["unscored_samples"] = dict(self.unscored)
        if self.screened:
            data["screened_samples"] = dict(self.screened)
        return data


def unscored_note(unscored: dict[str, int]) -> str:
    """A table caption's line on the sensor sets that left samples out (:attr:`EvalResult.unscored`); "" if none."""
    if not unscored:
        return ""
    counts = ", ".join(f"{s} {n}" for s, n in unscored.items())
    return f"\nsamples with none of a row's sensors, not scored in that row: {counts}"


def scored_samples(view, size: int) -> torch.Tensor:
    """(B,) CPU bool: the samples of a batch (seen through :meth:`Batch.with_modalities`) that have at least one of
    its sensors. A sample with none gets no prediction from that rig, whatever else its batch holds."""
    if not view.inputs:
        return torch.zeros(size, dtype=torch.bool)
    return host_masks(view.present, list(view.inputs)).any(1)


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    loader,
    *,
    num_classes: int,
    ignore_index: int = 255,
    subsets: Sequence[Sequence[str]] | None = None,
    group_by: str | None = None,
    device: str | torch.device = "cpu",
    autocast_dtype: torch.dtype | None = None,
    progress=None,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    window: SlidingWindow | None = None,
    scale_rule: str = "rgbx",
    reliability: bool = False,
    temperatures: TemperatureScaling | None = None,
    bins: int = DEFAULT_BINS,
) -> EvalResult:
    """Evaluate ``model`` on ``loader`` (batches of :class:`~rgbx.data.Batch`).

    Args:
        subsets: modality subsets to score (default: only all of the model's modalities). Use
            :func:`all_subsets` for the anymodal table.
        group_by: a sample attribute (e.g. ``"condition"``) to report separately per value, besides ``"all"``.
        progress: optional callable(batches_done) called after each batch.
        scales, flip: multi-scale + flip test-time averaging (:func:`rgbx.engine.inference.predict_logits`).
        window: sliding-window inference: ``(H, W)`` in pixels or a
            :class:`rgbx.engine.inference.SlidingWindow` (size, stride, batch); None = whole images.
        scale_rule: how ``scales`` resize (``"rgbx"``, or ``"dformer"``: DFormer's evaluate_msf; see
            :mod:`rgbx.engine.inference`).
        reliability: also score how well the confidences are calibrated (ECE over ``bins`` bins, NLL, accuracy
            above confidence thresholds; :mod:`rgbx.engine.calibration`), uncalibrated and, given ``temperatures``
            (a calibrated model's), calibrated, each sample with the temperature of the sensors it has; per group
            too. The mIoU is that of the uncalibrated prediction either way. Under multi-scale / flip averaging the
            calibrated probabilities take a pass of their own.
    """
    if reliability and scale_rule == "cmx":
        raise ConfigError(CMX_NOT_PROBABILITIES)
    model.eval()
    device = torch.device(device)
    model_modalities = tuple(model.modalities)
    subsets = [tuple(model_modalities)] if subsets is None else [tuple(s) for s in subsets]
    result = EvalResult(num_classes, ignore_index, bins=bins)
    amp = (
        torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype is not None else nullcontext()
    )
    for i, batch in enumerate(loader):
        if batch.label is None:
            raise ValueError("evaluation needs labelled data")
        batch = batch.to(device, non_blocking=True)
        result.samples += len(batch.label)
        for meta in batch.meta:
            for sensor in meta.get("screened", ()):
                result.screened[sensor] = result.screened.get(sensor, 0) + 1
        groups = [("all", None)]
        if group_by is not None:
            values = [str(m.get("attributes", {}).get(group_by, "")) for m in batch.meta]
            groups += [(f"{group_by}={v}", torch.tensor([x == v for x in values], device=device))
                       for v in sorted(set(values)) if v]
        for subset in subsets:
            view = batch.with_modalities(subset)
            name = subset_name(subset)
            scored = scored_samples(view, len(batch.label))
            if not scored.all():
                result.unscored[name] = result.unscored.get(name, 0) + int((~scored).sum())
                if not scored.any():
                    continue
            with amp:
                logits = predict_logits(model, view.inputs, view.present, scales, flip, window, scale_rule)
            pred = logits.argmax(1)
            label = batch.label if scored.all() else batch.label.masked_fill(~scored.to(device)[:, None, None],
                                                                             ignore_index)
            if reliability:
                kinds = {"uncalibrated": 1.0}
                if temperatures is not None:  # each sample's sensor set (a sample may lack one of the subset's)
                    kinds["calibrated"] = temperatures.per_sample(view.present, model_modalities).to(device)
                for kind, t in kinds.items():
                    with amp:
                        probs = class_probabilities(model, view.inputs, view.present, scales, flip, window,
                                                    scale_rule, temperature=t, scores=logits)
                    for group, mask in groups:
                        if mask is None:
                            result.histogram(name, kind, group).update(probs, label)
                        elif mask.any():
                            result.histogram(name, kind, group).update(probs[mask], label[mask])
            for group, mask in groups:
                if mask is None:
                    result.matrix(name, group).update(pred, label)
                elif mask.any():
                    result.matrix(name, group).update(pred[mask], label[mask])
        if progress is not None:
            progress(i + 1)
    result.all_reduce()
    return result


def evaluate_dataset(
    model,
    data,
    split: str = "val",
    *,
    dataset: str = "folder",
    options: dict | None = None,
    anymodal: bool = False,
    group_by: str | None = None,
    batch_size: int = 8,
    num_workers: int = 0,
    device: str | torch.device = "cpu",
    **test_time,
) -> EvalResult:
    """Score a model on a dataset split from Python: what ``rgbx eval`` computes, as an :class:`EvalResult`.

    Args:
        model: a model, or the path of an rgbx model file (:func:`rgbx.load_model`).
        data, split, dataset, options: the dataset folder, its split, its registered loader (``--dataset``) and the
            loader's options (``--option``).
        anymodal: score every non-empty subset of the model's sensors (``--anymodal``), else all of them together.
        group_by: a sample attribute to score separately per value (``--by``, e.g. ``"condition"``).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        test_time: :func:`evaluate`'s ``scales``, ``flip``, ``window``, ``scale_rule``, ``autocast_dtype``,
            ``reliability`` (calibration figures; for a model file, calibrated by the temperatures it records).

    Example::

        result = rgbx.evaluate("runs/x/model.safetensors", "data/synth", "test", anymodal=True)
        result.miou(), result.miou("rgb"), result.metrics()["rgb+depth"]["all"].per_class_iou
        result = rgbx.evaluate("runs/x/model.calibrated.safetensors", "data/synth", "test", anymodal=True,
                               reliability=True)
        result.calibration()["rgb"]["calibrated"].ece   # rgb alone, with its temperature
    """
    from rgbx.data import build_dataset, collate
    from rgbx.data.transforms import EvalTransform
    from rgbx.device import resolve_device
    from rgbx.engine.checkpoint import check_classes, load_model

    device = resolve_device(device)
    info, name = {}, "the model"
    if not isinstance(model, torch.nn.Module):
        name = model
        model, info = load_model(model, device)
        if test_time.get("reliability") and test_time.get("temperatures") is None:
            test_time["temperatures"] = TemperatureScaling.from_info(info)
    model = model.to(device)
    opened = build_dataset(dataset, data, split, modalities=list(model.modalities), transform=EvalTransform(),
                           **(options or {}))
    opened.require_labels("evaluation")
    desc = opened.description
    check_classes(model.num_classes, info, desc.classes, name, f"{data} [{split}]")
    loader = torch.utils.data.DataLoader(opened, batch_size=batch_size, collate_fn=collate, num_workers=num_workers,
                                         pin_memory=device.type == "cuda")
    return evaluate(model, loader, num_classes=desc.num_classes, ignore_index=desc.ignore_index,
                    subsets=all_subsets(model.modalities) if anymodal else None, group_by=group_by, device=device,
                    **test_time)
