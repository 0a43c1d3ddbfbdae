"""DeLiVER (Zhang et al., CVPR 2023, "Delivering Arbitrary-Modal Semantic Segmentation"), registered as ``"deliver"``;
plus :class:`DrivingDataset`, the base of rgbx's driving-benchmark adapters (DeLiVER, MCubeS, KITTI-360, MUSES,
EventScape).

Layout (README "Data folder structure" and ``semseg/datasets/deliver.py`` of jamycheung/DELIVER @ 4981c16d)::

    DELIVER/
      img/<condition>/<split>/<sequence>/<frame>_rgb_front.png
      depth/<condition>/<split>/<sequence>/<frame>_depth_front.png
      hha/<condition>/<split>/<sequence>/<frame>_depth_front.png      # HHA of depth, *named like depth*
      event/<condition>/<split>/<sequence>/<frame>_event_front.png
      lidar/<condition>/<split>/<sequence>/<frame>_lidar_front.png
      semantic/<condition>/<split>/<sequence>/<frame>_semantic_front.png

conditions ``cloud fog night rain sun``; splits ``train val test`` (3983 / 2005 / 1897 front views, README figure).
The released data is front view only (``_front``); the ``view`` option allows other suffixes.

Facts verified and what rgbx does with them:

- **Sample list**: DELIVER globs ``img/*/<split>/*/*.png`` and derives the other paths by replacing ``/img`` →
  ``/hha|/lidar|/event|/semantic`` and ``_rgb`` → ``_depth|_lidar|_event|_semantic``. Its "depth" modality is read
  from ``hha/`` (``x1 = rgb.replace('/img', '/hha').replace('_rgb', '_depth')``). rgbx offers both: ``depth`` from
  ``depth/`` and ``hha`` from ``hha/`` (each only when its folder exists).
- **Labels**: 25 classes in DELIVER's order (``CLASSES`` / ``PALETTE`` in deliver.py; the class order of the README
  statistics figure matches). The label PNG is read as ``io.read_image(lbl)[0]``, i.e. channel 0 of a multi-channel
  file; CAFuser's DeLiVER mapper (timbroed/CAFuser ``deliver_semantic_dataset_mapper.py``) confirms the files are
  4-channel and raises on anything else. Values are CARLA-style tags, 0 = unlabelled: DELIVER does
  ``label[label == 255] = 0; label -= 1`` on uint8, so 0 and 255 → 255 (ignore) and ``k`` → ``k - 1``. rgbx applies
  exactly that (values 26..254 are left as ``k - 1`` so ``check="full"`` reports them as out of range).
- **Conditions and cases**: the condition is the folder below the modality folder (CAFuser: ``file.split('/')[-4]``).
  The sensor-failure cases (``motionblur overexposure underexposure lidarjitter eventlowres``) have no folder of their
  own: DELIVER and CAFuser select them with a substring test on the whole path (``case in f``). Where the name occurs
  is not stated anywhere public; a third-party DeLiVER tool notes it is a suffix of the sequence folder name.
  rgbx searches the path *below the split folder* (sequence folder and file name), so a dataset root whose own path
  contains e.g. "fog" cannot leak into the test; samples with no case name are ``case = "normal"``.
  ``attributes()`` gives ``{"condition": ..., "case": ...}``; options ``conditions=[...]`` and ``cases=[...]``
  (``"normal"`` allowed) filter the samples.
- **Event resolution**: DELIVER resizes the event image to the RGB size with nearest interpolation; CAFuser notes
  "eventlowres only have 512 resolution". rgbx does the same (nearest) instead of reporting a size mismatch.

Not documented by any reference, so rgbx makes a documented choice (see docs/datasets-driving.md):

- **depth/** (DELIVER never reads it): ``depth_encoding="auto"`` decodes a 3-channel file whose channels differ as
  CARLA's raw depth camera encoding (``(R + 256 G + 65536 B) / (2^24 - 1) * 1000`` m, CARLA sensor reference) and a
  grey file (1 channel, or equal channels) as CARLA's logarithmic depth converter (``1000 * exp((v/255 - 1) *
  5.70378)`` m; CARLA maps everything nearer than ~3.3 m to 0, decoded as invalid). 16-bit single-channel files are
  read as millimetres (rgbx's convention). Force one with ``depth_encoding="carla_raw" | "carla_log" | "mm"``.
- **event/**: DELIVER feeds the 3-channel PNG to the network as an image. The rendering (README figure) draws
  events as red and blue dots on a plain background, CARLA's DVS convention ("blue is positive, red is negative",
  CARLA ``manual_control.py``). rgbx decodes channel 0 = positive (blue clearly above red), channel 1 = negative (red
  clearly above blue); the values are 0/1 presence flags, not counts (the PNG holds no counts).
- **lidar/**: a rendered "front-view LiDAR image-like format" (DELIVER issue #9); its range encoding is not
  published. rgbx takes the grey level (channel mean) x ``lidar_scale`` (default 1.0: the values are grey levels
  0-255, *not metres*), 0 = no return.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from rgbx.data.datasets.base import DATASETS, FileInfo, SegmentationDataset, probe_file
from rgbx.data.description import DatasetDescription, ModalitySource
from rgbx.errors import ConfigError, DataError
from rgbx.modalities import get_modality, read_array

# The 19 Cityscapes train-id classes and their palette (KITTI-360 and MUSES use them).
CITYSCAPES_CLASSES = ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
                      "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle",
                      "bicycle")
CITYSCAPES_PALETTE = ((128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
                      (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
                      (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32))


def resize_nearest(arr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(C, H, W) → (C, h, w) by nearest neighbour (pixel centres), for sensors stored at a lower resolution."""
    h, w = size
    H, W = arr.shape[-2:]
    if (H, W) == (h, w):
        return arr
    rows = np.minimum(((np.arange(h) + 0.5) * H / h).astype(np.int64), H - 1)
    cols = np.minimum(((np.arange(w) + 0.5) * W / w).astype(np.int64), W - 1)
    return arr[:, rows][:, :, cols]


