"""Modalities synthesised from RGB / depth: the event model's polarity and counts, the pseudo-LiDAR geometry, and
`rgbx data synthesize` on a dataset folder (written, listed, loadable, nothing overwritten by accident)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rgbx.cli.main import main
from rgbx.data import build_dataset
from rgbx.data.files import read_modality_file
from rgbx.data.modality_synthesis import (
    EventSimulation,
    OnnxDepthEstimator,
    OnnxThermalEstimator,
    PseudoLidar,
    pseudo_lidar,
    simulate_events,
    synthesize_dataset,
)
from rgbx.errors import ConfigError, DataError
from rgbx.modalities.encodings import write_array
from tests.conftest import make_dataset


def square(h=64, w=64, value=230):
    rgb = np.zeros((3, h, w), np.uint8)
    rgb[:, 20:40, 20:40] = value
    return rgb


def test_events_mark_the_edges_a_moving_bright_square_enters_and_leaves():
    ev = simulate_events(square(), np.random.default_rng(0), EventSimulation(noise_rate=0), shift=(0.0, 2.0))
    pos_cols = set(np.nonzero(ev[0])[1].tolist())
    neg_cols = set(np.nonzero(ev[1])[1].tolist())
    assert pos_cols == {40, 41} and neg_cols == {20, 21}  # brighter where it arrives, darker where it left
    # counts = log-contrast / threshold: dark floor 1e-3 → linear 0.79 is ~6.7 log units, C in [0.15, 0.25]
    assert 20 <= int(ev[0, 30, 40]) <= 45
    assert abs(int(ev[0].sum()) - int(ev[1].sum())) < 0.05 * int(ev[0].sum())
    # a still image gives no events, a float [0, 1] image the same events as its uint8 form
    still = simulate_events(square(), np.random.default_rng(0), EventSimulation(noise_rate=0), shift=(0.0, 0.0))
    assert still.sum() == 0
    as_float = simulate_events(square().astype(np.float32) / 255, np.random.default_rng(0),
                               EventSimulation(noise_rate=0), shift=(0.0, 2.0))
    assert np.array_equal(as_float, ev)
    with pytest.raises(DataError, match="expected an RGB image"):
        simulate_events(np.zeros((5, 8, 8), np.uint8), np.random.default_rng(0))


def test_pseudo_lidar_ranges_lie_on_the_depth_surface_and_on_the_beams():
    h, w, f = 96, 128, 80.0
    rng = np.random.default_rng(0)
    depth = np.full((h, w), 12.0)
    depth[:, :20] = 0.0  # invalid depth: no returns there
    lidar = PseudoLidar(beams=16, elevation_deg=(-20.0, 5.0), dropout=0.0, range_noise_m=0.0)
    out = pseudo_lidar(depth, f, rng, lidar)
    assert out.shape == (1, h, w) and out.dtype == np.uint16
    ys, xs = np.nonzero(out[0])
    assert len(ys) > 100 and xs.min() >= 20
    r = out[0, ys, xs] / 1000.0
    # back to z-depth: the ray through pixel (u, v) has z / r = cos e · cos a
    a = np.arctan((xs + 0.5 - w / 2) / f)
    e = np.arctan((h / 2 - (ys + 0.5)) * np.cos(a) / f)
    assert np.allclose(r * np.cos(e) * np.cos(a), 12.0, rtol=0.02)
    # every return lies on one of the 16 beams: its elevation is within half a pixel of a beam's
    beams = np.radians(np.linspace(-20.0, 5.0, 16))
    assert np.abs(e[:, None] - beams[None, :]).min(axis=1).max() < 0.6 / f
    assert len({int(np.abs(x - beams).argmin()) for x in e}) == 16  # and every beam that crosses the image returns
    with pytest.raises(ConfigError, match="focal length"):
        pseudo_lidar(depth, 0.0, rng)


def test_rgbx_data_synthesize_adds_loadable_modalities(tmp_path, capsys):
    root = make_dataset(tmp_path / "rig", n=4, size=(32, 40), modalities=("rgb", "depth"))
    original = (root / "dataset.yaml").read_text()
    assert main(["data", "synthesize", str(root), "--modalities", "event", "lidar", "--hfov", "70"]) == 0
    assert "wrote 4 event files, 4 lidar files" in capsys.readouterr().out
    assert (root / "dataset.yaml.orig").read_text() == original
    ds = build_dataset("folder", root, "train")
    assert set(ds.description.modalities) == {"rgb", "depth", "event", "lidar"}
    sample = ds.load(0)
    assert sample["inputs"]["event"].shape == (2, 32, 40) and sample["inputs"]["event"].sum() > 0
    lidar = sample["inputs"]["lidar"]
    assert lidar.shape == (1, 32, 40) and 0 < int((lidar > 0).sum()) < 32 * 40
    assert main(["data", "check", str(root)]) == 0
    # the same seed gives the same files; existing folders are kept unless --overwrite
    first = (root / "event" / "s000.png").read_bytes()
    assert main(["data", "synthesize", str(root), "--modalities", "event"]) != 0
    assert "already holds event files" in capsys.readouterr().err
    assert main(["data", "synthesize", str(root), "--modalities", "event", "--overwrite"]) == 0
    assert (root / "event" / "s000.png").read_bytes() == first


def test_synthesize_names_what_is_missing(tmp_path):
    root = make_dataset(tmp_path / "rgb_only", n=2, size=(16, 20), modalities=("rgb",))
    with pytest.raises(DataError, match="synthesised from depth"):
        synthesize_dataset(root, ["lidar"], focal_px=50.0)
    with pytest.raises(ConfigError, match="rgbx synthesises depth, thermal, event, lidar"):
        synthesize_dataset(root, ["hha"])
    with pytest.raises(ConfigError, match="--thermal-model"):
        synthesize_dataset(root, ["thermal"])
    root2 = make_dataset(tmp_path / "rgbd", n=2, size=(16, 20), modalities=("rgb", "depth"))
    with pytest.raises(ConfigError, match="focal length"):
        synthesize_dataset(root2, ["lidar"])


class _ToyDepthNet(torch.nn.Module):
    """Metric 'depth' = 1 + 4 × the first normalised channel's mean over a 3×3 window, clipped below at 1 (a fixed
    24×32 input)."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 1, 3, padding=1, bias=True)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[0, 0] = 4.0 / 9.0
            self.conv.bias.zero_()

    def forward(self, x):
        return 1.0 + torch.relu(self.conv(x))


