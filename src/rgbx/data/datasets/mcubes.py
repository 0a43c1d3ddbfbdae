"""MCubeS, the Multimodal Material Segmentation dataset (Liang et al., CVPR 2022), registered as ``"mcubes"``.

Layout (README of kyotovision-public/multimodal-material-segmentation @ 7790ba06, and its
``dataloaders/datasets/multimodal_dataset.py``; the same paths in DELIVER's ``semseg/datasets/mcubes.py``)::

    multimodal_dataset/
      polL_color/<name>.png          RGB (8- or 16-bit: both loaders divide by 65535 when uint16)
      polL_aolp_sin/<name>.npy       sin of the angle of linear polarisation, (H, W) float
      polL_aolp_cos/<name>.npy       cos of the same
      polL_dolp/<name>.npy           degree of linear polarisation, (H, W) float
      NIR_warped/<name>.png          near-infrared warped to the RGB view (8- or 16-bit)
      NIR_warped_mask/<name>.png     white = region where the warped NIR is invalid
      GT/<name>.png                  material labels 0..19, 255 = unlabelled
      SS/, SSGT4MS/                  semantic (Cityscapes) guidance, not used by rgbx
      list_folder/{all,train,val,test}.txt   one <name> per line

Facts verified and rgbx's choices:

- **Classes**: 20 materials in DELIVER's ``CLASSES`` order (asphalt … sky), palette from DELIVER's ``PALETTE`` (=
  ``dataloaders/utils.py: get_my_labels`` of the original). Labels are used as stored by both loaders (no mapping);
  255 is ignore (the original ``decode_segmap`` blanks 255).
- **Left crop**: both loaders drop the first 192 columns of every image (``_left_offset = 192``; 1224 → 1032 px wide).
  rgbx does the same by default (``left_crop=192``; 0 keeps the full width).
- **AoLP**: DELIVER stacks ``[sin, cos, sin]`` to fake a 3-channel image; the original stacks ``[sin, cos]``. rgbx's
  ``aolp`` modality is exactly ``(sin, cos)``, read from the two ``.npy`` files of a sample.
- **Splits**: the original reads ``list_folder/<split>.txt`` for train/val/test. DELIVER's loader only knows train and
  "val", and its "val" reads ``list_folder/test.txt`` (CMNeXt's MCubeS numbers are on test.txt). rgbx reads the file
  of the same name; ``val_from_test=True`` reproduces DELIVER's mapping.
- **NIR mask**: the original training loss sets the label to ignore where ``NIR_warped_mask > 0``
  (``utils/loss.py: CrossEntropyLossAdv``); DELIVER ignores the mask. Default off (DELIVER); ``nir_mask_ignore=True``
  applies it.
- **NIR**: read as one channel (``cv2.imread(..., -1)`` gives a 2-D array that both loaders then stack to 3
  channels). rgbx keeps 1 channel, 0-1 (divided by 255 or 65535 by dtype).
- **DoLP**: used as stored (0-1).
- **Evaluation region**: both references evaluate on the central 1024×1024 of each left-cropped 1024×1032 image:
  val and test go through ``transform_val``, ``FixScaleCrop(crop_size=1024)`` (the shorter side resized to 1024,
  which changes nothing here, then a centre crop, dropping 4 columns on each side); training crops randomly from the
  full width in both. rgbx's default ``center_crop=0`` keeps the whole image, so it scores 8 more columns per image
  than either reference; ``center_crop=1024`` (``--option center_crop=1024`` for ``rgbx eval``) reproduces their
  region. The option applies to every split.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from rgbx.data.datasets.base import DATASETS, DecodeProblem, FileInfo, probe_file
from rgbx.data.datasets.deliver import DrivingDataset
from rgbx.data.description import DatasetDescription, ModalitySource
from rgbx.errors import ConfigError, DataError, SplitNotFoundError
from rgbx.modalities import read_array

MCUBES_CLASSES = ("asphalt", "concrete", "metal", "road_marking", "fabric", "glass", "plaster", "plastic", "rubber",
                  "sand", "gravel", "ceramic", "cobblestone", "brick", "grass", "wood", "leaf", "water", "human",
                  "sky")
MCUBES_PALETTE = ((44, 160, 44), (31, 119, 180), (255, 127, 14), (214, 39, 40), (140, 86, 75), (127, 127, 127),
                  (188, 189, 34), (255, 152, 150), (23, 190, 207), (174, 199, 232), (196, 156, 148), (197, 176, 213),
                  (247, 182, 210), (199, 199, 199), (219, 219, 141), (158, 218, 229), (57, 59, 121), (107, 110, 207),
                  (156, 158, 222), (99, 121, 57))

_FOLDERS = {"rgb": "polL_color", "aolp": "polL_aolp_sin", "dolp": "polL_dolp", "nir": "NIR_warped", "label": "GT"}
_COS = "polL_aolp_cos"
_MASK = "NIR_warped_mask"


@DATASETS.register("mcubes")
class MCubeSDataset(DrivingDataset):
    """MCubeS in its released layout (see the module docstring).

    Options: ``left_crop`` (columns dropped on the left, default 192 as both references), ``center_crop`` (then keep
    the central N×N in every split; N = 1024 is the evaluation region of both references; default 0 = all, 8 columns
    more than they score), ``nir_mask_ignore`` (ignore labels where the NIR warp is invalid, default False),
    ``val_from_test`` (split "val" reads test.txt, as DELIVER; default False).
    """

    NAME = "mcubes"
    CLASSES = MCUBES_CLASSES
    SPLITS = ("train", "val", "test")
    OPTIONS = {"left_crop": 192, "center_crop": 0, "nir_mask_ignore": False, "val_from_test": False}
    MODALITY_HINTS = {"aolp": f"no {_FOLDERS['aolp']}/ (with {_COS}/) folder in the root",
                      "dolp": f"no {_FOLDERS['dolp']}/ folder in the root",
                      "nir": f"no {_FOLDERS['nir']}/ folder in the root"}


    def evaluation_note(self) -> str | None:
        if self.center_crop:
            return None
        return ("MCubeS scored on the whole left-cropped image; both references (MCubeSNet, DELIVER) score the "
                "central 1024×1024 of it (FixScaleCrop): --option center_crop=1024 for their region")

    def configure(self, options: dict) -> None:
        for key, what in (("left_crop", "a number of columns"), ("center_crop", "a window size in pixels")):
            value = options[key]
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"data.options.{key}: expected {what} >= 0, got {value!r}")
        self.left_crop = options["left_crop"]
        self.center_crop = options["center_crop"]
        self.nir_mask_ignore = bool(options["nir_mask_ignore"])
        self.val_from_test = bool(options["val_from_test"])

    def describe(self) -> DatasetDescription:
        mods = {"rgb": self.source("rgb", _FOLDERS["rgb"])}
        if (self.root / _FOLDERS["aolp"]).is_dir() or (self.root / _COS).is_dir():
            mods["aolp"] = self.source("aolp", _FOLDERS["aolp"], "npy", "float32")
        if (self.root / _FOLDERS["dolp"]).is_dir():
            mods["dolp"] = self.source("dolp", _FOLDERS["dolp"], "npy", "float32")
        if (self.root / _FOLDERS["nir"]).is_dir():
            mods["nir"] = self.source("nir", _FOLDERS["nir"])
        label = ModalitySource("label", "GT", "png", "uint8", 1.0)
        return DatasetDescription(root=self.root, name="MCubeS", classes=MCUBES_CLASSES, palette=MCUBES_PALETTE,
                                  ignore_index=255, modalities=mods, label=label,
                                  extra={"source": "kyotovision-public/multimodal-material-segmentation"})

    def split_file(self) -> Path:
        name = "test" if (self.split == "val" and self.val_from_test) else self.split
        return self.root / "list_folder" / f"{name}.txt"

    def list_ids(self) -> list[str]:
        path = self.split_file()
        if not path.is_file():
            raise SplitNotFoundError(f"{path}: split file not found (expected list_folder/{{train,val,test}}.txt)")
        ids = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
        if not ids:
            raise DataError(f"{path}: lists no samples")
        return ids

    def files(self, sample_id: str) -> dict[str, Path | None]:
        out = {}
        for name in [*self.sources, "label"]:
            suffix = ".npy" if name in ("aolp", "dolp") else ".png"
            out[name] = self.root / _FOLDERS[name] / f"{sample_id}{suffix}"
        if "aolp" in self.sources:
            out["aolp_cos"] = self.root / _COS / f"{sample_id}.npy"
        if self.nir_mask_ignore:
            out["nir_mask"] = self.root / _MASK / f"{sample_id}.png"
        return out

    def layout_problems(self) -> list[str]:
        problems = super().layout_problems()
        extra = ([_COS] if "aolp" in self.sources else []) + ([_MASK] if self.nir_mask_ignore else [])
        for folder in extra:
            if not (self.root / folder).is_dir():
                problems.append(f"{self.root / folder}: folder not found")
        return problems

    # -- on-disk forms --------------------------------------------------------------------------------------------
    def accepted_channels(self, name: str) -> tuple[int, ...]:
        return {"rgb": (3,), "aolp": (2,), "dolp": (1,), "nir": (1,)}[name]

    def accepted_dtypes(self, name: str) -> tuple[str, ...]:
        if name in ("rgb", "nir"):
            return ("uint8", "uint16")
        return ("float32", "float64", "float16")

    def probe_source(self, name: str, path: Path, sample_id: str) -> FileInfo:
        info = probe_file(path, self.sources[name].encoding)
        if name != "aolp":
            return info
        if info.channels != 1:
            raise DataError(f"{path}: {info.channels} channel(s), expected a (H, W) array of sin(AoLP)")
        cos_path = self.files(sample_id)["aolp_cos"]
        if not cos_path.is_file():
            raise DataError(f"{cos_path}: missing aolp cos file for sample {sample_id!r}")
        cos = probe_file(cos_path, "npy")
        if cos.size != info.size or cos.channels != 1:
            raise DataError(f"{cos_path}: shape {cos.channels}x{cos.size[0]}x{cos.size[1]} does not match "
                            f"{path} (1x{info.size[0]}x{info.size[1]})")
        return FileInfo(2, info.dtype, info.size)

    def read_source(self, name: str, path: Path, sample_id: str) -> np.ndarray:
        arr = read_array(path, self.sources[name].encoding)
        if name == "aolp":
            cos = read_array(self.files(sample_id)["aolp_cos"], "npy")
            if arr.shape != cos.shape or arr.shape[0] != 1:
                raise DataError(f"{path}: sin and cos AoLP arrays differ in shape ({arr.shape} vs {cos.shape})")
            arr = np.concatenate([arr, cos.astype(arr.dtype)])
        return arr

    def extra_problems(self, sample_id: str, paths: dict) -> list[str]:
        mask = paths.get("nir_mask")
        if mask is None:
            return []
        if not mask.is_file():
            return [f"{mask}: missing NIR mask for sample {sample_id!r} (needed by nir_mask_ignore=True)"]
        try:
            probe_file(mask, "png")
        except DataError as e:
            return [str(e)]
        return []

    # -- decoding -------------------------------------------------------------------------------------------------
    def _crop(self, arr: np.ndarray) -> np.ndarray:
        if self.left_crop >= arr.shape[-1]:
            raise DecodeProblem("left_crop", f"left_crop={self.left_crop} removes the whole {arr.shape[-1]}-pixel-wide "
                                             f"image (a copy cropped already: data.options.left_crop=0, or "
                                             f"--option left_crop=0)")
        arr = arr[..., self.left_crop:] if self.left_crop else arr
        n = self.center_crop
        if not n:
            return arr
        h, w = arr.shape[-2:]
        if min(h, w) < n:
            raise DecodeProblem("center_crop", f"center_crop={n} is larger than the {h}×{w} image (after "
                                               f"left_crop={self.left_crop})")
        y, x = int(round((h - n) / 2.0)), int(round((w - n) / 2.0))  # DELIVER's FixScaleCrop offsets
        return arr[..., y:y + n, x:x + n]

    def decode_label(self, raw: np.ndarray) -> np.ndarray:
        return self._crop(raw).astype(np.int64)

    def decode_modality(self, name: str, raw: np.ndarray) -> np.ndarray:
        x = self._crop(raw)
        if name in ("rgb", "nir"):
            return x.astype(np.float32) / (65535.0 if x.dtype == np.uint16 else 255.0)
        return np.nan_to_num(x.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)

    def load(self, index: int):
        sample = super().load(index)
        if self.nir_mask_ignore and sample["label"] is not None:
            mask_path = self.files(self.ids[index])["nir_mask"]
            mask = self._crop(read_array(mask_path, "png")[0])
            if mask.shape != tuple(sample["label"].shape):
                raise DataError(f"{mask_path}: size {mask.shape} differs from the label {tuple(sample['label'].shape)}")
            sample["label"][torch.from_numpy(np.ascontiguousarray(mask > 0))] = self.description.ignore_index
        return sample
