"""Confidence calibration: the reliability figures against their definitions, temperature fitting against known
temperatures, the per-sensor-set record in model files, and `rgbx calibrate` / `eval --calibration` /
`predict --confidence` end to end."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import rgbx
from rgbx.cli.main import main
from rgbx.data import collate
from rgbx.data.description import write_description
from rgbx.data.sample import normalize_sample
from rgbx.engine.calibration import (
    PixelSample,
    ReliabilityHistogram,
    TemperatureScaling,
    fit_temperature,
    fit_temperatures,
    fit_vector_scaling,
    temperature_nll,
    vector_nll,
)
from rgbx.engine.evaluate import all_subsets, evaluate
from rgbx.engine.inference import class_probabilities, predict_logits
from rgbx.engine.predict import frame_sample
from rgbx.errors import CheckpointError, ConfigError
from rgbx.models.model_file import read_model_info
from tests.conftest import CLASSES, make_dataset


def _ece_by_definition(conf: np.ndarray, right: np.ndarray, bins: int) -> float:
    """Guo et al. eq. 3, written out: bins (lo, hi], the first [0, 1/bins]... here [lo, hi) as rgbx bins them."""
    total = 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        member = (conf >= lo) & ((conf < hi) if b < bins - 1 else (conf <= hi))
        if member.any():
            total += member.sum() / len(conf) * abs(right[member].mean() - conf[member].mean())
    return total


def test_reliability_figures_follow_their_definitions():
    torch.manual_seed(0)
    k, ignore = 4, 255
    logits = torch.randn(3, k, 9, 11) * 2
    target = torch.randint(0, k, (3, 9, 11))
    target[0, :2] = ignore  # not counted
    probs = logits.softmax(1)
    hist = ReliabilityHistogram(k, ignore, bins=10, thresholds=(0.5, 0.9))
    hist.update(probs[:2], target[:2])
    hist.update(probs[2:], target[2:])  # accumulates
    m = hist.compute()

    valid = (target != ignore).numpy()
    conf, pred = probs.max(1)
    conf, pred = conf.numpy()[valid], pred.numpy()[valid]
    truth = target.numpy()[valid]
    right = (pred == truth).astype(float)
    p_true = probs.permute(0, 2, 3, 1).numpy()[valid][np.arange(len(truth)), truth]
    assert m.pixels == valid.sum() == 3 * 9 * 11 - 22
    assert m.ece == pytest.approx(_ece_by_definition(conf.astype(float), right, 10), abs=1e-6)
    assert m.accuracy == pytest.approx(right.mean())
    assert m.confidence == pytest.approx(conf.mean())
    assert m.nll == pytest.approx(-np.log(p_true).mean(), rel=1e-6)
    gaps = [abs(b["accuracy"] - b["confidence"]) for b in m.bins if b["pixels"]]
    assert m.mce == pytest.approx(max(gaps))
    assert sum(b["pixels"] for b in m.bins) == m.pixels
    for c in m.coverage:
        kept = conf >= c["threshold"]
        assert c["coverage"] == pytest.approx(kept.mean())
        assert c["accuracy"] == pytest.approx(right[kept].mean())

    merged = ReliabilityHistogram(k, ignore, bins=10, thresholds=(0.5, 0.9))
    part = ReliabilityHistogram(k, ignore, bins=10, thresholds=(0.5, 0.9))
    merged.update(probs[:1], target[:1])
    part.update(probs[1:], target[1:])
    merged.merge(part)
    together = merged.compute()
    assert together.bins == m.bins and together.coverage == m.coverage  # counts: exact
    assert together.ece == pytest.approx(m.ece) and together.nll == pytest.approx(m.nll)  # sums in another order


def test_a_perfectly_calibrated_source_has_a_small_ece_and_an_overconfident_one_a_large_one():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(1, 5, 200, 200, generator=gen) * 2
    probs = logits.softmax(1)  # labels drawn from the model's own probabilities: calibrated by construction
    labels = torch.multinomial(probs.permute(0, 2, 3, 1).reshape(-1, 5), 1, generator=gen).view(1, 200, 200)
    fair, sharp = ReliabilityHistogram(5), ReliabilityHistogram(5)
    fair.update(probs, labels)
    sharp.update((logits * 3).softmax(1), labels)
    assert fair.compute().ece < 0.01
    assert sharp.compute().ece > 0.1
    assert sharp.compute().confidence > sharp.compute().accuracy  # over-confident


def test_fit_temperature_recovers_a_known_temperature():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(40000, 6, generator=gen) * 1.5
    labels = torch.multinomial(logits.softmax(1), 1, generator=gen)[:, 0]
    for true_t in (0.5, 3.0):
        fitted = fit_temperature(logits * true_t, labels)  # logits scaled by T: dividing by T undoes it
        assert fitted == pytest.approx(true_t, rel=0.05)
        grid = [math.exp(x) for x in np.linspace(math.log(0.05), math.log(20), 400)]
        best = min(temperature_nll(logits * true_t, labels, t) for t in grid)
        assert temperature_nll(logits * true_t, labels, fitted) <= best + 1e-6


def test_temperature_over_test_time_passes_explains_their_mean_probability():
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(3, 500, 4, generator=gen) * 2  # three passes of 500 pixels
    labels = torch.randint(0, 4, (500,), generator=gen)
    for t in (0.5, 1.0, 2.0):
        mean = (logits / t).softmax(-1).mean(0)
        direct = -torch.log(mean[torch.arange(500), labels]).mean()
        assert temperature_nll(logits, labels, t) == pytest.approx(float(direct), rel=1e-5)
    same = logits[:1].expand(2, -1, -1)  # two identical passes: the single pass's temperature
    assert fit_temperature(same, labels) == pytest.approx(fit_temperature(logits[0], labels), rel=1e-3)


def test_fit_vector_scaling_recovers_a_known_scale_and_bias():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(60000, 5, generator=gen) * 1.5
    scale, bias = torch.tensor([0.5, 1.0, 2.0, 1.5, 0.8]), torch.tensor([1.0, -0.5, 0.0, 0.5, -1.0])
    labels = torch.multinomial((logits * scale + bias).softmax(1), 1, generator=gen)[:, 0]
    fitted_scale, fitted_bias = fit_vector_scaling(logits, labels)
    assert torch.allclose(fitted_scale, scale, atol=0.08)
    # the softmax ignores a shift shared by every class: the penalty picks the smallest bias, so compare centred ones
    assert torch.allclose(fitted_bias - fitted_bias.mean(), bias - bias.mean(), atol=0.08)
    nll = float(vector_nll(logits, labels, fitted_scale, fitted_bias))
    assert nll < temperature_nll(logits, labels, fit_temperature(logits, labels)) - 0.01  # one T cannot do this
    assert nll <= float(vector_nll(logits, labels, scale, bias)) + 1e-3  # as good as the truth on its own sample
    same = logits[:1000][None].expand(2, -1, -1)  # two identical test-time passes: the single pass's fit
    one = fit_vector_scaling(logits[:1000], labels[:1000])
    two = fit_vector_scaling(same, labels[:1000])
    assert torch.allclose(one[0], two[0], atol=1e-3) and torch.allclose(one[1], two[1], atol=1e-3)
    absent = labels[:1000].clone()
    absent[absent == 4] = 0  # a class no fitted pixel has: its bias stays finite (the penalty), not −∞
    assert fit_vector_scaling(logits[:1000], absent)[1][4] > -20
    with pytest.raises(ConfigError, match=r"vector scaling needs \(N, K\) or \(P, N, K\) logits"):
        fit_vector_scaling(torch.zeros(4, 3), torch.zeros(5, dtype=torch.long))


def test_fit_temperature_refuses_empty_or_misshaped_input():
    with pytest.raises(ConfigError, match=r"\(N, K\) or \(P, N, K\) logits"):
        fit_temperature(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long))
    with pytest.raises(ConfigError, match=r"\(N, K\) or \(P, N, K\) logits"):
        fit_temperature(torch.zeros(4, 3), torch.zeros(5, dtype=torch.long))


def test_pixel_sample_draws_labelled_pixels_per_image_reproducibly():
    logits = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).view(2, 3, 4, 5)
    target = torch.randint(0, 3, (2, 4, 5), generator=torch.Generator().manual_seed(0))
    target[1] = 255  # the second image: nothing labelled
    target[0, 0] = 255
    first, again = PixelSample(6, seed=3), PixelSample(6, seed=3)
    first.add(logits, target)
    again.add(logits, target)
    (z, y), (z2, y2) = first.tensors(), again.tensors()
    assert len(first) == 6 and torch.equal(z, z2) and torch.equal(y, y2)
    for row, label in zip(z, y):  # each drawn row is the logits of one labelled pixel, with its label
        pixel = int(row[0])  # channel 0 holds the flat pixel index (0..19)
        assert pixel >= 5 and label == target[0].flatten()[pixel]
        assert torch.equal(row, logits[0].flatten(1)[:, pixel])
    everything = PixelSample(100)
    everything.add(logits, target)
    assert len(everything) == 15  # fewer labelled pixels than asked: all of them
    with pytest.raises(ConfigError, match="no labelled pixel"):
        PixelSample(4).tensors()


def test_temperature_record_round_trip_and_lookup():
    scaling = TemperatureScaling({"rgb+depth": 1.2, "rgb": 2.0}, "rgb+depth", "data [val]", 100)
    back = TemperatureScaling.from_info({"calibration": json.loads(json.dumps(scaling.to_dict()))})
    assert back == scaling
    assert back.temperature(["depth", "rgb"], order=("rgb", "depth")) == 1.2  # named in the model's order
    assert back.temperature(["rgb"]) == 2.0
    assert back.temperature(["depth"]) == 1.2  # no temperature of its own: the full set's
    present = {"rgb": torch.tensor([True, True, False]), "depth": torch.tensor([True, False, True])}
    assert back.per_sample(present, ("rgb", "depth")).tolist() == pytest.approx([1.2, 2.0, 1.2])
    assert TemperatureScaling.from_info({}) is None
    with pytest.raises(CheckpointError, match="m.safetensors: unreadable calibration record"):
        TemperatureScaling.from_info({"calibration": {"temperatures": {"rgb": -1}, "default": "rgb"}},
                                     "m.safetensors")
    with pytest.raises(CheckpointError, match="unreadable calibration record"):
        TemperatureScaling.from_info({"calibration": {"temperatures": {"rgb": 1.0}}})


@pytest.fixture(scope="module")
def rgbd():
    torch.manual_seed(0)
    model = rgbx.create_model(backbone="mit_nano", fusion="cmx", modalities=["rgb", "depth"], num_classes=3,
                              head_channels=16).eval()
    gen = torch.Generator().manual_seed(0)
    inputs = {"rgb": torch.randn(2, 3, 24, 32, generator=gen), "depth": torch.randn(2, 1, 24, 32, generator=gen)}
    return model, inputs


def test_class_probabilities_apply_the_temperature_to_each_pass(rgbd):
    model, inputs = rgbd
    with torch.no_grad():
        logits = model(inputs).logits
        assert torch.allclose(class_probabilities(model, inputs, temperature=2.0), (logits / 2).softmax(1),
                              atol=1e-6)
        scores = predict_logits(model, inputs)
        assert torch.allclose(class_probabilities(model, inputs, temperature=2.0, scores=scores),
                              (logits / 2).softmax(1), atol=1e-6)
        flipped = model({m: x.flip(-1) for m, x in inputs.items()}).logits.flip(-1)
        expected = ((logits / 2).softmax(1) + (flipped / 2).softmax(1)) / 2
        assert torch.allclose(class_probabilities(model, inputs, flip=True, temperature=2.0), expected, atol=1e-5)
        per_sample = torch.tensor([2.0, 0.5]).view(-1, 1, 1, 1)  # one temperature per sample, the flip pass too
        expected = ((logits / per_sample).softmax(1) + (flipped / per_sample).softmax(1)) / 2
        assert torch.allclose(class_probabilities(model, inputs, flip=True, temperature=per_sample.view(-1)),
                              expected, atol=1e-5)
        assert torch.allclose(class_probabilities(model, inputs, temperature=per_sample.view(-1)),
                              (logits / per_sample).softmax(1), atol=1e-6)
        uncalibrated = predict_logits(model, inputs, flip=True)
        assert torch.equal(class_probabilities(model, inputs, flip=True, scores=uncalibrated), uncalibrated)
    with pytest.raises(ConfigError, match="scale rule 'cmx'"):
        class_probabilities(model, inputs, scale_rule="cmx")


def test_evaluate_scores_calibration_per_group_without_changing_the_miou(rgbd):
    model, _ = rgbd
    gen = torch.Generator().manual_seed(2)
    samples = [{"inputs": {"rgb": torch.randn(3, 24, 32, generator=gen), "depth": torch.randn(1, 24, 32, generator=gen)},
                "label": torch.randint(0, 3, (24, 32), generator=gen),
                "meta": {"id": f"s{i}", "attributes": {"condition": "night" if i in (1, 2) else "day"}}}
               for i in range(4)]
    del samples[3]["inputs"]["depth"]  # a sample without depth: scored with the temperature of what it has
    loader = [collate(samples[:2]), collate(samples[2:])]
    scaling = TemperatureScaling({"rgb+depth": 0.5, "rgb": 4.0}, "rgb+depth")
    plain = evaluate(model, loader, num_classes=3, subsets=all_subsets(model.modalities), group_by="condition")
    scored = evaluate(model, loader, num_classes=3, subsets=all_subsets(model.modalities), reliability=True,
                      temperatures=scaling, group_by="condition")
    assert plain.reliability == {} and "calibration" not in plain.to_dict()
    assert scored.metrics() == plain.metrics()
    # each sample's temperature: its own sensors' (depth: none of its own, the full set's); sample 3 lacks depth,
    # so the depth row does not score it (no prediction from a rig without any of its sensors)
    by_hand = {"rgb+depth": [0.5, 0.5, 0.5, 4.0], "rgb": [4.0] * 4, "depth": [0.5] * 4}
    assert scored.unscored == {"depth": 1}
    for subset, t in by_hand.items():
        for group, members in (("all", range(4)), ("condition=night", (1, 2)), ("condition=day", (0, 3))):
            members = [i for i in members if not (subset == "depth" and i == 3)]
            expected = {"uncalibrated": ReliabilityHistogram(3), "calibrated": ReliabilityHistogram(3)}
            batch = collate([samples[i] for i in members])
            view = batch.with_modalities(subset.split("+"))
            with torch.no_grad():
                logits = model(view.inputs, view.present).logits
            expected["uncalibrated"].update(logits.softmax(1), batch.label)
            temperature = torch.tensor([t[i] for i in members]).view(-1, 1, 1, 1)
            expected["calibrated"].update((logits / temperature).softmax(1), batch.label)
            got = scored.calibration(group)[subset]
            for kind in expected:
                assert got[kind].pixels == expected[kind].compute().pixels
                assert got[kind].ece == pytest.approx(expected[kind].compute().ece, abs=1e-6)
                assert got[kind].nll == pytest.approx(expected[kind].compute().nll, rel=1e-5)
    calibration = scored.to_dict()["calibration"]
    assert set(calibration["rgb"]) == {"all", "condition=day", "condition=night"}
    assert set(calibration["rgb"]["condition=night"]) == {"uncalibrated", "calibrated"}
    with pytest.raises(ConfigError, match="scale rule 'cmx'"):
        evaluate(model, loader, num_classes=3, reliability=True, scale_rule="cmx")


def test_each_set_is_fitted_on_the_images_that_have_all_its_sensors(rgbd):
    model, _ = rgbd
    gen = torch.Generator().manual_seed(5)

    def sample(*sensors):
        shapes = {"rgb": 3, "depth": 1}
        return {"inputs": {m: torch.randn(shapes[m], 24, 32, generator=gen) for m in sensors},
                "label": torch.randint(0, 3, (24, 32), generator=gen), "meta": {"id": "x"}}

    loader = [collate([sample("rgb", "depth"), sample("rgb")])]  # the second image has no depth
    scaling = fit_temperatures(model, loader, [("rgb", "depth"), ("rgb",), ("depth",)], per_image=50)
    assert {name: fit["pixels"] for name, fit in scaling.fit.items()} == {"rgb+depth": 50, "rgb": 100, "depth": 50}
    only_rgb = [collate([sample("rgb"), sample("rgb")])]
    scaling = fit_temperatures(model, only_rgb, [("rgb",), ("depth",)], per_image=50, fitted_on="rig [val]")
    assert set(scaling.temperatures) == {"rgb"} and scaling.fit["depth"]["pixels"] == 0
    assert scaling.temperature(["depth"]) == scaling.temperatures["rgb"]  # the default set's
    with pytest.raises(ConfigError, match=r"rig \[val\]: no labelled pixel to fit the temperature of rgb\+depth"):
        fit_temperatures(model, only_rgb, [("rgb", "depth"), ("rgb",)], per_image=50, fitted_on="rig [val]")
    # a window given as its size, as for evaluate (it failed at the end, on the record: "'tuple' object has no
    # attribute 'size'")
    from rgbx.engine.inference import SlidingWindow

    sized = fit_temperatures(model, loader, [("rgb", "depth")], per_image=50, window=(16, 16))
    windowed = fit_temperatures(model, loader, [("rgb", "depth")], per_image=50, window=SlidingWindow((16, 16)))
    assert sized.temperatures == windowed.temperatures and sized.test_time == windowed.test_time
    assert sized.test_time["window"] == [16, 16]


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    """A toy dataset, an RGB-D model file briefly trained on it (20 steps: temperatures inside the search's bounds,
    unlike a random model's), and the file `rgbx calibrate` writes."""
    from rgbx.engine.config import load_config
    from rgbx.engine.report import Reporter
    from rgbx.engine.trainer import Trainer

    folder = tmp_path_factory.mktemp("calibration")
    data = make_dataset(folder / "data", n=6, size=(16, 20), modalities=("rgb", "depth"))
    cfg = load_config(None, [f"data.root={data}", f"output_dir={folder / 'run'}", "model.backbone=mit_nano",
                             "model.head_channels=16", "model.modalities=[rgb,depth]", "data.crop_size=[16,20]",
                             "data.num_workers=0", "train.batch_size=2", "train.eval_batch_size=2", "train.iters=20",
                             "train.eval_every=0", "train.checkpoint_every=0", "optim.warmup_iters=2",
                             "optim.lr=2e-3", "method.modality_dropout=0.3"])
    Trainer(cfg, reporter=Reporter(quiet=True)).fit()
    path = folder / "model.safetensors"
    path.write_bytes((folder / "run" / "model.safetensors").read_bytes())
    before = path.read_bytes()
    assert main(["calibrate", str(path), "--data", str(data), "--split", "val", "--workers", "0",
                 "--json", str(folder / "fit.json")]) == 0
    assert path.read_bytes() == before  # the user's file is untouched
    return data, path, folder / "model.calibrated.safetensors", json.loads((folder / "fit.json").read_text())


def test_calibrate_writes_temperatures_per_sensor_set(calibrated, capsys):
    data, original, path, fit = calibrated
    info = read_model_info(path)
    assert info["iteration"] == 20 and info["training"]["modality_dropout"] == 0.3  # the rest of the record is kept
    record = info["calibration"]
    assert all(0.1 < t < 10 for t in record["temperatures"].values())  # a trained model: inside the bounds
    assert set(record["temperatures"]) == {"rgb+depth", "rgb", "depth"} and record["default"] == "rgb+depth"
    assert record["fitted_on"] == f"{data} [val]" and record["pixels"] == 2 * (16 * 20 - 1)  # 2 images, 1 ignored
    for figures in record["fit"].values():
        assert figures["nll"][1] <= figures["nll"][0] + 1e-9  # the fit never makes the NLL worse
    assert fit["temperatures"] == record["temperatures"]
    model, _ = rgbx.load_model(path)
    reference, _ = rgbx.load_model(original)
    for a, b in zip(model.state_dict().values(), reference.state_dict().values()):
        assert torch.equal(a, b)  # the weights are the same
    assert main(["info", str(path)]) == 0
    assert "confidence calibration: temperatures rgb+depth" in capsys.readouterr().out

    out = path.parent / "one.safetensors"
    assert main(["calibrate", str(path), "--data", str(data), "--sensors", "full", "--out", str(out),
                 "--workers", "0"]) == 0
    text = capsys.readouterr().out
    assert "replaced the calibration" in text
    assert list(read_model_info(out)["calibration"]["temperatures"]) == ["rgb+depth"]


def test_eval_reports_calibrated_and_uncalibrated_confidence(calibrated, tmp_path, capsys):
    data, original, path, _ = calibrated
    report = tmp_path / "eval.json"
    assert main(["eval", str(path), "--data", str(data), "--anymodal", "--calibration", "--json", str(report),
                 "--workers", "0"]) == 0
    printed = capsys.readouterr().out
    assert "confidence calibration" in printed and "confidence calibration by group" in printed  # --by condition
    results = json.loads(report.read_text())
    assert set(results["calibration"]) == {"rgb+depth", "rgb", "depth"}
    assert set(results["calibration"]["rgb"]["all"]) == {"uncalibrated", "calibrated"}
    assert results["temperatures"]["temperatures"] == read_model_info(path)["calibration"]["temperatures"]
    # fitted on this very split: calibrated NLL is no worse than the raw softmax's
    for groups in results["calibration"].values():
        assert groups["all"]["calibrated"]["nll"] <= groups["all"]["uncalibrated"]["nll"] + 1e-6
    assert main(["eval", str(original), "--data", str(data), "--calibration", "--workers", "0"]) == 0
    assert "records no temperatures" in capsys.readouterr().out
    diagrams = tmp_path / "reliability"
    assert main(["eval", str(path), "--data", str(data), "--anymodal", "--calibration", "--reliability",
                 str(diagrams), "--workers", "0"]) == 0
    assert sorted(p.name for p in diagrams.iterdir()) == sorted(f"{s}.{e}" for s in ("rgb+depth", "rgb", "depth")
                                                                for e in ("png", "csv"))
    rows = (diagrams / "rgb.csv").read_text().splitlines()
    assert rows[0] == "confidences,lower,upper,pixels,confidence,accuracy" and len(rows) == 1 + 2 * 15
    pixels = sum(int(r.split(",")[3]) for r in rows[1:] if r.startswith("calibrated"))
    assert pixels == results["calibration"]["rgb"]["all"]["calibrated"]["pixels"]
    image = np.asarray(Image.open(diagrams / "rgb.png"))
    assert image.shape[1] > 2 * 200  # raw and calibrated side by side
    assert main(["eval", str(path), "--data", str(data), "--reliability", str(diagrams)]) == 2
    assert "add --calibration" in capsys.readouterr().err


def test_predictor_confidence_uses_the_temperature_of_the_sensors_used(calibrated):
    _, _, path, _ = calibrated
    temperatures = read_model_info(path)["calibration"]["temperatures"]
    model, _ = rgbx.load_model(path)
    segment = rgbx.Predictor.from_file(path)
    rng = np.random.default_rng(0)
    rgb, depth = rng.integers(0, 256, (16, 20, 3), dtype=np.uint8), rng.integers(500, 9000, (16, 20), np.uint16)
    for frame, used in (({"rgb": rgb, "depth": depth}, "rgb+depth"), ({"rgb": rgb}, "rgb")):
        labels, confidence = segment(frame, confidence=True)
        assert segment.last_temperature == pytest.approx(temperatures[used])
        assert np.array_equal(labels, segment(frame))  # calibration never changes the labels
        batch = collate([normalize_sample(frame_sample(frame))])
        with torch.no_grad():
            logits = model(batch.inputs, batch.present).logits
        expected = (logits / temperatures[used]).softmax(1).max(1).values[0].numpy()
        assert np.allclose(confidence, expected, atol=1e-5)
    cautious = rgbx.Predictor.from_file(path, min_confidence=0.5)
    labels, confidence = cautious({"rgb": rgb, "depth": depth}, confidence=True)
    assert (labels[confidence < 0.5] == 255).all() and (labels[confidence >= 0.5] < 3).all()
    assert np.array_equal(cautious({"rgb": rgb, "depth": depth}), labels)
    with pytest.raises(ConfigError, match="min_confidence 1.5"):
        rgbx.Predictor.from_file(path, min_confidence=1.5)
    model, info = rgbx.load_model(path)
    info["dataset"]["ignore_index"] = 0  # a dataset whose "unlabelled" id is a class the model predicts
    with pytest.raises(ConfigError, match="ignore index 0, which is one of the model's 3 classes"):
        rgbx.Predictor(model, info, min_confidence=0.5)


def test_predict_writes_confidence_maps_and_leaves_unsure_pixels_unlabelled(calibrated, tmp_path, capsys):
    data, _, path, _ = calibrated
    out = tmp_path / "preds"
    assert main(["predict", str(path), str(data), "--split", "val", "--out", str(out), "--confidence",
                 "--min-confidence", "0.45", "--workers", "0"]) == 0
    summary = capsys.readouterr().out
    assert "confidence: mean" in summary and "left unlabelled" in summary and "calibrated: temperature" in summary
    ids = sorted(p.stem for p in (out / "confidence").glob("*.png"))
    assert ids == ["s004", "s005"]
    for sid in ids:
        confidence = np.asarray(Image.open(out / "confidence" / f"{sid}.png"), dtype=np.float64) / 255
        labels = np.asarray(Image.open(out / "labels" / f"{sid}.png"))
        unsure = labels == 255
        assert confidence.shape == labels.shape == (16, 20)
        # stored to 1/255: a pixel left unlabelled is below 0.45, a labelled one at or above it
        assert (confidence[unsure] <= 0.45 + 1 / 510).all() and (confidence[~unsure] >= 0.45 - 1 / 510).all()
        panel = np.asarray(Image.open(out / "panels" / f"{sid}.png"))
        assert panel.shape[1] > 5 * 20  # rgb, depth, prediction, confidence, ground truth, errors
    with pytest.raises(SystemExit):
        main(["predict", str(path), str(data), "--out", str(out), "--min-confidence", "0"])
    assert main(["predict", str(path), str(data), "--out", str(out), "--min-confidence", "1.5"]) == 2
    assert "--min-confidence 1.5: expected a probability below 1" in capsys.readouterr().err


def test_calibrate_refuses_what_it_cannot_calibrate(calibrated, tmp_path, capsys):
    data, path, _, _ = calibrated
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"not really")
    assert main(["calibrate", str(onnx), "--data", str(data)]) == 2
    assert "calibrate the .safetensors file and export it again" in capsys.readouterr().err
    other = make_dataset(tmp_path / "other", n=4, size=(16, 20), modalities=("rgb", "depth"))
    write_description(other, name="toy", classes=[*CLASSES, "robot"], ignore_index=255,
                      palette=[[0, 0, 0], [200, 100, 0], [220, 20, 60], [0, 0, 255]],
                      modalities={"rgb": {"encoding": "png", "scale": 1 / 255}, "depth": {"encoding": "png",
                                                                                       "scale": 0.001}})
    assert main(["calibrate", str(path), "--data", str(other), "--workers", "0"]) == 2
    assert "predicts 3 classes but" in capsys.readouterr().err