def _export(tmp_path, net):
    path = tmp_path / "depth.onnx"
    # the TorchScript exporter (dynamo=False): seconds, and what `rgbx export` tries first
    torch.onnx.export(net, (torch.zeros(1, 3, 24, 32),), str(path), input_names=["image"], output_names=["depth"],
                      dynamo=False)
    return path


def test_onnx_depth_estimator_runs_the_model_at_its_size_and_maps_disparity(tmp_path):
    path = _export(tmp_path, _ToyDepthNet().eval())
    rgb = np.zeros((3, 48, 64), np.float32)
    rgb[0] = 1.0  # constant red: the model sees (1 - 0.485) / 0.229 everywhere (inside the zero-padded border)
    metric = OnnxDepthEstimator(path, mean=(0, 0, 0), std=(1, 1, 1))
    assert metric.fixed == (24, 32)
    depth = metric(rgb)
    assert depth.shape == (48, 64) and abs(float(depth[24, 32]) - 5.0) < 1e-4  # 1 + 4 × 1
    ramp = np.zeros((3, 48, 64), np.float32)
    ramp[0] = np.linspace(0, 1, 64)[None, :]
    disparity = OnnxDepthEstimator(path, mean=(0, 0, 0), std=(1, 1, 1), output="disparity",
                                   depth_range=(1.0, 10.0))(ramp)
    assert abs(float(disparity.min()) - 1.0) < 1e-4 and abs(float(disparity.max()) - 10.0) < 1e-3
    assert disparity[24, 8] > disparity[24, 56]  # higher disparity (brighter here) = nearer
    with pytest.raises(ConfigError, match="not found"):
        OnnxDepthEstimator(tmp_path / "missing.onnx")
    (tmp_path / "bad.onnx").write_bytes(b"not a model")
    with pytest.raises(DataError, match="not a loadable ONNX model"):
        OnnxDepthEstimator(tmp_path / "bad.onnx")


