"""Data: the sample/batch contract, transforms, the user-dataset format and the built-in synthetic dataset."""

from rgbx.data.description import DatasetDescription, load_description
from rgbx.data.folder import FolderDataset, check_dataset
from rgbx.data.sample import Batch, Sample, collate, normalize_sample

__all__ = ["Batch", "DatasetDescription", "FolderDataset", "Sample", "check_dataset", "collate", "load_description",
           "normalize_sample"]
