"""The user-dataset format: loading, and one clear error per kind of bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from rgbx.data import FolderDataset, check_dataset, collate
from rgbx.errors import DataError
from rgbx.modalities import write_array
from tests.conftest import make_dataset


def test_loads_samples_in_physical_units_then_normalised(toy_dataset):
    ds = FolderDataset(toy_dataset, "train")
    assert len(ds) == 4
    raw = ds.load(0)
    assert set(raw["inputs"]) == {"rgb", "depth", "thermal"}
    assert raw["inputs"]["depth"].shape == (1, 16, 20)
    assert sorted(round(v, 4) for v in torch.unique(raw["inputs"]["depth"]).tolist()) == [3.0, 8.0]  # mm → m
    assert raw["label"].dtype == torch.int64 and raw["label"][0, 0] == 255
    assert raw["meta"]["attributes"]["condition"] in ("day", "night")
    item = ds[0]
    assert torch.allclose(item["inputs"]["depth"], raw["inputs"]["depth"] / 10.0)  # spec: mean 0, std 10 m


def test_check_dataset_accepts_a_good_folder(toy_dataset):
    assert check_dataset(toy_dataset) == {"train": 4, "val": 2}


def test_batch_records_missing_modalities(toy_dataset):
    ds = FolderDataset(toy_dataset, "train")
    a, b = ds[0], ds[1]
    del b["inputs"]["thermal"]
    batch = collate([a, b])
    assert batch.present["thermal"].tolist() == [True, False]
    assert torch.all(batch.inputs["thermal"][1] == 0.0)  # the spec's fill value
    only_depth = batch.with_modalities(["depth"])
    assert only_depth.modalities == ("depth",)


def _problems(root, **kw):
    with pytest.raises(DataError) as e:
        check_dataset(root, **kw)
    return str(e.value)


def test_missing_modality_folder_is_named(toy_dataset):
    import shutil

    shutil.rmtree(toy_dataset / "thermal")
    msg = _problems(toy_dataset)
    assert "thermal" in msg and "not found" in msg


def test_missing_file_is_named(toy_dataset):
    (toy_dataset / "depth" / "s001.png").unlink()
    msg = _problems(toy_dataset)
    assert "depth/s001" in msg and "missing depth file" in msg


def test_size_mismatch_is_named(toy_dataset):
    write_array(toy_dataset / "thermal" / "s002.png", np.zeros((1, 10, 10), np.uint8))
    msg = _problems(toy_dataset)
    assert "thermal/s002.png" in msg and "10x10" in msg and "16x20" in msg


def test_corrupt_png_is_named(toy_dataset):
    (toy_dataset / "rgb" / "s000.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    msg = _problems(toy_dataset)
    assert "rgb/s000.png" in msg and "unreadable" in msg


def test_truncated_png_is_caught_by_full_check(toy_dataset):
    p = toy_dataset / "rgb" / "s000.png"
    p.write_bytes(p.read_bytes()[:60])
    msg = _problems(toy_dataset)
    assert "rgb/s000.png" in msg


def test_label_out_of_range_is_named(toy_dataset):
    label = np.zeros((1, 16, 20), np.uint8)
    label[0, 3, 3] = 7
    write_array(toy_dataset / "label" / "s003.png", label)
    msg = _problems(toy_dataset)
    assert "label/s003.png" in msg and "[7]" in msg and "0..2" in msg


def test_wrong_channel_count_is_named(toy_dataset):
    write_array(toy_dataset / "depth" / "s000.png", np.zeros((3, 16, 20), np.uint8))
    msg = _problems(toy_dataset)
    assert "depth/s000.png" in msg and "3 channel(s), expected 1" in msg


def test_wrong_dtype_is_named(toy_dataset):
    write_array(toy_dataset / "depth" / "s000.png", np.full((1, 16, 20), 7, np.uint8))
    msg = _problems(toy_dataset)
    assert "depth/s000.png" in msg and "uint8" in msg and "uint16" in msg


def test_all_problems_reported_at_once(toy_dataset):
    (toy_dataset / "depth" / "s001.png").unlink()
    write_array(toy_dataset / "thermal" / "s002.png", np.zeros((1, 10, 10), np.uint8))
    msg = _problems(toy_dataset)
    assert "depth/s001" in msg and "thermal/s002" in msg


def test_bad_description_keys_and_unknown_modality(toy_dataset):
    desc = yaml.safe_load((toy_dataset / "dataset.yaml").read_text())
    desc["modalities"]["sonar"] = {}
    desc["colour_map"] = 1
    (toy_dataset / "dataset.yaml").write_text(yaml.safe_dump(desc))
    msg = _problems(toy_dataset)
    assert "sonar" in msg and "colour_map" in msg
    # a split checked by name: each listed problem counted (was '1 problem(s)' above the description's lines)
    assert "2 problem(s)" in _problems(toy_dataset, splits=["train"]).splitlines()[0]


def test_header_check_runs_when_opening(toy_dataset):
    (toy_dataset / "depth" / "s001.png").unlink()
    with pytest.raises(DataError, match="s001"):
        FolderDataset(toy_dataset, "train")
    FolderDataset(toy_dataset, "val")  # the other split is fine


def test_a_split_without_any_label_says_how_to_mark_it_unlabelled(toy_dataset):
    for i in ("s004", "s005"):  # the val split's labels
        (toy_dataset / "label" / f"{i}.png").unlink()
    with pytest.raises(DataError) as e:
        FolderDataset(toy_dataset, "val")
    assert "no sample of split 'val' has a label file" in str(e.value.problems)
    assert "optional: true" in str(e.value.problems)
    (toy_dataset / "label" / "s001.png").unlink()  # one of several labels missing: no such hint
    with pytest.raises(DataError) as e:
        FolderDataset(toy_dataset, "train")
    assert "optional" not in str(e.value.problems)
    desc = yaml.safe_load((toy_dataset / "dataset.yaml").read_text())
    desc["label"] = {"folder": "label", "optional": True}
    (toy_dataset / "dataset.yaml").write_text(yaml.safe_dump(desc))
    assert FolderDataset(toy_dataset, "val").load(0)["label"] is None


def test_optional_modality_may_be_missing(tmp_path):
    root = make_dataset(tmp_path / "d")
    desc = yaml.safe_load((root / "dataset.yaml").read_text())
    desc["modalities"]["thermal"]["optional"] = True
    (root / "dataset.yaml").write_text(yaml.safe_dump(desc))
    (root / "thermal" / "s000.png").unlink()
    ds = FolderDataset(root, "train")
    assert "thermal" not in ds.load(0)["inputs"] and "thermal" in ds.load(1)["inputs"]


def test_nan_in_a_float_file_is_no_measurement(tmp_path):
    """A stereo camera's depth in metres with NaN holes and inf for 'too far': read as 0 m (no measurement), so one
    hole does not turn a training step's loss into NaN."""
    root = make_dataset(tmp_path / "stereo", n=4, size=(8, 10), modalities=("rgb", "depth"))
    desc = yaml.safe_load((root / "dataset.yaml").read_text())
    desc["modalities"]["depth"] = {"encoding": "npy", "dtype": "float32", "scale": 1.0}
    (root / "dataset.yaml").write_text(yaml.safe_dump(desc))
    for png in sorted((root / "depth").glob("*.png")):
        d = np.full((1, 8, 10), 2.5, np.float32)
        d[0, 1, 2], d[0, 3, 4], d[0, 5, 6] = np.nan, np.inf, -np.inf
        np.save(png.with_suffix(".npy"), d)
        png.unlink()
    check_dataset(root)
    ds = FolderDataset(root, "train")
    depth = ds.load(0)["inputs"]["depth"]
    assert torch.isfinite(depth).all()
    assert depth[0, 1, 2] == depth[0, 3, 4] == depth[0, 5, 6] == 0 and depth[0, 0, 0] == 2.5