def test_rgbx_data_synthesize_depth_then_lidar_from_rgb_alone(tmp_path, capsys):
    root = make_dataset(tmp_path / "rgb_only", n=4, size=(24, 32), modalities=("rgb",))
    model = _export(tmp_path, _ToyDepthNet().eval())
    assert main(["data", "synthesize", str(root), "--modalities", "lidar", "depth", "--depth-model", str(model),
                 "--focal", "30"]) == 0
    assert "wrote 4 depth files, 4 lidar files" in capsys.readouterr().out
    ds = build_dataset("folder", root, "train")
    sample = ds.load(0)
    depth, lidar = sample["inputs"]["depth"], sample["inputs"]["lidar"]
    assert depth.shape == (1, 24, 32) and float(depth.min()) >= 1.0 - 1e-3  # the toy model's output is ≥ 1 m
    hits = lidar > 0
    assert int(hits.sum()) > 0
    # each LiDAR return is the synthesised depth along its ray: range ≥ z, within the rays' obliquity
    # (up to the 2 cm range noise)
    assert bool((lidar[hits] >= depth[hits] - 0.1).all()) and bool((lidar[hits] <= 1.6 * depth[hits] + 0.1).all())
    assert main(["data", "synthesize", str(root), "--modalities", "depth"]) != 0
    assert "--depth-model" in capsys.readouterr().err


def test_rgbx_data_synthesize_thermal_with_an_onnx_estimator(tmp_path, capsys):
    root = make_dataset(tmp_path / "rgb_only", n=3, size=(24, 32), modalities=("rgb",))
    model = _export(tmp_path, _ToyDepthNet().eval())  # any RGB → one-map network serves as a stand-in
    assert main(["data", "synthesize", str(root), "--modalities", "thermal", "--thermal-model", str(model),
                 "--thermal-output", "minmax"]) == 0
    assert "wrote 3 thermal files" in capsys.readouterr().out
    thermal = build_dataset("folder", root, "train").load(0)["inputs"]["thermal"]
    assert thermal.shape == (1, 24, 32)
    assert float(thermal.min()) == 0.0 and float(thermal.max()) == 1.0  # stretched per image
    expected = OnnxThermalEstimator(model, output="minmax")(
        read_modality_file(root / "rgb" / "s000.png", "rgb").numpy())
    assert np.abs(thermal[0].numpy() - expected).max() <= 0.5 / 255 + 1e-6  # 8-bit quantisation only


def test_synthesize_refuses_to_write_png_over_a_modality_declared_in_another_encoding(tmp_path):
    import yaml

    root = make_dataset(tmp_path / "rgbd", n=2, size=(16, 20), modalities=("rgb", "depth"))
    desc = yaml.safe_load((root / "dataset.yaml").read_text())
    desc["modalities"]["event"] = {"encoding": "npy", "optional": True}
    (root / "dataset.yaml").write_text(yaml.safe_dump(desc))
    with pytest.raises(DataError, match="event is stored as npy"):
        synthesize_dataset(root, ["event"])
    assert not (root / "event").exists()


