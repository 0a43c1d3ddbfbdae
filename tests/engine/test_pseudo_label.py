"""Pseudo-labelling (self-training): the selection rule against its definition, the report against figures counted
by hand, and `rgbx pseudo-label`'s dataset folder end to end (links to the source's files, labels kept where the
confidence passes, other splits' labels carried, nothing used from the labels of the split it labels)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from rgbx.cli.main import main
from rgbx.data import build_dataset
from rgbx.data.description import DESCRIPTION_FILE
from rgbx.engine.predict import Predictor
from rgbx.engine.pseudo_label import (
    BINS,
    PseudoLabelReport,
    PseudoLabelRule,
    SelectionCounts,
    pseudo_label,
    quantize_confidence,
)
from rgbx.errors import ConfigError, DataError
from rgbx.modalities import read_array, write_array
from tests.conftest import make_dataset

IDS = [f"s{i:03d}" for i in range(12)]
SPLITS = {"train": IDS[:4], "val": IDS[4:6], "raw": IDS[6:]}


def _counts(pred: torch.Tensor, conf: torch.Tensor, label: torch.Tensor | None, k: int) -> SelectionCounts:
    counts = SelectionCounts(k, 255)
    for i in range(pred.shape[0]):
        counts.add(pred[i], quantize_confidence(conf[i]), None if label is None else label[i])
    return counts


def test_rule_thresholds_follow_their_definition():
    gen = torch.Generator().manual_seed(0)
    k = 4
    pred = torch.randint(0, 3, (5, 20, 30), generator=gen)  # class 3 never predicted
    conf = torch.rand(5, 20, 30, generator=gen) * 0.7 + 0.3 * (pred == 0)  # class 0 more confident
    counts = _counts(pred, conf, None, k)
    bins = (quantize_confidence(conf) >> 4).flatten()
    flat = pred.flatten()
    for fraction in (0.1, 0.5, 1.0):
        thresholds = PseudoLabelRule(class_fraction=fraction).thresholds(counts.predicted)
        assert thresholds[3] == BINS  # nothing to keep
        for c in range(3):
            mine = bins[flat == c]
            kept = int((mine >= thresholds[c]).sum())
            assert kept >= np.ceil(fraction * len(mine))  # at least the fraction
            assert int((mine >= thresholds[c] + 1).sum()) < np.ceil(fraction * len(mine))  # the highest such bin
    floor = PseudoLabelRule(min_confidence=0.9).thresholds(counts.predicted)
    assert floor.tolist() == [int(np.ceil(0.9 * BINS))] * k
    both = PseudoLabelRule(min_confidence=0.9, class_fraction=0.5).thresholds(counts.predicted)
    balanced = PseudoLabelRule(class_fraction=0.5).thresholds(counts.predicted)
    assert both.tolist() == torch.minimum(floor, balanced).tolist()  # a pixel passing either rule is kept
    with pytest.raises(ConfigError, match="min_confidence .* and/or"):
        PseudoLabelRule()
    with pytest.raises(ConfigError, match="between 0 and 1"):
        PseudoLabelRule(min_confidence=1.0)
    with pytest.raises(ConfigError, match="fraction in"):
        PseudoLabelRule(class_fraction=0.0)


def test_report_figures_follow_their_definitions():
    gen = torch.Generator().manual_seed(1)
    k = 3
    pred = torch.randint(0, k, (4, 10, 12), generator=gen)
    conf = torch.rand(4, 10, 12, generator=gen)
    label = torch.where(torch.rand(4, 10, 12, generator=gen) < 0.7, pred, torch.randint(0, k, (4, 10, 12),
                                                                                         generator=gen))
    label[0, :3] = 255
    rule = PseudoLabelRule(min_confidence=0.5, class_fraction=0.3)
    counts = _counts(pred, conf, label, k)
    thresholds = rule.thresholds(counts.predicted)
    report = PseudoLabelReport.from_counts(counts, rule, thresholds, ["a", "b", "c"], samples=4, skipped=[])

    kept = (quantize_confidence(conf) >> 4) >= thresholds[pred]
    has = label != 255
    right = pred == label
    assert report.kept == [int((kept & (pred == c)).sum()) for c in range(k)]
    assert report.predicted == [int((pred == c).sum()) for c in range(k)]
    assert report.accuracy_all == pytest.approx(float(right[has].float().mean()))
    assert report.accuracy_kept == pytest.approx(float(right[has & kept].float().mean()))
    assert report.coverage == pytest.approx(float(kept[has].float().mean()))
    for c in range(k):
        mine = kept & has & (pred == c)
        assert report.precision[c] == pytest.approx(float(right[mine].float().mean()))
        assert report.recall[c] == pytest.approx(float((right & kept & (label == c)).sum() / (label == c).sum()))
    assert report.thresholds == [min(1.0, int(t) / BINS) for t in thresholds]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A toy RGB-D dataset with a `raw` split, and a model briefly trained on its 4 labelled samples, calibrated."""
    from rgbx.engine.calibration import calibrate_file
    from rgbx.engine.config import load_config
    from rgbx.engine.report import Reporter
    from rgbx.engine.trainer import Trainer

    folder = tmp_path_factory.mktemp("pseudo")
    data = make_dataset(folder / "data", n=12, size=(16, 20), modalities=("rgb", "depth"), splits=SPLITS)
    cfg = load_config(None, [f"data.root={data}", f"output_dir={folder / 'run'}", "model.backbone=mit_nano",
                             "model.head_channels=16", "model.modalities=[rgb,depth]", "data.crop_size=[16,20]",
                             "data.num_workers=0", "train.batch_size=2", "train.iters=20", "train.eval_every=0",
                             "train.checkpoint_every=0", "optim.warmup_iters=2", "optim.lr=2e-3",
                             "method.modality_dropout=0.3"])
    Trainer(cfg, reporter=Reporter(quiet=True)).fit()
    path, _ = calibrate_file(folder / "run" / "model.safetensors", data, "val")
    return data, path


