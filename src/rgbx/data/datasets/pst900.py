"""PST900 RGB-T (Shivakumar et al., ICRA 2020): subterranean scenes, 5 classes; registered as ``"pst900"``.

Layout of the release (ShreyasSkandanS/pst900_thermal_rgb ``README.md``, ``toolkit/utilities.py``)::

    PST900_RGBT_Dataset/
      train/ test/                     the split is the folder (no split files); 894 pairs, 288 in test/
        rgb/<name>.png                 8-bit colour, 1280x720
        thermal/<name>.png             8-bit, FLIR Boson AGC output, projected into the RGB camera (0 = no data)
        thermal_raw/<name>.png         16-bit raw thermal (not read by rgbx)
        depth/<name>.png               16-bit stereo depth (ZED Mini); metres = value / 2560
        labels/<name>.png              uint8 class indices 0..4

(The README's tree comments swap the descriptions of train/ and test/; Sigma's config counts 597 train images.)
Every folder holds the same file names, e.g. ``31_bag1a_rect_rgb_frame0000000007.png``; the sample ids are the
stems of ``labels/*.png`` (PSTNet's ``pst_data_definition.py`` lists the labels folder), sorted.

Classes (``pstnet/code/pst_inference.py``): 0 background, 1 fire_extinguisher, 2 backpack, 3 hand_drill,
4 survivor ("rescue randy"). **Background counts in mIoU**: PSTNet's evaluation averages the IoU of all five
classes (``iouEval(NUM_CLASSES)``, no ignore index) and the RGB-T repos that train on it (e.g. Sigma
``configs/config_pst900.py``: 5 classes, ``gt_transform=False``) do the same; rgbx uses labels unchanged, the ignore
index 255 never occurs. (Some papers also list the mean over the four objects; compute it from per-class IoU.)

Depth: ``toolkit/utilities.py`` divides the 16-bit values by ``DEPTH_SCALING = 2560``; rgbx reads
``value / 2560`` as metres (option ``depth_scale``; the README does not state the unit) with 0 = no measurement.
Thermal: 8-bit AGC images, relative temperature 0-1 (the ``thermal`` spec); the zero-valued holes left by the
projection (the toolkit's ``fill_thermal`` inpaints them) are kept as 0.
Evaluation protocol: rgbx reads the native 720×1280 images and labels, the size the RGB-T repos that train on PST900
use (e.g. Sigma ``configs/config_pst900.py``: 720×1280 images and evaluation crop), and keeps thermal holes at 0
(whether Sigma's ``thermal_resize/`` copy is in-painted is not stated). PSTNet's own ``pst_inference.py`` differs:
it resizes inputs to 360×640 (``Resize(360)``, bilinear; the label nearest, so mIoU is counted on 360×640 labels)
and, for its RGB-T models, in-paints the zero thermal pixels after the resize (``cv2.inpaint``, radius 10,
Navier-Stokes). rgbx does neither, so its numbers are not PSTNet's protocol.
Palette: the toolkit's ``visualize_label`` colours as displayed (its list is in OpenCV's BGR order): background
black, fire extinguisher red, backpack green, hand drill blue, survivor white.

Other layouts: Sigma's flattened copy (``rgb_resize/``, ``thermal_resize/``, ``labels_resize/`` + ``train.txt``) is
not read; point ``data.root`` at the official release.
Splits: ``train``, ``test``; ``val`` reads ``test/`` when there is no ``val/`` folder.
Options: ``depth_scale`` (metres per depth unit, default 1/2560).
"""

from __future__ import annotations

import numpy as np

from rgbx.data.datasets.base import DATASETS
from rgbx.data.datasets.nyu import ReleaseDataset, to_gray, to_rgb
from rgbx.data.description import DatasetDescription, ModalitySource
from rgbx.errors import DataError, SplitNotFoundError

PST900_CLASSES = ("background", "fire_extinguisher", "backpack", "hand_drill", "survivor")
PST900_PALETTE = ((0, 0, 0), (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255))
PST900_DEPTH_SCALE = 1 / 2560


@DATASETS.register("pst900")
class PST900(ReleaseDataset):
    """PST900 RGB-T (+ stereo depth), 5 classes with background counted (see the module docstring)."""

    SPLITS = ("train", "test")
    OPTIONS = {"depth_scale": PST900_DEPTH_SCALE}
    CLASSES = PST900_CLASSES
    FILE_CHANNELS = {"rgb": (3, 4), "thermal": (1, 3, 4), "depth": (1,)}
    DECODE_ON_CHECK = True  # a full check decodes: only decoding (to_gray) refuses a colour-mapped thermal image

    def describe(self) -> DatasetDescription:
        split_dir = self.split_path(lambda s: self.root / s)
        self.split_dir = split_dir.name
        d = self.split_dir
        modalities = {
            "rgb": ModalitySource("rgb", f"{d}/rgb", "png", "uint8", 1 / 255),
            "thermal": ModalitySource("thermal", f"{d}/thermal", "png", "uint8", 1 / 255),
            "depth": ModalitySource("depth", f"{d}/depth", "png", "uint16", float(self.options["depth_scale"])),
        }
        for name, src in modalities.items():
            self.note_channels(name, src.folder, "png")
        return DatasetDescription(
            root=self.root, name="pst900", classes=PST900_CLASSES, palette=PST900_PALETTE, ignore_index=255,
            modalities=modalities, label=ModalitySource("label", f"{d}/labels", "png", "uint8", 1.0),
            extra={"source": __name__},
        )

    def list_ids(self) -> list[str]:
        split_dir = self.root / self.split_dir
        if not split_dir.is_dir():
            have = sorted(p.name for p in self.root.iterdir() if p.is_dir() and (p / "labels").is_dir())
            raise SplitNotFoundError(f"{split_dir}: split folder not found (PST900 splits here: {', '.join(have) or 'none'})")
        labels = self.source_index(self.description.label)
        if not labels.folder.is_dir():
            raise DataError(f"{labels.folder}: label folder not found (the PST900 split folder holds rgb/, "
                            f"thermal/, depth/, labels/)")
        return sorted(labels.files)

    def decode_modality(self, name: str, raw: np.ndarray) -> np.ndarray:
        scale = np.float32(self.sources[name].scale)
        if name == "rgb":
            return to_rgb(raw, scale)
        if name == "thermal":
            return to_gray(raw, "thermal") * scale
        return super().decode_modality(name, raw)


__all__ = ["PST900", "PST900_CLASSES", "PST900_PALETTE"]
