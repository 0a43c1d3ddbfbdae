"""How a dataset.yaml describes a rig's storage, and problems that end with the YAML key that fixes them: float files
in the wrong unit, sensors stored at a lower resolution, an unlabelled split without a label folder, undeclared
dtypes, absent sensors, sub-folder ids."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
import yaml

from rgbx.data import FolderDataset, check_dataset
from rgbx.data.datasets.base import resize_nearest
from rgbx.errors import DataError
from rgbx.modalities import read_array, write_array
from tests.conftest import make_dataset


def _edit(root, **entries):
    """Set dataset.yaml entries: ``label=...`` or a modality's (``depth=...``)."""
    desc = yaml.safe_load((root / "dataset.yaml").read_text())
    for name, entry in entries.items():
        if name == "label":
            desc["label"] = entry
        else:
            desc["modalities"][name] = entry
    (root / "dataset.yaml").write_text(yaml.safe_dump(desc))


def _problems(root, **kw) -> str:
    with pytest.raises(DataError) as e:
        check_dataset(root, **kw)
    return "\n".join([str(e.value), *(e.value.problems or [])])


def test_float_depth_in_millimetres_is_refused_naming_the_scale(tmp_path):
    """A float32 .npy in millimetres declared `depth: {encoding: npy}` was read as metres (up to 8 km here) by the
    dataset, while `rgbx predict depth=DIR` refused the same files."""
    root = make_dataset(tmp_path / "d", n=4, modalities=("rgb", "depth"))
    for png in sorted((root / "depth").glob("*.png")):
        np.save(png.with_suffix(".npy"), read_array(png)[0].astype(np.float32))  # millimetres, as floats
        png.unlink()
    _edit(root, depth={"encoding": "npy"})
    msg = _problems(root)
    assert "depth/s000.npy: float values up to 8000; floats are read as m" in msg
    assert "modalities.depth: {..., scale: 0.001}" in msg
    with pytest.raises(DataError, match=r"s000.npy: float values up to 8000.*scale: 0.001"):
        FolderDataset(root, "train", check="none").load(0)
    _edit(root, depth={"encoding": "npy", "scale": 0.001})
    check_dataset(root)
    depth = FolderDataset(root, "train").load(0)["inputs"]["depth"]
    assert sorted(round(v, 4) for v in torch.unique(depth).tolist()) == [3.0, 8.0]


def _half_resolution(root, *names):
    for name in names:
        for png in sorted((root / name).glob("*.png")):
            write_array(png, read_array(png)[:, ::2, ::2])


def test_a_lower_resolution_sensor_is_resized_when_the_yaml_says_so(tmp_path):
    root = make_dataset(tmp_path / "d", n=4, modalities=("rgb", "depth", "lidar"))
    full = {sid: read_array(root / "depth" / f"{sid}.png") for sid in ("s000", "s001")}
    _half_resolution(root, "depth", "lidar")
    msg = _problems(root)
    assert "depth/s000.png: size 8x10 (HxW) differs from" in msg
    assert "'resize: nearest' under modalities.depth in dataset.yaml" in msg
    assert "'resize: nearest' under modalities.lidar in dataset.yaml" in msg
    _edit(root, depth={"scale": 0.001, "resize": "nearest"}, lidar={"scale": 0.001, "resize": "nearest"})
    assert check_dataset(root) == {"train": 2, "val": 2}
    sample = FolderDataset(root, "train").load(0)
    expected = resize_nearest(full["s000"][:, ::2, ::2], (16, 20)).astype(np.float32) * np.float32(0.001)
    assert sample["inputs"]["depth"].shape == sample["inputs"]["lidar"].shape == (1, 16, 20)
    assert torch.equal(sample["inputs"]["depth"], torch.from_numpy(expected))
    shutil.rmtree(root / "label")  # unlabelled: to the size of the sensors stored at full resolution
    _edit(root, label={"optional": True})
    sample = FolderDataset(root, "train").load(1)
    assert sample["label"] is None and sample["inputs"]["depth"].shape == (1, 16, 20)


