"""HHA encoding on synthetic geometry with a known answer, the cache, and one real depth image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rgbx.data import hha as hha_mod
from rgbx.data.hha import depth_to_hha, hha_cache_file, hha_cached, read_depth_metres
from rgbx.errors import DataError

H, W = 120, 160
K = (130.0, 130.0, (W - 1) / 2, (H - 1) / 2)  # (fx, fy, cx, cy), ~63° horizontal field of view


def room(tilt_deg: float = 25.0, camera_height: float = 1.5, wall_distance: float = 5.0):
    """Depth of a flat floor and a vertical back wall seen by a camera pitched down by ``tilt_deg``.

    Camera coordinates: x right, y down, z forward. Returns depth (z) in metres, the floor mask, the true up
    vector and each pixel's height above the floor (metres)."""
    fx, fy, cx, cy = K
    t = np.deg2rad(tilt_deg)
    up = np.array([0.0, -np.cos(t), -np.sin(t)])
    forward = np.array([0.0, -np.sin(t), np.cos(t)])  # horizontal, towards the wall
    u, v = np.meshgrid(np.arange(W), np.arange(H))
    rays = np.stack([(u - cx) / fx, (v - cy) / fy, np.ones((H, W))], axis=-1)  # z = 1 along each ray
    rise = rays @ up
    with np.errstate(divide="ignore"):
        to_floor = np.where(rise < 0, -camera_height / rise, np.inf)
    to_wall = wall_distance / (rays @ forward)
    z = np.minimum(to_floor, to_wall)
    height = camera_height + z * rise
    return z, to_floor < to_wall, up, height


def test_floor_and_wall_seen_by_a_tilted_camera():
    z, floor, up, height = room()
    assert 0.2 < floor.mean() < 0.8
    hha, up_est = depth_to_hha(z, K, return_up=True)
    assert hha.shape == (3, H, W) and hha.dtype == np.uint8
    assert float(up_est @ up) > np.cos(np.deg2rad(1.0))  # gravity recovered from the normals
    core = np.zeros((H, W), bool)
    core[6:-6, 6:-6] = True
    edge = np.abs(height - 0.0) < 0.15  # pixels near the floor/wall crease mix both planes in the normal window
    on_floor, on_wall = floor & core & ~edge, ~floor & core & ~edge
    # Angle with gravity: constant on each plane (floor normals point up: 0° + 38; walls 90° + 38).
    assert np.all(np.abs(hha[2][on_floor].astype(int) - 38) <= 1)
    assert np.all(np.abs(hha[2][on_wall].astype(int) - 128) <= 1)
    # Height above the floor: ~0 on the floor, and on the wall the encoded height (cm) follows the true height.
    assert np.all(hha[1][on_floor] <= 1)
    wall_cm = np.clip(np.rint(100 * height[on_wall]), 0, 255)
    assert np.max(np.abs(hha[1][on_wall].astype(int) - wall_cm)) <= 1
    col = hha[1][:, W // 2][on_wall[:, W // 2]].astype(int)
    assert np.all(np.diff(col) <= 0) and col[0] > col[-1]  # rows go down the image → lower on the wall
    # Disparity = 310 / z.
    assert np.all(np.abs(hha[0][core].astype(int) - np.clip(np.rint(310 / z[core]), 0, 255)) <= 1)


def test_level_camera_assumption_and_explicit_gravity():
    z, floor, up, _ = room(tilt_deg=25.0)
    core = floor.copy()
    core[:6], core[-6:], core[:, :6], core[:, -6:] = False, False, False, False
    level = depth_to_hha(z, K, gravity="camera")  # wrong here: the camera is tilted by 25°
    assert abs(int(np.median(level[2][core])) - (38 + 25)) <= 1
    given = depth_to_hha(z, K, gravity=tuple(up))
    assert abs(int(np.median(given[2][core])) - 38) <= 1


def test_fronto_parallel_wall_has_constant_disparity():
    z = np.full((H, W), 2.0)
    hha = depth_to_hha(z, K, gravity="camera")
    assert np.all(hha[0] == round(310 / 2.0))  # 155
    assert np.all(np.abs(hha[2][5:-5, 5:-5].astype(int) - 128) <= 1)  # a wall: 90° from up
    near = depth_to_hha(np.full((H, W), 0.8), K, gravity="camera")
    assert np.all(near[0] == 255)  # saturates below ~1.2 m


def test_invalid_depth_is_zero_or_filled():
    z, *_ = room()
    z = z.copy()
    z[40:50, 60:80] = 0.0
    z[0, :] = np.nan
    hha = depth_to_hha(z, K)
    assert np.all(hha[:, 40:50, 60:80] == 0) and np.all(hha[:, 0, :] == 0)
    filled = depth_to_hha(z, K, invalid="fill")
    assert np.all(filled[0] > 0)
    assert not depth_to_hha(np.zeros((8, 8)), K).any()
    with pytest.raises(DataError, match="intrinsics"):
        depth_to_hha(z, (1.0, 2.0))


def test_cache_is_written_once(tmp_path, monkeypatch):
    z, *_ = room()
    depth_png = tmp_path / "scene_007.png"
    Image.fromarray((z * 1000).astype(np.uint16)).save(depth_png)
    assert read_depth_metres(depth_png).max() == pytest.approx(z.max(), abs=1e-3)
    calls = []
    real = hha_mod.depth_to_hha
    monkeypatch.setattr(hha_mod, "depth_to_hha", lambda *a, **k: calls.append(1) or real(*a, **k))
    cache = tmp_path / "cache"
    first = hha_cached(depth_png, cache, K)
    again = hha_cached(depth_png, cache, K)
    assert len(calls) == 1 and np.array_equal(first, again) and first.shape == (3, H, W)
    assert sorted(p.name for p in cache.iterdir()) == ["scene_007.png"]  # no temporary files left
    assert hha_cache_file(depth_png, cache, lambda h, w: K) == cache / "scene_007.png"
    assert np.array_equal(first, depth_to_hha(read_depth_metres(depth_png), K))
    eight_bit = tmp_path / "relative.png"
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(eight_bit)
    with pytest.raises(DataError, match="not metric"):
        hha_cached(eight_bit, cache, K)


REAL_DEPTH = Path(__file__).resolve().parents[3] / "shared" / "data" / "real_samples" / "rgbd_indoor_depth.png"


@pytest.mark.skipif(not REAL_DEPTH.is_file(), reason="shared real samples not available")
def test_real_indoor_depth():
    # uint16 millimetres, 1440x1080; intrinsics unknown: guess a 60° horizontal field of view, centred principal point.
    depth = read_depth_metres(REAL_DEPTH)
    h, w = depth.shape
    f = w / (2 * np.tan(np.deg2rad(30)))
    hha = depth_to_hha(depth, (f, f, (w - 1) / 2, (h - 1) / 2))
    assert hha.shape == (3, h, w) and hha.dtype == np.uint8
    valid = depth > 0
    for channel in hha:
        assert channel[valid].std() > 5  # not constant
    assert np.all(hha[:, ~valid] == 0)
