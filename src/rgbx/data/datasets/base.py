"""The base of every on-disk dataset: one split as samples in the rgbx contract, validated up front.

A dataset class says *where* things are (:meth:`~SegmentationDataset.describe`, :meth:`list_ids`, :meth:`files`)
and how raw file values become labels (:meth:`decode_label`) or physical units (:meth:`decode_modality`); this base
does the rest the same way for all: dataset-specific keyword options (``OPTIONS``), checking every file before
training (existence, readable header, channel count, dtype, size agreement, and with ``check="full"`` decoded label
values), reading, per-sample seeded augmentation and normalisation. Datasets whose files are not one image per
modality and sample (point clouds, event lists, a modality split over two files, lower-resolution sensors,
multi-channel labels) override the reading hooks listed in :class:`SegmentationDataset`; validation and loading stay
here. Each dataset registers by name in :data:`DATASETS` (``data.dataset`` in a config).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from rgbx.data.description import DESCRIPTION_FILE, DatasetDescription, ModalitySource
from rgbx.data.files import FLOAT_RANGE_MARGIN, PALETTE_HINT, check_encoding, resize_nearest
from rgbx.data.sample import Sample, normalize_sample
from rgbx.data.transforms.photometric import empty_value
from rgbx.errors import ConfigError, DataError
from rgbx.modalities import get_modality, read_array
from rgbx.modalities.encodings import is_channels_last
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
    size: tuple[int, int] | None  # (H, W); None for files without an image size (e.g. event lists)
    palette: bool = False  # a palette (indexed-colour) image: read as its indices, one channel


class DecodeProblem(DataError):
    """A file's values cannot be decoded (raised by decoding helpers that do not know the path);
    :meth:`SegmentationDataset.load` adds the file's path to the message."""

    def __init__(self, name: str, message: str):
        self.name = name
        super().__init__(message)


def probe_file(path: Path, encoding: str) -> FileInfo:
    """Channels, dtype and size of a file, reading only its header where the format allows."""
    if encoding == "npy":
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise DataError(f"{path}: unreadable .npy ({e})") from None
        if arr.ndim == 2:
            return FileInfo(1, str(arr.dtype), tuple(arr.shape))
        if arr.ndim == 3 and is_channels_last(arr.shape):
            return FileInfo(arr.shape[2], str(arr.dtype), tuple(arr.shape[:2]))
        if arr.ndim == 3:
            return FileInfo(arr.shape[0], str(arr.dtype), tuple(arr.shape[1:]))
        raise DataError(f"{path}: expected an array of shape (H, W), (C, H, W) or (H, W, C), got {arr.shape}")
    try:
        with Image.open(path) as im:
            mode, (w, h) = im.mode, im.size
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise DataError(f"{path}: unreadable image ({e})") from None
    if mode not in _PIL_MODES:
        raise DataError(f"{path}: unsupported image mode {mode!r}")
    channels, dtype = _PIL_MODES[mode]
    return FileInfo(channels, dtype, (h, w), palette=mode == "P")


LOSSY_SUFFIXES = (".jpg", ".jpeg")  # a label file in these formats cannot hold exact class ids


def _values(arr: np.ndarray) -> np.ndarray:
    """The values present in an integer array, ascending."""
    flat = arr.ravel()
    if flat.size and flat.dtype.kind in "ui" and flat.min() >= 0 and flat.max() < 1 << 16:
        return np.flatnonzero(np.bincount(flat))  # without np.unique's sort (2x faster)
    return np.unique(flat)