def png_header(path: Path) -> tuple[int, int] | None:
    """(bit depth, colour type) from a PNG's IHDR, or None if the file is not a PNG. Pillow reads 16-bit colour PNGs
    as 8-bit, so adapters that may meet them check this first."""
    try:
        with open(path, "rb") as f:
            head = f.read(33)
    except OSError:
        return None
    if len(head) < 33 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        return None
    return head[24], head[25]


def as_list(name: str, value, allowed: Sequence[str] | None = None) -> list[str] | None:
    """An option given as a string or a list of strings; checked against ``allowed``."""
    if value is None:
        return None
    items = [value] if isinstance(value, str) else list(value)
    if not all(isinstance(v, str) for v in items):
        raise ConfigError(f"data.options.{name}: expected a list of names, got {value!r}")
    if allowed is not None:
        bad = [v for v in items if v not in allowed]
        if bad:
            raise ConfigError(f"data.options.{name}: unknown value(s) {bad} (expected some of: {', '.join(allowed)})")
    return items


class DrivingDataset(SegmentationDataset):
    """Base of the adapters that read a public benchmark in its own layout.

    On top of :class:`SegmentationDataset` it takes dataset-specific keyword ``options`` (declared with their defaults
    in ``OPTIONS``; an unknown one is a :class:`ConfigError`), checks the split against ``SPLITS``, and adds hooks for
    sensors that are not a single image per sample:

    - :meth:`accepted_channels` / :meth:`accepted_dtypes`: several on-disk forms of one modality (e.g. RGB or RGBA);
    - :meth:`probe_source` / :meth:`read_source`: files that are not PNG/.npy images (point clouds, event lists,
      modalities split over two files, .npz), given the sample id;
    - ``RESIZED``: modalities stored at a lower resolution, resampled (nearest) to the label size on loading;
    - ``LABEL_CHANNELS`` / :meth:`label_plane`: multi-channel label images and the channel holding the class values;
    - :meth:`extra_problems`: checks of companion files (calibration, a second file of the same modality).

    ``_sample_problems`` and ``load`` mirror the base-class versions with these hooks; keep them in step with
    ``base.py``.
    """

    SPLITS: tuple[str, ...] = ()
    OPTIONS: dict = {}
    RESIZED: frozenset[str] = frozenset()
    LABEL_CHANNELS: tuple[int, ...] = (1,)
    LABEL_CHANNEL: int = 0

    def __init__(self, root: str | Path, split: str, modalities: Sequence[str] | None = None, transform=None,
                 seed: int = 0, check: str = "headers", **options):
        unknown = sorted(set(options) - set(self.OPTIONS))
        if unknown:
            raise ConfigError(f"data.options: unknown option(s) {', '.join(unknown)} for dataset "
                              f"{self.registered_name()!r} (options: {', '.join(self.OPTIONS) or 'none'})")
        self.options = {**self.OPTIONS, **options}
        self.configure(self.options)
        if self.SPLITS and split not in self.SPLITS:
            raise DataError(f"{root}: dataset {self.registered_name()!r} has no split {split!r} "
                            f"(splits: {', '.join(self.SPLITS)})")
        super().__init__(root, split, modalities, transform, seed, check)

    @classmethod
    def registered_name(cls) -> str:
        return getattr(cls, "NAME", cls.__name__)

    # -- hooks ------------------------------------------------------------------------------------------------------
    def configure(self, options: dict) -> None:
        """Validate ``options`` and store what the adapter needs (called before ``describe``)."""

    def accepted_channels(self, name: str) -> tuple[int, ...]:
        return (self.expected_channels(name),)

    def accepted_dtypes(self, name: str) -> tuple[str, ...]:
        return (self.sources[name].dtype,)

    def probe_source(self, name: str, path: Path, sample_id: str) -> FileInfo:
        """Channels, dtype and (H, W) of ``name``'s file; ``size`` may be None when the file has no image size."""
        return probe_file(path, self.sources[name].encoding)

    def read_source(self, name: str, path: Path, sample_id: str) -> np.ndarray:
        """The raw (C, H, W) file values handed to :meth:`decode_modality`."""
        return read_array(path, self.sources[name].encoding)

    def extra_problems(self, sample_id: str, paths: dict) -> list[str]:
        return []

    def label_plane(self, raw: np.ndarray) -> np.ndarray:
        """The (H, W) plane of a (C, H, W) label file that holds the class values."""
        return raw[self.LABEL_CHANNEL]

    # -- helpers ----------------------------------------------------------------------------------------------------
    def source(self, name: str, folder: str, encoding: str = "png", dtype: str | None = None,
               optional: bool = False) -> ModalitySource:
        spec = get_modality(name)
        return ModalitySource(name=name, folder=folder, encoding=encoding, dtype=dtype or spec.dtype,
                              scale=spec.scale, optional=optional)

    # -- validation and loading with the hooks ----------------------------------------------------------------------
    def _sample_problems(self, sample_id: str, full: bool) -> list[str]:
        problems, sizes = [], {}
        label_src = self.description.label
        paths = self.files(sample_id)
        for src in [*self.sources.values(), label_src]:
            is_label = src is label_src
            path = paths.get(src.name)
            if path is None or not Path(path).is_file():
                if not src.optional:
                    where = path if path is not None else self.root / src.folder / sample_id
                    problems.append(f"{where}: missing {src.name} file for sample {sample_id!r}")
                continue
            path = Path(path)
            try:
                info = probe_file(path, src.encoding) if is_label else self.probe_source(src.name, path, sample_id)
            except DataError as e:
                problems.append(str(e))
                continue
            if is_label:
                if info.channels not in self.LABEL_CHANNELS:
                    problems.append(f"{path}: {info.channels} channel(s), expected a label image with "
                                    f"{' or '.join(map(str, self.LABEL_CHANNELS))} channel(s)")
                if info.dtype not in ("uint8", "uint16", "int32", "int64", "bool"):
                    problems.append(f"{path}: label dtype {info.dtype}, expected an integer type (uint8/uint16)")
            else:
                want = self.accepted_channels(src.name)
                if info.channels not in want:
                    problems.append(f"{path}: {info.channels} channel(s), expected "
                                    f"{' or '.join(map(str, want))} for {src.name!r}")
                dtypes = self.accepted_dtypes(src.name)
                if info.dtype not in dtypes:
                    problems.append(f"{path}: dtype {info.dtype}, expected {' or '.join(dtypes)} for {src.name!r}")
            if info.size is not None and src.name not in self.RESIZED:
                sizes[src.name] = (path, info.size)
            if full:
                try:
                    if is_label:
                        arr = read_array(path, src.encoding)
                        problems.extend(self._label_problems(path, self.decode_label(self.label_plane(arr))))
                    else:
                        self.decode_modality(src.name, self.read_source(src.name, path, sample_id))
                except DataError as e:
                    problems.append(str(e))
        problems.extend(self.extra_problems(sample_id, paths))
        if sizes:
            ref_name = label_src.name if label_src.name in sizes else next(iter(sizes))
            ref_path, ref_size = sizes[ref_name]
            for path, size in sizes.values():
                if size != ref_size:
                    problems.append(f"{path}: size {size[0]}x{size[1]} (HxW) differs from {ref_path} "
                                    f"{ref_size[0]}x{ref_size[1]}")
        return problems

    def load(self, index: int):
        sample_id = self.ids[index]
        paths = self.files(sample_id)
        label = None
        label_path = paths.get("label")
        if label_path is not None and Path(label_path).is_file():
            arr = read_array(label_path, self.description.label.encoding)
            if arr.shape[0] not in self.LABEL_CHANNELS:
                raise DataError(f"{label_path}: {arr.shape[0]} channel(s), expected a label image with "
                                f"{' or '.join(map(str, self.LABEL_CHANNELS))} channel(s)")
            lab = self.decode_label(self.label_plane(arr))
            problems = self._label_problems(label_path, lab)
            if problems:
                raise DataError(problems[0])
            label = torch.from_numpy(lab.astype(np.int64))
        inputs = {}
        for name, src in self.sources.items():
            path = paths.get(name)
            if path is None or not Path(path).is_file():
                if src.optional:
                    continue
                raise DataError(f"{path or self.root / src.folder / sample_id}: missing {name} file for sample "
                                f"{sample_id!r}")
            arr = self.read_source(name, Path(path), sample_id)
            if arr.shape[0] not in self.accepted_channels(name):
                raise DataError(f"{path}: {arr.shape[0]} channel(s), expected "
                                f"{' or '.join(map(str, self.accepted_channels(name)))} for {name!r}")
            x = np.ascontiguousarray(self.decode_modality(name, arr), np.float32)
            if x.shape[0] != get_modality(name).channels:
                raise DataError(f"{path}: decoded to {x.shape[0]} channel(s), the {name!r} spec has "
                                f"{get_modality(name).channels}")
            if name in self.RESIZED:
                ref = label.shape if label is not None else next((t.shape[-2:] for t in inputs.values()), None)
                if ref is not None:
                    x = np.ascontiguousarray(resize_nearest(x, tuple(ref)))
            inputs[name] = torch.from_numpy(x)
        size = next(iter(inputs.values())).shape[-2:] if inputs else label.shape
        meta = {"id": sample_id, "split": self.split, "size": tuple(size),
                "attributes": dict(self.attributes(sample_id))}
        return {"inputs": inputs, "label": label, "meta": meta}


