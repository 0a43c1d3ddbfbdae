"""LiDAR scans → sparse range images in a camera, and the calibration files needed for that.

:func:`project_points` is the one projection every adapter uses: points are moved into the (rectified) camera, those
behind it are dropped, the rest land on the pixel nearest to their projection, and where several points share a pixel
the nearest one wins (a z-buffer). The result is rgbx's ``lidar`` modality: ``(1, H, W)`` float32 range in metres,
0 = no return.

Conventions (and where the references differ):

- **Value**: ``value="range"`` (default) stores the Euclidean distance of the point from the LiDAR origin, which is
  what the ``lidar`` modality means and what the MUSES SDK writes into channel 0 of its projections
  (``processing/utils.py: create_image_from_point_cloud``). ``value="depth"`` stores the camera z instead, as the
  KITTI-360 devkit's ``projectVeloToImage`` (``kitti360scripts/viewer/kitti360Viewer3DRaw.py``) does.
- **Pixel**: ``round(u), round(v)`` (pixel centres at integer coordinates, the KITTI-360 devkit's ``np.round`` in
  ``helpers/project.py``). The MUSES SDK truncates with ``astype(int)`` and keeps ``0 < u < W-1`` strictly, i.e. its
  points sit up to one pixel up-left of rgbx's.
- **Occlusion**: the nearest point per pixel (z-buffer). Neither reference z-buffers; they keep whichever point numpy
  writes last.
- **Behind the camera**: dropped (camera z <= 0). The MUSES SDK filters only by distance and image bounds, so points
  behind its camera can wrap into the image; rgbx does not reproduce that.
- **Ego-motion**: not compensated. The KITTI-360 devkit "curls" Velodyne scans with the poses (a compiled
  extension); the MUSES SDK offers optional motion compensation from GNSS. Both are off here.

Calibration parsers read the KITTI-360 text formats (``calibration/calib_cam_to_velo.txt``: 12 numbers, the 3x4
camera-0 → Velodyne transform; ``calibration/perspective.txt``: ``P_rect_00: 12 numbers``, ``R_rect_00: 9 numbers``,
``S_rect_00: W H``; format as read by ``kitti360scripts/devkits/commons/loadCalibration.py``) and MUSES'
``calib.json`` (``intrinsics.rgb.K``, ``extrinsics.lidar2rgb``; ``processing/utils.py:
load_muses_calibration_data``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from rgbx.errors import DataError

__all__ = [
    "kitti360_calibration",
    "load_muses_calibration",
    "parse_calib_rigid",
    "parse_perspective",
    "project_points",
    "read_point_file",
]


def project_points(points_xyz: np.ndarray, T_velo_to_cam: np.ndarray, R_rect: np.ndarray | None,
                   P_rect: np.ndarray, size: tuple[int, int], *, value: str = "range",
                   min_range: float = 0.0, max_range: float | None = None) -> np.ndarray:
    """Project LiDAR points into a camera image as a sparse range map.

    Args:
        points_xyz: (N, 3) (or (N, >=3): the first three columns are used) points in the LiDAR frame, metres.
        T_velo_to_cam: (4, 4) transform LiDAR → camera.
        R_rect: (3, 3) or (4, 4) rectifying rotation applied after ``T_velo_to_cam``; None = identity.
        P_rect: (3, 4) projection matrix of the rectified camera (``[K | 0]`` for an unrectified pinhole camera).
        size: (H, W) of the image.
        value: "range" (distance from the LiDAR origin) or "depth" (camera z).
        min_range, max_range: keep points with ``min_range < range <= max_range`` (range from the LiDAR origin).

    Returns:
        (1, H, W) float32, metres; 0 where no point landed.
    """
    if value not in ("range", "depth"):
        raise ValueError(f"value={value!r}: expected 'range' or 'depth'")
    h, w = int(size[0]), int(size[1])
    out = np.zeros((1, h, w), np.float32)
    pts = np.asarray(points_xyz, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] < 3:
        raise ValueError(f"points_xyz: expected an (N, 3) array, got shape {pts.shape}")
    pts = pts[:, :3]
    pts = pts[np.all(np.isfinite(pts), axis=1)]
    if len(pts) == 0:
        return out
    rng = np.linalg.norm(pts, axis=1)
    keep = rng > min_range
    if max_range is not None:
        keep &= rng <= max_range
    pts, rng = pts[keep], rng[keep]
    T = np.asarray(T_velo_to_cam, dtype=np.float64).reshape(4, 4)
    cam = pts @ T[:3, :3].T + T[:3, 3]
    if R_rect is not None:
        R = np.asarray(R_rect, dtype=np.float64)
        cam = cam @ R[:3, :3].T
    P = np.asarray(P_rect, dtype=np.float64).reshape(3, 4)
    uvw = cam @ P[:, :3].T + P[:, 3]
    front = (cam[:, 2] > 0) & (uvw[:, 2] > 0)
    cam, uvw, rng = cam[front], uvw[front], rng[front]
    u = np.floor(uvw[:, 0] / uvw[:, 2] + 0.5)
    v = np.floor(uvw[:, 1] / uvw[:, 2] + 0.5)
    inside = (u >= 0) & (u < w) & (v >= 0) & (v < h)
    vals = (rng if value == "range" else cam[:, 2])[inside]
    flat = v[inside].astype(np.int64) * w + u[inside].astype(np.int64)
    if len(flat) == 0:
        return out
    order = np.lexsort((vals, flat))  # by pixel, then nearest first
    flat, vals = flat[order], vals[order]
    first = np.ones(len(flat), bool)
    first[1:] = flat[1:] != flat[:-1]
    out.reshape(-1)[flat[first]] = vals[first].astype(np.float32)
    return out


def read_point_file(path: str | Path, columns: int, dtype: str = "float32") -> np.ndarray:
    """A raw binary point file as an (N, columns) array (KITTI-360 Velodyne: float32 x 4; MUSES: float64 x 6)."""
    path = Path(path)
    try:
        raw = np.fromfile(path, dtype=np.dtype(dtype))
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: unreadable point file ({e})") from None
    if raw.size % columns:
        raise DataError(f"{path}: {path.stat().st_size} bytes is not a whole number of points "
                        f"({columns} x {np.dtype(dtype).name} each)")
    return raw.reshape(-1, columns)


def _numbers(path: Path, text: str, count: int, what: str) -> np.ndarray:
    try:
        vals = [float(t) for t in text.split()]
    except ValueError:
        raise DataError(f"{path}: {what} is not a list of numbers") from None
    if len(vals) != count:
        raise DataError(f"{path}: {what} has {len(vals)} numbers, expected {count}")
    return np.array(vals, dtype=np.float64)


def _read_text(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        raise DataError(f"{path}: calibration file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: unreadable calibration file ({e})") from None


def parse_calib_rigid(path: str | Path) -> np.ndarray:
    """A rigid transform stored as 12 numbers (a 3x4 matrix, row-major), e.g. KITTI-360 ``calib_cam_to_velo.txt``.

    Returns the (4, 4) matrix.
    """
    path = Path(path)
    m = _numbers(path, _read_text(path), 12, "the transform").reshape(3, 4)
    return np.vstack([m, [0.0, 0.0, 0.0, 1.0]])


def parse_perspective(path: str | Path, camera: str = "00") -> dict:
    """KITTI-360 ``perspective.txt``: ``P_rect_<cam>`` (3, 4), ``R_rect_<cam>`` (3, 3) and, when present, the
    rectified image ``size`` (H, W) from ``S_rect_<cam>: W H``."""
    path = Path(path)
    entries = {}
    for line in _read_text(path).splitlines():
        if ":" in line:
            key, rest = line.split(":", 1)
            entries[key.strip()] = rest
    out = {}
    for key, shape in ((f"P_rect_{camera}", (3, 4)), (f"R_rect_{camera}", (3, 3))):
        if key not in entries:
            raise DataError(f"{path}: no {key} entry")
        out[key[:6]] = _numbers(path, entries[key], shape[0] * shape[1], key).reshape(shape)
    size_key = f"S_rect_{camera}"
    if size_key in entries:
        w, h = _numbers(path, entries[size_key], 2, size_key)
        out["size"] = (int(round(h)), int(round(w)))
    return out


def kitti360_calibration(root: str | Path, camera: str = "00") -> dict:
    """Velodyne → rectified camera ``camera`` of a KITTI-360 root: ``T_velo_to_cam`` (4, 4), ``R_rect`` (3, 3),
    ``P_rect`` (3, 4) and ``size`` (H, W) or None.

    ``calib_cam_to_velo.txt`` holds camera 0 → Velodyne, so the transform is its inverse (as
    ``kitti360Viewer3DRaw.loadExtrinsics`` computes it). Only camera "00" (the one with 2D semantics) is supported.
    """
    if camera != "00":
        raise ValueError("only the left perspective camera (image_00) is supported")
    calib = Path(root) / "calibration"
    cam_to_velo = parse_calib_rigid(calib / "calib_cam_to_velo.txt")
    persp = parse_perspective(calib / "perspective.txt", camera)
    return {"T_velo_to_cam": np.linalg.inv(cam_to_velo), "R_rect": persp["R_rect"], "P_rect": persp["P_rect"],
            "size": persp.get("size")}


def load_muses_calibration(path: str | Path, size: tuple[int, int] | None = None) -> dict:
    """MUSES ``calib.json`` → ``T_lidar_to_cam`` (4, 4) and ``P`` (3, 4) of the frame camera.

    ``intrinsics.rgb.K`` is given for the 1920x1080 frame camera; for another ``size`` (H, W) it is rescaled as the
    SDK's ``rescale_K`` does.
    """
    path = Path(path)
    try:
        calib = json.loads(_read_text(path))
        K = np.array(calib["intrinsics"]["rgb"]["K"], dtype=np.float64).reshape(3, 3)
        T = np.array(calib["extrinsics"]["lidar2rgb"], dtype=np.float64).reshape(4, 4)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"{path}: expected intrinsics.rgb.K (3x3) and extrinsics.lidar2rgb (4x4) ({e})") from None
    if size is not None and tuple(size) != (1080, 1920):
        sy, sx = size[0] / 1080.0, size[1] / 1920.0
        K = K.copy()
        K[0, 0] *= sx
        K[0, 2] *= sx
        K[1, 1] *= sy
        K[1, 2] *= sy
    return {"T_lidar_to_cam": T, "P": np.hstack([K, np.zeros((3, 1))])}
