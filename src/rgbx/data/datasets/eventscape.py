"""EventScape (Gehrig et al., RA-L 2021, "Combining Events and Frames using Recurrent Asynchronous Multimodal
Networks for Monocular Depth Prediction"), CARLA-simulated RGB + depth + events + semantic labels, registered as
``"eventscape"``.

Layout (download names from the uzh-rpg/rpg_ramnet README @ dbce4e3b: ``Town01-03_train.zip``, ``Town05_val.zip``,
``Town05_test.zip``; file patterns from its loaders ``RAM_Net/data_loader/dataset.py`` and ``event_dataset.py``; one
folder per recorded sequence, ``train.py: concatenate_subfolders``)::

    <root>/<split folder>/.../<sequence>/
      rgb/data/<prefix>_<id>_image.png              RGB frames     (RAM-Net: glob "*_{id:04d}_image.png")
      depth/data/<prefix>_<id>_depth.npy            metric depth, (H, W) float, metres (RAM-Net clips at 80/1000 m)
      events/data/<prefix>_<id>_events.npy          raw events, (N, 4) [t, x, y, polarity 0/1]
      events/voxels/<prefix>_<id>_voxel.npy         5-bin voxel grids (not used by rgbx)
      semantic/data/<prefix>_<id>_gt_labelIds.png   CARLA semantic tags (RAM-Net reads channel 0 of cv2's BGR)

Split folders tried, in order: train → ``train``, ``Town01-03_train``; val → ``val``, ``validation``,
``Town05_val``; test → ``test``, ``Town05_test`` (override with ``split_dir``). Alternatively ``split_file`` lists
the RGB images, one path relative to the root per line, as DFormer's EventScape loader does.

Verified facts and rgbx's choices:

- **DFormer's path rules** (``utils/dataloader/RGBXDataset.py get_path``, VCIP-RGBD/DFormer @ 814799bb): from the
  RGB path, label = ``rgb`` → ``semantic`` and ``image`` → ``gt_labelIds`` (same as the release); depth and events
  = ``rgb`` → ``depth|events``, ``data`` → ``frames``, file name → ``<id>``. Those ``frames/<id>.png`` files are
  DFormer's own conversions, not part of the release, and their encoding is not published, so rgbx reads the
  released ``.npy`` files instead (matched by frame id, as RAM-Net's globs do).
- **Events**: rgbx's ``event`` modality (positive / negative counts per pixel) is built from the raw event list of
  the frame's id: columns ``[t, x, y, p]`` with ``p == 0`` negative (RAM-Net ``events_to_voxel_grid``:
  ``pols[pols == 0] = -1``); coordinates truncated to int as RAM-Net does; events outside the image dropped.
- **Labels / classes**: the files hold CARLA semantic-segmentation tags (``gt_labelIds``, read by RAM-Net with
  ``cv2.imread(...)[:, :, 0]``; rgbx takes the same channel, i.e. channel 2 in RGB order, or the only channel).
  DFormer reads labels with ``cv2.IMREAD_GRAYSCALE``, a weighted mix of the three channels: the two readings agree
  only when the label PNG's channels are equal (or it has one channel); otherwise rgbx's tags are RAM-Net's, not
  DFormer's.
  No public training code with an EventScape class mapping was found (DFormer's branch ships no config; OmniSegmentor
  is unreleased). rgbx follows the convention DELIVER uses for CARLA labels: tag 0 "Unlabeled" → ignore, tag ``k`` →
  class ``k - 1``. ``tags=23`` (default) gives the 22 classes of CARLA >= 0.9.10; ``tags=13`` the 12 of older CARLA
  (the CARLA version of the recordings is not stated in the repository). Tags beyond the chosen set are reported
  by ``check="full"``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from rgbx.data.datasets.base import DATASETS, FileInfo, probe_file
from rgbx.data.datasets.deliver import DrivingDataset
from rgbx.data.description import DatasetDescription, ModalitySource
from rgbx.errors import ConfigError, DataError, SplitNotFoundError
from rgbx.modalities import read_array

# CARLA semantic tags 1..22 (0 = Unlabeled) and their CARLA colours (CARLA sensor reference).
CARLA_CLASSES = ("Building", "Fence", "Other", "Pedestrian", "Pole", "RoadLine", "Road", "SideWalk", "Vegetation",
                 "Vehicles", "Wall", "TrafficSign", "Sky", "Ground", "Bridge", "RailTrack", "GuardRail",
                 "TrafficLight", "Static", "Dynamic", "Water", "Terrain")
CARLA_PALETTE = ((70, 70, 70), (100, 40, 40), (55, 90, 80), (220, 20, 60), (153, 153, 153), (157, 234, 50),
                 (128, 64, 128), (244, 35, 232), (107, 142, 35), (0, 0, 142), (102, 102, 156), (220, 220, 0),
                 (70, 130, 180), (81, 0, 81), (150, 100, 100), (230, 150, 140), (180, 165, 180), (250, 170, 30),
                 (110, 190, 160), (170, 120, 50), (45, 60, 150), (145, 170, 100))
SPLIT_DIRS = {"train": ("train", "Town01-03_train"), "val": ("val", "validation", "Town05_val"),
              "test": ("test", "Town05_test")}

# modality → (folder inside a sequence, file-name suffix after "<prefix>_<id>")
_FILES = {"rgb": ("rgb/data", "_image.png"), "depth": ("depth/data", "_depth.npy"),
          "event": ("events/data", "_events.npy"), "label": ("semantic/data", "_gt_labelIds.png")}


def frame_id(name: str, suffix: str) -> str | None:
    """``Town05_0001_0012_image.png`` → ``"0012"`` (the last ``_`` token before the suffix)."""
    if not name.endswith(suffix):
        return None
    return name[: -len(suffix)].rsplit("_", 1)[-1]


@DATASETS.register("eventscape")
class EventScapeDataset(DrivingDataset):
    """EventScape RGB + depth + events (see the module docstring).

    Options: ``tags`` (13 or 23 CARLA tags in the label files, default 23), ``split_dir`` (folder of the split,
    relative to the root; ``{split}`` substituted), ``split_file`` (list of RGB image paths; ``{split}`` substituted).
    """

    NAME = "eventscape"
    CLASSES = CARLA_CLASSES
    SPLITS = ("train", "val", "test")
    OPTIONS = {"tags": 23, "split_dir": None, "split_file": None}
    LABEL_CHANNELS = (1, 3, 4)

    @classmethod
    def class_names(cls, num_classes: int) -> tuple[str, ...]:
        """CARLA's tags 1..22, or 1..12 for CARLA <= 0.9.9 (``tags=13``): the first ``num_classes`` of them."""
        if num_classes not in (12, 22):
            raise ConfigError(f"dataset 'eventscape' has 12 (CARLA <= 0.9.9) or 22 classes; the model has "
                              f"{num_classes}")
        return CARLA_CLASSES[:num_classes]

    def configure(self, options: dict) -> None:
        if options["tags"] not in (13, 23):
            raise ConfigError(f"data.options.tags: expected 13 (CARLA <= 0.9.9) or 23 (CARLA >= 0.9.10), "
                              f"got {options['tags']!r}")
        self.num_tags = options["tags"]
        for key in ("split_dir", "split_file"):
            if options[key] is not None and not isinstance(options[key], str):
                raise ConfigError(f"data.options.{key}: expected a path, got {options[key]!r}")
        self.split_dir_option, self.split_file_option = options["split_dir"], options["split_file"]
        self._index: dict[tuple[str, str], dict[str, str]] = {}

    def describe(self) -> DatasetDescription:
        mods = {"rgb": self.source("rgb", "rgb/data"),
                "depth": self.source("depth", "depth/data", "npy", "float32"),
                "event": self.source("event", "events/data", "npy", "float32")}
        label = ModalitySource("label", "semantic/data", "png", "uint8", 1.0)
        k = self.num_tags - 1
        return DatasetDescription(root=self.root, name="EventScape", classes=CARLA_CLASSES[:k],
                                  palette=CARLA_PALETTE[:k], ignore_index=255, modalities=mods, label=label,
                                  extra={"source": "uzh-rpg/rpg_ramnet"})

    # -- samples --------------------------------------------------------------------------------------------------
    def split_folder(self) -> Path | None:
        if self.split_dir_option is not None:
            return self.root / self.split_dir_option.format(split=self.split)
        return next((self.root / d for d in SPLIT_DIRS[self.split] if (self.root / d).is_dir()), None)

    def list_ids(self) -> list[str]:
        if self.split_file_option is not None:
            return self._ids_from_file(self.root / self.split_file_option.format(split=self.split))
        base = self.split_folder()
        if base is None:
            raise SplitNotFoundError(f"{self.root}: no EventScape folder for split {self.split!r} (expected one of "
                            f"{', '.join(SPLIT_DIRS[self.split])}; or set data.options.split_dir)")
        ids = []
        for dirpath, dirnames, _ in os.walk(base):
            dirnames.sort()
            if Path(dirpath).name == "rgb" and "data" in dirnames:
                seq = Path(dirpath).parent.relative_to(self.root).as_posix()
                for name in sorted(os.listdir(Path(dirpath) / "data")):
                    if name.endswith(_FILES["rgb"][1]):
                        ids.append(f"{seq}/{name[: -len(_FILES['rgb'][1])]}")
                dirnames.clear()
        if not ids:
            raise DataError(f"{base}: no EventScape frames found (expected <sequence>/rgb/data/<prefix>_<id>_image.png)")
        return ids

    def _ids_from_file(self, path: Path) -> list[str]:
        if not path.is_file():
            raise SplitNotFoundError(f"{path}: split file not found")
        ids = []
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            rel = line.split()[0]
            rel = rel if rel.endswith(".png") else rel + ".png"
            parts = Path(rel).parts
            if len(parts) < 4 or parts[-3:-1] != ("rgb", "data") or not parts[-1].endswith(_FILES["rgb"][1]):
                raise DataError(f"{path}:{n}: {rel!r} is not a <sequence>/rgb/data/<name>_image.png path")
            ids.append(f"{Path(*parts[:-3]).as_posix()}/{parts[-1][: -len(_FILES['rgb'][1])]}")
        if not ids:
            raise DataError(f"{path}: lists no samples")
        return ids

    def _folder_index(self, seq: str, name: str) -> dict[str, str]:
        """frame id → file name in one sequence folder (files are matched by id, as RAM-Net does)."""
        key = (seq, name)
        if key not in self._index:
            folder, suffix = _FILES[name]
            found = {}
            d = self.root / seq / folder
            if d.is_dir():
                for f in os.listdir(d):
                    fid = frame_id(f, suffix)
                    if fid is not None:
                        found.setdefault(fid, f)
            self._index[key] = found
        return self._index[key]

    def files(self, sample_id: str) -> dict[str, Path | None]:
        seq, stem = sample_id.rsplit("/", 1)
        fid = stem.rsplit("_", 1)[-1]
        out = {}
        for name in [*self.sources, "label", "rgb"]:
            folder, suffix = _FILES[name]
            if name == "rgb":
                out[name] = self.root / seq / folder / f"{stem}{suffix}"
                continue
            found = self._folder_index(seq, name).get(fid)
            out[name] = self.root / seq / folder / (found or f"{stem}{suffix}")
        return out

    def layout_problems(self) -> list[str]:
        return []  # the folders live in every sequence; missing ones show up as missing files

    # -- reading --------------------------------------------------------------------------------------------------
    def accepted_channels(self, name: str) -> tuple[int, ...]:
        return {"rgb": (3, 4), "depth": (1,), "event": (2,)}[name]

    def accepted_dtypes(self, name: str) -> tuple[str, ...]:
        return ("uint8",) if name == "rgb" else ("float16", "float32", "float64")

    def label_plane(self, raw: np.ndarray) -> np.ndarray:
        return raw[2] if raw.shape[0] >= 3 else raw[0]  # RAM-Net: cv2 BGR channel 0 = blue

    def _size(self, sample_id: str) -> tuple[int, int]:
        return probe_file(self.files(sample_id)["rgb"], "png").size

    def probe_source(self, name: str, path: Path, sample_id: str) -> FileInfo:
        if name != "event":
            return probe_file(path, self.sources[name].encoding)
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise DataError(f"{path}: unreadable .npy ({e})") from None
        if arr.ndim != 2 or arr.shape[1] != 4:
            raise DataError(f"{path}: events of shape {arr.shape}, expected (N, 4) [t, x, y, polarity]")
        return FileInfo(2, str(arr.dtype), None)

    def read_source(self, name: str, path: Path, sample_id: str) -> np.ndarray:
        if name != "event":
            return read_array(path, self.sources[name].encoding)
        try:
            ev = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise DataError(f"{path}: unreadable .npy ({e})") from None
        if ev.ndim != 2 or ev.shape[1] != 4:
            raise DataError(f"{path}: events of shape {ev.shape}, expected (N, 4) [t, x, y, polarity]")
        h, w = self._size(sample_id)
        x, y, p = ev[:, 1].astype(np.int64), ev[:, 2].astype(np.int64), ev[:, 3]
        ok = (x >= 0) & (x < w) & (y >= 0) & (y < h)
        counts = np.zeros((2, h * w), np.float32)
        flat = y[ok] * w + x[ok]
        pos = p[ok] > 0
        counts[0] = np.bincount(flat[pos], minlength=h * w)
        counts[1] = np.bincount(flat[~pos], minlength=h * w)
        return counts.reshape(2, h, w)

    # -- decoding -------------------------------------------------------------------------------------------------
    def decode_label(self, raw: np.ndarray) -> np.ndarray:
        lab = raw.astype(np.int64) - 1
        lab[raw == 0] = 255
        return lab

    def decode_modality(self, name: str, raw: np.ndarray) -> np.ndarray:
        if name == "rgb":
            return raw[:3].astype(np.float32) / 255.0
        return np.nan_to_num(raw.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