# ---------------------------------------------------------------------------------------------------------------------
DELIVER_CLASSES = ("Building", "Fence", "Other", "Pedestrian", "Pole", "RoadLine", "Road", "SideWalk", "Vegetation",
                   "Cars", "Wall", "TrafficSign", "Sky", "Ground", "Bridge", "RailTrack", "GroundRail", "TrafficLight",
                   "Static", "Dynamic", "Water", "Terrain", "TwoWheeler", "Bus", "Truck")
DELIVER_PALETTE = ((70, 70, 70), (100, 40, 40), (55, 90, 80), (220, 20, 60), (153, 153, 153), (157, 234, 50),
                   (128, 64, 128), (244, 35, 232), (107, 142, 35), (0, 0, 142), (102, 102, 156), (220, 220, 0),
                   (70, 130, 180), (81, 0, 81), (150, 100, 100), (230, 150, 140), (180, 165, 180), (250, 170, 30),
                   (110, 190, 160), (170, 120, 50), (45, 60, 150), (145, 170, 100), (0, 0, 230), (0, 60, 100),
                   (0, 0, 70))
DELIVER_CONDITIONS = ("cloud", "fog", "night", "rain", "sun")
DELIVER_CASES = ("motionblur", "overexposure", "underexposure", "lidarjitter", "eventlowres")
DEPTH_ENCODINGS = ("auto", "carla_raw", "carla_log", "mm")
_CARLA_LOG_K = 5.70378  # CARLA's LogarithmicDepth converter: v = 1 + ln(d / 1000) / 5.70378 (ln 300)
_EVENT_MARGIN = 32  # colour difference that counts as an event dot, not background or compression noise

