"""Failed sensors screened out at prediction time: rgbx.Predictor(monitor=...) and `rgbx predict --check-sensors`
predict from the working sensors exactly as from a rig without the failed one; NaN inputs never reach the model."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from PIL import Image

import rgbx
from rgbx.cli.main import main
from rgbx.data.sensor_health import HealthRules, SensorFailure, SensorMonitor
from rgbx.models.model_file import save_model
from tests.engine.test_frame_prediction import frames, rgbd_model_file


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    return rgbd_model_file(tmp_path_factory.mktemp("model"), fusion="mean")


def test_nan_input_does_not_reach_the_model(model_file):
    segment = rgbx.Predictor.from_file(model_file)
    rgb, depth_mm = frames()
    depth_m = depth_mm.astype(np.float32) / 1000
    holes = depth_m.copy()
    holes[5:9, 7:20] = np.nan  # a stereo camera's occlusion holes
    holes[0, 0] = np.inf
    zeros = depth_m.copy()
    zeros[5:9, 7:20] = 0.0
    zeros[0, 0] = 0.0
    np.testing.assert_array_equal(segment({"rgb": rgb, "depth": holes}), segment({"rgb": rgb, "depth": zeros}))
    # fed by hand, the model's whole output is NaN: one hole would cost the frame
    sample = rgbx.engine.predict.frame_sample({"rgb": rgb, "depth": holes})
    x = {m: rgbx.modalities.get_modality(m).normalize(t)[None] for m, t in sample["inputs"].items()}
    with torch.no_grad():
        assert torch.isnan(segment.model(x).logits).all()


def test_monitor_predicts_from_the_working_sensors(model_file):
    plain = rgbx.Predictor.from_file(model_file)
    guarded = rgbx.Predictor.from_file(model_file, monitor=True)
    assert isinstance(guarded.monitor, SensorMonitor) and plain.monitor is None
    rgb, depth_mm = frames()
    np.testing.assert_array_equal(guarded({"rgb": rgb, "depth": depth_mm}), plain({"rgb": rgb, "depth": depth_mm}))
    assert all(s.ok for s in guarded.last_status.values())
    black = np.zeros_like(rgb)
    np.testing.assert_array_equal(guarded({"rgb": black, "depth": depth_mm}), plain({"depth": depth_mm}))
    assert guarded.last_status["rgb"].failures == ("no_signal", "saturated") and guarded.last_status["depth"].ok
    assert guarded.screen_note() == " [left out: rgb (no_signal, saturated)]"  # the panel's title ends so
    assert plain.screen_note() == ""
    empty = np.zeros_like(depth_mm)
    np.testing.assert_array_equal(guarded({"rgb": rgb, "depth": empty}), plain({"rgb": rgb}))
    with pytest.raises(SensorFailure, match="every sensor failed") as failure:
        guarded({"rgb": black, "depth": empty}, sample_id="t=12.3")
    assert set(failure.value.statuses) == {"rgb", "depth"} and "t=12.3" in str(failure.value)


def test_monitor_catches_a_frozen_stream(model_file):
    guarded = rgbx.Predictor.from_file(model_file, monitor=SensorMonitor(HealthRules(frozen_after=2)))
    plain = rgbx.Predictor.from_file(model_file)
    rgb, depth_mm = frames(1)
    for step in range(4):
        live_rgb = frames(10 + step)[0]
        labels = guarded({"rgb": live_rgb, "depth": depth_mm})  # the depth driver re-sends one frame
        expected = plain({"rgb": live_rgb}) if step >= 2 else plain({"rgb": live_rgb, "depth": depth_mm})
        np.testing.assert_array_equal(labels, expected)
        assert guarded.last_status["depth"].ok == (step < 2)


def test_monitor_on_an_exported_model(model_file, tmp_path):
    pytest.importorskip("onnxruntime")
    from rgbx.engine.export import export_onnx

    onnx_path = tmp_path / "model.onnx"
    model, info = rgbx.load_model(model_file)
    export_onnx(model, onnx_path, size=(64, 64), dataset=info["dataset"])
    exported = rgbx.Predictor.from_file(onnx_path, monitor=True)
    rgb, depth_mm = frames(0, 64, 64)
    labels = exported({"rgb": rgb, "depth": np.zeros_like(depth_mm)})
    assert exported.last_status["depth"].failures == ("no_signal",)
    agree = (labels == rgbx.Predictor.from_file(onnx_path)({"rgb": rgb})).mean()
    assert agree == 1.0


def _write_frames(root, n=5):
    for m in ("rgb", "depth"):
        (root / m).mkdir(parents=True)
    for i in range(n):
        rgb, depth_mm = frames(i)
        if i == 3:
            depth_mm = np.zeros_like(depth_mm)  # the depth sensor drops out at t003
        Image.fromarray(rgb).save(root / "rgb" / f"t{i:03d}.png")
        Image.fromarray(depth_mm).save(root / "depth" / f"t{i:03d}.png")
    Image.fromarray(np.zeros((40, 56, 3), np.uint8)).save(root / "rgb" / "t005.png")  # both dead at t005
    Image.fromarray(np.zeros((40, 56), np.uint16)).save(root / "depth" / "t005.png")


def test_cli_predict_check_sensors(model_file, tmp_path, capsys):
    _write_frames(tmp_path / "in")
    out = tmp_path / "out"
    assert main(["predict", str(model_file), f"rgb={tmp_path / 'in' / 'rgb'}", f"depth={tmp_path / 'in' / 'depth'}",
                 "--out", str(out), "--check-sensors", "--no-panels", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "sample t005: every sensor failed" in printed
    assert "depth failed in 2 of 6 frames (no_signal 2)" in printed and "1 sample(s) had no working sensor" in printed
    rows = list(csv.DictReader(open(out / "sensor_health.csv")))
    assert len(rows) == 12
    verdicts = {(r["id"], r["sensor"]): (r["ok"], r["failures"], r["predicted"]) for r in rows}
    assert verdicts[("t003", "depth")] == ("0", "no_signal", "1") and verdicts[("t003", "rgb")] == ("1", "", "1")
    assert verdicts[("t005", "rgb")] == ("0", "no_signal saturated", "0")
    assert sorted(p.stem for p in (out / "labels").iterdir()) == ["t000", "t001", "t002", "t003", "t004"]
    # the screened frame is predicted as by a rig with the camera alone
    plain = rgbx.Predictor.from_file(model_file)
    expected = plain({"rgb": tmp_path / "in" / "rgb" / "t003.png"})
    np.testing.assert_array_equal(np.asarray(Image.open(out / "labels" / "t003.png")), expected)


def test_cli_sensor_rules_change_the_verdict(model_file, tmp_path):
    _write_frames(tmp_path / "in", n=1)
    args = ["predict", str(model_file), f"rgb={tmp_path / 'in' / 'rgb'}", "--check-sensors", "--no-panels"]
    assert main([*args, "--out", str(tmp_path / "strict")]) == 0
    assert {r["id"]: r["ok"] for r in csv.DictReader(open(tmp_path / "strict" / "sensor_health.csv"))} == {
        "t000": "1", "t005": "0"}
    # the black frame t005 passes with no contrast floor and no saturation limit
    assert main([*args, "--out", str(tmp_path / "loose"), "--sensor-rule", "min_contrast=0",
                 "--sensor-rule", "rgb.max_saturated=1"]) == 0
    assert {r["id"]: r["ok"] for r in csv.DictReader(open(tmp_path / "loose" / "sensor_health.csv"))} == {
        "t000": "1", "t005": "1"}


def test_cli_eval_check_sensors(tmp_path, capsys):
    """A split whose camera frames are all black: screened, rgb+depth scores as depth alone; fed as is, it does not."""
    import json

    from tests.conftest import make_dataset

    data = make_dataset(tmp_path / "rig", n=6, size=(32, 32), modalities=("rgb", "depth"))
    for png in (data / "rgb").glob("*.png"):
        Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(png)
    small = tmp_path / "m3.safetensors"  # the toy data has 3 classes
    torch.manual_seed(1)
    save_model(small, rgbx.create_model(backbone="mit_nano", fusion="mean", modalities=["rgb", "depth"],
                                        num_classes=3, head_channels=16), {"classes": ["ground", "box", "person"]})
    common = ["eval", str(small), "--data", str(data), "--split", "val", "--workers", "0", "--by", ""]
    runs = {}
    for name, extra in {"screened": ["--check-sensors"], "as_is": [], "depth": ["--modalities", "depth"]}.items():
        assert main([*common, *extra, "--json", str(tmp_path / f"{name}.json")]) == 0
        runs[name] = json.loads((tmp_path / f"{name}.json").read_text())
        printed = capsys.readouterr().out
        assert ("sensor checks left out: rgb in 2 of 2 samples" in printed) == (name == "screened")
    assert runs["screened"]["screened_samples"] == {"rgb": 2} and "screened_samples" not in runs["as_is"]
    full = "rgb+depth"
    assert runs["screened"]["subsets"][full]["all"]["miou"] == runs["depth"]["subsets"]["depth"]["all"]["miou"]
    assert runs["screened"]["sensor_checks"]["rgb"]["min_contrast"] == 0.01 and runs["as_is"]["sensor_checks"] is None
    logits = {}
    for name, present in {"as_is": None, "depth": {"rgb": torch.zeros(1, dtype=torch.bool)}}.items():
        m, _ = rgbx.load_model(small)
        x = {"rgb": rgbx.modalities.get_modality("rgb").normalize(torch.zeros(1, 3, 32, 32)),
             "depth": torch.zeros(1, 1, 32, 32)}
        with torch.no_grad():
            logits[name] = m(x, present).logits
    assert not torch.equal(logits["as_is"], logits["depth"])  # the black frame, fed as is, changes the output


def test_a_model_trained_with_every_sensor_present_is_warned_about(tmp_path):
    """The checks leaving a sensor out of a model whose file says it never saw one absent: one warning, once."""
    import warnings

    torch.manual_seed(0)
    model = rgbx.create_model(backbone="mit_nano", fusion="mean", modalities=["rgb", "depth"], num_classes=4,
                              head_channels=16)
    files = {}
    for seen in (False, True):
        files[seen] = save_model(tmp_path / f"seen_{seen}.safetensors", model, {"classes": list("abcd")},
                                 training={"method": "supervised", "modality_dropout": 0.5 * seen,
                                           "absent_sensors_seen": seen})
    rgb, depth_mm = frames()
    with pytest.warns(UserWarning, match="trained with every sensor present .* left depth out"):
        guarded = rgbx.Predictor.from_file(files[False], monitor=True)
        guarded({"rgb": rgb, "depth": np.zeros_like(depth_mm)})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        guarded({"rgb": rgb, "depth": np.zeros_like(depth_mm)})  # once
        rgbx.Predictor.from_file(files[True], monitor=True)({"rgb": rgb, "depth": np.zeros_like(depth_mm)})
        rgbx.Predictor.from_file(files[False], monitor=True)({"rgb": rgb, "depth": depth_mm})  # nothing left out


def test_predictor_takes_timestamps(model_file):
    guarded = rgbx.Predictor.from_file(model_file, monitor=SensorMonitor(HealthRules(max_age=0.1)))
    plain = rgbx.Predictor.from_file(model_file)
    rgb, depth_mm = frames()
    labels = guarded({"rgb": rgb, "depth": depth_mm}, stamps={"rgb": 5.00, "depth": 4.50})
    np.testing.assert_array_equal(labels, plain({"rgb": rgb}))  # the depth frame is half a second old
    assert guarded.last_status["depth"].failures == ("stale",)
    labels = guarded({"rgb": frames(1)[0], "depth": frames(1)[1]}, stamps={"rgb": 5.03, "depth": 5.0})
    assert all(s.ok for s in guarded.last_status.values())
