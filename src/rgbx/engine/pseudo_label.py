"""Pseudo-labels for unlabelled recordings (self-training): a trained model labels a split that has no labels, keeps
the pixels it is sure of, and writes a dataset folder on which the next model trains with the labelled samples plus
those (what ``rgbx pseudo-label`` does).

A rig records far more than anyone labels. Self-training (Lee 2013; class-balanced: Zou et al. 2018, CBST; Xie et al.
2020, Noisy Student) turns the recordings into training data: for each pixel i of an unlabelled image,

    ŷ_i = argmax_c p_c(x_i),   s_i = max_c p_c(x_i)        (p: softmax(z / T), T the temperature the model file
                                                              records for the sensors the sample has: rgbx calibrate)
    pseudo-label_i = ŷ_i   if s_i ≥ τ_{ŷ_i},   else ignored

with one threshold per predicted class, from two rules (:class:`PseudoLabelRule`; with both, a pixel passing either
is kept):

* ``min_confidence`` P: τ_c = P for every class; with calibrated confidences, about a fraction P of the kept
  pixels are right;
* ``class_fraction`` f (CBST's class-balanced selection): τ_c = the confidence above which the top f of the pixels
  predicted c lie, so rare or hard classes, whose confidences are lower, keep their share of pixels instead of
  vanishing from the next round's training data.

The teacher sees whatever sensors a recording has (with ``monitor``, a failed sensor's frames are left out first), so
a model with more sensors can label data for one with fewer.

Confidences are stored and thresholded as 16-bit numbers q = ⌊s · 65536⌋ (capped at 65535), and counted in
:data:`BINS` bins of q, so the thresholds, the pixels kept and every figure of the report are exact for the stored
files. When the split does have labels (to try the rule on labelled data), the report scores the pseudo-labels
against them; the labels themselves are never used to make the pseudo-labels.

The output folder (``docs/dataset-format.md``, *Pseudo-labelled folders*)::

    OUT/dataset.yaml            the source's, with each sensor's folder pointing at the source's files (relative
                                paths: no sensor file is copied) and OUT's own labels
    OUT/label/<id>.png          pseudo-labels of the unlabelled split (ignore where not kept), and the source's
                                labels of every other split (re-encoded as PNG)
    OUT/prediction/<id>.png     the model's class for every pixel, before selection
    OUT/confidence/<id>.png     16-bit: ⌊confidence · 65536⌋
    OUT/splits/*.txt            the source's splits, and ``train_pseudo``: the labelled split (repeated to be at
                                least as many as the others) + the pseudo-labelled
    OUT/attributes.csv          the source's
    OUT/pseudo_labels.json      the model, the rule, the thresholds and the report
    OUT/samples.csv             per sample: the sensors used, the mean confidence, the share of pixels kept (and
                                the accuracy, when the split has labels); the least confident first

It is written to a temporary folder beside OUT and renamed when complete: a killed run leaves no half dataset.

A second round labels the same split of OUT with the student (``data=OUT``; OUT itself is not changed). OUT's
``pseudo_labels.json`` names its joined split: that split is the earlier round's, not the user's, so it is not carried
into the new folder (the new joined split takes its place; kept only when it is the ``labelled`` split), and the
pseudo-labelled split's samples in it are no clash. Nor is the report scored against the earlier round's
pseudo-labels of the split, which are no truth.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from rgbx.errors import ConfigError, DataError

__all__ = ["BINS", "DEFAULT_RULE", "LEVELS", "PseudoLabelReport", "PseudoLabelRule", "SelectionCounts", "pseudo_label",
           "quantize_confidence"]

LEVELS = 65536  # confidences stored as ⌊s · LEVELS⌋ in 16-bit PNGs
BINS = 4096  # selection bins: q >> 4, a resolution of 1/4096 in confidence
_SHIFT = 4
OUT_SPLIT = "train_pseudo"


def quantize_confidence(confidence: torch.Tensor) -> torch.Tensor:
    """Confidences in [0, 1] → int32 q = ⌊s · 65536⌋, capped at 65535 (what the 16-bit confidence PNGs hold)."""
    return (confidence.double() * LEVELS).floor().clamp(0, LEVELS - 1).to(torch.int32)


def confidence_bin(q: torch.Tensor) -> torch.Tensor:
    return (q >> _SHIFT).long()


@dataclasses.dataclass(frozen=True)
class PseudoLabelRule:
    """Which predicted pixels become pseudo-labels (module docstring): those at or above ``min_confidence``, or
    among the top ``class_fraction`` of their predicted class's pixels by confidence, or either when both are
    given."""

    min_confidence: float | None = None
    class_fraction: float | None = None

    def __post_init__(self) -> None:
        if self.min_confidence is None and self.class_fraction is None:
            raise ConfigError("a pseudo-label rule needs min_confidence (keep pixels at least this confident) and/or "
                              "class_fraction (keep the most confident fraction of each class's pixels)")
        if self.min_confidence is not None and not 0 < self.min_confidence < 1:
            raise ConfigError(f"min_confidence {self.min_confidence}: expected a probability between 0 and 1 "
                              "(exclusive)")
        if self.class_fraction is not None and not 0 < self.class_fraction <= 1:
            raise ConfigError(f"class_fraction {self.class_fraction}: expected a fraction in (0, 1]")

    def thresholds(self, predicted: torch.Tensor) -> torch.Tensor:
        """(K,) bin thresholds from (K, BINS) counts of predicted pixels per class and confidence bin: a pixel of
        predicted class c is kept when its bin is ≥ threshold[c] (a class never predicted keeps ``BINS``: none)."""
        k = predicted.shape[0]
        floor = torch.full((k,), BINS, dtype=torch.long)
        if self.min_confidence is not None:
            floor.fill_(min(BINS, int(np.ceil(self.min_confidence * BINS - 1e-9))))
        if self.class_fraction is None:
            return floor
        # top-down cumulative counts: above[c, b] = pixels of class c in bins ≥ b
        above = predicted.flip(1).cumsum(1).flip(1)
        total = above[:, 0]
        need = torch.ceil(total.double() * self.class_fraction).long()
        # the highest bin whose pixels at or above it reach the needed count (ties in that bin are kept too)
        reaches = above >= need[:, None]
        highest = BINS - 1 - reaches.flip(1).long().argmax(1)
        balanced = torch.where(total > 0, highest, torch.full_like(highest, BINS))
        return torch.minimum(floor, balanced)

    def describe(self) -> str:
        parts = []
        if self.min_confidence is not None:
            parts.append(f"confidence ≥ {self.min_confidence:g}")
        if self.class_fraction is not None:
            parts.append(f"the top {100 * self.class_fraction:g}% of each class's pixels")
        return " or ".join(parts)


class SelectionCounts:
    """Pixels per predicted class and confidence bin; where the split has labels, also those with a label and those
    predicted right, and the labelled pixels per true class: enough to score any thresholds afterwards."""

    def __init__(self, num_classes: int, ignore_index: int):
        self.num_classes, self.ignore_index = num_classes, ignore_index
        shape = (num_classes, BINS)
        self.predicted = torch.zeros(shape, dtype=torch.long)
        self.judged = torch.zeros(shape, dtype=torch.long)  # predicted pixels that have a label
        self.correct = torch.zeros(shape, dtype=torch.long)
        self.truth = torch.zeros(num_classes, dtype=torch.long)  # labelled pixels per true class
        self.scored_samples = 0

    def _count(self, index: torch.Tensor) -> torch.Tensor:
        return torch.bincount(index, minlength=self.num_classes * BINS).view(self.num_classes, BINS)

    def add(self, prediction: torch.Tensor, q: torch.Tensor, label: torch.Tensor | None = None) -> None:
        """One image: (H, W) predicted classes, (H, W) quantised confidences, (H, W) labels or None."""
        prediction, q = prediction.flatten().long().cpu(), q.flatten().cpu()
        index = prediction * BINS + confidence_bin(q)
        self.predicted += self._count(index)
        if label is None:
            return
        label = label.flatten().long().cpu()
        if label.shape != prediction.shape:
            raise DataError(f"labels of {tuple(label.shape)} pixels for a prediction of {tuple(prediction.shape)}")
        has = label != self.ignore_index
        self.scored_samples += 1
        self.judged += self._count(index[has])
        self.correct += self._count(index[has & (label == prediction)])
        self.truth += torch.bincount(label[has], minlength=self.num_classes)[: self.num_classes]

    def above(self, counts: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
        """(K,) sums of ``counts`` over the bins at or above each class's threshold."""
        bins = torch.arange(BINS)
        return (counts * (bins[None, :] >= thresholds[:, None])).sum(1)


