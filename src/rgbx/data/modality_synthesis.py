"""Supplementary modalities synthesised from what a dataset already has, in the spirit of OmniSegmentor's ImageNeXt
(ImageNet with estimated depth and thermal, recorded events and pseudo-LiDAR).

* ``event`` from RGB: the image is moved along a short straight camera trajectory (a random direction, a few pixels
  in ``steps`` sub-pixel increments, as if the camera panned over a still scene); at every increment each pixel's
  log luminance is compared with its reference level and emits ``floor(|Δ| / C)`` events of that sign, moving the
  reference by as many thresholds (the event-camera model of ESIM / v2e, with a per-pixel threshold C around
  0.15-0.25 and background noise events). Output: positive / negative counts per pixel, the rgbx ``event`` format.
* ``lidar`` from depth (pseudo-LiDAR): the rays of a rotating multi-beam scanner co-located with the camera (beams
  at fixed elevation angles, an azimuth step of a few pixels) are intersected with the depth map; each ray that
  lands on a valid depth pixel returns its range ``r = z / (cos e · cos a)``, with range noise and dropouts. Output:
  sparse range in the image, the rgbx ``lidar`` format (16-bit mm: a range beyond 65.535 m is no return, 0). Needs
  the camera's focal length in pixels. The beams span fixed elevations (:class:`PseudoLidar`: a 64-beam scanner's
  −24.8° to +2° about the optical axis, as a car-roof scanner's), so the image rows above +2° get no returns.

* ``depth`` from RGB: a monocular depth estimator that you provide as an ONNX file (ImageNeXt used Omnidata; Depth
  Anything, MiDaS, ZoeDepth and Metric3D are all exported to ONNX by their users), run with ``onnxruntime``
  (:class:`OnnxDepthEstimator`). Its output is taken as metric depth in metres, or as relative inverse depth
  (disparity), mapped per image onto a depth range (``disparity`` mode, nearest at the highest disparity; the lowest
  disparity — the sky, anything at infinity — lands at the far end of the range, a finite depth). Written as 16-bit
  PNG in mm (depth beyond 65.535 m as 0, no measurement), so ``lidar`` can then be derived from it in the same call.

* ``thermal`` from RGB: an RGB→thermal estimator you provide as an ONNX file (ImageNeXt's was AdaBins-based,
  trained on RGB-T datasets; rgbx ships none), output taken as relative temperature in [0, 1] or stretched per
  image (:class:`OnnxThermalEstimator`). Written as 8-bit PNG, the rgbx ``thermal`` format.

:func:`synthesize_dataset` (``rgbx data synthesize``) writes them into a dataset folder: sources read with the
storage its dataset.yaml declares, each new modality at its source's resolution, nothing replaced before every
modality is complete, and only folders it recorded in ``synthesized.yaml`` ever replaced.

Every sample draws from its own generator, seeded by ``seed`` and the sample id, so a result does not depend on
which other samples are processed or in what order.
"""

from __future__ import annotations

import hashlib
import shutil
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from scipy import ndimage

from rgbx.data.description import DESCRIPTION_FILE, load_description
from rgbx.data.files import discover_samples, read_modality_file
from rgbx.errors import ConfigError, DataError
from rgbx.modalities import get_modality
from rgbx.modalities.encodings import write_array

__all__ = [
    "EventSimulation",
    "OnnxDepthEstimator",
    "OnnxEstimator",
    "OnnxThermalEstimator",
    "PseudoLidar",
    "SYNTHESIZED",
    "pseudo_lidar",
    "simulate_events",
    "synthesize_dataset",
]

MAX_MM = 65535  # 16-bit PNG in millimetres: the farthest range a synthesised depth / lidar file holds is 65.535 m
_LUMA = np.array([0.2126, 0.7152, 0.0722], np.float32)  # linear-light luminance (Rec. 709)


