"""Robustness report: expected mIoU formula, corruptions (fraction, isolation, determinism) and the CLI JSON."""

from __future__ import annotations

import json

import pytest
import torch
from rich.console import Console

import rgbx
from rgbx.cli.main import main
from rgbx.data import FolderDataset, collate
from rgbx.data.transforms import EvalTransform
from rgbx.engine.checkpoint import save_model
from rgbx.engine.robustness import (
    CORRUPTIONS,
    corrupt_batch,
    expected_miou,
    print_robustness_tables,
    robustness_report,
    subset_probability,
)
from rgbx.errors import ConfigError
from rgbx.modalities import get_modality
from tests.conftest import CLASSES, make_dataset

MODS = ("rgb", "depth")


@pytest.fixture
def data(tmp_path):
    return make_dataset(tmp_path / "toy", n=4, size=(16, 20), modalities=MODS)


@pytest.fixture
def batch(data):
    ds = FolderDataset(data, "train", transform=EvalTransform())
    return collate([ds[i] for i in range(len(ds))])


def _model():
    torch.manual_seed(0)
    return rgbx.create_model(backbone="mit_nano", fusion="mean", modalities=list(MODS), num_classes=3,
                             head_channels=16)


# ---------------------------------------------------------------------------------------------------------------
# expected mIoU


def test_expected_miou_by_hand():
    mods = ("a", "b")
    mious = {"a+b": 0.6, "a": 0.5, "b": 0.2}
    p = 0.2
    # P(ab) = .64, P(a) = .8*.2 = .16, P(b) = .16, P(none) = .04 -> renormalise by .96
    hand = (0.64 * 0.6 + 0.16 * 0.5 + 0.16 * 0.2) / 0.96
    assert expected_miou(mious, mods, p) == pytest.approx(hand)
    assert subset_probability(("a",), mods, p) == pytest.approx(0.16)
    assert expected_miou(mious, mods, 0.0) == pytest.approx(0.6)  # no failure: the full set
    assert expected_miou(mious, mods, 0.5) == pytest.approx((0.6 + 0.5 + 0.2) / 3)  # all subsets equally likely
    with pytest.raises(ValueError):
        expected_miou(mious, mods, 1.0)


def test_expected_miou_three_modalities():
    mods = ("a", "b", "c")
    mious = {"a+b+c": 0.9, "a+b": 0.8, "a+c": 0.7, "b+c": 0.6, "a": 0.5, "b": 0.4, "c": 0.3}
    p = 0.1
    q = 1 - p
    hand = (q**3 * 0.9 + q * q * p * (0.8 + 0.7 + 0.6) + q * p * p * (0.5 + 0.4 + 0.3)) / (1 - p**3)
    assert expected_miou(mious, mods, p) == pytest.approx(hand)
    assert expected_miou(mious, mods, 0.5) == pytest.approx(sum(mious.values()) / 7)


# ---------------------------------------------------------------------------------------------------------------
# corruptions


def _physical(batch, m):
    return get_modality(m).denormalize(batch.inputs[m])


@pytest.mark.parametrize("rate", [0.25, 0.5, 0.75])
def test_dropout_sets_that_fraction_of_one_modality(batch, rate):
    out = corrupt_batch(batch, "dropout", ["depth"], rate, seed=0)
    depth = _physical(out, "depth")
    assert (_physical(batch, "depth") > 0).all()  # the toy depth has no holes
    frac = (depth.abs() < 1e-6).float().mean().item()  # invalid_value = 0 m
    assert frac == pytest.approx(rate, abs=0.01)
    assert torch.equal(out.inputs["rgb"], batch.inputs["rgb"])
    assert torch.equal(out.label, batch.label)
    # rgb (no invalid value): black pixels, all channels of a pixel at once
    out = corrupt_batch(batch, "dropout", ["rgb"], rate, seed=0)
    black = (_physical(out, "rgb").abs() < 1e-5).all(dim=1)
    assert black.float().mean().item() == pytest.approx(rate, abs=0.02)
    assert torch.equal(out.inputs["depth"], batch.inputs["depth"])