def test_overwrite_replaces_only_what_synthesize_wrote(tmp_path, capsys):
    # a folder of the user's own that dataset.yaml does not list: named with what it holds, kept even with --overwrite
    root = make_dataset(tmp_path / "rgb_only", n=2, size=(16, 20), modalities=("rgb",))
    mine = root / "event"
    mine.mkdir()
    (mine / "NOTES.txt").write_text("calib")
    (mine / "my_real_capture.png").write_bytes((root / "rgb" / "s000.png").read_bytes())
    for extra in ([], ["--overwrite"]):
        assert main(["data", "synthesize", str(root), "--modalities", "event", *extra]) == 2
        err = capsys.readouterr().err
        assert f"{mine}: is not part of the dataset ({root / 'dataset.yaml'} lists no event)" in err
        assert "NOTES.txt, my_real_capture.png" in err and "move the folder elsewhere" in err
    assert sorted(p.name for p in mine.iterdir()) == ["NOTES.txt", "my_real_capture.png"]
    assert not (root / "dataset.yaml.orig").exists()
    # <id>.png files of the dataset's samples that synthesized.yaml does not record: the user's own, never replaced
    (mine / "NOTES.txt").unlink()
    (mine / "my_real_capture.png").rename(mine / "s000.png")
    mine_bytes = (mine / "s000.png").read_bytes()
    for extra in ([], ["--overwrite"]):
        assert main(["data", "synthesize", str(root), "--modalities", "event", *extra]) == 2
        err = capsys.readouterr().err
        assert "holds event files of this dataset's samples (not listed in" in err and "move the folder" in err
    assert (mine / "s000.png").read_bytes() == mine_bytes
    (mine / "s000.png").unlink()  # an empty folder is written into
    assert main(["data", "synthesize", str(root), "--modalities", "event"]) == 0
    assert main(["data", "synthesize", str(root), "--modalities", "event", "--overwrite"]) == 0
    assert sorted(p.name for p in mine.iterdir()) == ["s000.png", "s001.png"]
    # a file dropped into a synthesised folder afterwards is not deleted by --overwrite
    (mine / "NOTES.txt").write_text("calib")
    with pytest.raises(DataError, match=r"holds 1 file\(s\) rgbx data synthesize did not write \(NOTES.txt\)"):
        synthesize_dataset(root, ["event"], overwrite=True)
    assert (mine / "NOTES.txt").read_text() == "calib"


def test_overwrite_keeps_the_datasets_own_modality(tmp_path):
    root = make_dataset(tmp_path / "rig", n=2, size=(16, 20), modalities=("rgb", "depth", "lidar"))
    before = (root / "lidar" / "s000.png").read_bytes()
    with pytest.raises(DataError, match=r"lidar: holds this dataset's own lidar files .*not replaced, even with "
                                        r"overwrite=True"):
        synthesize_dataset(root, ["lidar"], focal_px=20.0, overwrite=True)
    assert (root / "lidar" / "s000.png").read_bytes() == before


# -- review fixes: 16-bit ranges, declared storage, resolution, ownership, atomic writes, input checks -----------


def _yaml(root):
    import yaml

    return yaml.safe_load((root / "dataset.yaml").read_text())


def _write_yaml(root, desc):
    import yaml

    (root / "dataset.yaml").write_text(yaml.safe_dump(desc, sort_keys=False))


class _FarNet(torch.nn.Module):
    """Metric 'depth': 100 m in the left half of its (fixed 24×32) output, 10 m in the right half."""

    def forward(self, x):
        z = x[:, :1] * 0.0 + 10.0
        return torch.cat([z[..., :16] + 90.0, z[..., 16:]], dim=-1)


def test_ranges_beyond_16_bit_millimetres_are_no_measurement_not_clipped(tmp_path):
    depth = np.full((48, 64), 10.0)
    depth[:, :32] = 80.0  # 80 m: within the scanner's 120 m, beyond what 16-bit mm hold
    out = pseudo_lidar(depth, 40.0, np.random.default_rng(0), PseudoLidar(dropout=0.0, range_noise_m=0.0))
    ys, xs = np.nonzero(out[0])
    assert len(xs) > 50 and xs.min() >= 32  # no return from the far half ...
    assert int(out.max()) < 20000  # ... and certainly no 65535 ("65.5 m", a wrong range)
    # the depth writer: 100 m from the estimator is no measurement (0), 10 m is 10000 mm
    root = make_dataset(tmp_path / "rgb_only", n=2, size=(24, 32), modalities=("rgb",))
    model = _export(tmp_path, _FarNet().eval())
    synthesize_dataset(root, ["depth"], depth_estimator=OnnxDepthEstimator(model))
    d = read_modality_file(root / "depth" / "s000.png", "depth").numpy()[0]
    assert float(d[:, :14].max()) == 0.0 and abs(float(d[:, 18:].mean()) - 10.0) < 1e-3
    assert int(np.asarray(d * 1000).max()) != 65535


