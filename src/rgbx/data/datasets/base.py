"""The base of every on-disk dataset: one split as samples in the rgbx contract, validated up front.

A dataset class says *where* things are (:meth:`~SegmentationDataset.describe`, :meth:`list_ids`, :meth:`files`)
and how raw file values become labels (:meth:`decode_label`) or physical units (:meth:`decode_modality`); this base
does the rest the same way for all: checking every file before training (existence, readable header, channel count,
dtype, size agreement, and with ``check="full"`` decoded label values), reading, per-sample seeded augmentation and
normalisation. Each dataset registers by name in :data:`DATASETS` (``data.dataset`` in a config).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from rgbx.data.description import DatasetDescription, ModalitySource
from rgbx.data.sample import Sample, normalize_sample
from rgbx.errors import DataError
from rgbx.modalities import get_modality, read_array
from rgbx.registry import Registry

DATASETS: Registry[type] = Registry("dataset")

CHECK_LEVELS = ("none", "headers", "full")

# PIL mode → (channels, dtype) of the decoded array.
_PIL_MODES = {
    "1": (1, "bool"), "L": (1, "uint8"), "P": (1, "uint8"), "LA": (2, "uint8"), "RGB": (3, "uint8"),
    "RGBA": (4, "uint8"), "I;16": (1, "uint16"), "I;16B": (1, "uint16"), "I": (1, "int32"), "F": (1, "float32"),
}


@dataclass(frozen=True)
class FileInfo:
    channels: int
    dtype: str
    size: tuple[int, int]  # (H, W)


def probe_file(path: Path, encoding: str) -> FileInfo:
    """Channels, dtype and size of a file, reading only its header where the format allows."""
    if encoding == "npy":
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise DataError(f"{path}: unreadable .npy ({e})") from None
        if arr.ndim == 2:
            return FileInfo(1, str(arr.dtype), tuple(arr.shape))
        if arr.ndim == 3:
            return FileInfo(arr.shape[0], str(arr.dtype), tuple(arr.shape[1:]))
        raise DataError(f"{path}: expected an array of shape (H, W) or (C, H, W), got {arr.shape}")
    try:
        with Image.open(path) as im:
            mode, (w, h) = im.mode, im.size
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise DataError(f"{path}: unreadable image ({e})") from None
    if mode not in _PIL_MODES:
        raise DataError(f"{path}: unsupported image mode {mode!r}")
    channels, dtype = _PIL_MODES[mode]
    return FileInfo(channels, dtype, (h, w))


class SegmentationDataset(torch.utils.data.Dataset):
    """One split of a dataset on disk.

    Args:
        root: the dataset's folder.
        split: split name (what splits exist depends on the dataset).
        modalities: modalities to load (default: all the dataset offers). Asking for one it lacks is an error; a
            sample lacking an optional modality simply comes without it (a missing sensor).
        transform: ``transform(sample, generator) -> sample`` in physical units (e.g. ``TrainTransform``).
        seed: base seed of the per-sample random generator: sample ``i`` in epoch ``e`` is augmented with a
            generator seeded from ``(seed, e, i)``, so training is reproducible and resumable. Index the dataset
            with ``(epoch, i)`` tuples (``ResumableSampler`` does) or plain ``i`` (epoch 0).
        check: "headers" (default: existence, channel counts, dtypes, sizes from file headers), "full" (also decode
            every file and check label values) or "none".

    Items are samples (see :mod:`rgbx.data.sample`) with normalised inputs; :meth:`load` gives them in physical units
    before any transform.
    """

    def __init__(self, root: str | Path, split: str, modalities: Sequence[str] | None = None,
                 transform: Callable | None = None, seed: int = 0, check: str = "headers"):
        if check not in CHECK_LEVELS:
            raise DataError(f"check={check!r}: expected one of {', '.join(CHECK_LEVELS)}")
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"{self.root}: dataset folder not found")
        self.split = split
        self.description: DatasetDescription = self.describe()
        self.ids: list[str] = self.list_ids()
        if not self.ids:
            raise DataError(f"{self.root}: split {split!r} has no samples")
        names = list(self.description.modalities) if modalities is None else list(modalities)
        missing = [m for m in names if m not in self.description.modalities]
        if missing:
            raise DataError(f"{self.root}: the dataset has no modality {', '.join(map(repr, missing))} "
                            f"(it has: {', '.join(self.description.modalities)})")
        self.sources: dict[str, ModalitySource] = {m: self.description.modalities[m] for m in names}
        self.transform = transform
        self.seed = seed
        if check != "none":
            problems = self.find_problems(full=(check == "full"))
            if problems:
                raise DataError(f"{self.root}: split {split!r} has {len(problems)} problem(s)", problems)

    # -- what a dataset class provides -----------------------------------------------------------------------------
    def describe(self) -> DatasetDescription:
        """Classes, palette, ignore index and the storage of each modality and of the label."""
        raise NotImplementedError

    def list_ids(self) -> list[str]:
        """The sample ids of ``self.split``; raise :class:`DataError` naming the split file if it is missing."""
        raise NotImplementedError

    def files(self, sample_id: str) -> dict[str, Path | None]:
        """Path of each loaded modality (``self.sources``) and of ``"label"`` for one sample; None = no such file."""
        raise NotImplementedError

    def attributes(self, sample_id: str) -> dict[str, str]:
        """Per-sample attributes (e.g. ``{"condition": "night"}``), reported separately by evaluation."""
        return {}

    def layout_problems(self) -> list[str]:
        """Problems with the folder layout as a whole (default: each source's folder must exist)."""
        problems = []
        for src in [*self.sources.values(), self.description.label]:
            folder = self.root / src.folder
            if not folder.is_dir():
                what = "label" if src is self.description.label else "modality"
                problems.append(f"{folder}: {what} folder for {src.name!r} not found")
        return problems

    def decode_label(self, raw: np.ndarray) -> np.ndarray:
        """Raw (H, W) label file values → class indices with ``ignore_index`` (default: unchanged)."""
        return raw

    def decode_modality(self, name: str, raw: np.ndarray) -> np.ndarray:
        """Raw (C, H, W) file values → physical units (default: × the source's scale)."""
        return raw.astype(np.float32) * np.float32(self.sources[name].scale)

    # -- validation ---------------------------------------------------------------------------------------------
    def find_problems(self, full: bool = False, workers: int = 4) -> list[str]:
        """Every problem with this split's files, as readable lines (empty list = fine)."""
        problems = self.layout_problems()
        if problems:
            return problems
        with ThreadPoolExecutor(workers) as pool:
            for found in pool.map(lambda sid: self._sample_problems(sid, full), self.ids):
                problems.extend(found)
        return problems

    def expected_channels(self, name: str) -> int:
        """Channels of ``name``'s files on disk (default: the spec's); :meth:`decode_modality` must turn them into
        the spec's channel count."""
        return get_modality(name).channels

    def _sample_problems(self, sample_id: str, full: bool) -> list[str]:
        problems, sizes = [], {}
        label_src = self.description.label
        paths = self.files(sample_id)
        for src in [*self.sources.values(), label_src]:
            path = paths.get(src.name)
            if path is None or not Path(path).is_file():
                if not src.optional:
                    where = path if path is not None else self.root / src.folder / sample_id
                    problems.append(f"{where}: missing {src.name} file for sample {sample_id!r}")
                continue
            try:
                info = probe_file(path, src.encoding)
            except DataError as e:
                problems.append(str(e))
                continue
            if src is label_src:
                if info.channels != 1:
                    problems.append(f"{path}: {info.channels} channel(s), expected a 1-channel label image")
                if info.dtype not in ("uint8", "uint16", "int32", "int64", "bool"):
                    problems.append(f"{path}: label dtype {info.dtype}, expected an integer type (uint8/uint16)")
            else:
                want = self.expected_channels(src.name)
                if info.channels != want:
                    problems.append(f"{path}: {info.channels} channel(s), expected {want} for {src.name!r}")
                if info.dtype != src.dtype:
                    problems.append(f"{path}: dtype {info.dtype}, expected {src.dtype} for {src.name!r}")
            sizes[src.name] = (path, info.size)
            if full:
                try:
                    arr = read_array(path, src.encoding)
                except DataError as e:
                    problems.append(str(e))
                    continue
                if src is label_src:
                    problems.extend(self._label_problems(path, self.decode_label(arr[0])))
        if sizes:
            ref_name = label_src.name if label_src.name in sizes else next(iter(sizes))
            ref_path, ref_size = sizes[ref_name]
            for path, size in sizes.values():
                if size != ref_size:
                    problems.append(f"{path}: size {size[0]}x{size[1]} (HxW) differs from {ref_path} "
                                    f"{ref_size[0]}x{ref_size[1]}")
        return problems

    def _label_problems(self, path: Path, label: np.ndarray) -> list[str]:
        k, ignore = self.description.num_classes, self.description.ignore_index
        values = np.unique(label)
        bad = [int(v) for v in values if not (0 <= v < k or v == ignore)]
        if bad:
            return [f"{path}: label values {bad[:10]} out of range: expected 0..{k - 1} or ignore {ignore}"]
        return []

    # -- loading ------------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.ids)

    def generator_for(self, epoch: int, index: int) -> torch.Generator:
        g = torch.Generator()
        g.manual_seed((self.seed * 1_000_003 + epoch) * 10_000_019 + index)
        return g

    def load(self, index: int) -> Sample:
        """Sample ``index`` in physical units, before any transform."""
        sample_id = self.ids[index]
        paths = self.files(sample_id)
        inputs = {}
        for name, src in self.sources.items():
            path = paths.get(name)
            if path is None or not Path(path).is_file():
                if src.optional:
                    continue
                raise DataError(f"{path or self.root / src.folder / sample_id}: missing {name} file for sample "
                                f"{sample_id!r}")
            arr = read_array(path, src.encoding)
            if arr.shape[0] != self.expected_channels(name):
                raise DataError(f"{path}: {arr.shape[0]} channel(s), expected {self.expected_channels(name)} "
                                f"for {name!r}")
            x = np.ascontiguousarray(self.decode_modality(name, arr), np.float32)
            if x.shape[0] != get_modality(name).channels:
                raise DataError(f"{path}: decoded to {x.shape[0]} channel(s), the {name!r} spec has "
                                f"{get_modality(name).channels}")
            inputs[name] = torch.from_numpy(x)
        label = None
        label_path = paths.get("label")
        if label_path is not None and Path(label_path).is_file():
            arr = self.decode_label(read_array(label_path, self.description.label.encoding)[0])
            problems = self._label_problems(label_path, arr)
            if problems:
                raise DataError(problems[0])
            label = torch.from_numpy(arr.astype(np.int64))
        size = next(iter(inputs.values())).shape[-2:] if inputs else label.shape
        meta = {"id": sample_id, "split": self.split, "size": tuple(size),
                "attributes": dict(self.attributes(sample_id))}
        return {"inputs": inputs, "label": label, "meta": meta}

    def __getitem__(self, key) -> Sample:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        sample = self.load(index)
        if self.transform is not None:
            sample = self.transform(sample, self.generator_for(epoch, index))
        return normalize_sample(sample)