def test_an_exported_file_keeps_the_temperatures(calibrated, tmp_path, capsys):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    _, _, path, _ = calibrated
    onnx = tmp_path / "model.onnx"
    assert main(["export", str(path), "--out", str(onnx), "--size", "32x40", "--exporter", "torchscript"]) == 0
    temperatures = read_model_info(path)["calibration"]["temperatures"]
    assert main(["info", str(onnx)]) == 0
    assert "confidence calibration: temperatures" in capsys.readouterr().out
    deployed, original = rgbx.Predictor.from_file(onnx), rgbx.Predictor.from_file(path)
    rng = np.random.default_rng(1)
    frame = {"rgb": rng.integers(0, 256, (32, 40, 3), dtype=np.uint8)}
    labels, confidence = deployed(frame, confidence=True)
    assert deployed.last_temperature == pytest.approx(temperatures["rgb"])
    expected_labels, expected = original(frame, confidence=True)
    assert np.array_equal(labels, expected_labels) and np.allclose(confidence, expected, atol=1e-4)


def test_calibrate_with_vector_scaling_writes_it_into_the_model(calibrated, tmp_path, capsys):
    data, original, path, _ = calibrated
    out, report = tmp_path / "vector.safetensors", tmp_path / "vector.json"
    assert main(["calibrate", str(path), "--data", str(data), "--scaling", "vector", "--out", str(out),
                 "--workers", "0", "--json", str(report)]) == 0  # from the temperature-calibrated file: replaced
    printed = capsys.readouterr().out
    assert "vector scaling fitted on" in printed and "accuracy before" in printed
    assert "the predictions changed" in printed and "replaced the calibration" in printed
    info = read_model_info(out)
    record = info["calibration"]
    assert info["model"]["vector_scaling"] is True and record["method"] == "vector"
    assert record["temperatures"] == {"rgb+depth": 1.0, "rgb": 1.0, "depth": 1.0}  # the model applies the fit
    assert set(record["vectors"]) == {"rgb+depth", "rgb", "depth"} and json.loads(report.read_text()) == {
        "checkpoint": str(path), "out": str(out), **record}
    for figures in record["fit"].values():
        assert figures["nll"][1] <= figures["nll"][0] + 1e-6 and len(figures["accuracy"]) == 2
    model, _ = rgbx.load_model(out)
    network, _ = rgbx.load_model(original)
    batch = collate([normalize_sample(frame_sample(
        {"rgb": np.random.default_rng(0).integers(0, 256, (16, 20, 3), dtype=np.uint8),
         "depth": np.random.default_rng(1).integers(500, 9000, (16, 20), np.uint16)}))] * 2)
    with torch.no_grad():
        for subset in (("rgb", "depth"), ("rgb",), ("depth",)):
            view = batch.with_modalities(subset)
            vector = record["vectors"]["+".join(subset)]
            expected = (network(view.inputs, view.present).logits * torch.tensor(vector["scale"]).view(3, 1, 1)
                        + torch.tensor(vector["bias"]).view(3, 1, 1))
            assert torch.allclose(model(view.inputs, view.present).logits, expected, atol=1e-4)
    # fitted on the network's own logits: calibrating the written file again gives the same scaling
    again = tmp_path / "again.safetensors"
    assert main(["calibrate", str(out), "--data", str(data), "--scaling", "vector", "--out", str(again),
                 "--workers", "0"]) == 0
    for name, vector in read_model_info(again)["calibration"]["vectors"].items():
        assert np.allclose(vector["scale"], record["vectors"][name]["scale"], atol=1e-4)
        assert np.allclose(vector["bias"], record["vectors"][name]["bias"], atol=1e-4)
    capsys.readouterr()
    assert main(["info", str(out)]) == 0
    assert "confidence calibration: vector scaling" in capsys.readouterr().out
    assert main(["eval", str(out), "--data", str(data), "--anymodal", "--calibration", "--workers", "0"]) == 0
    assert "vector scaling is part of the model" in capsys.readouterr().out
    assert main(["eval", str(out), "--data", str(data), "--robustness", "--failures", "blank", "--calibration",
                 "--workers", "0"]) == 0
    assert "calibrated per sensor set (vector scaling, in the model)" in " ".join(capsys.readouterr().out.split())
    assert main(["predict", str(out), str(data), "--split", "val", "--out", str(tmp_path / "p"), "--confidence",
                 "--no-panels", "--workers", "0"]) == 0
    assert "calibrated: vector scaling per sensor set" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["calibrate", str(path), "--data", str(data), "--scaling", "matrix"])
    assert "argument --scaling: invalid choice: 'matrix'" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="scaling 'matrix': expected one of temperature, vector"):
        rgbx.calibrate(original, data, "val", scaling="matrix")
    # one set fitted (--sensors full): every set of the model gets the full set's scale and bias
    full, scaling = rgbx.calibrate(original, data, "val", sensors="full", scaling="vector",
                                   out=tmp_path / "full.safetensors")
    assert list(scaling.vectors) == ["rgb+depth"]
    layer = rgbx.load_model(full)[0].set_scaling
    expected = torch.tensor(scaling.vectors["rgb+depth"]["scale"])
    assert all(torch.allclose(layer.scale[layer.row(s)], expected) for s in (["rgb"], ["depth"], ["rgb", "depth"]))