def _depth_as_npy(root, array_of, desc_entry):
    """Replace the toy dataset's depth PNGs (millimetres) by ``array_of(metres)`` .npy files."""
    desc = yaml.safe_load((root / "dataset.yaml").read_text())
    desc["modalities"]["depth"] = desc_entry
    (root / "dataset.yaml").write_text(yaml.safe_dump(desc))
    for png in sorted((root / "depth").glob("*.png")):
        from rgbx.modalities import read_array

        np.save(png.with_suffix(".npy"), array_of(read_array(png)[0].astype(np.float32) / 1000))
        png.unlink()


def test_depth_in_metres_as_npy_needs_only_the_encoding(tmp_path):
    """docs/dataset-format.md: `<id>.npy in metres with encoding: npy`; the depth spec's PNG storage (uint16 × 0.001)
    must not leak into it (it used to: every file refused as 'dtype float32, expected uint16', and with `dtype:
    float32` added the metres were read as kilometres)."""
    root = make_dataset(tmp_path / "d", n=4, modalities=("rgb", "depth"))
    _depth_as_npy(root, lambda m: m, {"encoding": "npy"})
    check_dataset(root)
    depth = FolderDataset(root, "train").load(0)["inputs"]["depth"]
    assert sorted(round(v, 4) for v in torch.unique(depth).tolist()) == [3.0, 8.0]


