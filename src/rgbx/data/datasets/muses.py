"""MUSES, the Multi-Sensor Semantic perception dataset for driving under uncertainty (Brödermann et al., ECCV 2024),
registered as ``"muses"``: frame camera + LiDAR + event camera, 19 Cityscapes train ids.

Layout (MUSES SDK README, timbroed/MUSES @ ad09c1bc; file names as read by AnySeg ``semseg/datasets/muses.py`` and
CAFuser ``register_muses_panoptic.py`` / ``config.py``)::

    muses/
      frame_camera/<split>/<weather>/<time_of_day>/<name>_frame_camera.png      1920x1080 RGB
      gt_semantic/<split>/<weather>/<time_of_day>/<name>_gt_labelTrainIds.png   train ids, 255 = void (train, val)
      lidar/<split>/<weather>/<time_of_day>/<name>_lidar.bin                    float64 x 6 per point
      event_camera/<split>/<weather>/<time_of_day>/<name>_event_camera.h5       raw events (h5)
      calib.json, meta.json
      projected_to_rgb/lidar/...<name>_lidar.npz         written by the SDK's scripts/project_sensors_to_rgb.py
      projected_to_rgb/event_camera/...<name>_event_camera.npz

splits ``train val test`` (test labels are withheld for the benchmark); weather ``clear fog rain snow``;
time of day ``day night``.

Verified facts and rgbx's choices:

- **Labels**: ``_gt_labelTrainIds.png`` holds the 19 Cityscapes train ids and 255 for void. AnySeg's loader maps
  void to class 0 (``label[label == 255] = 0``), which counts void pixels as "road"; rgbx keeps 255 as ignore
  (as CAFuser's semantic evaluation does).
- **AnySeg's size and files**: AnySeg resizes every modality to 1024×1024 (PIL ``resize`` with its default filter)
  and the label to 1024×1024 (nearest), so the 1920×1080 aspect ratio is not kept and its mIoU is counted on the
  squashed labels. It reads every modality as a PNG converted to 3-channel RGB, at the frame-camera path with
  ``frame_camera`` replaced by the modality name
  (``<modality>/<split>/<weather>/<time_of_day>/<name>_<modality>.png``), not the SDK's ``projected_to_rgb`` files.
  rgbx keeps the native size (resize in the transform) and reads the SDK's projections or raw scans.
- **Attributes**: ``weather`` and ``time_of_day`` from the folders (the SDK's ``meta.json`` holds the same values
  per scene), plus ``condition`` = ``"<weather>_<time_of_day>"``; options ``weather=[...]``,
  ``time_of_day=[...]`` filter.
- **LiDAR, raw** (``lidar="raw"``): ``np.fromfile(path, float64).reshape(-1, 6)`` (SDK
  ``processing/lidar_processing.py: load_lidar_data``); x, y, z in the LiDAR frame; projected with
  ``extrinsics.lidar2rgb`` and ``intrinsics.rgb.K`` from ``calib.json`` (rescaled when the image is not 1920x1080,
  SDK ``rescale_K``), points nearer than 1 m dropped (SDK ``min_distance=1.0``), value = Euclidean range (SDK channel
  0). Differences from the SDK (see :mod:`rgbx.data.lidar_projection`): rgbx rounds instead of truncating pixel
  coordinates, z-buffers, and drops points behind the camera. Motion compensation (SDK option, needs GNSS) is not done.
- **LiDAR, projected** (``lidar="projected"``; ``"auto"`` prefers it when ``projected_to_rgb/lidar`` exists): the
  SDK saves an (H, W, 3) float32 image of (range, intensity, height) as ``.npz`` (its default) or ``.npy``; rgbx
  reads channel 0. Its ``.png`` option stores ``(value + 100) * 150`` as a 16-bit 3-channel PNG, which Pillow can only
  read reduced to 8 bits, so rgbx refuses those files with a message (re-export as ``.npz``). CAFuser names its
  projections ``_lidar_projected.png``; that name is looked for too.
- **Events**: only the projected images are read: ``.npz``/``.npy`` (H, W, 3) uint8 with positive counts in channel
  0 and negative counts in channel 1 (SDK ``event_camera_processing.py: render``, events of the last 30 ms), or the
  8-bit ``.png``, which the SDK writes with OpenCV (BGR), so Pillow sees positive counts in channel 2 and negative in
  channel 1. Raw ``.h5`` events are **not** supported: the SDK needs h5py + hdf5plugin and OpenCV's stereo
  rectification (``cv2.stereoRectify`` / ``undistortPoints``) to bring them into the frame camera, and rgbx does not
  reimplement that unverified.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np

from rgbx.data.datasets.base import DATASETS, FileInfo, probe_file
from rgbx.data.datasets.deliver import (
    CITYSCAPES_CLASSES,
    CITYSCAPES_PALETTE,
    DrivingDataset,
    as_list,
    png_header,
)
from rgbx.data.description import DatasetDescription, ModalitySource
from rgbx.data.lidar_projection import load_muses_calibration, project_points, read_point_file
from rgbx.errors import ConfigError, DataError, SplitNotFoundError
from rgbx.modalities import read_array

MUSES_WEATHER = ("clear", "fog", "rain", "snow")
MUSES_TIME_OF_DAY = ("day", "night")
_EXTS = (".npz", ".npy", ".png")


def _npz_shape(path: Path) -> tuple[tuple[int, ...], str]:
    """Shape and dtype of the first array of an .npz, reading only its header."""
    try:
        with zipfile.ZipFile(path) as z:
            names = [n for n in z.namelist() if n.endswith(".npy")]
            if not names:
                raise DataError(f"{path}: .npz holds no array")
            with z.open(names[0]) as f:
                version = np.lib.format.read_magic(f)
                read = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                    np.lib.format.read_array_header_2_0
                shape, _, dtype = read(f)
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise DataError(f"{path}: unreadable .npz ({e})") from None
    return tuple(shape), str(np.dtype(dtype))


def _load_any(path: Path) -> np.ndarray:
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                return z[z.files[0]]
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, IndexError) as e:
        raise DataError(f"{path}: unreadable array file ({e})") from None


def _hwc_info(path: Path, shape: tuple[int, ...], dtype: str, channels: int) -> FileInfo:
    if len(shape) != 3 or shape[2] < 2:
        raise DataError(f"{path}: array of shape {shape}, expected (H, W, 3) as written by the MUSES SDK")
    return FileInfo(channels, dtype, (shape[0], shape[1]))


@DATASETS.register("muses")
class MusesDataset(DrivingDataset):
    """MUSES frame camera + LiDAR + events (see the module docstring).

    Options: ``weather`` (subset of clear/fog/rain/snow), ``time_of_day`` (day/night), ``lidar`` ("auto",
    "projected", "raw", "none"), ``event`` ("auto", "projected", "none"), ``projected_dir`` (folder of the SDK's
    projections, default "projected_to_rgb"), ``min_range`` (metres, raw LiDAR, default 1.0 as the SDK).
    """

    NAME = "muses"
    CLASSES = CITYSCAPES_CLASSES
    SPLITS = ("train", "val", "test")
    OPTIONS = {"weather": None, "time_of_day": None, "lidar": "auto", "event": "auto",
               "projected_dir": "projected_to_rgb", "min_range": 1.0}

    def configure(self, options: dict) -> None:
        self.weather = as_list("weather", options["weather"], MUSES_WEATHER)
        self.time_of_day = as_list("time_of_day", options["time_of_day"], MUSES_TIME_OF_DAY)
        for key, allowed in (("lidar", ("auto", "projected", "raw", "none")), ("event", ("auto", "projected", "none"))):
            if options[key] not in allowed:
                raise ConfigError(f"data.options.{key}: {options[key]!r} is not one of {', '.join(allowed)}")
        self.lidar_mode, self.event_mode = options["lidar"], options["event"]
        if not isinstance(options["projected_dir"], str):
            raise ConfigError(f"data.options.projected_dir: expected a folder name, got {options['projected_dir']!r}")
        self.projected_dir = options["projected_dir"]
        try:
            self.min_range = float(options["min_range"])
        except (TypeError, ValueError):
            raise ConfigError(f"data.options.min_range: expected metres, got {options['min_range']!r}") from None
        self._calib = {}

    def describe(self) -> DatasetDescription:
        proj = self.root / self.projected_dir
        lidar = self.lidar_mode
        if lidar == "auto":
            lidar = "projected" if (proj / "lidar").is_dir() else "raw" if (self.root / "lidar").is_dir() else "none"
        event = self.event_mode
        if event == "auto":
            event = "projected" if (proj / "event_camera").is_dir() else "none"
        self.lidar_source, self.event_source = lidar, event
        mods = {"rgb": self.source("rgb", "frame_camera")}
        if lidar == "raw":
            mods["lidar"] = self.source("lidar", "lidar", "npy", "float32")
        elif lidar == "projected":
            mods["lidar"] = self.source("lidar", f"{self.projected_dir}/lidar", "npy", "float32")
        if event == "projected":
            mods["event"] = self.source("event", f"{self.projected_dir}/event_camera", "png", "uint8")
        label = ModalitySource("label", "gt_semantic", "png", "uint8", 1.0, optional=(self.split == "test"))
        return DatasetDescription(root=self.root, name="MUSES", classes=CITYSCAPES_CLASSES,
                                  palette=CITYSCAPES_PALETTE, ignore_index=255, modalities=mods, label=label,
                                  extra={"source": "timbroed/MUSES"})

    def layout_problems(self) -> list[str]:
        problems = []
        for src in [*self.sources.values(), self.description.label]:
            folder = self.root / src.folder / self.split
            if not folder.is_dir() and not src.optional:
                problems.append(f"{folder}: folder for {src.name!r} not found")
        if "lidar" in self.sources and self.lidar_source == "raw" and not (self.root / "calib.json").is_file():
            problems.append(f"{self.root / 'calib.json'}: calibration file not found (needed to project raw LiDAR)")
        return problems

    def list_ids(self) -> list[str]:
        base = self.root / "frame_camera" / self.split
        if not base.is_dir() and base.parent.is_dir():
            raise SplitNotFoundError(f"{base}: split folder not found (MUSES splits here: "
                                     f"{', '.join(sorted(p.name for p in base.parent.iterdir() if p.is_dir())) or 'none'})")
        if not base.is_dir():
            raise DataError(f"{base}: MUSES frame-camera folder not found (expected frame_camera/<split>/<weather>/"
                            f"<time_of_day>/<name>_frame_camera.png)")
        suffix = "_frame_camera.png"
        ids, self._attrs = [], {}
        for weather in sorted(os.listdir(base)):
            if not (base / weather).is_dir() or (self.weather is not None and weather not in self.weather):
                continue
            for tod in sorted(os.listdir(base / weather)):
                folder = base / weather / tod
                if not folder.is_dir() or (self.time_of_day is not None and tod not in self.time_of_day):
                    continue
                for name in sorted(os.listdir(folder)):
                    if name.endswith(suffix):
                        sid = f"{weather}/{tod}/{name[: -len(suffix)]}"
                        ids.append(sid)
                        self._attrs[sid] = {"weather": weather, "time_of_day": tod, "condition": f"{weather}_{tod}"}
        if not ids:
            raise DataError(f"{base}: no *{suffix} files"
                            + (f" for weather={self.weather}" if self.weather else "")
                            + (f" time_of_day={self.time_of_day}" if self.time_of_day else ""))
        return ids

    def attributes(self, sample_id: str) -> dict[str, str]:
        return self._attrs[sample_id]

    def _projected(self, sensor: str, tag: str, sample_id: str) -> Path:
        weather, tod, name = sample_id.split("/")
        folder = self.root / self.projected_dir / sensor / self.split / weather / tod
        candidates = [folder / f"{name}_{tag}{ext}" for ext in _EXTS]
        candidates += [folder / f"{name}_{tag}_projected{ext}" for ext in _EXTS]
        return next((p for p in candidates if p.is_file()), candidates[0])

    def files(self, sample_id: str) -> dict[str, Path | None]:
        weather, tod, name = sample_id.split("/")
        rel = Path(self.split) / weather / tod
        out = {"rgb": self.root / "frame_camera" / rel / f"{name}_frame_camera.png",
               "label": self.root / "gt_semantic" / rel / f"{name}_gt_labelTrainIds.png"}
        if "lidar" in self.sources:
            out["lidar"] = (self.root / "lidar" / rel / f"{name}_lidar.bin" if self.lidar_source == "raw"
                            else self._projected("lidar", "lidar", sample_id))
        if "event" in self.sources:
            out["event"] = self._projected("event_camera", "event_camera", sample_id)
        return out

    # -- reading --------------------------------------------------------------------------------------------------
    def accepted_channels(self, name: str) -> tuple[int, ...]:
        return {"rgb": (3,), "lidar": (1,), "event": (2,)}[name]

    def accepted_dtypes(self, name: str) -> tuple[str, ...]:
        if name == "rgb":
            return ("uint8",)
        return ("uint8", "uint16", "float32", "float64")

    def _frame_size(self, sample_id: str) -> tuple[int, int]:
        rgb = self.files(sample_id)["rgb"]
        return probe_file(rgb, "png").size if rgb.is_file() else (1080, 1920)

    def probe_source(self, name: str, path: Path, sample_id: str) -> FileInfo:
        if name == "rgb":
            return probe_file(path, "png")
        if name == "lidar" and self.lidar_source == "raw":
            n = path.stat().st_size
            if n == 0 or n % 48:
                raise DataError(f"{path}: {n} bytes is not a whole number of MUSES LiDAR points (6 x float64 each)")
            return FileInfo(1, "float32", None)
        channels = 1 if name == "lidar" else 2
        if path.suffix == ".png":
            head = png_header(path)
            if head is not None and head[0] == 16 and head[1] in (2, 6):
                raise DataError(f"{path}: 16-bit colour PNG (the SDK's --output_file_type .png), which Pillow reads "
                                f"only as 8 bits; re-run scripts/project_sensors_to_rgb.py with --output_file_type "
                                f".npz (its default)")
            if name == "lidar":
                raise DataError(f"{path}: projected LiDAR as PNG is not supported; use the SDK's .npz/.npy output")
            info = probe_file(path, "png")
            if info.channels < 3:
                raise DataError(f"{path}: {info.channels} channel(s), expected the SDK's 3-channel event image")
            return FileInfo(2, info.dtype, info.size)
        if path.suffix == ".npz":
            shape, dtype = _npz_shape(path)
        else:
            try:
                arr = np.load(path, mmap_mode="r", allow_pickle=False)
            except (ValueError, OSError, EOFError) as e:
                raise DataError(f"{path}: unreadable .npy ({e})") from None
            shape, dtype = arr.shape, str(arr.dtype)
        return _hwc_info(path, shape, dtype, channels)

    def read_source(self, name: str, path: Path, sample_id: str) -> np.ndarray:
        if name == "rgb":
            return read_array(path, "png")
        if name == "lidar" and self.lidar_source == "raw":
            size = self._frame_size(sample_id)
            if size not in self._calib:
                self._calib[size] = load_muses_calibration(self.root / "calib.json", size)
            cal = self._calib[size]
            points = read_point_file(path, 6, "float64")
            return project_points(points[:, :3], cal["T_lidar_to_cam"], None, cal["P"], size,
                                  min_range=self.min_range)
        if path.suffix == ".png":
            self.probe_source(name, path, sample_id)  # refuses 16-bit colour PNGs
            img = read_array(path, "png")
            return np.stack([img[2], img[1]])  # written by OpenCV as BGR: positive → B, negative → G
        arr = _load_any(path)
        if arr.ndim != 3 or arr.shape[2] < 2:
            raise DataError(f"{path}: array of shape {arr.shape}, expected (H, W, 3) as written by the MUSES SDK")
        return arr[..., :1].transpose(2, 0, 1) if name == "lidar" else arr[..., :2].transpose(2, 0, 1)

    def decode_modality(self, name: str, raw: np.ndarray) -> np.ndarray:
        if name == "rgb":
            return raw.astype(np.float32) / 255.0
        return np.nan_to_num(raw.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
