"""MFNet RGB-T (Ha et al., IROS 2017): urban driving, day and night, 9 classes; registered as ``"mfnet"``.

Three layouts are in use; ``layout="auto"`` (default) recognises them by their folders:

1. **original** (``layout="rgbt"``; the MFNet release, haqishen/MFNet-pytorch and yuxiangsun/RTFNet
   ``util/MF_dataset.py``)::

       MFNet/
         images/<name>.png     4-channel 8-bit PNG: R, G, B, thermal (480x640)
         labels/<name>.png     uint8 class indices 0..8
         train.txt val.txt test.txt       784 / 392 / 393 names, one per line, no extension
         [test_day.txt test_night.txt]    RTFNet's day / night halves of the test split

   Channels 0-2 are read as ``rgb`` and channel 3 as ``thermal`` (both from the same file).

2. **separate folders** (``layout="separate"``) as converted by the RGB-X repos, which disagree on names:
   DELIVER ``semseg/datasets/mfnet.py``: ``rgb/<name>.jpg``, ``ther/<name>.jpg``, ``labels/<name>.png``,
   ``train.txt`` / ``test.txt``; Sigma ``configs/config_MFNet.py`` (CMX-style): ``RGB/``, ``Modal/``, ``Label/``
   (all ``.png``), ``train2.txt`` (train + val, 1176) / ``test.txt``; DFormer ``get_path`` (MFNet branch):
   ``<folder>/<name><format>``. rgbx looks for the RGB folder among ``rgb, RGB``, the thermal folder among ``ther,
   thermal, Thermal, Modal, infrared`` and the labels among ``labels, Label, label``; any image suffix is accepted.
   Thermal files may be 1-channel or 3-channel (gray JPEG written as RGB); they are read as one gray channel.

Split files: ``<split>.txt`` at the root, one name per line (a path prefix or extension is stripped). ``val`` reads
``test.txt`` when there is no ``val.txt`` (DELIVER does so).

Labels: 0 = ``unlabeled`` is a real class and **counts in mIoU** — MFNet and RTFNet evaluate it (RTFNet
``util/util.py``: "we consider the unlabeled class ... must consider the unlabeled"), as do CMX / DELIVER / Sigma
(``gt_transform=False``, no −1). So labels are used unchanged; the ignore index 255 never occurs in the files. Some
papers report mIoU without it; rgbx follows the majority convention (9-class mIoU).

Palette: RTFNet ``util/util.py get_palette`` (also DFormer ``utils/val_mm.py``), with unlabeled black.
Attributes: ``condition`` = ``day`` / ``night`` from the name's letter after the digits (``01606D``, ``01234N``;
MFNet names end in D or N, possibly followed by a suffix such as ``_flip``).

Values: rgb and thermal are 8-bit (thermal as relative temperature 0-1, the ``thermal`` spec).
Options: ``layout`` ("auto" | "rgbt" | "separate").
"""

from __future__ import annotations

import re

import numpy as np

from rgbx.data.datasets.base import DATASETS
from rgbx.data.datasets.nyu import ReleaseDataset, _choice, find_folder, to_gray, to_rgb
from rgbx.data.description import DatasetDescription, ModalitySource

MFNET_CLASSES = ("unlabeled", "car", "person", "bike", "curve", "car_stop", "guardrail", "color_cone", "bump")
MFNET_PALETTE = ((0, 0, 0), (64, 0, 128), (64, 64, 0), (0, 128, 192), (0, 0, 192), (128, 128, 0), (64, 64, 128),
                 (192, 128, 128), (192, 64, 0))

RGB_FOLDERS = ("rgb", "RGB")
THERMAL_FOLDERS = ("ther", "thermal", "Thermal", "Modal", "infrared")
LABEL_FOLDERS = ("labels", "Label", "label")
RGBT_FOLDER = "images"

_CONDITION = re.compile(r"^\d+([DN])(?![A-Za-z])")


def mfnet_condition(name: str) -> str | None:
    """``"day"`` / ``"night"`` from an MFNet sample name (``00123D`` / ``00123N``), or None."""
    m = _CONDITION.match(name)
    return None if m is None else {"D": "day", "N": "night"}[m.group(1)]