class StemIndex:
    """stem → file name for one folder, listed once; when a stem has several suffixes the earliest in
    ``suffixes`` wins."""

    def __init__(self, folder: Path, suffixes: Sequence[str]):
        self.folder = folder
        rank = {s: i for i, s in enumerate(suffixes)}
        found: dict[str, list[tuple[int, str]]] = {}
        if folder.is_dir():
            for name in os.listdir(folder):
                stem, suffix = os.path.splitext(name)
                r = rank.get(suffix.lower())
                if r is not None:
                    found.setdefault(stem, []).append((r, name))
        self.files = {stem: min(names)[1] for stem, names in found.items()}
        # stems with several files (0.png beside 0.jpg): which one is meant is not known, so the check names them
        self.conflicts = {stem: [n for _, n in sorted(names)] for stem, names in found.items() if len(names) > 1}

    def path(self, stem: str) -> Path | None:
        name = self.files.get(stem)
        return None if name is None else self.folder / name

    def first(self) -> Path | None:
        return self.folder / self.files[min(self.files)] if self.files else None


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
        **options: dataset-specific options (``data.options``), declared with their defaults in ``OPTIONS``; an
            unknown one is a :class:`ConfigError`. All of them end up in ``self.options``.

    Items are samples (see :mod:`rgbx.data.sample`) with normalised inputs; :meth:`load` gives them in physical units
    before any transform. ``screen``: ``screen(sample) -> sample`` in physical units before the transform (e.g.
    :class:`rgbx.data.sensor_health.FrameScreen`: failed sensors left out), or None.

    A dataset class implements :meth:`describe`, :meth:`list_ids` and :meth:`files`, and may override:

    - :meth:`configure`: validate ``self.options`` (called before :meth:`describe`);
    - :meth:`attributes`, :meth:`layout_problems`, :meth:`extra_problems` (checks of companion files);
    - :meth:`expected_channels` / :meth:`accepted_channels` / :meth:`accepted_dtypes`: the on-disk forms of a
      modality (e.g. RGB or RGBA);
    - :meth:`probe_source` / :meth:`read_source`: files that are not PNG/.npy images (point clouds, event lists,
      modalities split over two files, .npz), given the sample id;
    - :meth:`decode_modality`, :meth:`decode_label`, and ``LABEL_CHANNELS`` / :meth:`label_plane` for
      multi-channel label images;
    - ``RESIZED``: modalities stored at a lower resolution, resampled (nearest) to the label size on loading (a
      dataset.yaml adds those whose entry says ``resize: nearest``);
    - ``DECODE_ON_CHECK``: with ``check="full"``, also decode every modality file (default: read it only);
    - ``CLASSES``: a public benchmark's fixed class names, in label order (:meth:`class_names`; a folder dataset
      names its classes in its dataset.yaml instead).
    """

    screen: Callable[[Sample], Sample] | None = None  # e.g. rgbx.data.sensor_health.FrameScreen

    OPTIONS: dict[str, Any] = {}
    CLASSES: tuple[str, ...] = ()
    RESIZED: frozenset[str] = frozenset()
    # modality → how to read the dataset so that it offers that modality, when an option decides it
    MODALITY_HINTS: dict[str, str] = {}
    LABEL_CHANNELS: tuple[int, ...] = (1,)
    DECODE_ON_CHECK: bool = False

    @classmethod
    def class_names(cls, num_classes: int) -> tuple[str, ...]:
        """The dataset's class names for a model with ``num_classes`` outputs (a released checkpoint trained on it),
        without reading any file; a ConfigError when the dataset has no fixed list, or not one of that length."""
        name = cls.registered_name()
        if not cls.CLASSES:
            raise ConfigError(f"dataset {name!r} has no fixed class list (a folder dataset names its classes in "
                              f"its dataset.yaml)")
        if len(cls.CLASSES) != num_classes:
            raise ConfigError(f"dataset {name!r} has {len(cls.CLASSES)} classes; the model has {num_classes}")
        return cls.CLASSES

    def __init__(self, root: str | Path, split: str, modalities: Sequence[str] | None = None,
                 transform: Callable | None = None, seed: int = 0, check: str = "headers", **options):
        unknown = sorted(set(options) - set(self.OPTIONS))
        if unknown:
            raise ConfigError(f"data.options: unknown option(s) {', '.join(unknown)} for dataset "
                              f"{self.registered_name()!r} (options: {', '.join(self.OPTIONS) or 'none'})")
        self.options: dict[str, Any] = {**self.OPTIONS, **options}
        self.configure(self.options)
        if check not in CHECK_LEVELS:
            raise DataError(f"check={check!r}: expected one of {', '.join(CHECK_LEVELS)}")
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"{self.root}: dataset folder not found")
        self.split = split
        self.description: DatasetDescription = self.describe()
        resized = {n for n, src in self.description.modalities.items() if src.resize}
        if resized:  # a dataset.yaml's ``resize: nearest``
            self.RESIZED = self.RESIZED | resized
        self.ids: list[str] = self.list_ids()
        if not self.ids:
            raise DataError(f"{self.root}: split {split!r} has no samples")
        names = list(self.description.modalities) if modalities is None else list(modalities)
        missing = [m for m in names if m not in self.description.modalities]
        if missing:
            hints = "".join(f"; {m}: {self.MODALITY_HINTS[m]}" for m in missing if m in self.MODALITY_HINTS)
            raise DataError(f"{self.root}: the dataset has no modality {', '.join(map(repr, missing))} "
                            f"(it has: {', '.join(self.description.modalities)}){hints}")
        self.sources: dict[str, ModalitySource] = {m: self.description.modalities[m] for m in names}
        self.transform = transform
        self.seed = seed
        if check != "none":
            problems = self.find_problems(full=(check == "full"))
            if problems:
                raise DataError(f"{self.root}: split {split!r} has {len(problems)} problem(s)", problems)

    @classmethod
    def registered_name(cls) -> str:
        """The name the dataset is registered under (``data.dataset``); ``NAME`` or the class name if none."""
        registered = next((n for n in DATASETS if DATASETS.get(n) is cls), None)
        return getattr(cls, "NAME", None) or registered or cls.__name__

    # -- what a dataset class provides -----------------------------------------------------------------------------
    def configure(self, options: dict) -> None:
        """Validate ``options`` and store what the dataset needs (called before :meth:`describe`)."""

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
        label = self.description.label
        for src in [*self.sources.values(), label]:
            folder = self.root / src.folder
            if not folder.is_dir() and not (src is label and src.optional):  # an optional label: samples unlabelled
                what = "label" if src is label else "modality"
                fix = (f"an unlabelled split says '{label.name}: {{folder: {label.folder}, optional: true}}' in "
                       f"{DESCRIPTION_FILE}" if src is label else "")
                problems.append(f"{folder}: {what} folder for {src.name!r} not found{self.yaml_fix(fix)}")
        return problems

    def yaml_fix(self, fix: str) -> str:
        """``"; <fix>"`` for a dataset whose storage its dataset.yaml describes (the rgbx folder format, packed or not):
        a problem ends with the key that solves it; "" for a benchmark's fixed layout, or no ``fix``."""
        return f"; {fix}" if fix and (self.root / DESCRIPTION_FILE).is_file() else ""

    @classmethod
    def splits_on_disk(cls, root: Path) -> list[str] | None:
        """The splits a dataset folder lists itself (``rgbx data check`` checks them all; raise :class:`DataError` when
        it lists none); None: the dataset's fixed splits (``SPLITS``), those on disk checked."""
        return None

    def stem_indices(self) -> list[StemIndex]:
        """The folders this split's files are found in by stem (a sample with two files in one is a problem)."""
        return []

    def extra_problems(self, sample_id: str, paths: dict) -> list[str]:
        """Problems with one sample's companion files (calibration, a second file of a modality); default none."""
        return []

    def expected_channels(self, name: str) -> int:
        """Channels of ``name``'s files on disk (default: the spec's); :meth:`decode_modality` must turn them into
        the spec's channel count."""
        return get_modality(name).channels

    def accepted_channels(self, name: str) -> tuple[int, ...]:
        """Channel counts accepted for ``name``'s files (default: :meth:`expected_channels` only)."""
        return (self.expected_channels(name),)

    def accepted_dtypes(self, name: str) -> tuple[str, ...]:
        """Dtypes accepted for ``name``'s files (default: the source's)."""
        return (self.sources[name].dtype,)

    # where the bytes come from: files on disk by default (a packed dataset reads members of its shards instead)
    def file_exists(self, path: Path) -> bool:
        return Path(path).is_file()

    def read_file(self, path: Path, encoding: str) -> np.ndarray:
        """A file's raw (C, H, W) values."""
        return read_array(path, encoding)

    def probe_path(self, path: Path, encoding: str) -> FileInfo:
        """A file's channels, dtype and size, from its header where the format allows."""
        return probe_file(path, encoding)

    def probe_source(self, name: str, path: Path, sample_id: str) -> FileInfo:
        """Channels, dtype and (H, W) of ``name``'s file; ``size`` may be None when the file has no image size."""
        return self.probe_path(path, self.sources[name].encoding)

    def read_source(self, name: str, path: Path, sample_id: str) -> np.ndarray:
        """The raw (C, H, W) file values handed to :meth:`decode_modality`."""
        return self.read_file(path, self.sources[name].encoding)

    def label_plane(self, raw: np.ndarray) -> np.ndarray:
        """The (H, W) plane of a (C, H, W) label file that holds the class values (default: channel 0)."""
        return raw[0]

    def decode_label(self, raw: np.ndarray) -> np.ndarray:
        """Raw (H, W) label file values → class indices with ``ignore_index`` (default: unchanged)."""
        return raw

    @classmethod
    def decodes_by_scale(cls) -> bool:
        """Whether every sensor's file values become physical units by its source's ``scale`` alone (the rgbx folder
        format, packed or not), so that a model trained on it can read loose files stored the same way
        (:func:`rgbx.models.model_file.dataset_record`); False for a loader with its own decoding (NYU's 8-bit
        relative depth, MFNet's 4-channel images, ...)."""
        base = SegmentationDataset
        return all(getattr(cls, name) is getattr(base, name) for name in ("decode_modality", "read_source", "load"))

    def decode_modality(self, name: str, raw: np.ndarray) -> np.ndarray:
        """Raw (C, H, W) file values → physical units (default: × the source's scale).

        Written into a C-contiguous float32 array in place: a (C, H, W) view of an (H, W, C) image would otherwise be
        converted, scaled and then copied again to make it contiguous (2.1 → 0.5 ms for RGB 480×640)."""
        out = np.empty(raw.shape, np.float32)
        out[...] = raw
        out *= np.float32(self.sources[name].scale)
        return out

    # -- validation ---------------------------------------------------------------------------------------------
    def find_problems(self, full: bool = False, workers: int = 4) -> list[str]:
        """Every problem with this split's files, as readable lines (empty list = fine)."""
        problems = self.layout_problems()
        if problems:
            return problems
        with ThreadPoolExecutor(workers) as pool:
            for found in pool.map(lambda sid: self._sample_problems(sid, full), self.ids):
                problems.extend(found)
        label = self.description.label
        unlabelled = sum(f": missing {label.name} file for sample " in p for p in problems)  # one per sample
        if unlabelled == len(self.ids):
            if (self.root / DESCRIPTION_FILE).is_file():  # the rgbx folder format: its dataset.yaml says so
                problems.append(f"no sample of split {self.split!r} has a {label.name} file: if the split is "
                                f"unlabelled (recordings to predict or pseudo-label), say so in dataset.yaml with "
                                f"'{label.name}: {{folder: {label.folder}, optional: true}}' (docs/dataset-format.md)")
            else:
                problems.append(f"no sample of split {self.split!r} has a {label.name} file in "
                                f"{self.root / label.folder}")
        return problems

    def require_attribute(self, name: str | None, setting: str, none_hint: str, asked: bool = False) -> None:
        """Raise :class:`ConfigError` when ``name`` (a per-sample attribute to report results by, given as
        ``setting``) is on no sample of the split; no name passes, and so does ``condition`` (the default grouping)
        unless ``asked`` for. ``none_hint`` says how to report only the whole split."""
        if not name or (name == "condition" and not asked) or any(name in self.attributes(i) for i in self.ids):
            return
        found = sorted({a for i in self.ids for a in self.attributes(i)})
        raise ConfigError(f"{setting}: no sample of {self.root} [{self.split}] has that attribute (attributes here: "
                          f"{', '.join(found) or 'none'}; {none_hint} reports only the whole split)")

    def unlabelled_ids(self) -> list[str]:
        """The split's samples without a label file (only a dataset whose label is optional can have them)."""
        if not self.description.label.optional:
            return []
        return [sid for sid in self.ids
                if (path := self.files(sid).get("label")) is None or not self.file_exists(path)]

    def evaluation_note(self) -> str | None:
        """What ``rgbx eval`` should say about scoring this split as loaded (e.g. an evaluation region other than the
        published protocols'), or None."""
        return None

    def require_labels(self, purpose: str) -> None:
        """Raise :class:`DataError` when a sample of the split has no label file, saying what needs them."""
        missing = self.unlabelled_ids()
        if missing:
            raise DataError(f"{self.root}: {len(missing)} of the {len(self.ids)} samples of split {self.split!r} have "
                            f"no label file ({', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}); "
                            f"{purpose} needs labelled samples")

    def _sample_problems(self, sample_id: str, full: bool) -> list[str]:
        problems, sizes = [], {}
        label_src = self.description.label
        paths = self.files(sample_id)
        for src in [*self.sources.values(), label_src]:
            is_label = src is label_src
            path = paths.get(src.name)
            if path is None or not self.file_exists(path):
                if not src.optional:
                    problems.append(self._missing_file(src, path, sample_id))
                continue
            path = Path(path)
            try:
                info = self.probe_path(path, src.encoding) if is_label else self.probe_source(src.name, path, sample_id)
            except DataError as e:
                problems.append(str(e))
                continue
            if is_label:
                if path.suffix.lower() in LOSSY_SUFFIXES:
                    problems.append(f"{path}: a {path.suffix} label image: lossy compression changes the class ids "
                                    f"along every boundary; store labels losslessly (PNG)")
                if info.channels not in self.LABEL_CHANNELS:
                    problems.append(self._label_channels_problem(path, info.channels))
                if info.dtype not in ("uint8", "uint16", "int32", "int64", "bool"):
                    problems.append(f"{path}: label dtype {info.dtype}, expected an integer type (uint8/uint16)")
            else:
                want = self.accepted_channels(src.name)
                if info.channels not in want:
                    hint = PALETTE_HINT if info.palette else ""
                    problems.append(f"{path}: {info.channels} channel(s), expected "
                                    f"{' or '.join(map(str, want))} for {src.name!r}{hint}")
                dtypes = self.accepted_dtypes(src.name)
                if info.dtype not in dtypes:
                    problems.append(f"{path}: dtype {info.dtype}, expected {' or '.join(dtypes)} for {src.name!r}"
                                    f"{self._dtype_fix(src.name, info.dtype, dtypes)}")
            if info.size is not None and src.name not in self.RESIZED:
                sizes[src.name] = (path, info.size)
            if full:
                try:
                    if is_label:
                        raw = self.label_plane(self.read_file(path, src.encoding))
                        problems.extend(self.raw_label_problems(path, raw)
                                        or self._label_problems(path, self.decode_label(raw), raw))
                    else:
                        arr = self.read_source(src.name, path, sample_id)
                        if self.DECODE_ON_CHECK or arr.dtype.kind == "f":
                            self.check_units(src.name, path, arr, self._decode(src.name, path, arr))
                except DecodeProblem as e:  # raised where the path is not known
                    problems.append(f"{path}: {e}")
                except DataError as e:
                    problems.append(str(e))
        problems.extend(self.extra_problems(sample_id, paths))
        for index in self.stem_indices():
            names = index.conflicts.get(sample_id)
            if names:
                problems.append(f"{index.folder}: {len(names)} files for sample {sample_id!r} ({', '.join(names)}); "
                                f"{names[0]} would be read: keep only the one that belongs to the sample")
        if sizes:
            ref_name = label_src.name if label_src.name in sizes else next(iter(sizes))
            ref_path, ref_size = sizes[ref_name]
            for name, (path, size) in sizes.items():
                if size != ref_size:
                    fix = (f"a sensor stored at another resolution is resampled to the {ref_name}'s size on loading with "
                           f"'resize: nearest' under modalities.{name} in {DESCRIPTION_FILE}" if name != "label" else "")
                    problems.append(f"{path}: size {size[0]}x{size[1]} (HxW) differs from {ref_path} "
                                    f"{ref_size[0]}x{ref_size[1]}{self.yaml_fix(fix)}")
        return problems

    def _missing_file(self, src: ModalitySource, path: Path | None, sample_id: str) -> str:
        """The problem of a sample without its file of a (not optional) modality or label."""
        where = path if path is not None else self.root / src.folder / sample_id
        fix = (f"a sensor that may be absent from a sample says 'optional: true' under modalities.{src.name} in "
               f"{DESCRIPTION_FILE}" if src is not self.description.label else "")
        return f"{where}: missing {src.name} file for sample {sample_id!r}{self.yaml_fix(fix)}"

    def _dtype_fix(self, name: str, found: str, accepted: Sequence[str]) -> str:
        """How to make ``name``'s files of dtype ``found`` acceptable: re-saved, or declared in dataset.yaml."""
        if found == "float64" and "float32" in accepted:  # numpy's default float
            return "; save it as float32 (arr.astype(np.float32))"
        spec = get_modality(name)
        scale = "scale: 1" if np.dtype(found).kind == "f" else "scale: S"
        return self.yaml_fix(f"declare how the files are stored in {DESCRIPTION_FILE}: modalities.{name}: "
                             f"{{dtype: {found}, {scale}}} (file value × scale = {spec.unit or 'the physical value'})")

    def check_units(self, name: str, path: Path, raw: np.ndarray, x: np.ndarray) -> None:
        """Refuse a float file whose values, decoded to ``x`` (physical units), are far above what ``name``'s
        encoding can express — a unit mistake, e.g. depth in millimetres read as metres —, as ``rgbx predict`` does
        for loose files (:func:`rgbx.data.files.check_encoding`), naming the ``scale`` that would fix it."""
        if raw.dtype.kind != "f":  # integer files: their dtype and scale are declared and checked
            return
        spec = get_modality(name)
        try:
            check_encoding(x, spec, str(path))
        except DataError as e:
            top = float(np.abs(x[np.isfinite(x)]).max())
            bound = np.iinfo(spec.dtype).max * spec.scale
            scale = self.sources[name].scale
            unit = spec.unit or "its physical unit"
            fix = (f"scale: {scale * spec.scale:g}" if top * spec.scale <= FLOAT_RANGE_MARGIN * bound
                   else f"scale: S (file value × scale = {unit})")
            hint = f"or, in {DESCRIPTION_FILE}, say how the file values become {unit}: modalities.{name}: {{..., {fix}}}"
            raise DataError(f"{e}{self.yaml_fix(hint)}") from None

    def _label_channels_problem(self, path: Path, channels: int) -> str:
        if self.LABEL_CHANNELS == (1,):
            return f"{path}: {channels} channel(s), expected a 1-channel label image"
        return (f"{path}: {channels} channel(s), expected a label image with "
                f"{' or '.join(map(str, self.LABEL_CHANNELS))} channel(s)")

    def raw_label_problems(self, path: Path, raw: np.ndarray) -> list[str]:
        """Problems with a label file's values as stored, before :meth:`decode_label` (e.g. values the dataset's
        label encoding does not have); none by default. Called for every sample loaded: keep it cheap."""
        return []

    def _label_problems(self, path: Path, label: np.ndarray, raw: np.ndarray | None = None) -> list[str]:
        k, ignore = self.description.num_classes, self.description.ignore_index
        bad = [int(v) for v in _values(label) if not (0 <= v < k or v == ignore)]
        if not bad:
            return []
        found = f"label values {bad[:10]}"
        if raw is not None and raw.shape == label.shape and not np.array_equal(raw, label):  # decoded: say the file's
            stored = _values(raw[np.isin(label, bad)])
            found = f"label values {[int(v) for v in stored[:10]]} in the file (read as {bad[:10]})"
        return [f"{path}: {found} out of range: expected 0..{k - 1} or ignore {ignore}"]

    # -- loading ------------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.ids)

    def generator_for(self, epoch: int, index: int) -> torch.Generator:
        g = torch.Generator()
        g.manual_seed((self.seed * 1_000_003 + epoch) * 10_000_019 + index)
        return g

    def _decode(self, name: str, path: Path, raw: np.ndarray) -> np.ndarray:
        """:meth:`decode_modality`, with the file's path added to a :class:`DecodeProblem`."""
        try:
            return self.decode_modality(name, raw)
        except DecodeProblem as e:
            raise DataError(f"{path}: {e}") from None

    def load(self, index: int) -> Sample:
        """Sample ``index`` in physical units, before any transform."""
        sample_id = self.ids[index]
        paths = self.files(sample_id)
        label = None
        label_path = paths.get("label")
        if label_path is not None and self.file_exists(label_path):
            arr = self.read_file(label_path, self.description.label.encoding)
            if arr.shape[0] not in self.LABEL_CHANNELS:
                raise DataError(self._label_channels_problem(label_path, arr.shape[0]))
            raw = self.label_plane(arr)
            try:
                lab = self.decode_label(raw)
            except DecodeProblem as e:
                raise DataError(f"{label_path}: {e}") from None
            problems = self.raw_label_problems(label_path, raw) or self._label_problems(label_path, lab, raw)
            if problems:
                raise DataError(problems[0])
            label = torch.from_numpy(lab.astype(np.int64))
        inputs = {}
        for name, src in self.sources.items():
            path = paths.get(name)
            if path is None or not self.file_exists(path):
                if src.optional:
                    continue
                raise DataError(self._missing_file(src, path, sample_id))
            arr = self.read_source(name, Path(path), sample_id)
            want = self.accepted_channels(name)
            if arr.shape[0] not in want:
                raise DataError(f"{path}: {arr.shape[0]} channel(s), expected {' or '.join(map(str, want))} "
                                f"for {name!r}")
            x = np.ascontiguousarray(self._decode(name, path, arr), np.float32)
            self.check_units(name, path, arr, x)
            if arr.dtype.kind == "f" and not np.isfinite(x).all():  # NaN / inf in a float file: no measurement
                x = np.where(np.isfinite(x), x, np.float32(empty_value(get_modality(name))))
            if x.shape[0] != get_modality(name).channels:
                raise DataError(f"{path}: decoded to {x.shape[0]} channel(s), the {name!r} spec has "
                                f"{get_modality(name).channels}")
            inputs[name] = torch.from_numpy(x)
        # sensors stored at another resolution: to the label's size, or (unlabelled) to the other sensors'
        ref = label.shape if label is not None else next(
            (t.shape[-2:] for n, t in inputs.items() if n not in self.RESIZED), None)
        if ref is not None:
            for name in self.RESIZED & inputs.keys():
                inputs[name] = torch.from_numpy(np.ascontiguousarray(resize_nearest(inputs[name].numpy(), tuple(ref))))
        size = next(iter(inputs.values())).shape[-2:] if inputs else label.shape
        meta = {"id": sample_id, "split": self.split, "size": tuple(size),
                "attributes": dict(self.attributes(sample_id))}
        return {"inputs": inputs, "label": label, "meta": meta}

    def __getitem__(self, key) -> Sample:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        sample = self.load(index)
        if self.screen is not None:
            sample = self.screen(sample)
        if self.transform is not None:
            sample = self.transform(sample, self.generator_for(epoch, index))
        return normalize_sample(sample)


class AsLoaded:
    """The first ``n`` samples of a dataset (all by default) as :meth:`SegmentationDataset.load` gives them: physical
    units, no screening, augmentation or normalisation; for a ``DataLoader(batch_size=None)`` that reads them in
    other processes while a model predicts."""

    def __init__(self, dataset: SegmentationDataset, n: int | None = None):
        self.dataset, self.n = dataset, len(dataset) if n is None else n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> Sample:
        return self.dataset.load(i)