@dataclass(frozen=True)
class EventSimulation:
    steps: int = 10  # sub-pixel increments of the trajectory
    shift_px: tuple[float, float] = (1.0, 3.0)  # total camera motion, drawn uniformly in this range
    threshold: tuple[float, float] = (0.15, 0.25)  # contrast threshold C (log units), drawn per image
    threshold_sigma: float = 0.03  # relative per-pixel spread of C (pixel mismatch)
    noise_rate: float = 0.001  # background events per pixel
    eps: float = 1e-3  # log(Y + eps): dark floor


def simulate_events(rgb: np.ndarray, rng: np.random.Generator, sim: EventSimulation = EventSimulation(),
                    shift: tuple[float, float] | None = None) -> np.ndarray:
    """(2, H, W) uint8 event counts (positive, negative) from an RGB image ((3, H, W) or (H, W, 3); uint8, or
    float in [0, 1] as rgbx reads RGB).
    ``shift``: the image's total motion (dy, dx) in pixels (default: drawn from ``sim.shift_px`` in a random
    direction)."""
    if rgb.ndim != 3 or 3 not in (rgb.shape[0], rgb.shape[-1]):
        raise DataError(f"simulate_events: expected an RGB image (3, H, W) or (H, W, 3), got shape {rgb.shape}")
    img = rgb if rgb.shape[-1] == 3 and rgb.shape[0] != 3 else np.moveaxis(rgb, 0, -1)
    srgb = img.astype(np.float32) / np.float32(255.0) if img.dtype == np.uint8 else np.clip(img, 0, 1).astype(np.float32)
    linear = np.where(srgb <= 0.04045, srgb / 12.92, ((srgb + 0.055) / 1.055) ** 2.4)
    luma = linear @ _LUMA
    h, w = luma.shape
    if shift is None:
        angle, length = rng.uniform(0, 2 * np.pi), rng.uniform(*sim.shift_px)
        shift = (length * np.sin(angle), length * np.cos(angle))
    dy, dx = shift
    c = rng.uniform(*sim.threshold) * (1 + sim.threshold_sigma * rng.standard_normal((h, w))).astype(np.float32)
    c = np.maximum(c, 0.01)
    reference = np.log(luma + sim.eps)
    pos = np.zeros((h, w), np.float32)
    neg = np.zeros((h, w), np.float32)
    for k in range(1, sim.steps + 1):
        t = k / sim.steps
        moved = ndimage.shift(luma, (dy * t, dx * t), order=1, mode="nearest")
        delta = np.log(moved + sim.eps) - reference
        n = np.floor(np.abs(delta) / c)
        pos += np.where(delta > 0, n, 0)
        neg += np.where(delta < 0, n, 0)
        reference += np.sign(delta) * n * c
    if sim.noise_rate > 0:
        noise = rng.random((h, w)) < sim.noise_rate
        polarity = rng.random((h, w)) < 0.5
        pos += noise & polarity
        neg += noise & ~polarity
    return np.clip(np.stack([pos, neg]), 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class PseudoLidar:
    beams: int = 64
    elevation_deg: tuple[float, float] = (-24.8, 2.0)  # lowest and highest beam (a 64-beam scanner's span)
    azimuth_step_px: float = 2.0  # horizontal spacing of the rays, in pixels at the image centre
    max_range_m: float = 120.0  # rays beyond it return nothing; so do ranges beyond 65.535 m (16-bit mm: no return)
    dropout: float = 0.05  # rays without a return
    range_noise_m: float = 0.02


def pseudo_lidar(depth: np.ndarray, focal_px: float, rng: np.random.Generator, lidar: PseudoLidar = PseudoLidar(),
                 principal: tuple[float, float] | None = None) -> np.ndarray:
    """(1, H, W) uint16 range in mm (0 = no return) of a scanner's rays through a depth map.

    Args:
        depth: (H, W) or (1, H, W) z-depth in metres, 0 (or non-finite) = invalid.
        focal_px: the camera's focal length in pixels.
        principal: (cx, cy) principal point (default: the image centre).
    """
    z = np.asarray(depth, np.float64)
    if z.ndim == 3 and z.shape[0] == 1:
        z = z[0]
    if z.ndim != 2:
        raise DataError(f"pseudo_lidar: expected a (H, W) depth map, got shape {np.shape(depth)}")
    if not focal_px or focal_px <= 0:
        raise ConfigError(f"pseudo_lidar: the focal length must be > 0 pixels, got {focal_px}")
    h, w = z.shape
    cx, cy = principal if principal is not None else (w / 2.0, h / 2.0)
    elevation = np.radians(np.linspace(lidar.elevation_deg[0], lidar.elevation_deg[1], lidar.beams))
    half = np.arctan(max(cx, w - cx) / focal_px)
    azimuth = np.arange(-half, half, lidar.azimuth_step_px / focal_px)
    e, a = np.meshgrid(elevation, azimuth, indexing="ij")
    u = focal_px * np.tan(a) + cx  # the ray (cos e sin a, -sin e, cos e cos a) in camera axes (x right, y down)
    v = cy - focal_px * np.tan(e) / np.cos(a)
    ix, iy = np.floor(u).astype(np.int64), np.floor(v).astype(np.int64)
    inside = (ix >= 0) & (ix < w) & (iy >= 0) & (iy < h)
    ix, iy, e, a = ix[inside], iy[inside], e[inside], a[inside]
    zz = z[iy, ix]
    r = zz / (np.cos(e) * np.cos(a))
    keep = np.isfinite(r) & (zz > 0) & (r <= lidar.max_range_m) & (rng.random(r.shape) >= lidar.dropout)
    r = r[keep] + lidar.range_noise_m * rng.standard_normal(int(keep.sum()))
    flat = iy[keep] * w + ix[keep]
    out = np.full(h * w, np.inf)
    np.minimum.at(out, flat, r)
    return _to_mm(out, minimum=1).reshape(1, h, w)


def _to_mm(metres: np.ndarray, minimum: int = 0) -> np.ndarray:
    """uint16 millimetres of ``metres``; 0 (no measurement) where the value is not finite, not positive, or beyond
    what 16 bits of millimetres hold (65.535 m): never a clipped, wrong range. ``minimum``: the smallest value
    written for a positive range (1 for LiDAR, where 0 means no return)."""
    mm = np.round(np.asarray(metres, np.float64) * 1000.0)
    ok = np.isfinite(mm) & (mm <= MAX_MM) & (np.asarray(metres) > 0)
    return np.where(ok, np.clip(np.nan_to_num(mm), minimum, MAX_MM), 0).astype(np.uint16)


class OnnxEstimator:
    """An RGB → one-map estimator in an ONNX file, run with ``onnxruntime``: its raw output at the image's size.

    Args:
        path: the ``.onnx`` file; its first input takes a (1, 3, H, W) float32 image, its first output is one map of
            shape (1, 1, h, w), (1, h, w) or (h, w).
        input_size: (H, W) the image is resized to (bilinear) before the model; default: the model's own input
            size where it is fixed, else the image's size rounded to a multiple of ``multiple_of``.
        mean, std: per-channel normalisation of the [0, 1] image (default ImageNet's).
    """

    def __init__(self, path: str | Path, input_size: tuple[int, int] | None = None,
                 mean: Sequence[float] = (0.485, 0.456, 0.406), std: Sequence[float] = (0.229, 0.224, 0.225),
                 multiple_of: int = 14):
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: estimator not found (an .onnx file)")
        try:
            import onnxruntime as ort
        except ImportError:
            raise ConfigError("an ONNX estimator needs onnxruntime: pip install onnxruntime") from None
        try:
            self.session = ort.InferenceSession(str(path), providers=ort.get_available_providers())
        except Exception as e:  # onnxruntime raises its own exception types for unreadable / invalid files
            raise DataError(f"{path}: not a loadable ONNX model ({type(e).__name__}: {e})") from None
        inp = self.session.get_inputs()[0]
        if len(inp.shape) != 4:
            raise DataError(f"{path}: the model's input {inp.name!r} has shape {inp.shape}; expected (1, 3, H, W)")
        fixed = tuple(inp.shape[2:])
        self.fixed = fixed if all(isinstance(d, int) for d in fixed) else None
        if input_size is not None and self.fixed is not None and tuple(input_size) != self.fixed:
            raise ConfigError(f"{path}: the model takes a fixed input size of {self.fixed[0]}x{self.fixed[1]}; an "
                              f"input size of {input_size[0]}x{input_size[1]} cannot be run (leave it out: the "
                              f"model's own size is used; or export the model with dynamic height and width)")
        self.path, self.input_name, self.input_size = path, inp.name, input_size
        self.mean = np.asarray(mean, np.float32).reshape(3, 1, 1)
        self.std = np.asarray(std, np.float32).reshape(3, 1, 1)
        self.multiple_of = multiple_of

    def predict(self, rgb: np.ndarray) -> np.ndarray:
        """(H, W) float32 model output for a (3, H, W) RGB image in [0, 1], resized to the image."""
        import torch
        import torch.nn.functional as F

        h, w = rgb.shape[-2:]
        size = self.input_size or self.fixed or tuple(max(self.multiple_of, round(d / self.multiple_of)
                                                          * self.multiple_of) for d in (h, w))
        x = torch.from_numpy(np.ascontiguousarray(rgb, np.float32))[None]
        if tuple(size) != (h, w):
            x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)
        x = (x.numpy() - self.mean) / self.std
        out = np.asarray(self.session.run(None, {self.input_name: x.astype(np.float32)})[0], np.float32)
        if out.ndim not in (2, 3, 4) or out.size != out.shape[-1] * out.shape[-2]:
            raise DataError(f"{self.path}: output of shape {out.shape}; expected one (h, w) map")
        y = torch.from_numpy(out.reshape(1, 1, *out.shape[-2:]))
        return F.interpolate(y, size=(h, w), mode="bilinear", align_corners=False)[0, 0].numpy()


