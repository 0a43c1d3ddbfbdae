"""HHA encoding of metric depth (Gupta, Girshick, Arbeláez, Malik, ECCV 2014), vectorised NumPy.

HHA turns one depth map into three 8-bit channels that an ImageNet-style encoder can take like a colour image:

- **H**\\ orizontal disparity: ``310 / depth`` (depth in metres), so 255 (saturated) up to ~1.2 m, 155 at 2 m, 31 at
  10 m;
- **H**\\ eight above the ground: height of each point above the lowest visible point (taken to be the floor), in
  centimetres (255 = 2.55 m and above);
- **A**\\ ngle between the surface normal and the up direction, in degrees, plus 38: floors (normals pointing up)
  ≈ 38, walls ≈ 128, ceilings ≈ 218.

The constants (310, cm, +38 = "+128 − 90") are those of the original MATLAB code (``saveHHA.m`` in
s-gupta/rcnn-depth) and of its Python port used by CMX / SA-Gate to make the NYU ``HHA/`` folders
(charlesCXK/Depth2HHA-python), so computed HHA resembles the released files. Channel order in the returned array and
in written PNGs is (disparity, height, angle) = (R, G, B), as in those PNGs read as RGB.

How this implementation works (written for rgbx, not a port):

- **normals**: a plane ``n·P = 1`` is fitted by least squares in every ``(2r+1)²`` window, in the inverse-depth form
  ``n·(x', y', 1) = 1/Z`` with ``(x', y')`` normalised image coordinates (the same family of fit as the original);
  the window sums are box filters, so the cost is a few full-image passes. Invalid pixels get zero weight.
- **gravity** (``gravity="estimate"``, default): the up direction is estimated from coarse normals as in the original
  — start from the camera's up axis, then alternately collect near-horizontal surfaces (normal within 45°, later
  15°, of the current up) and near-vertical ones, and take the direction most parallel to the former and most
  perpendicular to the latter (smallest eigenvector of ``Σ_wall nnᵀ − Σ_floor nnᵀ``), 5 iterations per threshold.
  ``gravity="camera"`` assumes the camera is level (up = −y of the camera, the documented simplification); a 3-vector
  gives the up direction in camera coordinates (x right, y down, z forward).
- **height**: the floor level is the 1st percentile of the points' heights (``floor_percentile``; the original takes
  the lowest point, percentile 0, which a few outlier depths far below the floor — common in raw sensor depth —
  push metres down, saturating the whole channel); when that level is less than 0.9 m below the camera (no floor
  visible) the camera is assumed 1.3 m above the floor, as in the original.
- **invalid depth** (0, negative or non-finite): ``invalid="zero"`` (default) encodes those pixels as 0 in all three
  channels (they also get no weight in the normal fits); ``invalid="fill"`` first fills them with the nearest valid
  depth, giving a complete image like the released HHA folders (which were made from inpainted depth).

Window radii (3 px for the encoded normals, 10 px for the gravity normals) are the original's for 640×480 images and
are scaled with ``max(H, W) / 640`` for other sizes.

Caching: :func:`hha_cached` / :func:`hha_cache_file` write ``<cache>/<depth file stem>.png`` once, atomically (a
temporary file renamed into place), so several workers may share a cache folder. The cache key is the stem only:
use one cache folder per (dataset, intrinsics, options).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from rgbx.errors import DataError

DISPARITY_SCALE = 310.0  # channel 1 = 310 / depth[m]  (31000 / depth[cm] in the original)
ANGLE_OFFSET = 38.0  # channel 3 = angle[deg] + 128 - 90
NO_FLOOR_DROP = 0.9  # lowest point less than this below the camera → floor not visible ...
DEFAULT_CAMERA_HEIGHT = 1.3  # ... then assume the camera is this high (metres)
NORMAL_RADIUS = 3  # px at 640x480
GRAVITY_RADIUS = 10  # px at 640x480
GRAVITY_SCHEDULE = ((45.0, 5), (15.0, 5))  # (angle threshold in degrees, iterations)

Intrinsics = Sequence[float]


def _check_intrinsics(intrinsics) -> tuple[float, float, float, float]:
    try:
        fx, fy, cx, cy = (float(v) for v in intrinsics)
    except (TypeError, ValueError):
        raise DataError(f"HHA: intrinsics must be (fx, fy, cx, cy) in pixels, got {intrinsics!r}") from None
    if not (fx > 0 and fy > 0):
        raise DataError(f"HHA: focal lengths must be positive, got fx={fx}, fy={fy}")
    return fx, fy, cx, cy


def _box_mean(x: np.ndarray, r: int) -> np.ndarray:
    return ndimage.uniform_filter(x, size=2 * r + 1, mode="constant", cval=0.0)


def surface_normals(depth_m: np.ndarray, intrinsics: Intrinsics, radius: int = NORMAL_RADIUS,
                    valid: np.ndarray | None = None) -> np.ndarray:
    """Unit surface normals (H, W, 3) in camera coordinates (x right, y down, z forward), oriented towards the
    camera; NaN where fewer than 3 valid pixels support the fit or the fit is degenerate."""
    fx, fy, cx, cy = _check_intrinsics(intrinsics)
    z = np.asarray(depth_m, np.float64)
    h, w = z.shape
    if valid is None:
        valid = np.isfinite(z) & (z > 0)
    wgt = valid.astype(np.float64)
    inv_z = np.where(valid, 1.0 / np.where(valid, z, 1.0), 0.0)
    xn = ((np.arange(w, dtype=np.float64) - cx) / fx)[None, :].repeat(h, 0)
    yn = ((np.arange(h, dtype=np.float64) - cy) / fy)[:, None].repeat(w, 1)
    # Normal equations (sum_q q q^T) n = sum_q q / Z, q = (x', y', 1), summed over the window's valid pixels.
    s = {k: _box_mean(v, radius) for k, v in {
        "1": wgt, "x": wgt * xn, "y": wgt * yn, "xx": wgt * xn * xn, "xy": wgt * xn * yn, "yy": wgt * yn * yn,
        "iz": inv_z, "xiz": xn * inv_z, "yiz": yn * inv_z}.items()}
    a11, a12, a13, a22, a23, a33 = s["xx"], s["xy"], s["x"], s["yy"], s["y"], s["1"]
    b1, b2, b3 = s["xiz"], s["yiz"], s["iz"]
    # Symmetric 3x3 solve by cofactors (batched over pixels).
    c11 = a22 * a33 - a23 * a23
    c12 = a13 * a23 - a12 * a33
    c13 = a12 * a23 - a13 * a22
    c22 = a11 * a33 - a13 * a13
    c23 = a12 * a13 - a11 * a23
    c33 = a11 * a22 - a12 * a12
    det = a11 * c11 + a12 * c12 + a13 * c13
    n = np.stack([c11 * b1 + c12 * b2 + c13 * b3,
                  c12 * b1 + c22 * b2 + c23 * b3,
                  c13 * b1 + c23 * b2 + c33 * b3], axis=-1)  # = det * solution
    count = s["1"] * (2 * radius + 1) ** 2
    # Scale of det for a well-spread window ~ (pixel pitch in normalised coordinates)^4: a relative threshold.
    pitch = (1.0 / fx) * (1.0 / fy)
    ok = (count >= 2.5) & (np.abs(det) > 1e-12 * pitch * pitch * s["1"] ** 3)
    norm = np.linalg.norm(n, axis=-1)
    ok &= norm > 0
    # n solves n·P = 1, so it points from the camera to the plane; flip it towards the camera.
    sign = -np.sign(det)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = n * (sign / norm)[..., None]
    out[~ok] = np.nan
    return out


def estimate_up(normals: np.ndarray, start=(0.0, -1.0, 0.0), schedule=GRAVITY_SCHEDULE,
                max_samples: int = 200_000) -> np.ndarray:
    """Up direction (unit 3-vector, camera coordinates) from a normal field (H, W, 3), as in Gupta et al."""
    nn = normals.reshape(-1, 3)
    nn = nn[np.isfinite(nn).all(axis=1)]
    if len(nn) > max_samples:
        nn = nn[:: int(np.ceil(len(nn) / max_samples))]
    up = np.asarray(start, np.float64)
    up = up / np.linalg.norm(up)
    if len(nn) == 0:
        return up
    for thresh_deg, iters in schedule:
        t = np.deg2rad(thresh_deg)
        for _ in range(iters):
            c = np.abs(nn @ up)
            floor, wall = nn[c > np.cos(t)], nn[c < np.sin(t)]
            if len(floor) == 0 and len(wall) == 0:
                return up
            a = wall.T @ wall - floor.T @ floor
            _, vecs = np.linalg.eigh(a)
            new = vecs[:, 0]
            up = new * (1.0 if new @ up >= 0 else -1.0)
    return up / np.linalg.norm(up)


def _scaled_radius(base: int, shape: tuple[int, int]) -> int:
    return max(1, int(round(base * max(shape) / 640)))


def _fill_nearest(z: np.ndarray, valid: np.ndarray) -> np.ndarray:
    if valid.all() or not valid.any():
        return z
    idx = ndimage.distance_transform_edt(~valid, return_distances=False, return_indices=True)
    return z[tuple(idx)]


def depth_to_hha(depth_m: np.ndarray, intrinsics: Intrinsics, *, gravity: str | Sequence[float] = "estimate",
                 invalid: str = "zero", normal_radius: int | None = None, gravity_radius: int | None = None,
                 floor_percentile: float = 1.0, return_up: bool = False):
    """HHA of a metric depth map.

    Args:
        depth_m: (H, W) depth in metres (z along the optical axis); 0 / negative / NaN = no measurement.
        intrinsics: (fx, fy, cx, cy) in pixels of this image, 0-based pixel coordinates.
        gravity: "estimate" (from surface normals, default), "camera" (camera assumed level: up = (0, -1, 0)) or an
            up vector (x, y, z) in camera coordinates (x right, y down, z forward).
        invalid: "zero" (invalid pixels encoded as 0 in all channels) or "fill" (nearest valid depth first).
        normal_radius, gravity_radius: window radii in pixels (default: 3 and 10 scaled by max(H, W) / 640).
        floor_percentile: percentile of the points' heights taken as the floor level (0 = the lowest point).
        return_up: also return the up vector used.

    Returns:
        uint8 (3, H, W): disparity, height above the floor, angle with gravity (see the module docstring); with
        ``return_up`` a tuple ``(hha, up)``.
    """
    z = np.asarray(depth_m, np.float64)
    if z.ndim == 3 and z.shape[0] == 1:
        z = z[0]
    if z.ndim != 2:
        raise DataError(f"HHA: expected a depth map of shape (H, W), got {np.shape(depth_m)}")
    if invalid not in ("zero", "fill"):
        raise DataError(f"HHA: invalid={invalid!r}: expected 'zero' or 'fill'")
    fx, fy, cx, cy = _check_intrinsics(intrinsics)
    valid = np.isfinite(z) & (z > 0)
    if invalid == "fill":
        z = _fill_nearest(np.where(valid, z, 0.0), valid)
        valid = np.isfinite(z) & (z > 0)
    out = np.zeros((3, *z.shape), np.uint8)
    if not valid.any():
        return (out, np.array([0.0, -1.0, 0.0])) if return_up else out
    r_n = normal_radius or _scaled_radius(NORMAL_RADIUS, z.shape)
    r_g = gravity_radius or _scaled_radius(GRAVITY_RADIUS, z.shape)
    normals = surface_normals(z, (fx, fy, cx, cy), r_n, valid)

    if isinstance(gravity, str):
        if gravity == "estimate":
            up = estimate_up(surface_normals(z, (fx, fy, cx, cy), r_g, valid))
        elif gravity == "camera":
            up = np.array([0.0, -1.0, 0.0])
        else:
            raise DataError(f"HHA: gravity={gravity!r}: expected 'estimate', 'camera' or an up vector (x, y, z)")
    else:
        up = np.asarray(gravity, np.float64).reshape(3)
        if not np.linalg.norm(up) > 0:
            raise DataError(f"HHA: gravity vector must be non-zero, got {gravity!r}")
        up = up / np.linalg.norm(up)

    h, w = z.shape
    zs = np.where(valid, z, 0.0)
    xs = (np.arange(w, dtype=np.float64)[None, :] - cx) / fx * zs
    ys = (np.arange(h, dtype=np.float64)[:, None] - cy) / fy * zs
    height = xs * up[0] + ys * up[1] + zs * up[2]
    floor = float(np.percentile(height[valid], floor_percentile))
    if floor > -NO_FLOOR_DROP:
        floor = -DEFAULT_CAMERA_HEIGHT

    with np.errstate(divide="ignore", invalid="ignore"):
        disparity = DISPARITY_SCALE / np.where(valid, z, np.inf)
        cos = np.clip(normals @ up, -1.0, 1.0)
        angle = np.degrees(np.arccos(cos)) + ANGLE_OFFSET
    channels = (disparity, 100.0 * (height - floor), angle)
    for i, c in enumerate(channels):
        c = np.where(valid & np.isfinite(c), c, 0.0)
        out[i] = np.clip(np.rint(c), 0, 255).astype(np.uint8)
    return (out, up) if return_up else out


# -- reading depth files and caching --------------------------------------------------------------------------------

def read_depth_metres(path: str | Path, mm_scale: float = 0.001) -> np.ndarray:
    """A metric depth file as (H, W) float32 metres: float ``.npy`` in metres or a 16-bit PNG (× ``mm_scale``).
    8-bit images are refused: they hold relative depth (e.g. DFormer's ``plt.imsave`` PNGs), not metres."""
    from rgbx.modalities import read_array

    path = Path(path)
    encoding = "npy" if path.suffix.lower() == ".npy" else "png"
    raw = read_array(path, encoding)
    if raw.shape[0] != 1:
        raise DataError(f"{path}: {raw.shape[0]}-channel depth; HHA needs a 1-channel metric depth map "
                        f"(float .npy in metres or 16-bit PNG)")
    if raw.dtype.kind == "f":
        return np.nan_to_num(raw[0].astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    if raw.dtype == np.uint16 or raw.dtype == np.int32:
        return raw[0].astype(np.float32) * np.float32(mm_scale)
    raise DataError(f"{path}: {raw.dtype} depth is not metric (8-bit depth images hold relative depth); HHA needs "
                    f"float .npy in metres or a 16-bit PNG")


def hha_cache_file(depth_path: str | Path, cache_dir: str | Path, intrinsics: Intrinsics | Callable, *,
                   read_depth: Callable[[Path], np.ndarray] | None = None, **hha_kwargs) -> Path:
    """``<cache_dir>/<stem of depth_path>.png``, computed from the depth file the first time and written
    atomically. ``intrinsics`` may be a callable ``(H, W) -> (fx, fy, cx, cy)``; ``read_depth(path)`` returns
    metres (default :func:`read_depth_metres`)."""
    depth_path, cache_dir = Path(depth_path), Path(cache_dir)
    target = cache_dir / f"{depth_path.stem}.png"
    if target.is_file():
        return target
    depth = (read_depth or read_depth_metres)(depth_path)
    k = intrinsics(*depth.shape) if callable(intrinsics) else intrinsics
    hha = depth_to_hha(depth, k, **hha_kwargs)
    cache_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{depth_path.stem}.", suffix=".png", dir=cache_dir)
    try:
        with os.fdopen(fd, "wb") as f:
            Image.fromarray(np.ascontiguousarray(hha.transpose(1, 2, 0)), "RGB").save(f, format="PNG",
                                                                                      compress_level=1)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def hha_cached(depth_path: str | Path, cache_dir: str | Path, intrinsics: Intrinsics | Callable, *,
               read_depth: Callable[[Path], np.ndarray] | None = None, **hha_kwargs) -> np.ndarray:
    """HHA (uint8, (3, H, W)) of a depth file, computed once and then read from ``<cache_dir>/<stem>.png``."""
    path = hha_cache_file(depth_path, cache_dir, intrinsics, read_depth=read_depth, **hha_kwargs)
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")).transpose(2, 0, 1).copy()


__all__ = ["depth_to_hha", "estimate_up", "hha_cache_file", "hha_cached", "read_depth_metres", "surface_normals"]
