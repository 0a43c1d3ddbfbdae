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
    # what an interrupted run left (<id>.png files, not listed yet) is replaced with --overwrite
    (mine / "NOTES.txt").unlink()
    (mine / "my_real_capture.png").rename(mine / "s000.png")
    assert main(["data", "synthesize", str(root), "--modalities", "event"]) == 2
    assert "already holds event files of this dataset's samples (an earlier rgbx data synthesize's" in capsys.readouterr().err
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
                                        r"--overwrite"):
        synthesize_dataset(root, ["lidar"], focal_px=20.0, overwrite=True)
    assert (root / "lidar" / "s000.png").read_bytes() == before
