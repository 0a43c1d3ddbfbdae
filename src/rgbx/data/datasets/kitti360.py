"""KITTI-360 (Liao et al., TPAMI 2022), RGB + LiDAR with 2D semantic labels, registered as ``"kitti360"``.

Layout (official download + autonomousvision/kitti360Scripts @ 40ee015d)::

    KITTI-360/
      data_2d_raw/<seq>/image_00/data_rect/<frame:010d>.png              rectified left camera, 1408x376
      data_2d_semantics/train/<seq>/image_00/semantic/<frame>.png        KITTI-360 label ids (8-bit)
      data_2d_semantics/train/2013_05_28_drive_{train,val}_frames.txt   "<image path> <label path>" per line
      data_3d_raw/<seq>/velodyne_points/data/<frame:010d>.bin            float32 x, y, z, reflectance
      calibration/calib_cam_to_velo.txt                                  camera 0 → Velodyne, 3x4
      calibration/perspective.txt                                        P_rect_00, R_rect_00, S_rect_00, ...
    # DFormer's derived variant (utils/dataloader/RGBXDataset.py get_path, VCIP-RGBD/DFormer @ 814799bb):
      data_3d_rangeview/<seq>/velodyne_points/data/<frame>.png           LiDAR rendered into the camera (issue #25)
      data_2d_semantics_trainID/train/<seq>/image_00/semantic/<frame>.png  labels already as train ids

Verified facts and rgbx's choices:

- **Splits**: the official lists are ``data_2d_semantics/train/2013_05_28_drive_{train,val}_frames.txt`` (the
  devkit's ``evalPixelLevelSemanticLabeling.py`` reads the val list and takes ``pair.split(' ')[1]`` as the label).
  DELIVER's loader reads ``<root>/{train,val}.txt`` and keeps the first path of each line; DFormer takes both paths
  (``item_name.split(" ")``). rgbx looks for the official file first, then ``<root>/<split>.txt``
  (``split_file`` overrides, ``{split}`` is substituted). A line with a single path gets its label path derived as
  DELIVER does (``data_2d_raw`` → ``data_2d_semantics/train``, ``data_rect`` → ``semantic``).
- **Labels**: ids → the 19 Cityscapes train ids per ``kitti360scripts/helpers/labels.py`` (``trainId`` column:
  garage → building, gate → fence, smallpole → pole, everything with trainId 255 → ignore). DELIVER's
  ``ID2TRAINID`` is the same table. DFormer's ``data_2d_semantics_trainID`` variant is used as stored
  (``label_format="trainid"``; ``"auto"`` picks it when the official label file of a sample is absent).
- **LiDAR, raw scans** (``lidar="raw"``; ``"auto"`` prefers it when ``data_3d_raw`` exists): each Velodyne scan is
  projected into the rectified camera 0 with ``T_velo_to_cam = inv(calib_cam_to_velo)``, ``R_rect_00`` and
  ``P_rect_00`` (the devkit's ``projectVeloToImage``: ``R_rect @ TrVeloToCam``, then ``K``), nearest point per
  pixel, points behind the camera dropped (:mod:`rgbx.data.lidar_projection`). Value: range from the Velodyne in
  metres (``lidar_value="depth"``: camera z, as the devkit plots). Not done: the devkit's ego-motion "curling" of
  the scan (needs poses and a compiled extension).
- **LiDAR, range-view images** (``lidar="rangeview"``, DFormer's variant): DFormer reads them as 8-bit greyscale; the
  producing script (attached to DFormer issue #25) is not in the repository, so the metric scale is unknown. rgbx
  multiplies the stored value by ``lidar_scale`` (default 1.0, i.e. grey levels, not metres).
- **Evaluation size**: DELIVER's ``tools/val_mm.py`` evaluates with ``get_val_augmentation([376, 1408])``
  (``configs/kitti360_rgbdel.yaml``, ``EVAL.IMAGE_SIZE``), whose ``Resize`` (``semseg/augmentations_mm.py``) sets
  the shorter side to 376 and then rounds each side up to a multiple of 32: every 376×1408 input is stretched to
  384×1408 (images bilinear, the label nearest) and mIoU is counted on those 384-row labels. DFormer evaluates at
  the files' size (its ``ValPre`` only normalises). rgbx reads the files' size, as DFormer, and has no resize option
  here: the DeLiVER adapter's ``resize`` option reproduces the same ``Resize`` (``resize=376`` would give 384×1408)
  but belongs to the ``deliver`` dataset only, so DELIVER's KITTI-360 numbers are not reproduced pixel for pixel.
- Not supported: DELIVER's KITTI-360 extras (``data_2d_hha``, ``data_2d_lidar/*_color.png``, ``data_2d_event``);
  they were never released (DELIVER issue #2).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rgbx.data.datasets.base import DATASETS, FileInfo, probe_file
from rgbx.data.datasets.deliver import CITYSCAPES_CLASSES, CITYSCAPES_PALETTE, DrivingDataset
from rgbx.data.description import DatasetDescription, ModalitySource
from rgbx.data.lidar_projection import kitti360_calibration, project_points, read_point_file
from rgbx.errors import ConfigError, DataError, SplitNotFoundError
from rgbx.modalities import read_array

# KITTI-360 label id → Cityscapes train id (kitti360scripts/helpers/labels.py, "trainId" column); others → 255.
KITTI360_ID_TO_TRAIN_ID = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
                           26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18, 34: 2, 35: 4, 37: 5}
KITTI360_MAX_ID = 44  # the largest label id (labels.py; license plate's -1 is not stored in the PNGs)
_ID_LUT = np.full(256, 255, np.int64)
for _id, _train in KITTI360_ID_TO_TRAIN_ID.items():
    _ID_LUT[_id] = _train

_RGB_DIR = "data_2d_raw"
_RAW_DIR = "data_3d_raw"
_RANGEVIEW_DIR = "data_3d_rangeview"
_LABEL_DIR = "data_2d_semantics"
_TRAINID_DIR = "data_2d_semantics_trainID"


@DATASETS.register("kitti360")
class Kitti360Dataset(DrivingDataset):
    """KITTI-360 RGB + LiDAR semantic segmentation (see the module docstring).

    Options: ``lidar`` ("auto", "raw", "rangeview", "none"), ``label_format`` ("auto", "id", "trainid"),
    ``split_file`` (path relative to the root, ``{split}`` substituted; default: the official list, then
    ``<split>.txt``), ``lidar_value`` ("range" or "depth", raw scans), ``max_range`` (metres, raw scans; default
    none), ``lidar_scale`` (units per stored value of range-view images, default 1.0).
    """

    NAME = "kitti360"
    CLASSES = CITYSCAPES_CLASSES
    SPLITS = ("train", "val")
    OPTIONS = {"lidar": "auto", "label_format": "auto", "split_file": None, "lidar_value": "range",
               "max_range": None, "lidar_scale": 1.0}
    MODALITY_HINTS = {"lidar": f"no {_RAW_DIR}/ (the raw Velodyne scans) or {_RANGEVIEW_DIR}/ (DFormer's range "
                               f"views) folder in the root"}

    def configure(self, options: dict) -> None:
        for key, allowed in (("lidar", ("auto", "raw", "rangeview", "none")),
                             ("label_format", ("auto", "id", "trainid")), ("lidar_value", ("range", "depth"))):
            if options[key] not in allowed:
                raise ConfigError(f"data.options.{key}: {options[key]!r} is not one of {', '.join(allowed)}")
        self.lidar_mode = options["lidar"]
        self.label_format = options["label_format"]
        self.lidar_value = options["lidar_value"]
        if options["split_file"] is not None and not isinstance(options["split_file"], str):
            raise ConfigError(f"data.options.split_file: expected a path, got {options['split_file']!r}")
        self.split_file_option = options["split_file"]
        try:
            self.max_range = None if options["max_range"] is None else float(options["max_range"])
            self.lidar_scale = float(options["lidar_scale"])
        except (TypeError, ValueError):
            raise ConfigError("data.options.max_range / lidar_scale: expected numbers") from None
        self._calib = None

    def describe(self) -> DatasetDescription:
        mode = self.lidar_mode
        if mode == "auto":
            mode = "raw" if (self.root / _RAW_DIR).is_dir() else "rangeview" if (self.root / _RANGEVIEW_DIR).is_dir() \
                else "none"
        self.lidar_source = mode
        mods = {"rgb": self.source("rgb", _RGB_DIR)}
        if mode == "raw":
            mods["lidar"] = self.source("lidar", _RAW_DIR, "npy", "float32")
        elif mode == "rangeview":
            mods["lidar"] = self.source("lidar", _RANGEVIEW_DIR, "png", "uint8")
        if self.label_format == "auto":
            self.label_format = self._guess_label_format()
        label = ModalitySource("label", _TRAINID_DIR if self.label_format == "trainid" else _LABEL_DIR, "png",
                               "uint8", 1.0)
        return DatasetDescription(root=self.root, name="KITTI-360", classes=CITYSCAPES_CLASSES,
                                  palette=CITYSCAPES_PALETTE, ignore_index=255, modalities=mods, label=label,
                                  extra={"source": "autonomousvision/kitti360Scripts"})

    # -- samples --------------------------------------------------------------------------------------------------
    def split_file(self) -> Path:
        if self.split_file_option is not None:
            p = Path(self.split_file_option.format(split=self.split))
            return p if p.is_absolute() else self.root / p
        official = self.root / _LABEL_DIR / "train" / f"2013_05_28_drive_{self.split}_frames.txt"
        return official if official.is_file() else self.root / f"{self.split}.txt"

    def list_ids(self) -> list[str]:
        path = self.split_file()
        if not path.is_file():
            raise SplitNotFoundError(f"{path}: split file not found (expected {_LABEL_DIR}/train/2013_05_28_drive_"
                            f"{self.split}_frames.txt or {self.split}.txt)")
        ids, self._pairs = [], {}
        for n, line in enumerate(path.read_text().splitlines(), 1):
            parts = line.split()
            if not parts:
                continue
            img = parts[0]
            bits = Path(img).parts
            if len(bits) < 5 or bits[0] != _RGB_DIR or bits[2:4] != ("image_00", "data_rect"):
                raise DataError(f"{path}:{n}: {img!r} is not a KITTI-360 image path (expected "
                                f"{_RGB_DIR}/<seq>/image_00/data_rect/<frame>.png)")
            lab = self._label_path(img, parts)
            sid = f"{bits[1]}/{Path(bits[-1]).stem}"
            ids.append(sid)
            self._pairs[sid] = (img, lab)
        if not ids:
            raise DataError(f"{path}: lists no samples")
        return ids

    @staticmethod
    def _label_path(img: str, parts: list[str]) -> str:
        if len(parts) > 1:
            return parts[1]
        return img.replace(_RGB_DIR, f"{_LABEL_DIR}/train", 1).replace("data_rect", "semantic")

    def _guess_label_format(self) -> str:
        """"trainid" when the first listed sample has only DFormer's train-id label, else "id"."""
        path = self.split_file()
        if not path.is_file():
            return "id"
        with path.open() as f:
            first = next((line.split() for line in f if line.strip()), None)
        if not first:
            return "id"
        lab = self._label_path(first[0], first)
        trainid = lab.replace(_LABEL_DIR, _TRAINID_DIR, 1)
        return "trainid" if not (self.root / lab).is_file() and (self.root / trainid).is_file() else "id"

    def files(self, sample_id: str) -> dict[str, Path | None]:
        img, lab = self._pairs[sample_id]
        seq, frame = sample_id.split("/")
        if self.label_format == "trainid":
            lab = lab.replace(_LABEL_DIR, _TRAINID_DIR, 1)
        out = {"label": self.root / lab}
        if "rgb" in self.sources:
            out["rgb"] = self.root / img
        if "lidar" in self.sources:
            if self.lidar_source == "raw":
                out["lidar"] = self.root / _RAW_DIR / seq / "velodyne_points" / "data" / f"{frame}.bin"
            else:
                out["lidar"] = self.root / _RANGEVIEW_DIR / seq / "velodyne_points" / "data" / f"{frame}.png"
        out["_rgb"] = self.root / img  # the camera image fixes the projection size even when rgb is not loaded
        return out

    def layout_problems(self) -> list[str]:
        problems = super().layout_problems()
        if "lidar" in self.sources and self.lidar_source == "raw":
            try:
                self.calibration()
            except DataError as e:
                problems.append(str(e))
        return problems

    def calibration(self) -> dict:
        if self._calib is None:
            self._calib = kitti360_calibration(self.root)
        return self._calib

    # -- LiDAR ----------------------------------------------------------------------------------------------------
    def accepted_channels(self, name: str) -> tuple[int, ...]:
        return (3,) if name == "rgb" else (1,)

    def accepted_dtypes(self, name: str) -> tuple[str, ...]:
        if name == "lidar":
            return ("float32",) if self.lidar_source == "raw" else ("uint8", "uint16")
        return ("uint8",)

    def _image_size(self, sample_id: str) -> tuple[int, int]:
        """The camera image's size (its header), else S_rect_00 from perspective.txt."""
        rgb = self.files(sample_id)["_rgb"]
        if rgb.is_file():
            return probe_file(rgb, "png").size
        size = self.calibration().get("size")
        if size is None:
            raise DataError(f"{rgb}: missing camera image, needed for the size of the projected LiDAR")
        return size

    def probe_source(self, name: str, path: Path, sample_id: str) -> FileInfo:
        if name == "lidar" and self.lidar_source == "raw":
            n = path.stat().st_size
            if n == 0 or n % 16:
                raise DataError(f"{path}: {n} bytes is not a whole number of Velodyne points (4 x float32 each)")
            return FileInfo(1, "float32", None)
        return probe_file(path, self.sources[name].encoding)

    def read_source(self, name: str, path: Path, sample_id: str) -> np.ndarray:
        if name == "lidar" and self.lidar_source == "raw":
            points = read_point_file(path, 4, "float32")
            cal = self.calibration()
            return project_points(points[:, :3], cal["T_velo_to_cam"], cal["R_rect"], cal["P_rect"],
                                  self._image_size(sample_id), value=self.lidar_value, max_range=self.max_range)
        return read_array(path, self.sources[name].encoding)

    # -- decoding -------------------------------------------------------------------------------------------------
    def raw_label_problems(self, path: Path, raw: np.ndarray) -> list[str]:
        if self.label_format != "id" or raw.dtype.kind not in "ui":
            return []
        counts = np.bincount(raw.ravel().astype(np.int64, copy=False), minlength=256) if raw.size else None
        if counts is None or len(counts) > 256:
            return [f"{path}: label values up to {int(raw.max())}; KITTI-360 label ids are 8-bit (0..{KITTI360_MAX_ID})"]
        present = np.flatnonzero(counts)
        other = [int(v) for v in present if KITTI360_MAX_ID < v < 255]
        # train ids (0..18, 255 = ignore) in the id folder: 255, and no id above 18 (road, building, sky, car are
        # 7, 11, 23, 26); 255 alone could be the devkit's license plate (id -1)
        train_ids = counts[255] > 0 and present[present < 255].max(initial=0) <= 18
        if not other and not train_ids:
            return []
        found = (f"label values {other[:5]} are not" if other else
                 f"label values {[int(v) for v in present[:6]]}{' ...' if len(present) > 6 else ''} (none above 18, "
                 f"with 255) look like train ids, not")
        return [f"{path}: {found} KITTI-360 label ids (0..{KITTI360_MAX_ID}): ids would be read as other classes; "
                f"files of train ids (0..18, 255 = ignore) go under {_TRAINID_DIR}/ with "
                f"data.options.label_format=trainid"]

    def decode_label(self, raw: np.ndarray) -> np.ndarray:
        if self.label_format == "trainid":
            return raw.astype(np.int64)
        return _ID_LUT[np.clip(raw, 0, 255).astype(np.int64)]

    def decode_modality(self, name: str, raw: np.ndarray) -> np.ndarray:
        if name == "rgb":
            return raw.astype(np.float32) / 255.0
        if self.lidar_source == "raw":
            return raw.astype(np.float32)
        return raw.astype(np.float32) * np.float32(self.lidar_scale)