def test_channels_last_npy_is_read_as_one_channel(tmp_path):
    """An (H, W, 1) array, as image code often saves it, is not 16 channels of one-pixel-wide rows."""
    root = make_dataset(tmp_path / "d", n=4, modalities=("rgb", "depth"))
    _depth_as_npy(root, lambda m: m[:, :, None], {"encoding": "npy"})
    check_dataset(root)
    depth = FolderDataset(root, "train").load(0)["inputs"]["depth"]
    assert depth.shape == (1, 16, 20) and sorted(round(v, 4) for v in torch.unique(depth).tolist()) == [3.0, 8.0]


@pytest.mark.parametrize("entry, expected", [
    ({"scale": "1/1000"}, "modalities.depth: 'scale' must be a positive number"),
    ({"scale": None}, "modalities.depth: 'scale' must be a positive number"),
    ({"scale": 0}, "modalities.depth: 'scale' must be a positive number"),
    ({"dtype": "uint17"}, "modalities.depth: unknown dtype 'uint17'"),
    ({"optional": "yes"}, "modalities.depth: 'optional' must be true or false"),
])
def test_bad_storage_fields_are_named(toy_dataset, entry, expected):
    desc = yaml.safe_load((toy_dataset / "dataset.yaml").read_text())
    desc["modalities"]["depth"] = {**desc["modalities"]["depth"], **entry}
    (toy_dataset / "dataset.yaml").write_text(yaml.safe_dump(desc))
    assert expected in _problems(toy_dataset)


def test_a_split_listing_file_names_says_to_list_ids(toy_dataset):
    """'s000.png' in a split file used to be reported as a missing file that is there, and as an unlabelled split."""
    (toy_dataset / "splits" / "val.txt").write_text("s004.png\ns005.png\n")
    msg = _problems(toy_dataset, splits=["val"])
    assert "val.txt: lists file names ('s004.png' ...); a split lists sample ids, the file names without folder and " \
           "extension ('s004')" in msg


def test_a_class_named_twice_is_named(toy_dataset):
    desc = yaml.safe_load((toy_dataset / "dataset.yaml").read_text())
    desc["classes"][2] = desc["classes"][1]
    (toy_dataset / "dataset.yaml").write_text(yaml.safe_dump(desc))
    assert f"'classes' names {desc['classes'][1]!r} more than once" in _problems(toy_dataset)


def test_a_descriptions_problems_are_counted(toy_dataset):
    desc = yaml.safe_load((toy_dataset / "dataset.yaml").read_text())
    desc["classes"][2] = desc["classes"][1]
    desc["modalities"]["depth"]["scale"] = 0
    (toy_dataset / "dataset.yaml").write_text(yaml.safe_dump(desc))
    msg = _problems(toy_dataset)
    assert "dataset.yaml: invalid dataset description, 2 problem(s)" in msg.splitlines()[0]
    assert "more than once" in msg and "'scale' must be a positive number" in msg


def test_two_files_for_one_sample_are_named(toy_dataset):
    write_array(toy_dataset / "depth" / "s001.tif", np.zeros((1, 16, 20), np.uint16))
    assert (f"{toy_dataset / 'depth'}: 2 files for sample 's001' (s001.png, s001.tif); s001.png would be read"
            in _problems(toy_dataset))
