"""Every adapter pointed at a missing root or at another dataset's tree (each built in its official layout by the
adapters' own tests) fails with one DataError that names the path and what was expected, never a raw traceback."""

from __future__ import annotations

import pytest

from rgbx.data import DATASETS, check_dataset
from rgbx.data.datasets.shards import pack_dataset
from rgbx.errors import ConfigError, DataError
from tests.conftest import make_dataset
from tests.data.datasets import test_camvid as camvid
from tests.data.datasets import test_driving as driving
from tests.data.datasets import test_rgbd_rgbt as rgbd


def make_shards(root):
    """The rgbx folder format packed into tar shards (`rgbx data pack`)."""
    pack_dataset(make_dataset(root.parent / f"{root.name}_source"), root, shard_size=2)
    return root


BUILDERS = {
    "camvid": camvid.fake_camvid, "deliver": driving.make_deliver, "eventscape": driving.make_eventscape,
    "folder": make_dataset, "kitti360": driving.make_kitti360, "mcubes": driving.make_mcubes,
    "mfnet": rgbd.make_mfnet_original, "muses": driving.make_muses, "nyudepthv2": rgbd.make_nyu_dformer,
    "pst900": rgbd.make_pst900, "shards": make_shards,
}
# SUN RGB-D and NYU Depth V2 share the DFormer release layout (only the label folder's case and the class count
# differ, and each adapter accepts the other's folder name): an NYU tree opens as SUN RGB-D and `rgbx data check`
# reports its labels above 37 (test below).
SAME_LAYOUT = {("sunrgbd", "nyudepthv2")}
# `multi` has no layout of its own: it opens its sources with their adapters (a source in the wrong layout is that
# adapter's DataError, tests/data/test_multi_dataset.py), and without `sources` it is a ConfigError (tested below)
COMPOSED = {"multi"}


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    base = tmp_path_factory.mktemp("trees")
    out = {}
    for name, build in BUILDERS.items():
        out[name] = build(base / name) or base / name
    out["missing"] = base / "does_not_exist"
    return out


def test_every_registered_adapter_has_a_tree():
    assert set(DATASETS.names()) - {"sunrgbd"} - COMPOSED == set(BUILDERS)


def test_a_composed_adapter_without_sources_says_what_it_needs(trees):
    with pytest.raises(ConfigError, match="data.options.sources: expected a non-empty list"):
        DATASETS.get("multi")(trees["folder"], "train")


@pytest.mark.parametrize("adapter", sorted(set(DATASETS.names()) - COMPOSED))
def test_wrong_root_or_other_layout_is_one_clear_error(adapter, trees):
    for tree, root in trees.items():
        if tree == adapter or (adapter, tree) in SAME_LAYOUT:
            continue
        with pytest.raises(DataError) as e:
            DATASETS.get(adapter)(root, "train")
        message = str(e.value)
        assert str(root) in message, (adapter, tree, message)
        assert "expected" in message or "not found" in message, (adapter, tree, message)
        assert "Traceback" not in message


def test_nyu_tree_read_as_sunrgbd_is_caught_by_the_check(trees):
    with pytest.raises(DataError, match=r"Label/0\.png: label values \[40\] in the file \(read as \[39\]\) out of "
                                        r"range: expected 0\.\.36"):
        check_dataset(trees["nyudepthv2"], dataset="sunrgbd")


@pytest.mark.parametrize("adapter", sorted(set(BUILDERS) - {"folder", "shards"}))
def test_a_tree_one_level_too_deep_is_pointed_at(adapter, trees, tmp_path):
    """An archive extracted into a folder of its own: `rgbx data check` names the folder below that has the layout
    and keeps the adapter's own account of what it expected (it used to say only 'none of the splits found')."""
    wrapper = tmp_path / "download"
    wrapper.mkdir()
    (wrapper / "extracted").symlink_to(trees[adapter], target_is_directory=True)
    with pytest.raises(DataError) as e:
        check_dataset(wrapper, dataset=adapter)
    problems = e.value.problems
    hint = f"{wrapper / 'extracted'} holds the {adapter} layout: point at that folder"
    assert e.value.advice == hint and str(e.value).endswith(f"\n{hint}")  # advice after the list, not a problem
    assert str(e.value).startswith(f"{wrapper}: {len(problems)} problem(s)")
    assert problems and all(str(wrapper) in p and ("not found" in p or "expected" in p) for p in problems), problems
