"""Data: the sample/batch contract, transforms, the dataset format and datasets, the built-in synthetic dataset."""

from rgbx.data.datasets import DATASETS, FolderDataset, SegmentationDataset, build_dataset, check_dataset
from rgbx.data.description import DatasetDescription, load_description
from rgbx.data.sample import Batch, Sample, collate, normalize_sample

__all__ = ["DATASETS", "Batch", "DatasetDescription", "FolderDataset", "Sample", "SegmentationDataset",
           "build_dataset", "check_dataset", "collate", "load_description", "normalize_sample"]
