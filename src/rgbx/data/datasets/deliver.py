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
  "eventlowres only have 512 resolution". rgbx does the same, with DELIVER's nearest rule (torchvision's tensor
  ``resize``: source pixel ``floor(i · H / h)``), instead of reporting a size mismatch.
- **Evaluation size**: DELIVER's test-time ``Resize(1024)`` (``get_val_augmentation``) resizes every sensor image
  *and the label* so that the shorter side is 1024 (1042×1042 → 1024×1024), then each side to a multiple of 32, and
  measures there. Option ``resize=1024`` reads every sample so: the 8-bit file values resized as torchvision's tensor
  ``resize`` did in DELIVER's pinned torchvision 0.10 (bilinear, ``align_corners=False``, no antialiasing, rounded back
  to integers; the label nearest), before decoding. ``depth`` and the polarity ``event`` sensor, which DELIVER never
  feeds, take the nearest pixel's encoded value instead. Default 0: the files' own size.

Not documented by any reference, so rgbx makes a documented choice (see docs/datasets-driving.md):

- **depth/** (DELIVER never reads it): ``depth_encoding="auto"`` decodes a 3-channel file whose channels differ as
  CARLA's raw depth camera encoding (``(R + 256 G + 65536 B) / (2^24 - 1) * 1000`` m, CARLA sensor reference) and a
  grey file (1 channel, or equal channels) as CARLA's logarithmic depth converter (``1000 * exp((v/255 - 1) *
  5.70378)`` m; CARLA maps everything nearer than ~3.3 m to 0, decoded as invalid). 16-bit single-channel files are
  read as millimetres (rgbx's convention). Force one with ``depth_encoding="carla_raw" | "carla_log" | "mm"``.
- **event/**: DELIVER feeds the 3-channel PNG to the network as an image. The rendering (README figure) draws
  events as red and blue dots on a plain background, CARLA's DVS convention ("blue is positive, red is negative",
  CARLA ``manual_control.py``). rgbx decodes channel 0 = positive (blue clearly above red), channel 1 = negative (red
  clearly above blue); the values are 0/1 presence flags, not counts (the PNG holds no counts). Option
  ``event_format="image"`` offers the files instead as the ``event_image`` sensor, the rendering itself / 255 (3
  channels), which is what a model trained by DELIVER's code (CMNeXt) was fed.
- **lidar/**: a rendered "front-view LiDAR image-like format" (DELIVER issue #9); its range encoding is not
  published. rgbx takes the grey level (channel mean) x ``lidar_scale`` (default 1.0: the values are grey levels
  0-255, *not metres*), 0 = no return. DELIVER instead feeds all three channels / 255 (``_open_img`` drops an
  alpha channel, ``Normalize`` divides by 255): rgbx's one channel carries the same information as DELIVER's input
  (up to that factor 255) only when the file's three channels are equal.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from rgbx.data.datasets.base import DATASETS, FileInfo, SegmentationDataset, probe_file
from rgbx.data.description import DatasetDescription, ModalitySource
from rgbx.errors import ConfigError, DataError, SplitNotFoundError
from rgbx.modalities import get_modality

# The 19 Cityscapes train-id classes and their palette (KITTI-360 and MUSES use them).
CITYSCAPES_CLASSES = ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
                      "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle",
                      "bicycle")
CITYSCAPES_PALETTE = ((128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
                      (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
                      (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32))


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


def torchvision_resize(raw: np.ndarray, size: tuple[int, int], mode: str) -> np.ndarray:
    """(C, H, W) integer file values resized as torchvision's tensor ``resize`` did up to 0.16 (DELIVER pins 0.10):
    ``interpolate`` in float32 (``"bilinear"``: ``align_corners=False``, no antialiasing; ``"nearest"``: source pixel
    ``floor(i · H / h)``), rounded back to the file's dtype."""
    if tuple(raw.shape[-2:]) == tuple(size):
        return raw
    x = torch.from_numpy(np.ascontiguousarray(raw, np.float32))[None]
    y = F.interpolate(x, size=tuple(size), mode=mode, align_corners=False if mode == "bilinear" else None)[0]
    return torch.round(y).numpy().astype(raw.dtype)


def deliver_test_sizes(size: tuple[int, int], shorter: int) -> list[tuple[int, int]]:
    """The sizes DELIVER's test-time ``Resize`` goes through: the shorter side to ``shorter`` (each side
    ``round(side · shorter / min(H, W))``), then each side up to a multiple of 32 (a second resize, a no-op when the
    first size is aligned already)."""
    h, w = size
    scale = shorter / min(h, w)
    first = (round(h * scale), round(w * scale))
    return [first, tuple(-(-v // 32) * 32 for v in first)]


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
    """Base of the adapters that read a driving benchmark in its own layout (DeLiVER, MCubeS, KITTI-360, MUSES,
    EventScape).

    The options, validation and loading with the hooks for sensors that are not a single image per sample
    (:meth:`accepted_channels`, :meth:`probe_source`, :meth:`read_source`, ``RESIZED``, ``LABEL_CHANNELS``,
    :meth:`extra_problems`, ...) are :class:`SegmentationDataset`'s; this class adds what the driving adapters
    share: the split must be one of ``SPLITS``, with ``check="full"`` every modality file is decoded
    (``DECODE_ON_CHECK``), and :meth:`source` describes a modality with its spec's dtype and scale.
    """

    SPLITS: tuple[str, ...] = ()
    DECODE_ON_CHECK = True

    def __init__(self, root: str | Path, split: str, *args, **kwargs):
        if self.SPLITS and split not in self.SPLITS:
            raise DataError(f"{root}: dataset {self.registered_name()!r} has no split {split!r} "
                            f"(splits: {', '.join(self.SPLITS)})")
        super().__init__(root, split, *args, **kwargs)

    def source(self, name: str, folder: str, encoding: str = "png", dtype: str | None = None,
               optional: bool = False) -> ModalitySource:
        spec = get_modality(name)
        return ModalitySource(name=name, folder=folder, encoding=encoding, dtype=dtype or spec.dtype,
                              scale=spec.scale, optional=optional)


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
                  "event": ("event", "event"), "event_image": ("event", "event"), "lidar": ("lidar", "lidar"),
                  "label": ("semantic", "semantic")}
EVENT_FORMATS = ("polarity", "image")


@DATASETS.register("deliver")
class DeliverDataset(DrivingDataset):
    """DeLiVER in its released layout (see the module docstring).

    Options (``data.options``): ``conditions`` (subset of cloud/fog/night/rain/sun), ``cases`` (subset of normal,
    motionblur, overexposure, underexposure, lidarjitter, eventlowres), ``view`` ("front"), ``depth_encoding``
    ("auto", "carla_raw", "carla_log", "mm"), ``lidar_scale`` (physical units per LiDAR grey level, default 1.0),
    ``event_format`` ("polarity": the ``event`` sensor, positive / negative dots decoded from the rendering;
    "image": the ``event_image`` sensor, the rendered colour image / 255 as DELIVER's code feeds it, for models
    trained by that code), ``resize`` (0, or the shorter side that DELIVER's test-time ``Resize`` gives every sensor
    and the label, 1024 in its evaluation; see the module docstring).
    """

    NAME = "deliver"
    CLASSES = DELIVER_CLASSES
    SPLITS = ("train", "val", "test")
    OPTIONS = {"conditions": None, "cases": None, "view": "front", "depth_encoding": "auto", "lidar_scale": 1.0,
               "event_format": "polarity", "resize": 0}
    RESIZED = frozenset({"event", "event_image"})
    MODALITY_HINTS = {
        "event_image": "read the event/ files as images with data.options.event_format=image (rgbx eval / predict: "
                       "--option event_format=image)",
        "event": "read the event/ files as polarity maps: data.options.event_format=polarity (the default)",
    }
    LABEL_CHANNELS = (1, 3, 4)

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
        if options["event_format"] not in EVENT_FORMATS:
            raise ConfigError(f"data.options.event_format: {options['event_format']!r} is not one of "
                              f"{', '.join(EVENT_FORMATS)}")
        self.event_sensor = "event" if options["event_format"] == "polarity" else "event_image"
        resize = options["resize"]
        if not isinstance(resize, int) or isinstance(resize, bool) or resize < 0:
            raise ConfigError(f"data.options.resize: expected the shorter side in pixels (DELIVER evaluates at 1024), "
                              f"or 0 for the files' own size; got {resize!r}")
        self.resize = resize

    def describe(self) -> DatasetDescription:
        mods = {"rgb": self.source("rgb", "img")}
        for name in ("depth", "hha", self.event_sensor, "lidar"):
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
        conditions = sorted(os.listdir(img))
        if not any((img / cond / self.split).is_dir() for cond in conditions):
            raise SplitNotFoundError(f"{img}: no condition folder has the split {self.split!r} (expected "
                                     f"img/<condition>/{self.split}/<sequence>/<frame>{suffix})")
        for cond in conditions:
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
        return {name: self._path(sample_id, name) for name in [*self.sources, "label"]}

    def _path(self, sample_id: str, name: str) -> Path:
        cond, seq, frame = sample_id.split("/")
        folder, tag = _DELIVER_FILES[name]
        return self.root / folder / cond / self.split / seq / f"{frame}_{tag}_{self.view}.png"

    def attributes(self, sample_id: str) -> dict[str, str]:
        return self._attrs[sample_id]

    def accepted_channels(self, name: str) -> tuple[int, ...]:
        # DELIVER's loader drops an alpha channel and repeats 1-channel files, so rgbx accepts the same forms.
        return {"rgb": (3, 4), "hha": (3, 4), "depth": (1, 3, 4), "event": (3, 4), "event_image": (3, 4),
                "lidar": (1, 3, 4)}[name]

    def accepted_dtypes(self, name: str) -> tuple[str, ...]:
        return ("uint8", "uint16") if name in ("depth", "lidar") else ("uint8",)

    def read_source(self, name: str, path: Path, sample_id: str) -> np.ndarray:
        raw = super().read_source(name, path, sample_id)
        if name in self.RESIZED:  # events stored smaller (eventlowres): to the camera's size, as DELIVER
            with Image.open(self._path(sample_id, "rgb")) as im:
                w, h = im.size
            raw = torchvision_resize(raw, (h, w), "nearest")
        # DELIVER's Resize blends the images it feeds; depth / polarity events are decoded from an encoding that a
        # blend would corrupt (DELIVER never reads them), so they take the nearest pixel's encoding
        return self._resized(raw, "nearest" if name in ("depth", "event") else "bilinear")

    def _resized(self, raw: np.ndarray, mode: str) -> np.ndarray:
        """The file values as DELIVER's test-time ``Resize`` leaves them (option ``resize``), else as they are."""
        if self.resize:
            for size in deliver_test_sizes(raw.shape[-2:], self.resize):
                raw = torchvision_resize(raw, size, mode)
        return raw

    def decode_label(self, raw: np.ndarray) -> np.ndarray:
        raw = self._resized(raw[None], "nearest")[0]
        lab = raw.astype(np.int64) - 1
        lab[(raw == 0) | (raw == 255)] = 255
        return lab

    def decode_modality(self, name: str, raw: np.ndarray) -> np.ndarray:
        if name in ("rgb", "hha", "event_image"):
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
        if name in ("event", "event_image"):
            # eventlowres frames are stored smaller and resized on loading; compare only the aspect ratio
            return FileInfo(info.channels, info.dtype, None)
        return info

    def extra_problems(self, sample_id: str, paths: dict) -> list[str]:
        ev, ref = paths.get(self.event_sensor), paths.get("label")
        if self.event_sensor not in self.sources or ev is None or not Path(ev).is_file() or not Path(ref).is_file():
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
