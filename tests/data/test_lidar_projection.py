"""LiDAR → camera projection with known answers, and the KITTI-360 / MUSES calibration parsers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rgbx.data.lidar_projection import (
    kitti360_calibration,
    load_muses_calibration,
    parse_calib_rigid,
    parse_perspective,
    project_points,
    read_point_file,
)
from rgbx.errors import DataError

# A LiDAR with x forward, y left, z up (Velodyne / KITTI convention) and a camera with x right, y down, z forward:
# camera → LiDAR is x_l = z_c, y_l = -x_c, z_l = -y_c.
CAM_TO_VELO = np.array([[0.0, 0.0, 1.0, 0.0], [-1.0, 0.0, 0.0, 0.0], [0.0, -1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
VELO_TO_CAM = np.linalg.inv(CAM_TO_VELO)
H, W, F, CX, CY = 12, 16, 10.0, 8.0, 6.0
P_RECT = np.array([[F, 0.0, CX, 0.0], [0.0, F, CY, 0.0], [0.0, 0.0, 1.0, 0.0]])


def test_point_straight_ahead_lands_on_the_principal_point():
    out = project_points(np.array([[10.0, 0.0, 0.0]]), VELO_TO_CAM, np.eye(3), P_RECT, (H, W))
    assert out.shape == (1, H, W) and out.dtype == np.float32
    assert out[0, int(CY), int(CX)] == pytest.approx(10.0)
    assert np.count_nonzero(out) == 1


def test_points_behind_the_camera_are_dropped():
    out = project_points(np.array([[-10.0, 0.0, 0.0], [-3.0, 0.2, 0.1]]), VELO_TO_CAM, None, P_RECT, (H, W))
    assert not out.any()


def test_nearest_point_wins_on_a_shared_pixel():
    pts = np.array([[20.0, 0.0, 0.0], [10.0, 0.0, 0.0], [30.0, 0.0, 0.0]])  # all project onto the principal point
    out = project_points(pts, VELO_TO_CAM, np.eye(4), P_RECT, (H, W))
    assert out[0, 6, 8] == pytest.approx(10.0) and np.count_nonzero(out) == 1


def test_range_is_distance_from_the_lidar_and_depth_is_camera_z():
    # 5 m ahead, 0.5 m to the right (y_l = -0.5): u = 10 * 0.5 / 5 + 8 = 9
    pt = np.array([[5.0, -0.5, 0.0, 0.7]])  # a 4th column (reflectance) is ignored
    rng = project_points(pt, VELO_TO_CAM, None, P_RECT, (H, W))
    dep = project_points(pt, VELO_TO_CAM, None, P_RECT, (H, W), value="depth")
    assert rng[0, 6, 9] == pytest.approx(np.hypot(5.0, 0.5), rel=1e-6)
    assert dep[0, 6, 9] == pytest.approx(5.0)


def test_rectification_rotation_and_bounds_and_range_limits():
    # R_rect rotates the camera 90° about its optical axis: camera-x becomes camera-y
    R = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    pt = np.array([[5.0, -0.5, 0.0]])  # camera (0.5, 0, 5) → rectified (0, 0.5, 5) → v = 7, u = 8
    out = project_points(pt, VELO_TO_CAM, R, P_RECT, (H, W))
    assert out[0, 7, 8] > 0
    far_left = np.array([[1.0, 5.0, 0.0]])  # u = 8 - 50: outside
    assert not project_points(far_left, VELO_TO_CAM, None, P_RECT, (H, W)).any()
    near = np.array([[0.5, 0.0, 0.0], [10.0, 0.0, 0.0]])
    assert project_points(near, VELO_TO_CAM, None, P_RECT, (H, W), min_range=1.0)[0, 6, 8] == pytest.approx(10.0)
    assert not project_points(near[1:], VELO_TO_CAM, None, P_RECT, (H, W), max_range=5.0).any()


def test_kitti360_calibration_files(tmp_path):
    calib = tmp_path / "calibration"
    calib.mkdir()
    (calib / "calib_cam_to_velo.txt").write_text(" ".join(f"{v:.6f}" for v in CAM_TO_VELO[:3].ravel()) + "\n")
    (calib / "perspective.txt").write_text(
        "image_00: kitti360\n"
        f"S_rect_00: {W:.6e} {H:.6e}\n"
        "R_rect_00: " + " ".join(f"{v:.6e}" for v in np.eye(3).ravel()) + "\n"
        "P_rect_00: " + " ".join(f"{v:.6e}" for v in P_RECT.ravel()) + "\n"
        "S_rect_01: 1.0 1.0\n")
    assert np.allclose(parse_calib_rigid(calib / "calib_cam_to_velo.txt"), CAM_TO_VELO)
    persp = parse_perspective(calib / "perspective.txt")
    assert np.allclose(persp["P_rect"], P_RECT) and persp["size"] == (H, W)
    cal = kitti360_calibration(tmp_path)
    assert np.allclose(cal["T_velo_to_cam"], VELO_TO_CAM)
    (calib / "perspective.txt").write_text("P_rect_00: 1 2 3\n")
    with pytest.raises(DataError, match="perspective.txt"):
        parse_perspective(calib / "perspective.txt")


def test_muses_calibration_rescales_K(tmp_path):
    K = [[1200.0, 0.0, 960.0], [0.0, 1080.0, 540.0], [0.0, 0.0, 1.0]]
    (tmp_path / "calib.json").write_text(json.dumps({"intrinsics": {"rgb": {"K": K}},
                                                     "extrinsics": {"lidar2rgb": VELO_TO_CAM.tolist()}}))
    cal = load_muses_calibration(tmp_path / "calib.json", size=(H, W))
    assert np.allclose(cal["P"][:, :3], [[10.0, 0.0, 8.0], [0.0, 12.0, 6.0], [0.0, 0.0, 1.0]])
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(DataError, match="bad.json"):
        load_muses_calibration(tmp_path / "bad.json")


def test_point_files(tmp_path):
    np.arange(8, dtype=np.float32).tofile(tmp_path / "a.bin")
    assert read_point_file(tmp_path / "a.bin", 4).shape == (2, 4)
    (tmp_path / "b.bin").write_bytes(b"12345")
    with pytest.raises(DataError, match="b.bin"):
        read_point_file(tmp_path / "b.bin", 4)