def _png(path: Path) -> np.ndarray:
    return read_array(path)[0]


def test_pseudo_label_writes_a_dataset_folder_of_confident_pixels(teacher, tmp_path):
    data, model = teacher
    data = Path(shutil.copytree(data, tmp_path / "data"))  # beside the output, to move both together below
    # a floor the briefly trained model's calibrated confidences do not all reach (with one torch thread per pytest
    # worker it predicts ground everywhere, 86 % right there), so that the rule leaves some pixels out
    rule = PseudoLabelRule(min_confidence=0.95, class_fraction=0.4)
    out = tmp_path / "out"
    report = pseudo_label(model, data, "raw", out, rule)

    # the splits: the source's, and train_pseudo = train + raw
    # labelled samples repeated until they are at least as many as the pseudo-labelled: 6 / 4 → twice
    assert (out / "splits" / "train_pseudo.txt").read_text().split() == SPLITS["train"] * 2 + SPLITS["raw"]
    for name, ids in SPLITS.items():
        assert (out / "splits" / f"{name}.txt").read_text().split() == ids
    assert (out / "attributes.csv").read_text() == (data / "attributes.csv").read_text()
    described = yaml.safe_load((out / DESCRIPTION_FILE).read_text())
    assert described["modalities"]["rgb"]["folder"] == "../data/rgb"  # the source's files, not copies
    assert not (out / "rgb").exists()

    # every raw pixel: its class where the (calibrated) confidence passes its class's threshold, else ignore
    predictor = Predictor.from_file(model)
    assert predictor.calibration is not None
    source = build_dataset("folder", data, "raw")
    linked = build_dataset("folder", out, "raw")
    thresholds = torch.tensor([round(t * BINS) for t in report.thresholds])
    kept_total, kept_share, mean_confidence = 0, {}, {}
    for i, sid in enumerate(SPLITS["raw"]):
        sample = source.load(i)
        assert all(torch.equal(sample["inputs"][m], linked.load(i)["inputs"][m]) for m in ("rgb", "depth"))
        pred, conf = predictor.predict_with_confidence(sample)
        q = quantize_confidence(conf)
        assert np.array_equal(_png(out / "prediction" / f"{sid}.png"), pred.numpy())
        assert np.array_equal(_png(out / "confidence" / f"{sid}.png"), q.numpy())
        keep = (q >> 4) >= thresholds[pred]
        expected = pred.masked_fill(~keep, 255)
        assert torch.equal(linked.load(i)["label"], expected)
        kept_total += int(keep.sum())
        kept_share[sid] = float(keep.double().mean())
        mean_confidence[sid] = float(conf.double().mean())
    assert kept_total == sum(report.kept) > 0
    rows = list(csv.DictReader((out / "samples.csv").open()))  # the least confident first
    assert [r["id"] for r in rows] == sorted(mean_confidence, key=lambda sid: (mean_confidence[sid], sid))
    assert all(float(r["kept"]) == pytest.approx(kept_share[r["id"]], abs=1e-4) for r in rows)
    assert all(float(r["mean_confidence"]) == pytest.approx(mean_confidence[r["id"]], abs=1e-4) for r in rows)
    assert {r["sensors"] for r in rows} == {"rgb+depth"} and all(0 <= float(r["accuracy"]) <= 1 for r in rows)
    assert 0 < report.kept_share < 1
    # the labelled splits' labels come through unchanged
    for split in ("train", "val"):
        a, b = build_dataset("folder", data, split), build_dataset("folder", out, split)
        assert all(torch.equal(a.load(i)["label"], b.load(i)["label"]) for i in range(len(a)))

    record = json.loads((out / "pseudo_labels.json").read_text())
    assert record["split"] == "raw" and record["calibrated"] is True and record["labelled_repeat"] == 2
    assert record["rule"] == {"min_confidence": 0.95, "class_fraction": 0.4}
    assert record["kept"] == report.kept and record["scored_samples"] == 6  # raw has labels here: scored

    # the two folders move together (relative paths)
    moved = tmp_path / "elsewhere"
    shutil.copytree(data, moved / "data")
    shutil.copytree(out, moved / "out")
    assert torch.equal(build_dataset("folder", moved / "out", "raw").load(0)["inputs"]["rgb"],
                       source.load(0)["inputs"]["rgb"])