@DATASETS.register("mfnet")
class MFNet(ReleaseDataset):
    """MFNet RGB-T, 9 classes with ``unlabeled`` counted (see the module docstring)."""

    SPLITS = ("train", "val", "test")  # val reads test.txt where there is no val.txt
    OPTIONS = {"layout": "auto"}
    CLASSES = MFNET_CLASSES
    FILE_CHANNELS = {"rgb": (3, 4), "thermal": (1, 3, 4)}
    DECODE_ON_CHECK = True  # a full check decodes: only decoding (to_gray) refuses a colour-mapped thermal image
    LAYOUT = ("an MFNet release: images/ (4-channel RGB-T PNGs) or rgb/ + ther/ (or RGB/ + Modal/), labels/, "
              "<split>.txt at the root")

    def describe(self) -> DatasetDescription:
        layout = _choice(self.options, "layout", ("auto", "rgbt", "separate"))
        root = self.root
        rgb_folder = find_folder(root, RGB_FOLDERS)
        if layout == "auto":
            layout = "rgbt" if rgb_folder is None and find_folder(root, (RGBT_FOLDER,)) else "separate"
        self.layout = layout
        label_folder = find_folder(root, LABEL_FOLDERS) or LABEL_FOLDERS[0]
        if layout == "rgbt":
            folder = find_folder(root, (RGBT_FOLDER,)) or RGBT_FOLDER
            modalities = {"rgb": ModalitySource("rgb", folder, "png", "uint8", 1 / 255),
                          "thermal": ModalitySource("thermal", folder, "png", "uint8", 1 / 255)}
            found = self.probe_first(folder, "png")
            if found is not None:
                self._file_channels["rgb"] = self._file_channels["thermal"] = found[1].channels
        else:
            rgb_folder = rgb_folder or RGB_FOLDERS[0]
            thermal_folder = find_folder(root, THERMAL_FOLDERS) or THERMAL_FOLDERS[0]
            modalities = {"rgb": ModalitySource("rgb", rgb_folder, "png", "uint8", 1 / 255),
                          "thermal": ModalitySource("thermal", thermal_folder, "png", "uint8", 1 / 255)}
            self.note_channels("rgb", rgb_folder, "png")
            self.note_channels("thermal", thermal_folder, "png")
        return DatasetDescription(
            root=root, name="mfnet", classes=MFNET_CLASSES, palette=MFNET_PALETTE, ignore_index=255,
            modalities=modalities, label=ModalitySource("label", label_folder, "png", "uint8", 1.0),
            extra={"layout": layout, "source": __name__},
        )

    def layout_problems(self) -> list[str]:
        problems = super().layout_problems()
        if self.layout == "rgbt":
            channels = self._file_channels.get("rgb")
            if channels is not None and channels != 4:
                first = self.source_index(self.sources.get("rgb") or self.description.modalities["rgb"]).first()
                problems.append(f"{first}: {channels}-channel image in {RGBT_FOLDER}/; the original MFNet layout "
                                f"stores R, G, B and thermal in one 4-channel PNG")
        return problems

    def attributes(self, sample_id: str) -> dict[str, str]:
        condition = mfnet_condition(sample_id)
        return {} if condition is None else {"condition": condition}

    def decode_modality(self, name: str, raw: np.ndarray) -> np.ndarray:
        scale = np.float32(self.sources[name].scale)
        if self.layout == "rgbt":
            if name == "rgb":
                return raw[:3].astype(np.float32) * scale
            if name == "thermal":
                return raw[3:4].astype(np.float32) * scale
        if name == "rgb":
            return to_rgb(raw, scale)
        if name == "thermal":
            return to_gray(raw, "thermal") * scale
        return super().decode_modality(name, raw)

    # list_ids() / files(): the base reads <split>.txt and looks every sample up by stem in each source folder (in
    # the rgbt layout rgb and thermal share the images/ folder, so both resolve to the same 4-channel file).


__all__ = ["MFNET_CLASSES", "MFNET_PALETTE", "MFNet", "mfnet_condition"]