@dataclasses.dataclass
class PseudoLabelReport:
    """What a pseudo-labelling run kept, per predicted class, and (``scored``) how right it is where the split has
    labels. Fractions in [0, 1]; ``thresholds`` are confidences."""

    classes: list[str]
    rule: PseudoLabelRule
    thresholds: list[float]
    samples: int
    skipped: list[str]
    predicted: list[int]
    kept: list[int]
    scored_samples: int = 0
    precision: list[float | None] = dataclasses.field(default_factory=list)  # right / kept, of the kept with a label
    recall: list[float | None] = dataclasses.field(default_factory=list)  # true c pixels kept and right / true c
    accuracy_all: float | None = None  # every predicted pixel
    accuracy_kept: float | None = None
    coverage: float | None = None  # labelled pixels kept / labelled pixels

    @property
    def kept_share(self) -> float:
        return sum(self.kept) / max(sum(self.predicted), 1)

    @classmethod
    def from_counts(cls, counts: SelectionCounts, rule: PseudoLabelRule, thresholds: torch.Tensor,
                    classes: list[str], samples: int, skipped: list[str]) -> PseudoLabelReport:
        report = cls(classes=list(classes), rule=rule, thresholds=[min(1.0, int(t) / BINS) for t in thresholds],
                     samples=samples, skipped=list(skipped), predicted=counts.predicted.sum(1).tolist(),
                     kept=counts.above(counts.predicted, thresholds).tolist(), scored_samples=counts.scored_samples)
        if counts.scored_samples and counts.truth.sum() > 0:
            judged = counts.above(counts.judged, thresholds)
            correct = counts.above(counts.correct, thresholds)
            report.precision = [float(r / j) if j else None for r, j in zip(correct, judged)]
            report.recall = [float(r / t) if t else None for r, t in zip(correct, counts.truth)]
            report.accuracy_all = float(counts.correct.sum() / counts.judged.sum())
            report.accuracy_kept = float(correct.sum() / judged.sum()) if judged.sum() else None
            report.coverage = float(judged.sum() / counts.judged.sum())
        return report

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["rule"] = dataclasses.asdict(self.rule)
        out["kept_share"] = self.kept_share
        return out


