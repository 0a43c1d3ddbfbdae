"""``dataset.yaml``: what a dataset folder holds (see ``docs/dataset-format.md``).

:class:`DatasetDescription` is the parsed, checked form: classes, palette, ignore index and, per modality, where
its files are, how they are encoded and how file values become physical units.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from rgbx.errors import ConfigError, DataError
from rgbx.modalities import (
    BUILTIN_MODALITIES,
    ENCODINGS,
    MODALITIES,
    ModalitySpec,
    declare_modality,
    get_modality,
    spec_from_dict,
)

DESCRIPTION_FILE = "dataset.yaml"


def default_palette(n: int) -> list[tuple[int, int, int]]:
    """``n`` distinct colours, the PASCAL VOC bit-interleaving scheme (class 0 black, 1 dark red, 2 dark green, …).

    Deterministic, and the first ``k`` colours do not change when ``n`` grows.
    """
    palette = []
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette.append((r, g, b))
    return palette


@dataclass(frozen=True)
class ModalitySource:
    """Where and how one modality is stored in a dataset folder."""

    name: str
    folder: str
    encoding: str
    dtype: str
    scale: float
    optional: bool = False
    resize: str | None = None  # "nearest": stored at another resolution, resampled to the label's size on loading

    @property
    def suffixes(self) -> tuple[str, ...]:
        return ENCODINGS.get(self.encoding).suffixes


@dataclass(frozen=True)
class DatasetDescription:
    root: Path
    name: str
    classes: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    ignore_index: int
    modalities: dict[str, ModalitySource]
    label: ModalitySource
    extra: dict = field(default_factory=dict, compare=False)
    # sensors this dataset.yaml declares (``sensor:``): registered when it is parsed, and again when the description
    # is unpickled in a process that has not parsed it (a loader worker started with spawn)
    declared: dict[str, ModalitySpec] = field(default_factory=dict, compare=False)

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        for spec in state.get("declared", {}).values():
            declare_modality(spec, str(state.get("root", "a dataset description")))

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to_dict(self) -> dict:
        """The parts a model checkpoint needs to interpret its outputs."""
        return {
            "name": self.name,
            "classes": list(self.classes),
            "palette": [list(c) for c in self.palette],
            "ignore_index": self.ignore_index,
        }


_TOP_KEYS = {"name", "classes", "palette", "ignore_index", "modalities", "label", "synth", "description", "source"}
_SOURCE_KEYS = {"folder", "encoding", "dtype", "scale", "optional", "resize", "sensor"}
RESIZE_METHODS = ("nearest",)  # how a sensor stored at another resolution is brought to the label's size
# a modality stored in another encoding than its spec's gets that encoding's dtype and scale unless the YAML gives them
_ENCODING_DEFAULTS = {"npy": {"dtype": "float32", "scale": 1.0}}


def load_description(root: str | Path) -> DatasetDescription:
    """Parse and check ``root/dataset.yaml``; every problem is reported in one :class:`DataError`."""
    root = Path(root)
    path = root / DESCRIPTION_FILE
    if not root.is_dir():
        raise DataError(f"{root}: dataset folder not found")
    if not path.is_file():
        raise DataError(f"{path}: not found; a dataset folder needs a {DESCRIPTION_FILE} (see docs/dataset-format.md)")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise DataError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(raw, dict):
        raise DataError(f"{path}: expected a mapping with keys classes, modalities, ...")
    problems = []
    for key in sorted(set(raw) - _TOP_KEYS):
        problems.append(f"{path}: unknown key {key!r} (expected one of {', '.join(sorted(_TOP_KEYS))})")
    classes = raw.get("classes")
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        problems.append(f"{path}: 'classes' must be a non-empty list of class names")
        classes = []
    repeated = sorted({c for c in classes if classes.count(c) > 1})
    if repeated:  # classes are matched by name (fine-tuning, multi-dataset training): one name, one class
        problems.append(f"{path}: 'classes' names {', '.join(map(repr, repeated))} more than once")
    palette = raw.get("palette") or default_palette(len(classes))
    if len(palette) != len(classes) or not all(
        isinstance(c, (list, tuple)) and len(c) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in c)
        for c in palette
    ):
        problems.append(f"{path}: 'palette' must list one [r, g, b] (0-255) per class ({len(classes)} classes)")
        palette = default_palette(len(classes))
    ignore_index = raw.get("ignore_index", 255)
    if not isinstance(ignore_index, int) or 0 <= ignore_index < len(classes):
        problems.append(f"{path}: 'ignore_index' must be an integer outside 0..{len(classes) - 1}, got {ignore_index!r}")
        ignore_index = 255

    def source(name: str, entry, default_folder: str, spec_defaults: dict) -> ModalitySource | None:
        entry = entry or {}
        if not isinstance(entry, dict):
            problems.append(f"{path}: modalities.{name} must be a mapping (e.g. {{encoding: png}})")
            return None
        for key in sorted(set(entry) - _SOURCE_KEYS):
            problems.append(f"{path}: modalities.{name}: unknown key {key!r} (expected {', '.join(sorted(_SOURCE_KEYS))})")
        if entry.get("encoding", spec_defaults["encoding"]) != spec_defaults["encoding"]:
            # stored otherwise than the spec says: its dtype and scale are those of the chosen encoding (a float
            # .npy holds physical units: depth in metres), not the spec's (a uint16 PNG in millimetres)
            spec_defaults = {**spec_defaults, **_ENCODING_DEFAULTS.get(entry.get("encoding"), {})}
        values = {**spec_defaults, "folder": default_folder, **{k: v for k, v in entry.items() if k in _SOURCE_KEYS}}
        where = f"{path}: modalities.{name}" if name != "label" else f"{path}: label"
        if values["encoding"] not in ENCODINGS:
            problems.append(f"{where}: unknown encoding {values['encoding']!r} "
                            f"(registered: {', '.join(ENCODINGS.names())})")
            return None
        scale = values["scale"]
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
            problems.append(f"{where}: 'scale' must be a positive number (file value × scale = the physical value), "
                            f"got {scale!r}")
            return None
        try:
            dtype = np.dtype(str(values["dtype"])).name
        except TypeError:
            problems.append(f"{where}: unknown dtype {values['dtype']!r} (e.g. uint8, uint16, float32)")
            return None
        optional = values.get("optional", False)
        if not isinstance(optional, bool):
            problems.append(f"{where}: 'optional' must be true or false, got {optional!r}")
            return None
        resize = values.get("resize")
        if resize is not None and name == "label":
            problems.append(f"{where}: 'resize' is for a sensor stored at another resolution; the label sets the size")
            return None
        if resize is not None and resize not in RESIZE_METHODS:
            problems.append(f"{where}: 'resize' must be {' or '.join(RESIZE_METHODS)} (resampled to the label's size "
                            f"on loading), got {resize!r}")
            return None
        return ModalitySource(name=name, folder=str(values["folder"]), encoding=values["encoding"],
                              dtype=dtype, scale=float(scale), optional=optional, resize=resize)

    modalities = {}
    entries = raw.get("modalities")
    if not isinstance(entries, dict) or not entries:
        problems.append(f"{path}: 'modalities' must map modality names to their storage, e.g. {{rgb: {{}}}}")
        entries = {}
    declared = {}
    for name, entry in entries.items():
        if isinstance(entry, dict) and "sensor" in entry:
            spec = _declare_sensor(path, name, entry, problems)
            if spec is None:
                continue
            declared[name] = spec
        if name not in MODALITIES:
            problems.append(f"{path}: unknown modality {name!r} (registered: {', '.join(MODALITIES.names())}); a "
                            f"sensor rgbx does not know is declared with 'sensor: {{channels: N, ...}}' "
                            f"(docs/dataset-format.md)")
            continue
        spec = get_modality(name)
        src = source(name, entry, name, {"encoding": spec.encoding, "dtype": spec.dtype, "scale": spec.scale})
        if src is not None:
            modalities[name] = src
    label = source("label", raw.get("label"), "label", {"encoding": "png", "dtype": "uint8", "scale": 1.0})
    if problems:
        raise DataError(f"{path}: invalid dataset description, {len(problems)} problem(s)", problems)
    return DatasetDescription(
        root=root,
        name=str(raw.get("name", root.name)),
        classes=tuple(classes),
        palette=tuple(tuple(c) for c in palette),
        ignore_index=ignore_index,
        modalities=modalities,
        label=label,
        extra={k: raw[k] for k in ("synth", "description", "source") if k in raw},
        declared=declared,
    )


def _declare_sensor(path: Path, name: str, entry: dict, problems: list[str]) -> ModalitySpec | None:
    """Register the sensor ``modalities.<name>.sensor`` declares (channels, normalisation, ...; its storage defaults
    come from the entry's own encoding / dtype / scale). Returns its spec, or None after adding the problem."""
    from rgbx.data.transforms.photometric import PHOTOMETRIC

    sensor = entry["sensor"]
    where = f"{path}: modalities.{name}.sensor"
    if not isinstance(sensor, dict):
        problems.append(f"{where}: must be a mapping, e.g. {{channels: 1, mean: [0.0], std: [1.0]}}")
        return None
    if name in BUILTIN_MODALITIES:
        problems.append(f"{where}: {name!r} is a built-in sensor, which cannot be redefined; drop 'sensor:' (how its "
                        f"files are stored, encoding / dtype / scale, goes under modalities.{name} itself)")
        return None
    storage = {k: sensor[k] for k in ("encoding", "dtype", "scale") if k in sensor}
    if storage:
        problems.append(f"{where}: {', '.join(storage)} belong to modalities.{name} itself (how files are stored)")
        return None
    stored = {k: entry[k] for k in ("encoding", "dtype", "scale") if k in entry}
    stored = {**_ENCODING_DEFAULTS.get(stored.get("encoding"), {}), **stored}  # npy: float32 × 1, as for a known one
    fields = {"description": f"declared in {path}", **sensor, **stored}
    ops = fields.get("photometric") or ()
    unknown_ops = [op for op in ops if op not in PHOTOMETRIC] if isinstance(ops, list | tuple) else []
    if unknown_ops:
        problems.append(f"{where}: unknown photometric transform{'s' if len(unknown_ops) > 1 else ''} "
                        f"{', '.join(map(str, unknown_ops))} (registered: {', '.join(PHOTOMETRIC.names())})")
        return None
    try:
        return declare_modality(spec_from_dict(name, fields), str(path))
    except ConfigError as e:
        problems.append(f"{where}: {str(e).removeprefix(f'{path}: ')}")
        return None


def write_description(root: str | Path, *, name: str, classes, palette, ignore_index: int,
                      modalities: dict[str, dict], label: dict | None = None, **extra) -> Path:
    """Write a ``dataset.yaml`` (the inverse of :func:`load_description`)."""
    data = {"name": name, "classes": list(classes), "palette": [list(map(int, c)) for c in palette],
            "ignore_index": int(ignore_index), "modalities": modalities}
    if label:
        data["label"] = label
    data.update(extra)
    path = Path(root) / DESCRIPTION_FILE
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path