def _minmax(y: np.ndarray) -> np.ndarray:
    lo, hi = float(y.min()), float(y.max())
    return (y - lo) / (hi - lo) if hi > lo else np.zeros_like(y)


class OnnxDepthEstimator(OnnxEstimator):
    """A monocular depth estimator (:class:`OnnxEstimator`): RGB in [0, 1] → depth in metres.

    ``output``: ``metric`` (the model outputs depth in metres) or ``disparity`` (relative inverse depth: mapped per
    image so its lowest value lands at ``depth_range[1]`` and its highest at ``depth_range[0]``).
    """

    def __init__(self, path: str | Path, output: str = "metric", depth_range: tuple[float, float] = (0.5, 20.0),
                 **kwargs):
        if output not in ("metric", "disparity"):
            raise ConfigError(f"depth estimator output {output!r}: expected metric or disparity")
        if not 0 < depth_range[0] < depth_range[1]:
            raise ConfigError(f"depth range {depth_range}: expected 0 < near < far (metres)")
        super().__init__(path, **kwargs)
        self.output, self.depth_range = output, depth_range

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        """(H, W) float32 depth in metres for a (3, H, W) RGB image in [0, 1]."""
        y = self.predict(rgb)
        if self.output == "metric":
            return np.clip(y, 0, None)
        near, far = self.depth_range
        return 1.0 / (1.0 / far + _minmax(y) * (1.0 / near - 1.0 / far))