DEFAULT_RULE = PseudoLabelRule(class_fraction=0.5)


def pseudo_label(model, data: str | Path, split: str, out: str | Path, rule: PseudoLabelRule = DEFAULT_RULE, *,
                 labelled: str | None = "train", labelled_repeat: int | None = None, out_split: str = OUT_SPLIT,
                 options: dict | None = None,
                 num_workers: int = 0, progress: Callable[[int, int], None] | None = None,
                 provenance: dict | None = None, device: str | torch.device = "cpu",
                 **predictor_options) -> PseudoLabelReport:
    """Pseudo-label ``split`` of the dataset folder ``data`` with ``model`` and write the dataset folder ``out``
    (module docstring). Returns the report (also in ``out/pseudo_labels.json``).

    Example::

        report = rgbx.pseudo_label("runs/teacher/model.calibrated.safetensors", "data/rig", "raw", "data/rig-pseudo",
                                   rgbx.PseudoLabelRule(class_fraction=0.5, min_confidence=0.95))
        report.kept_share          # the share of the predicted pixels kept
        # then: rgbx train CONFIG data.root=data/rig-pseudo data.train_split=train_pseudo

    Args:
        model: an rgbx model file or exported ``.onnx`` file, or a :class:`~rgbx.engine.predict.Predictor`.
        data, split, options: the source dataset folder (rgbx format), the split to label (its samples need no
            label files: ``label: {optional: true}`` in its ``dataset.yaml``) and the folder loader's options.
        out: the folder to write; must not exist.
        rule: which pixels to keep (:class:`PseudoLabelRule`; default: the top half of each class's pixels).
        labelled: the source's labelled training split, joined with the pseudo-labelled samples in ``out_split``
            (None: ``out_split`` holds the pseudo-labelled samples alone).
        labelled_repeat: how many times ``out_split`` lists each labelled sample; None: as many times as makes the
            labelled samples at least as many as the pseudo-labelled (⌈pseudo / labelled⌉), as ST++ (Yang et al.
            2022) oversamples them, so that the true labels keep their weight in every epoch.
        progress: a callable(samples_done, samples).
        provenance: more fields for ``pseudo_labels.json`` (e.g. ``{"model": path}`` when ``model`` is a
            Predictor; a file's path is recorded by itself).
        device, predictor_options: for :meth:`Predictor.from_file` when ``model`` is a file: ``fast``,
            ``scales``, ``flip``, ``window``, ``scale_rule``, ``monitor`` (screen each frame for failed sensors).
    """
    from rgbx.data import build_dataset
    from rgbx.data.datasets.base import AsLoaded
    from rgbx.data.datasets.folder import copy_labels, write_linked_description
    from rgbx.data.sensor_health import SensorFailure
    from rgbx.engine.checkpoint import check_classes
    from rgbx.engine.predict import Predictor
    from rgbx.modalities import write_array

    data, out = Path(data), Path(out)
    if out.exists():
        raise ConfigError(f"{out}: already exists; pseudo-labels go to a new folder (nothing is overwritten)")
    predictor = model if isinstance(model, Predictor) else Predictor.from_file(model, device, **predictor_options)
    if predictor.min_confidence is not None:
        raise ConfigError("the predictor leaves unsure pixels unlabelled already (min_confidence); pseudo-labelling "
                          "selects pixels by its own rule: give a Predictor without min_confidence")
    earlier = _earlier_round(data)
    splits = _plan_splits(data, split, labelled, out_split, earlier)
    # the labels of a split an earlier round pseudo-labelled are that round's pseudo-labels: not scored against
    scored = not (earlier and earlier.get("split") == split)
    source = build_dataset("folder", data, split, check="none", **(options or {}))
    if labelled is not None:  # its samples join the training split as they are: every one needs its label
        build_dataset("folder", data, labelled, check="none", **(options or {})).require_labels(
            f"the labelled split that {out_split} joins (--labelled; 'none' for no labelled split)")
    desc = source.description
    check_classes(predictor.model.num_classes, {"dataset": {"classes": predictor.recorded_classes}}, desc.classes,
                  "the model", f"{data} ({', '.join(desc.classes)})")
    sensors = [m for m in predictor.model.modalities if m in desc.modalities]
    if not sensors:
        raise ConfigError(f"{data} has none of the model's sensors ({', '.join(predictor.model.modalities)}); it has "
                          f"{', '.join(desc.modalities)}")
    ds = build_dataset("folder", data, split, modalities=sensors, **(options or {}))
    for other, ids in splits.items():
        clash = sorted(set(ids) & set(ds.ids)) if other != split else []
        if clash:
            raise ConfigError(f"{data}: sample(s) {', '.join(clash[:5])} of split {split!r} are also in split "
                              f"{other!r}; their labels would be replaced by pseudo-labels there"
                              f"{'' if earlier else ROUND_HINT.format(split=other)}")

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        for folder in ("label", "prediction", "confidence", "splits"):
            (tmp / folder).mkdir()
        counts = SelectionCounts(desc.num_classes, desc.ignore_index)
        done, skipped, predicted_ids, per_sample = 0, [], [], {}
        loader = torch.utils.data.DataLoader(AsLoaded(ds), batch_size=None, num_workers=num_workers)
        for sample in loader:
            sid = str(sample["meta"]["id"])
            label = sample.get("label") if scored else None
            try:
                pred, confidence = predictor.predict_with_confidence(sample)
            except SensorFailure:
                skipped.append(sid)
            else:
                q = quantize_confidence(confidence)
                counts.add(pred, q, label)
                per_sample[sid] = {"sensors": "+".join(predictor.last_sensors),
                                   "confidence": float(confidence.double().mean()),
                                   "accuracy": _accuracy(pred, label, desc.ignore_index)}
                write_array(tmp / "prediction" / f"{sid}.png", pred.numpy().astype(_label_dtype(desc.num_classes)))
                write_array(tmp / "confidence" / f"{sid}.png", q.numpy().astype(np.uint16))
                predicted_ids.append(sid)
            done += 1
            if progress is not None:
                progress(done, len(ds))
        if not predicted_ids:
            raise DataError(f"{data} [{split}]: no sample could be predicted (every one had every sensor failed)")
        thresholds = rule.thresholds(counts.predicted)
        dtype = _label_dtype(max(desc.num_classes, desc.ignore_index + 1))
        for sid in predicted_ids:
            pred = torch.from_numpy(_read_png(tmp / "prediction" / f"{sid}.png").astype(np.int64))
            q = torch.from_numpy(_read_png(tmp / "confidence" / f"{sid}.png").astype(np.int32))
            keep = confidence_bin(q) >= thresholds[pred]
            per_sample[sid]["kept"] = float(keep.double().mean())
            write_array(tmp / "label" / f"{sid}.png", pred.masked_fill(~keep, desc.ignore_index).numpy().astype(dtype))
        report = PseudoLabelReport.from_counts(counts, rule, thresholds, list(desc.classes), done, skipped)

        for name in splits:  # every other split keeps its ids and its labels
            if name != split:
                copy_labels(data, name, tmp / "label", dtype, options)
        splits[split] = predicted_ids
        truth = splits.get(labelled, []) if labelled else []
        repeat = labelled_repeat if labelled_repeat is not None else max(1, -(-len(predicted_ids) // max(len(truth), 1)))
        splits[out_split] = truth * repeat + predicted_ids
        for name, ids in splits.items():
            (tmp / "splits" / f"{name}.txt").write_text("".join(f"{i}\n" for i in ids))
        if (data / "attributes.csv").is_file():
            shutil.copy2(data / "attributes.csv", tmp / "attributes.csv")
        where = f"{data} [{split}]"
        write_linked_description(data, tmp, out, label={"folder": "label", "encoding": "png", "optional": True},
                                 description=f"pseudo-labels of {where} ({rule.describe()}); {out_split} = "
                                             f"{f'{labelled} x {repeat}' if labelled else 'no labelled split'} + "
                                             f"{split}")
        record = {"source": str(data), "split": split, "labelled": labelled, "labelled_repeat": repeat if truth else 0,
                  "out_split": out_split,
                  "replaced_split": (earlier["out_split"] if earlier and earlier["out_split"] not in (labelled, split)
                                     else None),
                  "model": str(model) if not isinstance(model, Predictor) else None,
                  "calibrated": predictor.calibration is not None,
                  "test_time": {"scales": list(predictor.scales), "flip": predictor.flip,
                                "window": None if predictor.window is None else list(predictor.window.size),
                                "scale_rule": predictor.scale_rule},
                  "sensor_checks": predictor.monitor is not None, **(provenance or {}), **report.to_dict()}
        (tmp / "pseudo_labels.json").write_text(json.dumps(record, indent=2))
        _write_samples(tmp / "samples.csv", per_sample)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return report


# a second round over a pseudo-labelled folder copied without the record of the first
ROUND_HINT = (" (if {split!r} is an earlier pseudo-labelling round's joined split, the folder's pseudo_labels.json, "
              "which names it, is missing: copy it back)")


def _earlier_round(data: Path) -> dict | None:
    """What an earlier ``pseudo_label`` run recorded in ``data/pseudo_labels.json`` (``split``: the split it
    pseudo-labelled, ``out_split``: its joined split), when ``data`` is a folder it wrote; else None."""
    path = data / "pseudo_labels.json"
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: not a pseudo-labelling record ({e})") from e
    if not isinstance(record, dict) or not isinstance(record.get("out_split"), str):
        raise DataError(f"{path}: not a pseudo-labelling record (no out_split)")
    return record


LABELLED_HINT = "labelled='SPLIT', or labelled=None"  # the keyword to give; rgbx pseudo-label names its flag


def _plan_splits(data: Path, split: str, labelled: str | None, out_split: str,
                 earlier: dict | None = None) -> dict[str, list[str]]:
    """The source's splits (ids) the output carries; checks the split names the call gives. The joined split of an
    earlier round (``earlier``: :func:`_earlier_round`) is not carried, unless it is the ``labelled`` split or the one
    to label: the new joined split replaces it."""
    from rgbx.data.datasets.folder import list_splits, read_ids

    names = list_splits(data)
    if earlier is not None and earlier["out_split"] not in (labelled, split):
        names = [name for name in names if name != earlier["out_split"]]
    if split not in names:
        raise ConfigError(f"{data}: no split {split!r} to pseudo-label (splits: {', '.join(names) or 'none'})")
    if labelled is not None and labelled not in names:
        raise ConfigError(f"{data}: no labelled split {labelled!r} (splits: {', '.join(names)}); give the split the "
                          f"pseudo-labelled samples join with {LABELLED_HINT}")
    if labelled == split:
        raise ConfigError(f"split {split!r} is both the one to pseudo-label and the labelled one")
    if out_split in names:
        raise ConfigError(f"{data} already has a split {out_split!r}; name the joined split otherwise"
                          f"{'' if earlier else ROUND_HINT.format(split=out_split)}")
    return {name: read_ids(data / "splits" / f"{name}.txt") for name in names}


def _accuracy(pred: torch.Tensor, label: torch.Tensor | None, ignore_index: int) -> float | None:
    if label is None:
        return None
    has = label != ignore_index
    return float((pred[has] == label[has]).double().mean()) if has.any() else None


def _write_samples(path: Path, per_sample: dict[str, dict]) -> None:
    """``samples.csv``: one row per pseudo-labelled sample, the least confident first (the lowest mean confidence:
    it tracks a sample's accuracy better than the share of its pixels kept, whose class thresholds differ)."""
    import csv

    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "sensors", "mean_confidence", "kept", "accuracy"])
        for sid, row in sorted(per_sample.items(), key=lambda item: (item[1]["confidence"], item[0])):
            accuracy = "" if row["accuracy"] is None else f"{row['accuracy']:.4f}"
            writer.writerow([sid, row["sensors"], f"{row['confidence']:.4f}", f"{row['kept']:.4f}", accuracy])


def _label_dtype(values: int):
    return np.uint8 if values <= 256 else np.uint16


def _read_png(path: Path) -> np.ndarray:
    from rgbx.modalities import read_array

    return read_array(path)[0]