def test_dropout_all_modalities_at_once(batch):
    out = corrupt_batch(batch, "dropout", ["rgb", "depth"], 0.5, seed=0)
    assert not torch.equal(out.inputs["rgb"], batch.inputs["rgb"])
    assert not torch.equal(out.inputs["depth"], batch.inputs["depth"])


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_corruptions_deterministic_and_isolated(batch, name):
    s = CORRUPTIONS[name].strengths[-1]
    a = corrupt_batch(batch, name, ["rgb"], s, seed=3)
    b = corrupt_batch(batch, name, ["rgb"], s, seed=3)
    c = corrupt_batch(batch, name, ["rgb"], s, seed=4)
    assert torch.equal(a.inputs["rgb"], b.inputs["rgb"])
    assert not torch.equal(a.inputs["rgb"], c.inputs["rgb"])
    assert not torch.equal(a.inputs["rgb"], batch.inputs["rgb"])
    assert torch.equal(a.inputs["depth"], batch.inputs["depth"])
    # per-sample seeding: the same sample gets the same corruption in a batch of its own
    single = collate([{"inputs": {m: batch.inputs[m][1] for m in MODS}, "label": batch.label[1],
                       "meta": batch.meta[1]}])
    one = corrupt_batch(single, name, ["rgb"], s, seed=3)
    assert torch.allclose(one.inputs["rgb"][0], a.inputs["rgb"][1])