def test_lidar_reads_depth_with_the_storage_dataset_yaml_declares(tmp_path):
    root = make_dataset(tmp_path / "rgbd", n=3, size=(48, 64), modalities=("rgb", "depth"))
    desc = _yaml(root)
    desc["modalities"]["depth"] = {"scale": 0.00025}  # uint16 × 0.25 mm: the toy's 8000 → 2 m, 3000 → 0.75 m
    _write_yaml(root, desc)
    synthesize_dataset(root, ["lidar"], focal_px=40.0)
    sample = build_dataset("folder", root, "train").load(0)
    depth, lidar = sample["inputs"]["depth"], sample["inputs"]["lidar"]
    hits = lidar > 0
    assert int(hits.sum()) > 20 and float(depth.max()) == 2.0
    assert bool((lidar[hits] >= depth[hits] - 0.1).all()) and bool((lidar[hits] <= 1.6 * depth[hits] + 0.1).all())


def test_hfov_uses_the_resolution_depth_is_stored_at_and_the_lidar_entry_matches_it(tmp_path, capsys):
    root = make_dataset(tmp_path / "rig", n=3, size=(96, 128), modalities=("rgb",))
    (root / "depth").mkdir()
    for i in range(3):
        write_array(root / "depth" / f"s{i:03d}.png", np.full((1, 48, 64), 5000, np.uint16))  # 5 m, half resolution
    desc = _yaml(root)
    desc["modalities"]["depth"] = {"resize": "nearest"}
    _write_yaml(root, desc)
    assert main(["data", "synthesize", str(root), "--modalities", "lidar", "--hfov", "60"]) == 0
    capsys.readouterr()
    assert _yaml(root)["modalities"]["lidar"] == {"resize": "nearest"}
    assert main(["data", "check", str(root)]) == 0  # no "size differs from label"
    out = read_modality_file(root / "lidar" / "s000.png", "lidar").numpy()[0]
    assert out.shape == (48, 64)
    ys, xs = np.nonzero(out)
    r = out[ys, xs]

    def z_error(f):  # the returns mapped back to z-depth through a focal length f
        a = np.arctan((xs + 0.5 - 32) / f)
        e = np.arctan((24 - (ys + 0.5)) * np.cos(a) / f)
        return float(np.abs(r * np.cos(e) * np.cos(a) - 5.0).max())

    f_depth = 32 / np.tan(np.radians(30))  # the focal length of the 64-pixel-wide depth images
    assert len(r) > 50 and z_error(f_depth) < 0.1 and z_error(2 * f_depth) > 0.2


