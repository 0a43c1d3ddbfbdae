"""The rgbx user-dataset format (``docs/dataset-format.md``): a folder per modality, labels, split files and a
``dataset.yaml``; registered as ``"folder"``."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import yaml

from rgbx.data.datasets.base import DATASETS, SegmentationDataset, StemIndex
from rgbx.data.description import DESCRIPTION_FILE, DatasetDescription, load_description
from rgbx.errors import ConfigError, DataError, SplitNotFoundError
from rgbx.modalities import ENCODINGS


def read_ids(path: Path) -> list[str]:
    """Sample ids of a split file: the first word of each non-empty, non-comment line."""
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


@DATASETS.register("folder")
class FolderDataset(SegmentationDataset):
    """A split of a dataset folder in the rgbx format (splits are ``splits/<split>.txt``). See
    :class:`~rgbx.data.datasets.base.SegmentationDataset` for the arguments."""

    def describe(self) -> DatasetDescription:
        return load_description(self.root)

    def list_ids(self) -> list[str]:
        split_file = self.root / "splits" / f"{self.split}.txt"
        if not split_file.is_file():
            raise SplitNotFoundError(f"{split_file}: split file not found (splits here: "
                            f"{', '.join(list_splits(self.root)) or 'none'})")
        ids = read_ids(split_file)
        if not ids:
            raise DataError(f"{split_file}: lists no sample ids")
        suffixes = {s for name in ENCODINGS.names() for s in ENCODINGS.get(name).suffixes}
        named = [i for i in ids if Path(i).suffix.lower() in suffixes]
        if named:
            raise DataError(f"{split_file}: lists file names ({named[0]!r}{' ...' if len(named) > 1 else ''}); a split "
                            f"lists sample ids, the file names without folder and extension ({Path(named[0]).stem!r})")
        nested = [i for i in ids if "/" in i or "\\" in i]
        if nested:
            flat = nested[0].replace("\\", "/").replace("/", "_")
            raise DataError(f"{split_file}: lists ids in sub-folders ({nested[0]!r}{' ...' if len(nested) > 1 else ''}); "
                            f"sub-folders are not supported: a sample's files lie directly in each modality's folder, "
                            f"so move them up and rename them (e.g. rgb/{flat}.png, listed as {flat!r})")
        self._attributes = read_attributes(self.root)
        return ids

    @classmethod
    def splits_on_disk(cls, root: Path) -> list[str]:
        load_description(root)
        splits = list_splits(root)
        if not splits:
            raise DataError(f"{root / 'splits'}: no split files (*.txt) found")
        return splits

    def _index(self, name: str) -> StemIndex:
        if not hasattr(self, "_indices"):
            self._indices = {}
        if name not in self._indices:
            src = self.description.label if name == "label" else self.description.modalities[name]
            self._indices[name] = StemIndex(self.root / src.folder, src.suffixes)
        return self._indices[name]

    def files(self, sample_id: str) -> dict[str, Path | None]:
        return {name: self._index(name).path(sample_id) for name in [*self.sources, "label"]}

    def stem_indices(self) -> list[StemIndex]:
        return [self._index(name) for name in [*self.sources, "label"]]

    def attributes(self, sample_id: str) -> dict[str, str]:
        return self._attributes.get(sample_id, {})


def write_linked_description(source: str | Path, folder: str | Path, final: str | Path | None = None, *,
                             label: dict, description: str) -> Path:
    """``folder/dataset.yaml`` for a dataset whose sensor files are ``source``'s and whose labels are its own: the
    source's description with each modality's ``folder`` pointing at the source's (relative to ``final``, where the
    folder will be once complete — ``folder`` itself by default —, so that both can move together; absolute when
    no relative path exists), and ``label`` (a storage entry, e.g. ``{folder: label, encoding: png}``)."""
    source, folder = Path(source), Path(folder)
    final = Path(final) if final is not None else folder
    desc = load_description(source)  # checked, defaults resolved
    raw = yaml.safe_load((source / DESCRIPTION_FILE).read_text())
    modalities = {}
    for name, entry in raw["modalities"].items():
        target = os.path.abspath(source / desc.modalities[name].folder)
        try:
            where = os.path.relpath(target, os.path.abspath(final))
        except ValueError:  # another drive (Windows)
            where = target
        modalities[name] = {**(entry or {}), "folder": Path(where).as_posix()}
    path = folder / DESCRIPTION_FILE
    path.write_text(yaml.safe_dump({**raw, "modalities": modalities, "label": label, "description": description},
                                   sort_keys=False, allow_unicode=True))
    return path


def copy_labels(source: str | Path, split: str, folder: str | Path, dtype=np.uint8, options: dict | None = None) -> int:
    """Write the labels of a split of the dataset folder ``source`` to ``folder/<id>.png`` as class indices (the
    source's decoding applied, its ignore index kept), whatever the source stores them as. Samples without a label
    file are skipped. Returns the labels written."""
    from rgbx.modalities import write_array

    ds = FolderDataset(source, split, modalities=[], check="none", **(options or {}))
    written = 0
    for sid in ds.ids:
        path = ds.files(sid)["label"]
        if path is None or not ds.file_exists(path):
            continue
        raw = ds.read_file(path, ds.description.label.encoding)
        write_array(Path(folder) / f"{sid}.png", ds.decode_label(ds.label_plane(raw)).astype(dtype))
        written += 1
    return written


def check_dataset(root: str | Path, splits=None, dataset: str = "folder", **options) -> dict[str, int]:
    """Fully validate a dataset (all splits of a folder-format dataset by default). Returns samples per split."""
    cls = DATASETS.get(dataset)
    explicit = bool(splits)
    if splits:
        splits = list(splits)
    else:  # the splits the folder lists (rgbx's formats), else the benchmark's own
        splits = cls.splits_on_disk(Path(root))
        if splits is None:
            splits = list(getattr(cls, "SPLITS", ("train", "test")))
    counts, problems = {}, []
    name = None
    skipped = []  # why each benchmark split was not found, for when none is
    checked = set()  # the files of each split checked (e.g. MFNet's val reads test.txt: the same files, checked once)
    for split in splits:
        try:
            ds = cls(root, split, check="none", **options)
        except SplitNotFoundError as e:
            if not explicit and dataset != "folder":
                skipped.append(str(e))
                continue  # a benchmark split the user has not downloaded (e.g. a test split)
            problems.append(str(e))
            continue
        except DataError as e:
            problems.extend(e.problems or [str(e)])  # a dataset.yaml's problems one by one, each counted
            continue
        name = ds.description.name
        counts[split] = len(ds)
        files = tuple(tuple(sorted((k, str(p)) for k, p in ds.files(i).items())) for i in ds.ids)
        if files not in checked:
            checked.add(files)
            problems.extend(ds.find_problems(full=True))
    if not counts and not problems:
        problems.append(f"{root}: none of the {dataset} splits ({', '.join(splits)}) found"
                        f"{f' ({skipped[0]})' if skipped else ''}")
    # an archive extracted a level too deep, or the root given too deep
    advice = _layout_elsewhere(cls, Path(root), splits, options) if not counts and dataset != "folder" else None
    problems = list(dict.fromkeys(problems))  # a layout problem is found once per split; report it once
    if problems:
        name = name or _described_name(Path(root))
        raise DataError(f"{root}: {len(problems)} problem(s) in dataset {name or dataset!r}", problems, advice)
    return counts


def _described_name(root: Path) -> str | None:
    """The name in ``root``'s dataset.yaml, for when no split could be read (the one asked for is missing): the
    problems name the dataset as with any other split; None without a readable one."""
    if not (root / DESCRIPTION_FILE).is_file():
        return None
    try:
        return load_description(root).name
    except (DataError, ConfigError):
        return None


def _layout_elsewhere(cls, root: Path, splits: list[str], options: dict) -> str | None:
    """``"DIR holds the ... layout: point at that folder"`` when a folder one level below or above ``root`` holds
    a split of the dataset (an archive extracted one level too deep, or the root given one level too deep)."""
    below = sorted(p for p in root.iterdir() if p.is_dir())[:20] if root.is_dir() else []
    for candidate in [*below, root.parent]:
        for split in splits:
            try:
                cls(candidate, split, check="none", **options)
            except (DataError, OSError):
                continue
            return f"{candidate} holds the {cls.registered_name()} layout: point at that folder"
    return None