def test_pseudo_labels_never_read_the_labels_of_the_split(teacher, tmp_path):
    data, model = teacher
    bare = tmp_path / "bare"
    shutil.copytree(data, bare)
    for sid in SPLITS["raw"]:
        (bare / "label" / f"{sid}.png").unlink()
    described = yaml.safe_load((bare / DESCRIPTION_FILE).read_text())
    described["label"] = {"optional": True}
    (bare / DESCRIPTION_FILE).write_text(yaml.safe_dump(described))
    rule = PseudoLabelRule(class_fraction=0.5)
    with_labels = pseudo_label(model, data, "raw", tmp_path / "a", rule)
    without = pseudo_label(model, bare, "raw", tmp_path / "b", rule)
    for sid in SPLITS["raw"]:
        assert np.array_equal(_png(tmp_path / "a" / "label" / f"{sid}.png"),
                              _png(tmp_path / "b" / "label" / f"{sid}.png"))
    assert with_labels.kept == without.kept and with_labels.thresholds == without.thresholds
    assert with_labels.accuracy_all is not None and without.accuracy_all is None and without.precision == []


def test_pseudo_label_leaves_out_failed_sensors_and_skips_dead_samples(teacher, tmp_path):
    from rgbx.data.sensor_health import SensorMonitor

    data, model = teacher
    broken = tmp_path / "broken"
    shutil.copytree(data, broken)
    dead, blind = SPLITS["raw"][0], SPLITS["raw"][1]
    for sid in (dead, blind):
        write_array(broken / "rgb" / f"{sid}.png", np.zeros((3, 16, 20), np.uint8))  # a black camera frame
    write_array(broken / "depth" / f"{dead}.png", np.zeros((1, 16, 20), np.uint16))  # no depth either
    predictor = Predictor.from_file(model, monitor=SensorMonitor())
    report = pseudo_label(predictor, broken, "raw", tmp_path / "out", PseudoLabelRule(class_fraction=0.5))
    assert report.skipped == [dead]
    assert dead not in (tmp_path / "out" / "splits" / "train_pseudo.txt").read_text().split()
    assert not (tmp_path / "out" / "label" / f"{dead}.png").exists()
    # the blind sample is labelled from depth alone: what the model predicts without its camera
    sample = build_dataset("folder", broken, "raw").load(1)
    depth_only = Predictor.from_file(model).predict({**sample, "inputs": {"depth": sample["inputs"]["depth"]}})
    assert np.array_equal(_png(tmp_path / "out" / "prediction" / f"{blind}.png"), depth_only.numpy())
    sensors = {r["id"]: r["sensors"] for r in csv.DictReader((tmp_path / "out" / "samples.csv").open())}
    assert sensors[blind] == "depth" and sensors[SPLITS["raw"][2]] == "rgb+depth" and dead not in sensors