def test_overwrite_never_replaces_a_modality_listed_after_a_synthesis(tmp_path, capsys):
    root = make_dataset(tmp_path / "rgbd", n=2, size=(24, 32), modalities=("rgb", "depth"))
    assert main(["data", "synthesize", str(root), "--modalities", "event"]) == 0  # writes dataset.yaml.orig
    # the user adds a real LiDAR and lists it: theirs, though dataset.yaml.orig does not list it
    (root / "lidar").mkdir()
    real = np.zeros((1, 24, 32), np.uint16)
    real[0, ::3, ::2] = 4321
    for i in range(2):
        write_array(root / "lidar" / f"s{i:03d}.png", real)
    desc = _yaml(root)
    desc["modalities"]["lidar"] = {}
    _write_yaml(root, desc)
    before = (root / "lidar" / "s000.png").read_bytes()
    assert main(["data", "synthesize", str(root), "--modalities", "lidar", "--focal", "30", "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "holds this dataset's own lidar files" in err and "overwrite=True" not in err
    assert (root / "lidar" / "s000.png").read_bytes() == before
    assert main(["data", "synthesize", str(root), "--modalities", "event", "--overwrite"]) == 0  # still rgbx's
    assert main(["data", "synthesize", str(root), "--modalities", "event"]) == 2
    err = capsys.readouterr().err
    assert "pass --overwrite to replace them" in err and "overwrite=True" not in err  # the CLI names its flag only
    # files of a synthesised folder replaced by the user's own (same names): theirs from then on
    own_events = np.zeros((2, 24, 32), np.uint8)
    own_events[0, 5, 5] = 7
    write_array(root / "event" / "s000.png", own_events)
    before = (root / "event" / "s000.png").read_bytes()
    assert main(["data", "synthesize", str(root), "--modalities", "event", "--overwrite"]) == 2
    assert "its files have changed since rgbx data synthesize wrote them" in capsys.readouterr().err
    assert (root / "event" / "s000.png").read_bytes() == before


def test_a_failed_synthesis_leaves_the_previous_output_and_lists_nothing(tmp_path, monkeypatch):
    import rgbx.data.modality_synthesis as ms

    root = make_dataset(tmp_path / "rgbd", n=4, size=(24, 32), modalities=("rgb", "depth"))
    synthesize_dataset(root, ["event"])
    first = {p.name: p.read_bytes() for p in (root / "event").iterdir()}
    desc = (root / "dataset.yaml").read_text()
    calls = []

    def crash_on_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("killed")
        return np.zeros((2, 24, 32), np.uint8)

    monkeypatch.setattr(ms, "simulate_events", crash_on_third)
    with pytest.raises(RuntimeError, match="killed"):
        synthesize_dataset(root, ["event", "lidar"], focal_px=30.0, overwrite=True)
    assert {p.name: p.read_bytes() for p in (root / "event").iterdir()} == first
    assert not (root / "lidar").exists() and (root / "dataset.yaml").read_text() == desc
    assert sorted(p.name for p in root.iterdir() if "rgbx-synthesize" in p.name) == []
    assert "optional" not in str(_yaml(root)["modalities"]["event"])  # a file for every sample: not optional


def test_synthesize_refuses_bad_inputs_before_touching_anything(tmp_path, capsys):
    root = make_dataset(tmp_path / "rgb_only", n=2, size=(24, 32), modalities=("rgb",))
    model = _export(tmp_path, _ToyDepthNet().eval())  # a fixed 24×32 input
    assert main(["data", "synthesize", str(root), "--modalities", "depth", "--depth-model", str(model),
                 "--depth-size", "64x64"]) == 2
    err = capsys.readouterr().err
    assert "--depth-size 64x64" in err and "fixed input size of 24x32" in err and "Traceback" not in err
    with pytest.raises(ConfigError, match="fixed input size of 24x32"):
        OnnxDepthEstimator(model, input_size=(64, 64))
    assert OnnxDepthEstimator(model, input_size=(24, 32)).fixed == (24, 32)
    with pytest.raises(SystemExit):
        main(["data", "synthesize", str(root), "--modalities", "event", "--seed", "-1"])
    assert "--seed" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="seed -1"):
        synthesize_dataset(root, ["event"], seed=-1)
    assert not (root / "depth").exists() and not (root / "event").exists()


def test_hfov_with_modality_folders_at_absolute_paths(tmp_path, capsys):
    root = make_dataset(tmp_path / "rig", n=3, size=(24, 32), modalities=("rgb", "depth"))
    elsewhere = tmp_path / "sensors"
    elsewhere.mkdir()
    desc = _yaml(root)
    for m in ("rgb", "depth"):
        (root / m).rename(elsewhere / m)
        desc["modalities"][m] = {"folder": str(elsewhere / m)}
    _write_yaml(root, desc)
    assert main(["data", "synthesize", str(root), "--modalities", "lidar", "--hfov", "70"]) == 0
    assert "wrote 3 lidar files (hfov 70°)" in capsys.readouterr().out
    assert main(["data", "check", str(root)]) == 0