def test_misalignment_shifts_the_frame_and_leaves_no_measurement_behind():
    from rgbx.engine.robustness import misalignment

    spec = get_modality("depth")
    x = torch.arange(1, 1 + 40 * 50, dtype=torch.float32).view(1, 40, 50)
    shifts = set()
    for seed in range(12):
        out = misalignment(x, 0.1, spec, torch.Generator().manual_seed(seed))  # 4 pixels: 0.1 × 40
        kept = out != spec.invalid_value
        # every kept value is the frame's value dy rows and dx columns away, the same offset everywhere
        rows, cols = kept[0].nonzero(as_tuple=True)
        source = (out[0][kept[0]].long() - 1)
        dy, dx = set((rows - source // 50).tolist()), set((cols - source % 50).tolist())
        assert len(dy) == len(dx) == 1
        dy, dx = dy.pop(), dx.pop()
        assert 3.5 <= (dy * dy + dx * dx) ** 0.5 <= 4.5  # |shift| = 4 px, rounded per axis
        assert int(kept.sum()) == (40 - abs(dy)) * (50 - abs(dx))  # the uncovered border: no measurement
        shifts.add((dy, dx))
    assert len(shifts) > 4  # the direction is drawn per sample
    assert torch.equal(misalignment(x, 2.0, spec, torch.Generator().manual_seed(0)),
                       torch.zeros_like(x))  # shifted past the frame: nothing left


def test_gaussian_noise_strength_and_salt_pepper_values(batch):
    out = corrupt_batch(batch, "gaussian", ["depth"], 0.25, seed=0)
    # std as a fraction of the normalisation std = noise std in normalised units
    diff = out.inputs["depth"] - batch.inputs["depth"]
    assert diff.std().item() == pytest.approx(0.25, rel=0.15)
    out = corrupt_batch(batch, "salt_pepper", ["depth"], 0.1, seed=0)
    depth = _physical(out, "depth")
    changed = ~torch.isclose(depth, _physical(batch, "depth"))
    assert changed.float().mean().item() == pytest.approx(0.1, abs=0.02)
    lo, hi = get_modality("depth").display_range
    vals = depth[changed]
    assert torch.all(torch.isclose(vals, torch.tensor(lo)) | torch.isclose(vals, torch.tensor(hi)))


def test_absent_samples_untouched(batch):
    dropped = batch.drop({"depth": torch.tensor([True, False])})
    out = corrupt_batch(dropped, "gaussian", ["depth"], 0.5, seed=0)
    assert torch.equal(out.inputs["depth"][0], dropped.inputs["depth"][0])
    assert not torch.equal(out.inputs["depth"][1], dropped.inputs["depth"][1])


# ---------------------------------------------------------------------------------------------------------------
# the report


def test_chosen_corruptions_at_chosen_strengths(data):
    ds = FolderDataset(data, "train", transform=EvalTransform())
    loader = torch.utils.data.DataLoader(ds, batch_size=2, collate_fn=collate)
    report = robustness_report(_model(), loader, num_classes=3, corruptions=["misalignment"], failures=[],
                               strengths={"misalignment": [0.1, 0.3]})
    entry = report["corruptions"]["misalignment"]
    assert list(report["corruptions"]) == ["misalignment"] and entry["strengths"] == [0.1, 0.3]
    assert list(entry["miou"]) == ["depth"] and list(entry["miou"]["depth"]) == ["0.1", "0.3"]
    assert not report["silent_failures"]["results"]
    with pytest.raises(ConfigError, match="unknown corruption 'shake'"):
        robustness_report(_model(), loader, num_classes=3, strengths={"shake": [0.1]})


def test_report_sections(data):
    ds = FolderDataset(data, "train", transform=EvalTransform())
    loader = torch.utils.data.DataLoader(ds, batch_size=2, collate_fn=collate)
    model = _model()
    report = robustness_report(model, loader, num_classes=3, ignore_index=255, device="cpu", seed=0,
                               class_names=CLASSES)
    em = report["entire_missing"]
    assert list(em["subsets"]) == ["rgb+depth", "rgb", "depth"]
    mious = {s: m["miou"] for s, m in em["subsets"].items()}
    assert em["average"] == pytest.approx(sum(mious.values()) / 3)
    assert set(em["expected"]) == {"0.2", "0.1", "0.05"}
    assert em["expected"]["0.1"] == pytest.approx(expected_miou(mious, MODS, 0.1))
    assert report["clean_miou"] == pytest.approx(mious["rgb+depth"])
    cor = report["corruptions"]
    assert set(cor) == {"dropout", "gaussian", "salt_pepper", "misalignment"}
    assert set(cor["dropout"]["miou"]) == {"rgb", "depth", "all"}
    assert set(cor["gaussian"]["miou"]) == {"rgb", "depth"}
    assert set(cor["misalignment"]["miou"]) == {"depth"}  # rgb is the labels' frame: the others move against it
    assert list(cor["dropout"]["miou"]["depth"]) == ["0.25", "0.5", "0.75"]
    json.dumps(report)
    # same seed, different batch size: identical numbers
    again = robustness_report(model, torch.utils.data.DataLoader(ds, batch_size=4, collate_fn=collate),
                              num_classes=3, ignore_index=255, device="cpu", seed=0, class_names=CLASSES)
    assert again["corruptions"] == cor
    assert again["silent_failures"] == report["silent_failures"]  # the predecessor of a batch's first sample carried
    console = Console(width=160, record=True)
    print_robustness_tables(report, console=console)
    text = console.export_text()
    assert "expected, p=0.2" in text and "average" in text and "salt_pepper" in text
    assert "silent failures" in text and "screened" in text


def test_silent_failures_screened_equal_the_sensor_absent(data):
    ds = FolderDataset(data, "train", transform=EvalTransform())
    n = len(ds)
    loader = torch.utils.data.DataLoader(ds, batch_size=3, collate_fn=collate)
    report = robustness_report(_model(), loader, num_classes=3, corruptions=[])
    section = report["silent_failures"]
    subsets = {s: m["miou"] for s, m in report["entire_missing"]["subsets"].items()}
    assert section["absent"] == {"rgb": subsets["depth"], "depth": subsets["rgb"]}
    assert section["false_alarms"] == {m: {"frames": n, "any": 0, "non_finite": 0, "no_signal": 0, "saturated": 0,
                                           "frozen": 0} for m in MODS}
    for m in MODS:
        for failure in ("blank", "nan", "saturated"):
            r = section["results"][m][failure]
            assert r["detected"] == 1.0, (m, failure)
            assert r["screened"] == pytest.approx(section["absent"][m], abs=1e-12), (m, failure)
        # frozen: every sample but the first (no predecessor, nothing to re-send: not counted) is caught
        assert section["results"][m]["frozen"]["detected"] == 1.0
    assert section["rules"]["depth"]["frozen_after"] == 3 and set(section["definitions"]) == {
        "blank", "nan", "saturated", "frozen"}
    # predecessors given by the dataset (what rgbx eval passes, the same under torchrun's shares) = the loader's order
    from rgbx.cli.evaluate import _previous_in

    by_dataset = robustness_report(_model(), loader, num_classes=3, corruptions=[], previous=_previous_in(ds))
    assert by_dataset["silent_failures"] == section


def test_silent_failures_fed_as_is_by_hand(data):
    """The as-is figure is the model given the failed frames: blank depth = depth 0 m everywhere, with presence."""
    ds = FolderDataset(data, "train", transform=EvalTransform())
    batch = collate([ds[i] for i in range(len(ds))])
    model = _model().eval()
    report = robustness_report(model, [batch], num_classes=3, corruptions=[], failures=["blank"])
    assert set(report["silent_failures"]["results"]["depth"]) == {"blank"}
    blank = dict(batch.inputs, depth=get_modality("depth").normalize(torch.zeros_like(batch.inputs["depth"])))
    from rgbx.engine.metrics import ConfusionMatrix

    cm = ConfusionMatrix(3, 255)
    with torch.no_grad():
        cm.update(model(blank, batch.present).logits.argmax(1), batch.label)
    assert report["silent_failures"]["results"]["depth"]["blank"]["as_is"] == pytest.approx(
        cm.compute("present").miou, abs=1e-12)
    assert robustness_report(model, [batch], num_classes=3, corruptions=[], failures=[])["silent_failures"][
        "results"] == {}


def test_cli_robustness_json(data, tmp_path, capsys):
    weights = save_model(tmp_path / "model.safetensors", _model(),
                         dataset={"classes": CLASSES, "ignore_index": 255})
    out = tmp_path / "robust.json"
    assert main([
        "eval", str(weights), "--data", str(data), "--split", "val", "--robustness", "--seed", "1",
        "--workers", "0", "--batch-size", "2", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "entire-missing" in printed and "corruptions" in printed
    result = json.loads(out.read_text())
    rob = result["robustness"]
    assert set(rob["entire_missing"]) >= {"subsets", "average", "expected", "expected_definition"}
    assert "renormalised" in rob["entire_missing"]["expected_definition"]
    assert set(rob["corruptions"]) == {"dropout", "gaussian", "salt_pepper", "misalignment"}
    assert result["seed"] == 1 and rob["seed"] == 1
    assert result["split"] == "val" and result["miou_convention"] == "present"
    assert result["model"]["modalities"] == list(MODS) and result["data"] == str(data)
    assert set(rob["silent_failures"]["results"]["rgb"]) == {"blank", "nan", "saturated", "frozen"}
    assert "silent failures" in printed


def test_cli_robustness_failures_and_rules(data, tmp_path):
    weights = save_model(tmp_path / "model.safetensors", _model(), dataset={"classes": CLASSES, "ignore_index": 255})
    out = tmp_path / "robust.json"
    assert main(["eval", str(weights), "--data", str(data), "--split", "val", "--robustness", "--workers", "0",
                 "--failures", "blank", "frozen", "--sensor-rule", "depth.min_coverage=0.5", "--json",
                 str(out)]) == 0
    silent = json.loads(out.read_text())["robustness"]["silent_failures"]
    assert set(silent["results"]["depth"]) == {"blank", "frozen"}
    assert silent["rules"]["depth"]["min_coverage"] == 0.5 and silent["rules"]["rgb"]["min_coverage"] is None
    assert main(["eval", str(weights), "--data", str(data), "--split", "val", "--robustness", "--workers", "0",
                 "--failures", "none", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["robustness"]["silent_failures"]["results"] == {}


# ---------------------------------------------------------------------------------------------------------------
# confidence when sensors fail


def test_confidence_of_each_case_uses_the_temperature_of_the_sensors_the_model_is_told_it_has(data):
    """Sensors absent or screened out: the remaining set's temperature; failed frames fed as they are: the full
    set's (the model believes every sensor present). Temperatures far apart tell the two apart: with 100 the
    confidence of 3 classes is about 1/3."""
    from rgbx.engine.calibration import ReliabilityHistogram, TemperatureScaling

    ds = FolderDataset(data, "train", transform=EvalTransform())
    batch = collate([ds[i] for i in range(len(ds))])
    model = _model().eval()
    scaling = TemperatureScaling({"rgb+depth": 0.01, "rgb": 100.0, "depth": 100.0}, "rgb+depth")
    plain = robustness_report(model, [batch], num_classes=3, failures=["blank"], corruptions=["gaussian"])
    report = robustness_report(model, [batch], num_classes=3, failures=["blank"], corruptions=["gaussian"],
                               confidence=True, temperatures=scaling)
    assert {k: v for k, v in report.items() if k != "confidence"} == plain  # the mIoUs do not change
    section = report["confidence"]
    assert section["calibrated"] and section["temperatures"] == scaling.temperatures
    assert section["method"] == "temperature"
    assert set(section["entire_missing"]) == {"rgb+depth", "rgb", "depth"}
    assert set(section["corruptions"]["gaussian"]) == {"rgb", "depth"}
    assert list(section["corruptions"]["gaussian"]["depth"]) == ["0.1", "0.25", "0.5"]

    def by_hand(inputs, present, temperature) -> dict:
        hist = ReliabilityHistogram(3)
        with torch.no_grad():
            hist.update((model(inputs, present).logits / temperature).softmax(1), batch.label)
        return hist.compute().to_dict()

    full = by_hand(batch.inputs, batch.present, 0.01)
    only_rgb = batch.with_modalities(("rgb",))
    for got, want in ((section["entire_missing"]["rgb+depth"], full),
                      (section["entire_missing"]["rgb"], by_hand(only_rgb.inputs, only_rgb.present, 100.0))):
        assert got["pixels"] == want["pixels"] > 0
        for key in ("accuracy", "confidence", "ece", "nll"):
            assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-7), key
    blank_depth = dict(batch.inputs, depth=get_modality("depth").normalize(torch.zeros_like(batch.inputs["depth"])))
    as_is = by_hand(blank_depth, batch.present, 0.01)  # fed as is: the full set's temperature
    got = section["silent_failures"]["depth"]["blank"]
    assert got["as_is"]["confidence"] == pytest.approx(as_is["confidence"], rel=1e-5)
    assert got["as_is"]["confidence"] > 0.4
    # screened: the blank depth is caught (every frame), so the model predicts from RGB at RGB's temperature
    assert got["screened"]["confidence"] == pytest.approx(section["entire_missing"]["rgb"]["confidence"], rel=1e-5)
    assert got["screened"]["confidence"] == pytest.approx(1 / 3, abs=0.01)
    uncalibrated = robustness_report(model, [batch], num_classes=3, failures=[], corruptions=[], confidence=True)
    assert not uncalibrated["confidence"]["calibrated"]
    assert uncalibrated["confidence"]["entire_missing"]["rgb+depth"]["confidence"] == pytest.approx(
        by_hand(batch.inputs, batch.present, 1.0)["confidence"], rel=1e-5)
    json.dumps(report)
    console = Console(width=200, record=True)
    print_robustness_tables(report, console=console)
    text = console.export_text()
    assert "confidence when sensors fail" in text and "blank, fed as is" in text and "gaussian 0.5" in text
    assert "calibrated per sensor set" in text
    # RGB alone at temperature 100: no pixel reaches 0.9; its cell says so rather than "—" alone, which reads as
    # probabilities that are not numbers
    rgb_row = next(line for line in text.splitlines() if "sensors given" in line and "│ rgb " in line)
    assert rgb_row.rstrip(" │").endswith("— (0%)"), rgb_row


def test_cli_robustness_with_calibration(data, tmp_path, capsys):
    from rgbx.engine.calibration import TemperatureScaling

    scaling = TemperatureScaling({"rgb+depth": 0.5, "rgb": 2.0, "depth": 3.0}, "rgb+depth")
    weights = save_model(tmp_path / "model.safetensors", _model(), dataset={"classes": CLASSES, "ignore_index": 255},
                         calibration=scaling.to_dict())
    out = tmp_path / "robust.json"
    assert main(["eval", str(weights), "--data", str(data), "--split", "val", "--robustness", "--calibration",
                 "--failures", "frozen", "--workers", "0", "--json", str(out)]) == 0
    assert "confidence when sensors fail" in capsys.readouterr().out
    section = json.loads(out.read_text())["robustness"]["confidence"]
    assert section["temperatures"] == scaling.temperatures
    assert set(section["silent_failures"]["depth"]["frozen"]) == {"as_is", "screened"}
    assert main(["eval", str(weights), "--data", str(data), "--robustness", "--calibration", "--reliability",
                 str(tmp_path / "r"), "--workers", "0"]) == 2
    assert "--reliability draws the plain evaluation's diagrams" in capsys.readouterr().err


def test_the_command_line_offers_the_corruptions_the_robustness_report_runs():
    """`rgbx eval --corruptions` names them without importing the engine (``--help`` stays light), as it does the
    runtimes (tests/engine/test_onnx_model.py): its list must stay the engine's."""
    import argparse

    from rgbx.cli.main import build_parser
    from rgbx.engine.robustness import CORRUPTIONS

    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    action = next(a for a in commands["eval"]._actions if "--corruptions" in a.option_strings)
    assert tuple(action.choices) == (*CORRUPTIONS, "none")