def test_an_exported_vector_scaled_file_applies_each_sensor_sets_scaling(calibrated, tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    data, original, _, _ = calibrated
    vector, _ = rgbx.calibrate(original, data, "val", scaling="vector", out=tmp_path / "vector.safetensors")
    onnx = tmp_path / "vector.onnx"
    assert main(["export", str(vector), "--out", str(onnx), "--size", "32x40", "--exporter", "torchscript"]) == 0
    deployed, model = rgbx.Predictor.from_file(onnx), rgbx.Predictor.from_file(vector)
    plain = rgbx.Predictor.from_file(original)
    rng = np.random.default_rng(2)
    rgb, depth = rng.integers(0, 256, (32, 40, 3), dtype=np.uint8), rng.integers(500, 9000, (32, 40), np.uint16)
    for frame in ({"rgb": rgb, "depth": depth}, {"rgb": rgb}, {"depth": depth}):  # the present column says which
        labels, confidence = deployed(frame, confidence=True)
        expected_labels, expected = model(frame, confidence=True)
        assert np.array_equal(labels, expected_labels) and np.allclose(confidence, expected, atol=1e-4)
        unscaled = plain(frame, confidence=True)[1]  # the scaling is in the exported graph
        assert np.abs(confidence - unscaled).max() > 1e-2


def test_python_evaluate_reads_the_temperatures_of_the_file(calibrated):
    data, original, path, _ = calibrated
    result = rgbx.evaluate(path, data, "val", anymodal=True, reliability=True)
    assert set(result.calibration()["rgb"]) == {"uncalibrated", "calibrated"}
    assert set(rgbx.evaluate(original, data, "val", reliability=True).calibration()["rgb+depth"]) == {"uncalibrated"}


def test_python_api_calibrates_as_the_command_does(calibrated, tmp_path):
    data, original, path, _ = calibrated
    written, scaling = rgbx.calibrate(original, data, "val", sensors="full", out=tmp_path / "one.safetensors")
    assert written == tmp_path / "one.safetensors"
    assert read_model_info(written)["calibration"] == scaling.to_dict()
    # the same pixels drawn (same seed), so the full set's temperature is the one `rgbx calibrate` fitted with all sets
    assert scaling.temperatures == {"rgb+depth": read_model_info(path)["calibration"]["temperatures"]["rgb+depth"]}
    with pytest.raises(ConfigError, match="sensors 'some'"):
        rgbx.calibrate(original, data, "val", sensors="some")


def test_calibrate_for_multi_scale_and_flip(calibrated, tmp_path, capsys):
    data, original, path, _ = calibrated
    out = tmp_path / "flip.safetensors"
    assert main(["calibrate", str(original), "--data", str(data), "--sensors", "full", "--scales", "0.5", "1",
                 "--flip", "--out", str(out), "--workers", "0"]) == 0
    record = read_model_info(out)["calibration"]
    assert record["test_time"] == {"scales": [0.5, 1.0], "flip": True, "scale_rule": "rgbx", "window": None,
                                   "stride": None}
    fit = record["fit"]["rgb+depth"]
    assert fit["nll"][1] <= fit["nll"][0] + 1e-9
    single_pass = read_model_info(path)["calibration"]["temperatures"]["rgb+depth"]
    assert record["temperatures"]["rgb+depth"] != pytest.approx(single_pass, rel=1e-3)  # fitted for other passes
    capsys.readouterr()
    assert main(["info", str(out)]) == 0
    assert "for scales 0.5 1, flip" in capsys.readouterr().out
    report = tmp_path / "flip.json"
    assert main(["eval", str(out), "--data", str(data), "--calibration", "--scales", "0.5", "1", "--flip",
                 "--json", str(report), "--workers", "0"]) == 0
    assert "were fitted for the test-time passes" not in capsys.readouterr().out
    scored = json.loads(report.read_text())["calibration"]["rgb+depth"]["all"]
    assert scored["calibrated"]["nll"] <= scored["uncalibrated"]["nll"] + 1e-6  # the same split: never worse
    assert main(["eval", str(out), "--data", str(data), "--calibration", "--workers", "0"]) == 0
    assert "were fitted for the test-time passes" in capsys.readouterr().out
    with pytest.warns(UserWarning, match="fitted for the test-time passes"):
        rgbx.Predictor.from_file(out)  # one pass: not what the temperatures are for
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rgbx.Predictor.from_file(out, scales=(0.5, 1.0), flip=True)
        rgbx.Predictor.from_file(path)  # fitted for one pass, used for one


def test_a_split_without_labelled_pixels_is_named(calibrated, tmp_path):
    _, original, _, _ = calibrated
    data = make_dataset(tmp_path / "unlabelled", n=4, size=(16, 20), modalities=("rgb", "depth"))
    for label in (data / "label").glob("*.png"):
        Image.fromarray(np.full((16, 20), 255, np.uint8)).save(label)
    with pytest.raises(ConfigError, match=r"unlabelled \[val\]: no labelled pixel to fit the temperature of rgb\+de"):
        rgbx.calibrate(original, data, "val", out=tmp_path / "never.safetensors")
    assert not (tmp_path / "never.safetensors").exists()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_histogram_on_the_gpu_gives_the_cpu_figures():
    gen = torch.Generator().manual_seed(4)
    probs = (torch.randn(2, 5, 30, 40, generator=gen) * 2).softmax(1)
    labels = torch.randint(0, 5, (2, 30, 40), generator=gen)
    on_cpu, on_gpu = ReliabilityHistogram(5), ReliabilityHistogram(5)
    on_cpu.update(probs, labels)
    on_gpu.update(probs.cuda(), labels.cuda())
    on_gpu.update(probs.cuda(), labels.cuda())
    on_cpu.update(probs, labels)
    a, b = on_cpu.compute(), on_gpu.compute()
    assert [x["pixels"] for x in a.bins] == [x["pixels"] for x in b.bins]  # sums on the GPU: equal to rounding
    assert a.ece == pytest.approx(b.ece) and a.nll == pytest.approx(b.nll) and a.coverage == b.coverage


def test_the_fitted_temperature_does_not_move_with_float_noise_in_the_logits():
    """Logits of the same pixels differ by ~1e-6 between evaluation batch sizes (batch-dependent kernels); the NLL,
    averaged in float32, moved the fitted temperature by up to 5e-4 with them (rgbx calibrate --batch-size 1 vs 6)."""
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 6, (200_000,), generator=gen)
    # weakly informative logits: a flat NLL near its minimum, where float32's rounding decided the search
    logits = torch.randn(200_000, 6, generator=gen) * 0.5 + 0.3 * torch.nn.functional.one_hot(labels, 6)
    fitted = fit_temperature(logits, labels)
    for _ in range(3):
        noisy = logits + 5e-6 * torch.randn(logits.shape, generator=gen)
        assert fit_temperature(noisy, labels) == pytest.approx(fitted, rel=1e-5)