# modality → (folder, file-name tag); tag replaces "rgb" in "<frame>_rgb_<view>.png"
_DELIVER_FILES = {"rgb": ("img", "rgb"), "depth": ("depth", "depth"), "hha": ("hha", "depth"),
                  "event": ("event", "event"), "lidar": ("lidar", "lidar"), "label": ("semantic", "semantic")}


@DATASETS.register("deliver")
class DeliverDataset(DrivingDataset):
    """DeLiVER in its released layout (see the module docstring).

    Options (``data.options``): ``conditions`` (subset of cloud/fog/night/rain/sun), ``cases`` (subset of normal,
    motionblur, overexposure, underexposure, lidarjitter, eventlowres), ``view`` ("front"), ``depth_encoding``
    ("auto", "carla_raw", "carla_log", "mm"), ``lidar_scale`` (physical units per LiDAR grey level, default 1.0).
    """

    NAME = "deliver"
    SPLITS = ("train", "val", "test")
    OPTIONS = {"conditions": None, "cases": None, "view": "front", "depth_encoding": "auto", "lidar_scale": 1.0}
    RESIZED = frozenset({"event"})
    LABEL_CHANNELS = (1, 3, 4)
    LABEL_CHANNEL = 0

    def configure(self, options: dict) -> None:
        self.conditions = as_list("conditions", options["conditions"], DELIVER_CONDITIONS)
        self.cases = as_list("cases", options["cases"], ("normal", *DELIVER_CASES))
        if not isinstance(options["view"], str) or not re.fullmatch(r"[a-z]+", options["view"]):
            raise ConfigError(f"data.options.view: expected a view name such as 'front', got {options['view']!r}")
        self.view = options["view"]
        if options["depth_encoding"] not in DEPTH_ENCODINGS:
            raise ConfigError(f"data.options.depth_encoding: {options['depth_encoding']!r} is not one of "
                              f"{', '.join(DEPTH_ENCODINGS)}")
        self.depth_encoding = options["depth_encoding"]
        try:
            self.lidar_scale = float(options["lidar_scale"])
        except (TypeError, ValueError):
            raise ConfigError(f"data.options.lidar_scale: expected a number, got {options['lidar_scale']!r}") from None

    def describe(self) -> DatasetDescription:
        mods = {"rgb": self.source("rgb", "img")}
        for name in ("depth", "hha", "event", "lidar"):
            folder = _DELIVER_FILES[name][0]
            if (self.root / folder).is_dir():
                mods[name] = self.source(name, folder, dtype="uint8")
        label = ModalitySource("label", "semantic", "png", "uint8", 1.0)
        return DatasetDescription(root=self.root, name="DeLiVER", classes=DELIVER_CLASSES, palette=DELIVER_PALETTE,
                                  ignore_index=255, modalities=mods, label=label,
                                  extra={"source": "jamycheung/DELIVER"})

    def list_ids(self) -> list[str]:
        img = self.root / "img"
        if not img.is_dir():
            raise DataError(f"{img}: DeLiVER image folder not found (expected img/<condition>/<split>/<sequence>/"
                            f"<frame>_rgb_{self.view}.png)")
        suffix = f"_rgb_{self.view}.png"
        ids, self._attrs = [], {}
        for cond in sorted(os.listdir(img)):
            split_dir = img / cond / self.split
            if not split_dir.is_dir():
                continue
            if self.conditions is not None and cond not in self.conditions:
                continue
            for seq in sorted(os.listdir(split_dir)):
                seq_dir = split_dir / seq
                if not seq_dir.is_dir():
                    continue
                for name in sorted(os.listdir(seq_dir)):
                    if not name.endswith(suffix):
                        continue
                    frame = name[: -len(suffix)]
                    case = next((c for c in DELIVER_CASES if c in f"{seq}/{frame}"), "normal")
                    if self.cases is not None and case not in self.cases:
                        continue
                    sid = f"{cond}/{seq}/{frame}"
                    ids.append(sid)
                    self._attrs[sid] = {"condition": cond, "case": case}
        if not ids:
            what = [f"conditions={self.conditions}"] if self.conditions else []
            what += [f"cases={self.cases}"] if self.cases else []
            raise DataError(f"{img}: no *{suffix} files for split {self.split!r}"
                            + (f" with {', '.join(what)}" if what else "")
                            + f" (expected img/<condition>/{self.split}/<sequence>/<frame>{suffix})")
        return ids

    def files(self, sample_id: str) -> dict[str, Path | None]:
        cond, seq, frame = sample_id.split("/")
        out = {}
        for name in [*self.sources, "label"]:
            folder, tag = _DELIVER_FILES[name]
            out[name] = self.root / folder / cond / self.split / seq / f"{frame}_{tag}_{self.view}.png"
        return out

    def attributes(self, sample_id: str) -> dict[str, str]:
        return self._attrs[sample_id]

    def accepted_channels(self, name: str) -> tuple[int, ...]:
        # DELIVER's loader drops an alpha channel and repeats 1-channel files, so rgbx accepts the same forms.
        return {"rgb": (3, 4), "hha": (3, 4), "depth": (1, 3, 4), "event": (3, 4), "lidar": (1, 3, 4)}[name]

    def accepted_dtypes(self, name: str) -> tuple[str, ...]:
        return ("uint8", "uint16") if name in ("depth", "lidar") else ("uint8",)

    def decode_label(self, raw: np.ndarray) -> np.ndarray:
        lab = raw.astype(np.int64) - 1
        lab[(raw == 0) | (raw == 255)] = 255
        return lab

    def decode_modality(self, name: str, raw: np.ndarray) -> np.ndarray:
        if name in ("rgb", "hha"):
            return raw[:3].astype(np.float32) / 255.0
        if name == "depth":
            return self._decode_depth(raw)
        if name == "event":
            r, b = raw[0].astype(np.int16), raw[2].astype(np.int16)
            pos = (b - r) > _EVENT_MARGIN
            neg = (r - b) > _EVENT_MARGIN
            return np.stack([pos, neg]).astype(np.float32)
        if name == "lidar":
            grey = raw[:3].astype(np.float32).mean(axis=0, keepdims=True)
            return grey * np.float32(self.lidar_scale)
        raise KeyError(name)

    def _decode_depth(self, raw: np.ndarray) -> np.ndarray:
        enc = self.depth_encoding
        if enc == "auto":
            if raw.dtype == np.uint16:
                enc = "mm"
            elif raw.shape[0] >= 3 and not (np.array_equal(raw[0], raw[1]) and np.array_equal(raw[1], raw[2])):
                enc = "carla_raw"
            else:
                enc = "carla_log"
        if enc == "mm":
            return raw[:1].astype(np.float32) * np.float32(0.001)
        if enc == "carla_raw":
            if raw.shape[0] < 3:
                raise DataError(f"depth_encoding=carla_raw needs 3-channel depth files, got {raw.shape[0]} channel(s)")
            r, g, b = (raw[i].astype(np.float64) for i in range(3))
            return ((r + 256.0 * g + 65536.0 * b) / (256.0**3 - 1) * 1000.0)[None].astype(np.float32)
        v = raw[0].astype(np.float64) / (65535.0 if raw.dtype == np.uint16 else 255.0)
        d = 1000.0 * np.exp((v - 1.0) * _CARLA_LOG_K)
        d[v <= 0] = 0.0  # the converter clamps everything nearer than 1000 / 300 m to 0: unknown depth
        return d[None].astype(np.float32)

    def probe_source(self, name: str, path: Path, sample_id: str) -> FileInfo:
        info = probe_file(path, "png")
        if name == "event":
            # eventlowres frames are stored smaller and resized on loading; compare only the aspect ratio
            return FileInfo(info.channels, info.dtype, None)
        return info

    def extra_problems(self, sample_id: str, paths: dict) -> list[str]:
        ev, ref = paths.get("event"), paths.get("label")
        if "event" not in self.sources or ev is None or not Path(ev).is_file() or not Path(ref).is_file():
            return []
        try:
            with Image.open(ev) as im:
                w, h = im.size
            with Image.open(ref) as im:
                W, H = im.size
        except (OSError, ValueError):
            return []  # unreadable files are reported by the per-file checks
        if abs(w * H - W * h) > max(W, H):
            return [f"{ev}: size {h}x{w} (HxW) is not a scaled copy of the label size {H}x{W} ({ref})"]
        return []
