"""The ``multi`` dataset adapter: several datasets in one unified label space."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rgbx.data import build_dataset, collate
from rgbx.errors import ConfigError, DataError
from rgbx.modalities import read_array
from tests.conftest import make_dataset


@pytest.fixture
def two_sources(tmp_path):
    make_dataset(tmp_path / "a", n=5, seed=0)
    make_dataset(tmp_path / "b", n=6, seed=1, modalities=("rgb", "depth"))
    return tmp_path


def multi(root, sources, split="train", **kwargs):
    return build_dataset("multi", root, split, sources=sources, **kwargs)


def test_union_classes_and_exact_label_remapping(two_sources):
    sources = [{"name": "a", "root": "a"},
               {"name": "b", "root": str(two_sources / "b"),  # absolute roots work too
                "classes": {"ground": None, "box": "crate"}}]
    ds = multi(two_sources, sources, modalities=["rgb", "depth"])
    assert ds.description.classes == ("a/ground", "a/box", "a/person", "b/crate", "b/person")
    assert ds.class_sources == ["a", "a", "a", "b", "b"]
    assert ds.class_origin[3] == ("b", "box")
    assert len(ds) == 3 + 4 and ds.ids[0] == "a/s000" and ds.ids[3] == "b/s000"
    expected = {"a": {0: 0, 1: 1, 2: 2, 255: 255}, "b": {0: 255, 1: 3, 2: 4, 255: 255}}
    for i in range(len(ds)):
        sample = ds.load(i)
        source, sid = ds.ids[i].split("/")
        raw = read_array(two_sources / source / "label" / f"{sid}.png", "png")[0].astype(np.int64)
        want = np.vectorize(expected[source].get)(raw)
        assert np.array_equal(sample["label"].numpy(), want), ds.ids[i]
        assert sample["meta"]["source"] == source and sample["meta"]["attributes"]["source"] == source
        assert sample["meta"]["attributes"]["condition"] in ("day", "night")
    assert set(ds.load(3)["label"].unique().tolist()) <= {3, 4, 255}
    assert 255 in ds.load(3)["label"].unique().tolist()  # the dropped ground class


def test_merged_classes_and_a_modality_one_source_lacks(two_sources):
    sources = [{"name": "a", "root": "a"}, {"name": "b", "root": "b", "classes": {"box": "person"}}]
    ds = multi(two_sources, sources, modalities=["rgb", "depth", "thermal"])
    assert ds.description.classes == ("a/ground", "a/box", "a/person", "b/ground", "b/person")
    label_b = ds.load(3)["label"]
    raw = torch.from_numpy(read_array(two_sources / "b" / "label" / "s000.png", "png")[0].astype(np.int64))
    assert torch.equal(label_b == 4, (raw == 1) | (raw == 2))  # box and person are one class now
    assert ds.sources["thermal"].optional and not ds.sources["rgb"].optional
    batch = collate([ds[i] for i in (0, 4)])  # one sample of each source, normalised
    assert batch.present["thermal"].tolist() == [True, False]
    assert batch.meta[1]["source"] == "b"


def test_splits_mapping_and_default_names(two_sources):
    make_dataset(two_sources / "c", n=4, seed=2, splits={"train": ["s000", "s001"], "test": ["s002", "s003"]})
    ds = multi(two_sources, [{"root": "a", "name": "first"}, {"root": "c", "splits": {"val": "test"}}], split="val")
    assert ds.source_names == ["first", "toy"]  # the dataset's own name by default
    assert ds.ids[-2:] == ["toy/s002", "toy/s003"]


@pytest.mark.parametrize(("sources", "message"), [
    (None, "data.options.sources: expected a non-empty list"),
    ([], "data.options.sources: expected a non-empty list"),
    (["a"], "data.options.sources[0]: expected a mapping"),
    ([{"root": "a", "colour": 1}], "data.options.sources[0]: unknown key(s) ['colour']"),
    ([{"name": "a"}], "data.options.sources[0].root: required"),
    ([{"root": "a", "name": "x/y"}], "data.options.sources[0].name: expected a non-empty name without '/'"),
    ([{"root": "a", "dataset": "nope"}], "data.options.sources[0].dataset: unknown dataset 'nope'"),
    ([{"root": "a", "dataset": "multi"}], "cannot be a source of another"),
    ([{"root": "a", "options": [1]}], "data.options.sources[0].options: expected a mapping"),
    ([{"root": "a", "classes": {"box": 3}}], "data.options.sources[0].classes.box: expected a new class name"),
    ([{"root": "a", "classes": {"boat": "ship"}}], "data.options.sources[0].classes: ['boat'] not among"),
    ([{"root": "a", "name": "s"}, {"root": "b", "name": "s"}], "data.options.sources[1].name: 's' is used"),
    ([{"root": "a", "classes": {"ground": None, "box": None, "person": None}}], "every class of every source"),
])
def test_bad_options_name_the_key(two_sources, sources, message):
    with pytest.raises(ConfigError) as e:
        multi(two_sources, sources)
    assert message in str(e.value)


def test_missing_folder_unknown_option_and_modality(two_sources):
    with pytest.raises(DataError, match=r"data.options.sources\[1\].root='nowhere': folder .*nowhere not found"):
        multi(two_sources, [{"root": "a"}, {"root": "nowhere"}])
    with pytest.raises(ConfigError, match="unknown option.*conditions.*options: sources"):
        build_dataset("multi", two_sources, "train", sources=[{"root": "a"}], conditions=["night"])
    with pytest.raises(DataError, match="no source of the multi dataset has modality 'lidar'"):
        multi(two_sources, [{"root": "a"}], modalities=["rgb", "lidar"])


def test_file_problems_of_a_source_are_reported(two_sources):
    (two_sources / "b" / "depth" / "s001.png").unlink()
    with pytest.raises(DataError) as e:
        multi(two_sources, [{"root": "a", "name": "a"}, {"root": "b", "name": "b"}], modalities=["rgb", "depth"])
    assert any("s001" in p and "missing depth" in p for p in e.value.problems)
