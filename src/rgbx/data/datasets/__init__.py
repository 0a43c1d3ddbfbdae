"""Datasets on disk, registered by name: the rgbx folder format and the public benchmarks in their own layouts."""

from rgbx.data.datasets import (  # noqa: F401  (importing registers them)
    camvid,
    deliver,
    eventscape,
    folder,
    kitti360,
    mcubes,
    mfnet,
    multi,
    muses,
    nyu,
    pst900,
    shards,
    sunrgbd,
)
from rgbx.data.datasets.base import DATASETS, SegmentationDataset, probe_file
from rgbx.data.datasets.folder import FolderDataset, check_dataset, list_splits


def build_dataset(name: str, root, split: str, **kwargs) -> SegmentationDataset:
    """Open ``split`` of dataset ``name`` (a key of :data:`DATASETS`) at ``root``."""
    return DATASETS.get(name)(root, split, **kwargs)


__all__ = ["DATASETS", "FolderDataset", "SegmentationDataset", "build_dataset", "check_dataset", "list_splits",
           "probe_file"]
