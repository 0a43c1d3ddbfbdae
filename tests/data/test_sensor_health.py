"""Sensor health checks (rgbx.data.sensor_health): each check's figure by hand, each failure caught, live-looking
frames passed, the stream's frozen count, and the rules' parsing."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from rgbx.data.sensor_health import (
    HealthRules,
    SensorFailure,
    SensorMonitor,
    failed_checks,
    frame_statistics,
    parse_rules,
    replace_non_finite,
    screen_frames,
)
from rgbx.errors import ConfigError
from rgbx.modalities import get_modality

RULES = HealthRules()


def camera(seed=0, h=24, w=32):
    """A live-looking RGB frame, physical units 0-1."""
    return torch.rand((3, h, w), generator=torch.Generator().manual_seed(seed))


def depth(seed=0, h=24, w=32, holes=0.2):
    """A live-looking depth frame in metres with a fraction of invalid (0) pixels."""
    g = torch.Generator().manual_seed(seed)
    d = 1 + 4 * torch.rand((1, h, w), generator=g)
    return torch.where(torch.rand((1, h, w), generator=g) < holes, torch.zeros_like(d), d)


def failures(name, x, rules=RULES):
    spec = get_modality(name)
    return {c for c, f in failed_checks(frame_statistics(x[None], spec), spec, rules).items() if bool(f[0])}


def test_statistics_by_hand():
    rgb = torch.zeros(3, 2, 2)
    rgb[:, 0, 0] = 1.0  # one white pixel, three black: std per channel sqrt(3)/4
    stats = frame_statistics(rgb[None], get_modality("rgb"))
    std = torch.tensor(get_modality("rgb").std)
    assert stats["contrast"].item() == pytest.approx((3**0.5 / 4 / std).min().item(), rel=1e-5)
    assert stats["saturated"].item() == 1.0  # every pixel at one end of the range
    assert stats["coverage"].item() == 1.0 and stats["non_finite"].item() == 0.0

    d = torch.tensor([[[0.0, 2.0], [4.0, float("nan")]]])  # one invalid, one NaN (counted, then invalid)
    stats = frame_statistics(d[None], get_modality("depth"))
    assert stats["non_finite"].item() == pytest.approx(0.25)
    assert stats["coverage"].item() == pytest.approx(0.5)  # 2 of 4 pixels measured
    assert stats["contrast"].item() == pytest.approx(1.0 / 10.0)  # std of {2, 4} over the spec's 10 m


def test_replace_non_finite():
    d = torch.tensor([[[1.0, float("nan")], [float("inf"), -float("inf")]]])
    clean, fraction = replace_non_finite(d[None], get_modality("depth"))
    assert clean.flatten().tolist() == [1.0, 0.0, 0.0, 0.0] and fraction.item() == pytest.approx(0.75)
    rgb = torch.full((1, 3, 2, 2), float("nan"))
    assert replace_non_finite(rgb, get_modality("rgb"))[0].eq(0).all()  # black where a camera has no value


def test_live_frames_pass():
    assert failures("rgb", camera()) == set()
    dark = camera() * 0.03  # a night image: dim, but with structure
    assert failures("rgb", dark) == set()
    assert failures("depth", depth()) == set()
    flat_wall = torch.full((1, 24, 32), 2.0) + 0.004 * torch.randn(1, 24, 32)  # 4 mm sensor noise
    assert failures("depth", flat_wall) == set()
    lidar = torch.zeros(1, 24, 32)
    lidar[0, ::6, ::4] = 12.5  # a few returns, all at one range
    assert failures("lidar", lidar) == set()
    events = torch.zeros(2, 24, 32)
    events[0, 3, 4] = events[1, 10, 11] = 1.0  # two events
    assert failures("event", events) == set()
    thermal = torch.full((1, 24, 32), 0.4)
    thermal[0, 5:9, 5:9] = 0.9
    assert failures("thermal", thermal) == set()


@pytest.mark.parametrize("name, frame, expected", [
    ("rgb", torch.zeros(3, 24, 32), {"no_signal", "saturated"}),  # lens cap
    ("rgb", torch.full((3, 24, 32), 0.5), {"no_signal"}),  # unplugged video: uniform grey
    ("rgb", torch.full((3, 24, 32), float("nan")), {"non_finite", "no_signal", "saturated"}),
    ("depth", torch.zeros(1, 24, 32), {"no_signal"}),  # no return anywhere
    ("depth", torch.full((1, 24, 32), 40.0), {"no_signal"}),  # every pixel one value
    ("depth", torch.full((1, 24, 32), float("nan")), {"non_finite", "no_signal"}),
    ("lidar", torch.zeros(1, 24, 32), {"no_signal"}),
    ("event", torch.zeros(2, 24, 32), {"no_signal"}),
])
def test_failed_frames_caught(name, frame, expected):
    assert failures(name, frame) == expected


def test_saturation_and_thresholds():
    blinded = camera() * 0.2
    blinded[:, :, 1:] = 1.0  # 31 of 32 columns white (97 %), some structure left
    assert failures("rgb", blinded) == {"saturated"}
    assert failures("rgb", blinded, HealthRules(max_saturated=0.99)) == set()
    sparse_depth = depth(holes=0.995)
    assert "no_signal" in failures("depth", sparse_depth)  # under 1 % measured
    assert failures("depth", sparse_depth, HealthRules(min_coverage=0.0)) == set()
    half_nan = depth(holes=0.0)
    half_nan[:, :12] = float("nan")
    assert failures("depth", half_nan) == set()  # 50 % NaN is not above max_non_finite = 0.5
    assert failures("depth", half_nan, HealthRules(max_non_finite=0.25)) == {"non_finite"}


def test_monitor_counts_repeats_of_a_stream():
    monitor = SensorMonitor(per_sensor={"depth": HealthRules(frozen_after=1)})
    stuck_rgb, d = camera(1), depth(1)
    verdicts = []
    for step in range(5):
        healthy, statuses = monitor.screen({"rgb": stuck_rgb, "depth": depth(10 + step)})
        verdicts.append((statuses["rgb"].repeats, statuses["rgb"].failures, sorted(healthy)))
    assert verdicts == [(0, (), ["depth", "rgb"]), (1, (), ["depth", "rgb"]), (2, (), ["depth", "rgb"]),
                        (3, ("frozen",), ["depth"]), (4, ("frozen",), ["depth"])]  # frozen_after = 3 repeats
    assert "the same frame 5 times in a row" in statuses["rgb"].describe()
    _, statuses = monitor.screen({"rgb": camera(2), "depth": d})  # a new frame: the count starts again
    assert statuses["rgb"].ok and statuses["rgb"].repeats == 0
    _, statuses = monitor.screen({"rgb": camera(3), "depth": d.clone()})  # depth's own rule: one repeat fails
    assert statuses["depth"].failures == ("frozen",)
    monitor.reset()
    _, statuses = monitor.screen({"rgb": camera(3), "depth": d})
    assert statuses["rgb"].ok and statuses["depth"].ok


def test_monitor_tolerance_and_cleaning():
    monitor = SensorMonitor(HealthRules(frozen_after=1, frozen_tolerance=1e-3))
    d = depth(2)
    d[0, 0, 0] = float("nan")
    healthy, statuses = monitor.screen({"depth": d})
    assert torch.isfinite(healthy["depth"]).all() and healthy["depth"][0, 0, 0] == 0  # NaN → no measurement
    assert statuses["depth"].non_finite == pytest.approx(1 / (24 * 32))
    _, statuses = monitor.screen({"depth": d + 5e-4})  # within the tolerance: the same frame
    assert statuses["depth"].failures == ("frozen",)
    _, statuses = monitor.screen({"depth": d + 0.1})
    assert statuses["depth"].ok


def test_screen_frames_batch_agrees_with_the_monitor():
    frames = torch.stack([camera(0), torch.zeros(3, 24, 32), camera(0), camera(5)])
    previous = torch.stack([camera(9), camera(0), camera(0), camera(4)])
    clean, failed = screen_frames(frames, get_modality("rgb"), RULES, previous)
    assert failed["no_signal"].tolist() == [False, True, False, False]
    assert failed["frozen"].tolist() == [False, False, True, False]
    _, failed = screen_frames(frames, get_modality("rgb"), RULES, previous, torch.tensor([True, True, False, True]))
    assert failed["frozen"].tolist() == [False, False, False, False]
    _, failed = screen_frames(frames, get_modality("rgb"), RULES)
    assert not failed["frozen"].any()
    for i in range(4):  # the single-frame path gives the same stateless verdicts
        _, status = SensorMonitor().check("rgb", frames[i])
        assert set(status.failures) == {c for c, f in failed.items() if bool(f[i])}


def test_sensor_failure_names_every_sensor():
    monitor = SensorMonitor()
    _, statuses = monitor.screen({"rgb": torch.zeros(3, 8, 8), "depth": torch.zeros(1, 8, 8)})
    message = str(SensorFailure(statuses, "sample s1"))
    assert message.startswith("sample s1: every sensor failed its health checks")
    assert "rgb: no_signal (contrast 0" in message and "depth: no_signal (0.0% of pixels measured" in message
    assert statuses["depth"].to_dict()["ok"] is False


def test_parse_rules():
    common, per = parse_rules(["frozen_after=5", "depth.min_coverage=0.05", "max_saturated=0.9"])
    assert common == dataclasses.replace(RULES, frozen_after=5, max_saturated=0.9)
    assert per == {"depth": dataclasses.replace(common, min_coverage=0.05)}  # over the common ones, any order
    assert SensorMonitor(common, per).rules_for("rgb") == common
    for bad, message in [("frozen_after", "expected KEY=VALUE"), ("speed=3", "unknown key 'speed'"),
                         ("frozen_after=1.5", "takes an integer"), ("min_contrast=x", "takes a number"),
                         ("frozen_after=0", "must be >= 1"), ("min_coverage=-1", "must be >= 0")]:
        with pytest.raises(ConfigError, match=message):
            parse_rules([bad])
    with pytest.raises(Exception, match="sonar"):
        parse_rules(["sonar.min_coverage=0.1"])


REAL = Path(__file__).resolve().parents[3] / "shared" / "data" / "real_samples"


def test_a_real_rgbd_frame_passes():
    if not (REAL / "rgbd_indoor_depth.png").is_file():
        pytest.skip(f"the real RGB-D frame is not there ({REAL})")
    from rgbx.data.files import read_modality_file

    _, statuses = SensorMonitor().screen({"rgb": read_modality_file(REAL / "rgbd_indoor_rgb.png", "rgb"),
                                          "depth": read_modality_file(REAL / "rgbd_indoor_depth.png", "depth")})
    assert all(s.ok for s in statuses.values()), statuses
    assert 0.9 < statuses["depth"].coverage < 1.0  # a real depth camera's holes


def test_data_stats_lists_the_failed_frames(tmp_path, capsys):
    from PIL import Image

    from rgbx.cli.main import main
    from tests.conftest import make_dataset

    root = make_dataset(tmp_path / "rig", n=6, size=(16, 20), modalities=("rgb", "depth"))
    Image.fromarray(np.zeros((16, 20, 3), np.uint8)).save(root / "rgb" / "s001.png")  # lens cap
    shutil.copy(root / "depth" / "s002.png", root / "depth" / "s003.png")  # a repeated depth frame
    assert main(["data", "stats", str(root), "--split", "train"]) == 0
    table = capsys.readouterr().out
    rows = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:-1]]
            for line in table.splitlines() if line.startswith("│ rgb") or line.startswith("│ depth")}
    assert rows["rgb"][:5] == ["4", "0", "1", "1", "0"] and rows["rgb"][-1] == "s001"  # black: no signal, saturated
    assert rows["depth"][:5] == ["4", "0", "0", "0", "1"] and rows["depth"][-1] == "s003"  # = the sample before


def test_frame_screen_leaves_a_failed_sensor_out_of_a_sample(tmp_path):
    from PIL import Image

    from rgbx.data import FolderDataset, collate
    from rgbx.data.sensor_health import FrameScreen
    from rgbx.data.transforms import EvalTransform
    from tests.conftest import make_dataset

    root = make_dataset(tmp_path / "rig", n=6, size=(16, 20), modalities=("rgb", "depth"))
    Image.fromarray(np.zeros((16, 20, 3), np.uint8)).save(root / "rgb" / "s001.png")  # black at start-up
    Image.fromarray(np.zeros((16, 20), np.uint16)).save(root / "depth" / "s002.png")  # an empty depth frame
    Image.fromarray(np.zeros((16, 20, 3), np.uint8)).save(root / "rgb" / "s003.png")  # both dead: kept as they are
    Image.fromarray(np.zeros((16, 20), np.uint16)).save(root / "depth" / "s003.png")
    ds = FolderDataset(root, "train", transform=EvalTransform())
    ds.screen = FrameScreen()
    ids = ds.ids
    samples = [ds[i] for i in range(len(ds))]
    kept = {s["meta"]["id"]: sorted(s["inputs"]) for s in samples}
    assert kept["s001"] == ["depth"] and kept["s002"] == ["rgb"] and kept["s003"] == ["depth", "rgb"]
    assert samples[ids.index("s001")]["meta"]["screened"] == ["rgb"]
    batch = collate(samples)  # the screened sensor is absent there, like a sensor the rig lacked
    assert batch.present["rgb"].tolist() == [s != "s001" for s in ids]
    assert batch.present["depth"].tolist() == [s != "s002" for s in ids]
    # one sensor's rule: a coverage of at most 100 % fails, so every depth frame does, even a full one
    assert ds.load(ids.index("s000"))["inputs"]["depth"].ne(0).all()
    ds.screen = FrameScreen(*parse_rules(["depth.min_coverage=1"]))
    assert sorted(ds[ids.index("s000")]["inputs"]) == ["rgb"]


def test_statistics_on_a_grid_of_a_large_frame():
    """Contrast and saturation are estimated on every k-th pixel of a large frame; coverage counts every pixel, and a
    sparse frame whose returns all miss the grid is measured on every pixel."""
    from rgbx.data.sensor_health import SAMPLED_PIXELS

    rgb = camera(7, 480, 640)
    stats = frame_statistics(rgb[None], get_modality("rgb"))
    exact = (rgb.flatten(1).std(1, correction=0) / torch.tensor(get_modality("rgb").std)).min()
    assert stats["contrast"].item() == pytest.approx(exact.item(), rel=0.03) and 480 * 640 > 4 * SAMPLED_PIXELS
    d = torch.zeros(1, 480, 640)
    d[0, 1::4, 1::4] = torch.linspace(1.0, 9.0, 120 * 160).view(120, 160)  # returns only between the grid's pixels
    stats = frame_statistics(d[None], get_modality("depth"))
    assert stats["coverage"].item() == pytest.approx(1 / 16)
    assert stats["contrast"].item() > 0.2 and failures("depth", d) == set()


def test_stale_frames_by_timestamp():
    """A driver handing out its last buffer with its old timestamp: stale when more than max_age behind the step's
    newest frame (or now); off without max_age."""
    monitor = SensorMonitor(HealthRules(max_age=0.2), per_sensor={"lidar": HealthRules(max_age=0.5)})
    lidar = torch.zeros(1, 24, 32)
    lidar[0, ::6, ::4] = 12.5
    frames = {"rgb": camera(1), "depth": depth(1), "lidar": lidar}
    _, statuses = monitor.screen(frames, stamps={"rgb": 10.0, "depth": 9.7, "lidar": 9.6})
    assert statuses["depth"].failures == ("stale",) and statuses["depth"].age == pytest.approx(0.3)
    assert "stale (0.300 s old)" in statuses["depth"].describe()
    assert statuses["rgb"].ok and statuses["lidar"].ok  # 0.4 s: within the LiDAR's own 0.5 s
    _, statuses = monitor.screen({**frames, "rgb": camera(2), "depth": depth(2)}, stamps={"rgb": 10.1}, now=10.45)
    assert statuses["rgb"].failures == ("stale",) and statuses["depth"].age is None  # no stamp, no verdict
    _, statuses = SensorMonitor().screen({"rgb": camera(3)}, stamps={"rgb": 0.0}, now=100.0)
    assert statuses["rgb"].ok  # max_age not set
    with pytest.raises(Exception, match="timestamps for thermal, which sent no frame"):
        monitor.screen({"rgb": camera(4)}, stamps={"thermal": 1.0})
    assert parse_rules(["depth.max_age=0.25"])[1]["depth"].max_age == 0.25


def test_a_sparse_sensors_empty_pixels_are_not_reported_as_saturated():
    """A LiDAR frame is mostly 'no measurement' (0 m, the bottom of its range): that share was written to
    sensor_health.csv as 'saturated' (97 %) while the check, rightly, did not apply."""
    x = torch.zeros(1, 1, 32, 40)
    x[0, 0, ::4, ::4] = torch.linspace(2.0, 40.0, 80).view(8, 10)
    stats = frame_statistics(x, get_modality("lidar"))
    assert stats["saturated"].tolist() == [0.0] and 0 < stats["coverage"].item() < 0.1
    dark = torch.zeros(1, 1, 32, 40)  # a thermal camera (no 'no measurement' value) stuck at the bottom
    assert frame_statistics(dark, get_modality("thermal"))["saturated"].tolist() == [1.0]
