"""The user-dataset loader: a folder in the rgbx format (``docs/dataset-format.md``) as a torch ``Dataset``.

The folder is checked when the dataset is opened (every file present, readable headers, channel counts, dtypes and
sizes consistent; :func:`check_dataset` also decodes every file and checks label values), and every problem is
reported at once in one :class:`~rgbx.errors.DataError`, so a layout problem shows up before a long run.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from rgbx.data.description import DatasetDescription, ModalitySource, load_description
from rgbx.data.sample import Sample, normalize_sample
from rgbx.errors import DataError
from rgbx.modalities import get_modality, read_array

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


def _read_ids(path: Path) -> list[str]:
    ids = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            ids.append(line.split()[0])
    return ids


def list_splits(root: str | Path) -> list[str]:
    return sorted(p.stem for p in (Path(root) / "splits").glob("*.txt"))


def read_attributes(root: Path) -> dict[str, dict[str, str]]:
    path = root / "attributes.csv"
    if not path.is_file():
        return {}
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or "id" not in reader.fieldnames:
            raise DataError(f"{path}: expected a header row starting with 'id'")
        return {row["id"]: {k: v for k, v in row.items() if k != "id"} for row in reader}


class _FolderIndex:
    """stem → file path for one folder, listed once."""

    def __init__(self, folder: Path, suffixes: tuple[str, ...]):
        self.folder = folder
        self.files: dict[str, str] = {}
        if folder.is_dir():
            for name in os.listdir(folder):
                stem, suffix = os.path.splitext(name)
                if suffix.lower() in suffixes and stem not in self.files:
                    self.files[stem] = name

    def path(self, sample_id: str) -> Path | None:
        name = self.files.get(sample_id)
        return None if name is None else self.folder / name


class FolderDataset(torch.utils.data.Dataset):
    """A split of a dataset folder in the rgbx format.

    Args:
        root: dataset folder (holds ``dataset.yaml``).
        split: split name (``splits/<split>.txt``).
        modalities: modalities to load (default: all the description lists). A modality the dataset lacks is an
            error; a sample lacking an optional modality simply comes without it.
        transform: ``transform(sample, generator) -> sample`` in physical units (e.g. ``TrainTransform``).
        seed: base seed of the per-sample random generator: sample ``i`` in epoch ``e`` is augmented with a
            generator seeded from ``(seed, e, i)``, so training is reproducible and resumable. Index the dataset
            with ``(epoch, i)`` tuples (``ResumableSampler`` does) or plain ``i`` (epoch 0).
        check: "headers" (default: existence, channel counts, dtypes, sizes from file headers), "full" (also decode
            every file and check label values) or "none".

    Items are samples (see :mod:`rgbx.data.sample`) with normalised inputs.
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        modalities: Sequence[str] | None = None,
        transform: Callable | None = None,
        seed: int = 0,
        check: str = "headers",
    ):
        self.root = Path(root)
        self.description: DatasetDescription = load_description(self.root)
        self.split = split
        split_file = self.root / "splits" / f"{split}.txt"
        if not split_file.is_file():
            raise DataError(f"{split_file}: split file not found (splits here: {', '.join(list_splits(self.root)) or 'none'})")
        self.ids = _read_ids(split_file)
        if not self.ids:
            raise DataError(f"{split_file}: lists no sample ids")
        names = list(self.description.modalities) if modalities is None else list(modalities)
        missing = [m for m in names if m not in self.description.modalities]
        if missing:
            raise DataError(
                f"{self.root / 'dataset.yaml'}: the dataset has no modality {', '.join(map(repr, missing))} "
                f"(it has: {', '.join(self.description.modalities)})"
            )
        self.sources: dict[str, ModalitySource] = {m: self.description.modalities[m] for m in names}
        self.attributes = read_attributes(self.root)
        self.transform = transform
        self.seed = seed
        self._index = {
            src.name: _FolderIndex(self.root / src.folder, src.suffixes)
            for src in [*self.sources.values(), self.description.label]
        }
        if check != "none":
            problems = self.find_problems(full=(check == "full"))
            if problems:
                raise DataError(f"{self.root}: split {split!r} has {len(problems)} problem(s)", problems)

    # -- validation ---------------------------------------------------------------------------------------------
    def find_problems(self, full: bool = False, workers: int = 4) -> list[str]:
        """Every problem with this split's files, as readable lines (empty list = fine)."""
        problems: list[str] = []
        for src in [*self.sources.values(), self.description.label]:
            folder = self.root / src.folder
            if not folder.is_dir():
                what = "label" if src is self.description.label else "modality"
                problems.append(f"{folder}: {what} folder {src.folder!r} not found")
        if problems:
            return problems
        with ThreadPoolExecutor(workers) as pool:
            for found in pool.map(lambda sid: self._sample_problems(sid, full), self.ids):
                problems.extend(found)
        return problems

    def _sample_problems(self, sample_id: str, full: bool) -> list[str]:
        problems, sizes = [], {}
        label_src = self.description.label
        for src in [*self.sources.values(), label_src]:
            path = self._index[src.name].path(sample_id)
            if path is None:
                if not src.optional:
                    exp = "|".join(src.suffixes[:2])
                    problems.append(f"{self.root / src.folder / sample_id}{{{exp}}}: missing file for sample {sample_id!r}")
                continue
            try:
                info = probe_file(path, src.encoding)
            except DataError as e:
                problems.append(str(e))
                continue
            want_ch = 1 if src is label_src else get_modality(src.name).channels
            if info.channels != want_ch:
                problems.append(f"{path}: {info.channels} channel(s), expected {want_ch} for {src.name!r}")
            if src is label_src:
                if info.dtype not in ("uint8", "uint16", "int32", "int64", "bool"):
                    problems.append(f"{path}: label dtype {info.dtype}, expected an integer type (uint8/uint16)")
            elif info.dtype != src.dtype:
                problems.append(f"{path}: dtype {info.dtype}, expected {src.dtype} for {src.name!r} "
                                f"(set 'dtype' in dataset.yaml if this is intended)")
            sizes[src.name] = (path, info.size)
            if full:
                try:
                    arr = read_array(path, src.encoding)
                except DataError as e:
                    problems.append(str(e))
                    continue
                if src is label_src:
                    problems.extend(self._label_problems(path, arr))
        if sizes:
            ref_name = label_src.name if label_src.name in sizes else next(iter(sizes))
            ref_path, ref_size = sizes[ref_name]
            for _name, (path, size) in sizes.items():
                if size != ref_size:
                    problems.append(f"{path}: size {size[0]}x{size[1]} (HxW) differs from {ref_path} "
                                    f"{ref_size[0]}x{ref_size[1]}")
        return problems

    def _label_problems(self, path: Path, arr: np.ndarray) -> list[str]:
        k, ignore = self.description.num_classes, self.description.ignore_index
        values = np.unique(arr)
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
        inputs = {}
        for name, src in self.sources.items():
            path = self._index[name].path(sample_id)
            if path is None:
                if src.optional:
                    continue
                raise DataError(f"{self.root / src.folder / sample_id}: missing file for sample {sample_id!r}")
            arr = read_array(path, src.encoding)
            spec = get_modality(name)
            if arr.shape[0] != spec.channels:
                raise DataError(f"{path}: {arr.shape[0]} channel(s), expected {spec.channels} for {name!r}")
            inputs[name] = torch.from_numpy(arr.astype(np.float32) * np.float32(src.scale))
        label = None
        label_path = self._index["label"].path(sample_id)
        if label_path is not None:
            arr = read_array(label_path, self.description.label.encoding)
            problems = self._label_problems(label_path, arr)
            if problems:
                raise DataError(problems[0])
            label = torch.from_numpy(arr[0].astype(np.int64))
        size = next(iter(inputs.values())).shape[-2:] if inputs else label.shape
        meta = {"id": sample_id, "split": self.split, "size": tuple(size),
                "attributes": dict(self.attributes.get(sample_id, {}))}
        return {"inputs": inputs, "label": label, "meta": meta}

    def __getitem__(self, key) -> Sample:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        sample = self.load(index)
        if self.transform is not None:
            sample = self.transform(sample, self.generator_for(epoch, index))
        return normalize_sample(sample)


def check_dataset(root: str | Path, splits: Sequence[str] | None = None) -> dict[str, int]:
    """Fully validate a dataset folder (all splits by default). Returns samples per split; raises DataError."""
    description = load_description(root)
    splits = list(splits) if splits else list_splits(root)
    if not splits:
        raise DataError(f"{Path(root) / 'splits'}: no split files (*.txt) found")
    counts, problems = {}, []
    for split in splits:
        try:
            ds = FolderDataset(root, split, check="none")
        except DataError as e:
            problems.append(str(e))
            continue
        counts[split] = len(ds)
        problems.extend(ds.find_problems(full=True))
    if problems:
        raise DataError(f"{root}: {len(problems)} problem(s) in dataset {description.name!r}", problems)
    return counts