def test_pseudo_label_refuses_what_would_lose_or_corrupt_data(teacher, tmp_path, monkeypatch):
    data, model = teacher
    rule = PseudoLabelRule(class_fraction=0.5)
    (tmp_path / "taken").mkdir()
    with pytest.raises(ConfigError, match="already exists"):
        pseudo_label(model, data, "raw", tmp_path / "taken", rule)
    with pytest.raises(ConfigError, match="no split 'nope'"):
        pseudo_label(model, data, "nope", tmp_path / "o1", rule)
    with pytest.raises(ConfigError, match="both the one to pseudo-label and the labelled"):
        pseudo_label(model, data, "raw", tmp_path / "o2", rule, labelled="raw")
    with pytest.raises(ConfigError, match="already has a split 'val'"):
        pseudo_label(model, data, "raw", tmp_path / "o3", rule, out_split="val")
    overlap = tmp_path / "overlap"
    shutil.copytree(data, overlap)
    (overlap / "splits" / "val.txt").write_text(f"{SPLITS['val'][0]}\n{SPLITS['raw'][2]}\n")
    with pytest.raises(ConfigError, match=f"{SPLITS['raw'][2]} of split 'raw' are also in split 'val'"):
        pseudo_label(model, overlap, "raw", tmp_path / "o4", rule)
    other = make_dataset(tmp_path / "two", n=4, size=(16, 20), modalities=("rgb", "depth"),
                         splits={"train": IDS[:2], "raw": IDS[2:4]})
    described = yaml.safe_load((other / DESCRIPTION_FILE).read_text())
    described["classes"] = ["a", "b"]
    described["palette"] = [[0, 0, 0], [1, 1, 1]]
    (other / DESCRIPTION_FILE).write_text(yaml.safe_dump(described))
    with pytest.raises(ConfigError, match="predicts 3 classes but .* has 2"):
        pseudo_label(model, other, "raw", tmp_path / "o5", rule)

    # a run that dies half-way leaves neither the folder nor its temporary copy
    calls = {"n": 0}
    real = Predictor.predict_with_confidence

    def dies(self, sample):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("killed")
        return real(self, sample)

    monkeypatch.setattr(Predictor, "predict_with_confidence", dies)
    with pytest.raises(RuntimeError, match="killed"):
        pseudo_label(model, data, "raw", tmp_path / "o6", rule)
    assert not (tmp_path / "o6").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".o6.")]


