"""Modalities synthesised from RGB / depth: the event model's polarity and counts, the pseudo-LiDAR geometry, and
`rgbx data synthesize` on a dataset folder (written, listed, loadable, nothing overwritten by accident)."""

from __future__ import annotations

import numpy as np
import pytest

from rgbx.cli.main import main
from rgbx.data import build_dataset
from rgbx.data.modality_synthesis import (
    EventSimulation,
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
    with pytest.raises(ConfigError, match="rgbx synthesises event, lidar"):
        synthesize_dataset(root, ["thermal"])
    root2 = make_dataset(tmp_path / "rgbd", n=2, size=(16, 20), modalities=("rgb", "depth"))
    with pytest.raises(ConfigError, match="focal length"):
        synthesize_dataset(root2, ["lidar"])