class OnnxThermalEstimator(OnnxEstimator):
    """An RGB → thermal estimator (:class:`OnnxEstimator`): RGB in [0, 1] → rgbx's relative temperature in [0, 1].

    ``output``: ``unit`` (the model outputs relative temperature in [0, 1]; clipped) or ``minmax`` (any scale:
    stretched per image to [0, 1], as 8-bit thermal images usually are).
    """

    def __init__(self, path: str | Path, output: str = "unit", **kwargs):
        if output not in ("unit", "minmax"):
            raise ConfigError(f"thermal estimator output {output!r}: expected unit or minmax")
        super().__init__(path, **kwargs)
        self.output = output

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        y = self.predict(rgb)
        return np.clip(y, 0, 1) if self.output == "unit" else _minmax(y)


# What each synthesised modality is made from, in the order they are made (depth first: lidar may use it).
SYNTHESIZED: dict[str, str] = {"depth": "rgb", "thermal": "rgb", "event": "rgb", "lidar": "depth"}


def _sample_rng(seed: int, sample_id: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(sample_id.encode())])


# What rgbx data synthesize wrote, in the dataset folder: modality → {folder, source, files}. Only the folders named
# here are ever replaced (overwrite=True); anything else, listed in dataset.yaml or not, is the user's.
RECORD_FILE = "synthesized.yaml"
_STAGING = ".rgbx-synthesize-tmp"  # a modality is written into a hidden sibling folder, renamed into place when done
_REPLACED = ".rgbx-synthesize-old"