@pytest.mark.parametrize("name, entry, expected", [
    ("depth", {"resize": "bilinear"}, "modalities.depth: 'resize' must be nearest"),
    ("label", {"resize": "nearest"}, "label: 'resize' is for a sensor stored at another resolution"),
])
def test_a_bad_resize_is_named(toy_dataset, name, entry, expected):
    _edit(toy_dataset, **{name: entry})
    assert expected in _problems(toy_dataset)


def test_an_optional_label_needs_no_label_folder(toy_dataset):
    """docs/self-training.md: an unlabelled split's samples need no label files; it used to need an empty label/."""
    shutil.rmtree(toy_dataset / "label")
    msg = _problems(toy_dataset)
    assert "label folder for 'label' not found" in msg and "optional: true" in msg
    _edit(toy_dataset, label={"optional": True})
    assert check_dataset(toy_dataset) == {"train": 4, "val": 2}
    ds = FolderDataset(toy_dataset, "val")
    assert ds.load(0)["label"] is None and len(ds.unlabelled_ids()) == 2


def test_a_16_bit_sensor_without_its_dtype_says_to_declare_it(toy_dataset):
    write_array(toy_dataset / "thermal" / "s001.png", np.full((1, 16, 20), 30000, np.uint16))
    msg = _problems(toy_dataset)
    assert "thermal/s001.png: dtype uint16, expected uint8 for 'thermal'" in msg
    assert "modalities.thermal: {dtype: uint16, scale: S}" in msg


def test_a_missing_sensor_file_mentions_optional(toy_dataset):
    (toy_dataset / "thermal" / "s001.png").unlink()
    msg = _problems(toy_dataset)
    assert "missing thermal file for sample 's001'" in msg
    assert "'optional: true' under modalities.thermal" in msg
    with pytest.raises(DataError, match="'optional: true' under modalities.thermal"):
        FolderDataset(toy_dataset, "train", check="none").load(1)


def test_a_float64_npy_says_to_save_float32(tmp_path):
    root = make_dataset(tmp_path / "d", n=4, modalities=("rgb", "depth"))
    for png in sorted((root / "depth").glob("*.png")):
        np.save(png.with_suffix(".npy"), read_array(png)[0] / 1000)  # float64, numpy's default
        png.unlink()
    _edit(root, depth={"encoding": "npy"})
    assert "depth/s000.npy: dtype float64, expected float32 for 'depth'; save it as float32 " \
           "(arr.astype(np.float32))" in _problems(root)


def test_ids_in_sub_folders_are_refused_plainly(toy_dataset):
    (toy_dataset / "splits" / "val.txt").write_text("seqA/s004\nseqA/s005\n")
    assert "val.txt: lists ids in sub-folders ('seqA/s004' ...); sub-folders are not supported" in \
        _problems(toy_dataset, splits=["val"])


def test_a_palette_image_given_for_a_colour_sensor_says_what_it_is(tmp_path):
    """An RGB frame saved in palette mode (PNG8) reads as one channel of indices, as labels do: the refusal said
    only '1 channel(s), expected 3'."""
    from PIL import Image

    from rgbx.data.files import read_modality_file

    root = make_dataset(tmp_path / "d", n=4, modalities=("rgb", "depth"))
    frame = root / "rgb" / "s000.png"
    Image.open(frame).convert("P", palette=Image.ADAPTIVE, colors=16).save(frame)
    assert "rgb/s000.png: 1 channel(s), expected 3 for 'rgb'; it is a palette (indexed-colour) image" in _problems(root)
    with pytest.raises(DataError, match=r"s000.png: 1 channel\(s\), expected 3 for 'rgb'; it is a palette"):
        read_modality_file(frame, "rgb")
    gray = tmp_path / "gray.png"  # a 1-channel image that is no palette: no such remark
    write_array(gray, np.zeros((1, 8, 8), np.uint8))
    with pytest.raises(DataError, match=r"expected 3 for 'rgb'$"):
        read_modality_file(gray, "rgb")