def test_cli_pseudo_label_then_train_on_it(teacher, tmp_path, capsys):
    data, model = teacher
    out = tmp_path / "pseudo"
    assert main(["pseudo-label", str(model), "--data", str(data), "--split", "raw", "--out", str(out),
                 "--workers", "0", "--labelled", "none", "--json", str(tmp_path / "r.json")]) == 0
    text = capsys.readouterr().out
    assert "top 50% of each class's pixels" in text and "precision" in text and "train_pseudo" in text
    record = json.loads((tmp_path / "r.json").read_text())
    assert record["rule"] == {"min_confidence": None, "class_fraction": 0.5} and record["labelled"] is None
    assert record["model"] == str(model)
    assert (out / "splits" / "train_pseudo.txt").read_text().split() == SPLITS["raw"]
    assert main(["pseudo-label", str(model), "--data", str(data), "--split", "raw", "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err

    run = tmp_path / "student"
    assert main(["train", "synth_mean_b0", f"data.root={out}", "data.train_split=train_pseudo",
                 "data.val_split=val", f"output_dir={run}", "model.backbone=mit_nano", "model.modalities=[rgb,depth]",
                 "model.head_channels=16", "data.crop_size=[16,20]", "data.num_workers=0", "train.batch_size=2",
                 "train.iters=2", "train.eval_every=0", "train.checkpoint_every=0", "optim.warmup_iters=0"]) == 0
    assert (run / "model.safetensors").is_file()


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(f.relative_to(folder)): f.read_bytes() for f in sorted(folder.rglob("*")) if f.is_file()}


def test_a_second_round_pseudo_labels_the_first_rounds_folder_as_the_docs_say(teacher, tmp_path, capsys):
    """docs/self-training.md: round 1, then "pseudo-label the same split of OUT with the student (`--data OUT --split
    raw --labelled train`)": the student re-labels raw, OUT2's train_pseudo = train + raw with its labels, OUT's
    train_pseudo (the earlier round's) is not taken for a split of the user's, and OUT is left as it was."""
    data, model = teacher
    data = Path(shutil.copytree(data, tmp_path / "rig"))
    out, out2 = tmp_path / "rig-pseudo", tmp_path / "rig-pseudo2"
    assert main(["pseudo-label", str(model), "--data", str(data), "--split", "raw", "--out", str(out),
                 "--workers", "0"]) == 0
    before = _tree(out)
    # the student: here the same model with a stricter rule, so that its pseudo-labels differ from round 1's
    assert main(["pseudo-label", str(model), "--data", str(out), "--split", "raw", "--labelled", "train",
                 "--out", str(out2), "--workers", "0", "--class-fraction", "0.2"]) == 0, capsys.readouterr().err
    capsys.readouterr()
    assert _tree(out) == before  # round 1's folder untouched

    assert sorted(p.stem for p in (out2 / "splits").glob("*.txt")) == ["raw", "train", "train_pseudo", "val"]
    assert (out2 / "splits" / "train_pseudo.txt").read_text().split() == SPLITS["train"] * 2 + SPLITS["raw"]
    assert (out2 / "splits" / "raw.txt").read_text().split() == SPLITS["raw"]
    assert yaml.safe_load((out2 / DESCRIPTION_FILE).read_text())["modalities"]["rgb"]["folder"] == "../rig/rgb"
    record = json.loads((out2 / "pseudo_labels.json").read_text())
    assert record["source"] == str(out) and record["replaced_split"] == "train_pseudo"
    assert record["scored_samples"] == 0  # raw's labels in OUT are round 1's pseudo-labels, not the truth
    # raw: round 2's pseudo-labels (its own predictions and thresholds), not round 1's
    thresholds = np.array([round(t * BINS) for t in record["thresholds"]])
    changed = 0
    for sid in SPLITS["raw"]:
        pred, q = _png(out2 / "prediction" / f"{sid}.png"), _png(out2 / "confidence" / f"{sid}.png").astype(np.int64)
        expected = np.where((q >> 4) >= thresholds[pred], pred, 255)
        assert np.array_equal(_png(out2 / "label" / f"{sid}.png"), expected)
        changed += int((expected != _png(out / "label" / f"{sid}.png")).sum())
    assert changed > 0
    # the joined split reads the labelled samples' true labels and raw's new pseudo-labels
    joined, truth = build_dataset("folder", out2, "train_pseudo"), build_dataset("folder", data, "train")
    for i, sid in enumerate(joined.ids):
        label = joined.load(i)["label"]
        if sid in SPLITS["train"]:
            assert torch.equal(label, truth.load(SPLITS["train"].index(sid))["label"])
        else:
            assert np.array_equal(label.numpy(), _png(out2 / "label" / f"{sid}.png"))

    # another name for the joined split: the earlier one is still not carried
    report = pseudo_label(model, out, "raw", tmp_path / "other", PseudoLabelRule(class_fraction=0.2),
                          out_split="train_pseudo2")
    assert sorted(p.stem for p in (tmp_path / "other" / "splits").glob("*.txt")) == ["raw", "train",
                                                                                    "train_pseudo2", "val"]
    assert report.accuracy_all is None
    # a split of the user's that holds raw samples is still refused
    (data / "splits" / "mine.txt").write_text(f"{SPLITS['raw'][0]}\n")
    with pytest.raises(ConfigError, match="also in split 'mine'"):
        pseudo_label(model, data, "raw", tmp_path / "o1", PseudoLabelRule(class_fraction=0.2))
    assert _tree(out) == before
    # round 1's folder copied without its record: the refusal says what is missing
    copy = tmp_path / "copied"
    shutil.copytree(out, copy)
    (copy / "pseudo_labels.json").unlink()
    with pytest.raises(ConfigError, match=r"already has a split 'train_pseudo'; .* the folder's pseudo_labels.json, "
                                          r"which names it, is missing: copy it back"):
        pseudo_label(model, copy, "raw", tmp_path / "o2", PseudoLabelRule(class_fraction=0.2), labelled="train")


def test_selection_counts_name_a_size_mismatch():
    counts = SelectionCounts(3, 255)
    with pytest.raises(DataError, match="labels of \\(6,\\) pixels"):
        counts.add(torch.zeros(2, 4, dtype=torch.long), torch.zeros(2, 4, dtype=torch.int32),
                   torch.zeros(2, 3, dtype=torch.long))


def test_a_pseudo_labelled_folder_packs_into_shards_without_leaving_the_archive(teacher, tmp_path):
    import tarfile

    from rgbx.data.datasets.shards import pack_dataset

    data, model = teacher
    pseudo_label(model, data, "raw", tmp_path / "pseudo", PseudoLabelRule(class_fraction=0.5))
    pack_dataset(tmp_path / "pseudo", tmp_path / "packed", shard_size=4)
    members = [m for tar in (tmp_path / "packed" / "shards").glob("*.tar") for m in tarfile.open(tar).getnames()]
    assert members and not [m for m in members if ".." in Path(m).parts]
    folder = build_dataset("folder", tmp_path / "pseudo", "train_pseudo")
    packed = build_dataset("shards", tmp_path / "packed", "train_pseudo")
    assert packed.ids == folder.ids  # the labelled samples' repeats too, each packed once
    joined = [m for tar in (tmp_path / "packed" / "shards").glob("train_pseudo-*.tar") for m in tarfile.open(tar).getnames()]
    assert len(joined) == len(set(joined)) == 3 * len(set(folder.ids))  # rgb, depth, label: once per sample
    for i in (0, len(folder) - 1):
        a, b = folder.load(i), packed.load(i)
        assert torch.equal(a["label"], b["label"]) and torch.equal(a["inputs"]["rgb"], b["inputs"]["rgb"])