def synthesize_dataset(root: str | Path, modalities: Sequence[str], *, focal_px: float | None = None,
                       hfov_deg: float | None = None, depth_estimator: OnnxDepthEstimator | None = None,
                       thermal_estimator: OnnxThermalEstimator | None = None, seed: int = 0, overwrite: bool = False,
                       events: EventSimulation = EventSimulation(), lidar: PseudoLidar = PseudoLidar(),
                       progress: Callable[[int, int], None] | None = None) -> dict[str, int]:
    """Write synthesised ``modalities`` into an rgbx dataset folder (``root/<modality>/<id>.png``), list them in its
    ``dataset.yaml`` (the file as it was before the first call is kept as ``dataset.yaml.orig``) and record them in
    ``synthesized.yaml``. Returns modality → files written.

    Source files are read with the storage dataset.yaml declares for them (e.g. depth as uint16 × 0.00025 m). A new
    entry takes its source's ``resize`` (a modality made from depth stored at another resolution has the depth's
    resolution, resampled to the label's size on loading like the depth) and ``optional`` (a file for every sample
    that has its source). Each modality is written into a hidden sibling folder and renamed into place only when
    every modality of the call is complete: a failed or killed call leaves the previous folders as they were.

    Existing non-empty folders of those modalities are an error unless ``overwrite``, which replaces only a folder
    ``synthesized.yaml`` records as written by an earlier call, and only while it holds nothing but that call's
    ``<id>.png`` files: the dataset's own files, listed in dataset.yaml or not, are never replaced.

    ``depth`` needs ``depth_estimator``, ``thermal`` ``thermal_estimator``, ``lidar`` ``focal_px`` (the focal length
    in pixels of the depth images as stored) or ``hfov_deg`` (the horizontal field of view, converted per depth image
    from its own width). ``progress(done, total)`` is called per file written, over all the modalities."""
    root = Path(root)
    desc = load_description(root)
    unknown = [m for m in modalities if m not in SYNTHESIZED]
    if unknown or not modalities:
        raise ConfigError(f"cannot synthesise {unknown or 'nothing'}: rgbx synthesises {', '.join(SYNTHESIZED)} "
                          f"(see rgbx.data.modality_synthesis)")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"seed {seed!r}: expected an integer >= 0")
    if focal_px is not None and hfov_deg is not None:
        raise ConfigError("give the focal length (focal_px) or the field of view (hfov_deg), not both")
    if hfov_deg is not None and not 0 < hfov_deg < 180:
        raise ConfigError(f"horizontal field of view {hfov_deg}: expected degrees in (0, 180)")
    needs = {"lidar": (focal_px or hfov_deg, "lidar from depth needs the camera's focal length in pixels (--focal "
                                             "PX, or --hfov DEG; e.g. NYU Depth V2 at 640x480: --focal 518.8)"),
             "depth": (depth_estimator, "depth from RGB needs a monocular depth estimator (--depth-model FILE.onnx)"),
             "thermal": (thermal_estimator, "thermal from RGB needs an RGB→thermal estimator (--thermal-model "
                                            "FILE.onnx)")}
    order = [m for m in SYNTHESIZED if m in modalities]
    folders = {m: src.folder for m, src in desc.modalities.items()}
    record = _read_record(root)
    counts: dict[str, int] = {}
    ids: dict[str, list[str]] = {}
    for m in order:
        source = SYNTHESIZED[m]
        if source not in folders:
            raise DataError(f"{root / DESCRIPTION_FILE}: {m} is synthesised from {source}, which this dataset "
                            f"does not list (it has {', '.join(desc.modalities)})")
        if m in needs and not needs[m][0]:
            raise ConfigError(needs[m][1])
        if m in desc.modalities:
            src, spec = desc.modalities[m], get_modality(m)
            if src.encoding != "png":
                raise DataError(f"{root / DESCRIPTION_FILE}: {m} is stored as {src.encoding}; rgbx writes "
                                f"synthesised {m} as PNG (point {m} at another folder, or remove its entry)")
            if (src.dtype, src.scale) != (spec.dtype, spec.scale):
                raise DataError(f"{root / DESCRIPTION_FILE}: {m} is stored as {src.dtype} × {src.scale:g}; rgbx "
                                f"writes synthesised {m} as {spec.dtype} × {spec.scale:g} (point {m} at another "
                                f"folder, or remove its entry)")
        target = root / folders.setdefault(m, m)
        # a source synthesised in this call (depth, for lidar) has the samples of its own source
        ids[m] = ids[source] if source in ids else [i for i, _ in discover_samples({source: root / folders[source]})]
        counts[m] = len(ids[m])
        if target.exists() and any(target.iterdir()):
            entry = record.get(m) if isinstance(record.get(m), dict) else {}
            ours = entry.get("folder") == folders[m] and entry.get("fingerprint") == _fingerprint(target)
            _check_replaceable(root, m, target, ids[m], m in desc.modalities, ours, overwrite,
                               changed=entry.get("folder") == folders[m])

    def depth_to_lidar(z: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        f = focal_px if focal_px is not None else z.shape[-1] / 2 / np.tan(np.radians(hfov_deg) / 2)
        return pseudo_lidar(z, f, rng, lidar)

    make = {
        "event": lambda x, rng: simulate_events(x, rng, events),
        "lidar": depth_to_lidar,
        "thermal": lambda x, rng: np.round(thermal_estimator(x) * 255.0).astype(np.uint8)[None],
        "depth": lambda x, rng: _to_mm(depth_estimator(x))[None],
    }
    total, done = sum(counts.values()), 0
    staged: dict[str, Path] = {}
    try:
        for m in order:
            source = SYNTHESIZED[m]
            target = root / folders[m]
            staging = target.with_name("." + target.name + _STAGING)
            if staging.exists():  # left by a killed call
                shutil.rmtree(staging)
            staging.mkdir(parents=True)
            staged[m] = staging
            if source in staged:  # synthesised in this call: rgbx's own encoding
                files, storage = staged[source], None
            else:
                s = desc.modalities[source]
                files, storage = root / folders[source], {source: {"encoding": s.encoding, "dtype": s.dtype,
                                                                   "scale": s.scale}}
            for sample_id, paths in discover_samples({source: files}):
                x = read_modality_file(paths[source], source, storage).numpy()  # RGB in [0, 1], depth in m
                x = np.where(np.isfinite(x), x, 0) if source == "depth" else x  # NaN / inf depth: no measurement
                write_array(staging / f"{sample_id}.png", make[m](x, _sample_rng(seed, f"{m}/{sample_id}")), "png")
                done += 1
                if progress is not None:
                    progress(done, total)
        # every modality is complete: record them (before they are in place, so that a call killed from here on
        # leaves folders a later call may replace), swap them in, list the new ones
        _write_record(root, {**record, **{m: {"folder": folders[m], "source": SYNTHESIZED[m], "files": counts[m],
                                              "fingerprint": _fingerprint(staged[m])} for m in order}})
        for m in order:
            _swap_in(staged[m], root / folders[m])
    finally:
        for staging in staged.values():
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
    _list_in_description(root, {m: _new_entry(desc, m) for m in order if m not in desc.modalities})
    return counts


def _new_entry(desc, m: str) -> dict:
    """The dataset.yaml entry of a synthesised modality: its source's ``resize`` and ``optional`` (through a source
    synthesised in the same call, e.g. depth for lidar, to that one's source)."""
    source = SYNTHESIZED[m]
    while source not in desc.modalities and source in SYNTHESIZED:
        source = SYNTHESIZED[source]
    src = desc.modalities[source]
    return {**({"optional": True} if src.optional else {}), **({"resize": src.resize} if src.resize else {})}


def _swap_in(staging: Path, target: Path) -> None:
    old = target.with_name("." + target.name + _REPLACED)
    if old.exists():
        shutil.rmtree(old)
    if target.exists():
        target.rename(old)
    staging.rename(target)
    if old.exists():
        shutil.rmtree(old)


def _fingerprint(folder: Path) -> str:
    """A digest of the folder's file names and contents: a recorded folder whose files were since replaced, added to
    or copied over (by the user, or by another tool writing the same folder) is no longer rgbx's to replace."""
    h = hashlib.sha256()
    for p in sorted(folder.iterdir()):
        h.update(p.name.encode() + b"\0")
        if p.is_file():
            h.update(zlib.crc32(p.read_bytes()).to_bytes(4, "little"))
    return h.hexdigest()


def _read_record(root: Path) -> dict:
    path = root / RECORD_FILE
    if not path.exists():
        return {}
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise DataError(f"{path}: unreadable ({e}); it records what rgbx data synthesize wrote") from None
    return raw if isinstance(raw, dict) else {}


def _write_record(root: Path, record: dict) -> None:
    path = root / RECORD_FILE
    tmp = path.with_name(RECORD_FILE + ".tmp")
    tmp.write_text("# written by rgbx data synthesize: the folders it wrote, the only ones it ever replaces\n"
                   + yaml.safe_dump(record, sort_keys=False))
    tmp.replace(path)


def _check_replaceable(root: Path, m: str, target: Path, ids: Sequence[str], listed: bool, ours: bool,
                       overwrite: bool, changed: bool = False) -> None:
    """Refuse to write ``m`` into the non-empty ``target`` unless it holds only what an earlier call wrote
    (``ours``: synthesized.yaml records the folder with these very files; ``changed``: it records the folder, whose
    files have changed since), and then unless ``overwrite``."""
    expected = {f"{i}.png" for i in ids}
    entries = sorted(p.name + ("/" if p.is_dir() else "") for p in target.iterdir())
    foreign = [e for e in entries if e not in expected]
    where = root / DESCRIPTION_FILE
    part = "" if listed else f"is not part of the dataset ({where} lists no {m}) and "
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        what = "them" if listed else "the folder"
        raise DataError(f"{target}: {part}holds {len(foreign)} file(s) rgbx data synthesize did not write "
                        f"({shown}); they are not replaced, even with overwrite=True: move {what} elsewhere first")
    if not ours:
        why = ("its files have changed since rgbx data synthesize wrote them" if changed else
               "it does not record them as written by rgbx data synthesize")
        whose = (f"this dataset's own {m} files (listed in {where}" if listed else f"{m} files of this dataset's "
                 f"samples (not listed in {where}") + f"; {root / RECORD_FILE}: {why})"
        fix = f" and remove modalities.{m} from {DESCRIPTION_FILE}" if listed else ""
        raise DataError(f"{target}: holds {whose}; they are not replaced, even with overwrite=True: move the folder "
                        f"elsewhere{fix} to synthesise {m}")
    if not overwrite:
        raise DataError(f"{target}: already holds {m} files an earlier rgbx data synthesize wrote; pass "
                        f"overwrite=True to replace them")


def _list_in_description(root: Path, new: dict[str, dict]) -> None:
    if not new:
        return
    path = root / DESCRIPTION_FILE
    original = path.read_text()
    backup = path.with_name(DESCRIPTION_FILE + ".orig")
    if not backup.exists():
        backup.write_text(original)
    raw = yaml.safe_load(original)
    raw.setdefault("modalities", {})
    for m, entry in new.items():
        raw["modalities"][m] = entry
    tmp = path.with_name(DESCRIPTION_FILE + ".tmp")
    tmp.write_text(yaml.safe_dump(raw, sort_keys=False))
    tmp.replace(path)
