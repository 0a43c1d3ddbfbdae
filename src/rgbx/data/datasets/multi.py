"""Several datasets trained as one, in a unified label space (``data.dataset: multi``).

The union's label space is the union of the sources' label spaces, Y = Y_1 ∪ … ∪ Y_N, with no manual unification:
each class keeps its source, so a class is named ``"<source>/<class>"`` (``"a/person"`` and ``"b/person"`` are two
classes; a method such as MS3 relates them). Labels are remapped into the union (a source's class ``c`` becomes
``offset_source + c'``, its ignore value the union's ignore index), and every sample carries its source's name in
``meta["source"]`` and in ``meta["attributes"]["source"]`` (so ``train.eval_group_by=source`` reports each source's
mIoU).

Options (``data.options``)::

    sources:                      # two or more (one is allowed) source datasets, in this order in the union
      - name: a                   # class-name prefix, unique, without "/" (default: the source's dataset name)
        dataset: folder           # a registered dataset adapter (default: folder)
        root: synth_a             # its folder; a relative path is taken relative to data.root
        options: {}               # that adapter's own options (its data.options)
        classes: {painting: null, crate: box}   # optional: rename a class, merge two (same new name) or drop one
                                                # (null: its pixels become ignore)
        splits: {val: test}       # optional: union split → this source's split (default: the same name)

Modalities: a source that lacks a requested modality contributes samples without it (a missing sensor, handled like
everywhere in rgbx); a modality that no source has is an error. Samples of all sources are concatenated in source
order (no re-weighting of the sources).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from rgbx.data.datasets.base import CHECK_LEVELS, DATASETS, SegmentationDataset
from rgbx.data.description import DatasetDescription, default_palette
from rgbx.errors import ConfigError, DataError

__all__ = ["MultiDataset", "SourceSpec", "parse_sources"]

SOURCE_KEYS = ("name", "dataset", "root", "options", "classes", "splits")
EXAMPLE = "[{name: a, root: synth_a}, {name: b, dataset: folder, root: synth_b, options: {}}]"


@dataclasses.dataclass(frozen=True)
class SourceSpec:
    """One entry of ``data.options.sources``, checked."""

    name: str | None
    dataset: str
    root: str
    options: dict
    classes: dict
    splits: dict


def parse_sources(sources: Any) -> list[SourceSpec]:
    """``data.options.sources`` → checked :class:`SourceSpec` s; every mistake is a ConfigError naming its key."""
    if not isinstance(sources, (list, tuple)) or not sources:
        raise ConfigError(f"data.options.sources: expected a non-empty list of source datasets, each a mapping with "
                          f"keys {list(SOURCE_KEYS)} (root required), e.g. {EXAMPLE}; got {sources!r}")
    specs = []
    for i, entry in enumerate(sources):
        key = f"data.options.sources[{i}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"{key}: expected a mapping with keys {list(SOURCE_KEYS)}, got {entry!r}")
        unknown = sorted(set(entry) - set(SOURCE_KEYS))
        if unknown:
            raise ConfigError(f"{key}: unknown key(s) {unknown}; valid: {list(SOURCE_KEYS)}")
        root = entry.get("root")
        if not isinstance(root, str) or not root:
            raise ConfigError(f"{key}.root: required, the source dataset's folder (a path; relative to data.root)")
        name = entry.get("name")
        if name is not None and (not isinstance(name, str) or not name or "/" in name):
            raise ConfigError(f"{key}.name: expected a non-empty name without '/', got {name!r}")
        dataset = entry.get("dataset", "folder")
        if not isinstance(dataset, str):
            raise ConfigError(f"{key}.dataset: expected a dataset adapter name, got {dataset!r}")
        if dataset == "multi":
            raise ConfigError(f"{key}.dataset: a multi dataset cannot be a source of another; list its sources here")
        if dataset not in DATASETS:
            raise ConfigError(f"{key}.dataset: unknown dataset {dataset!r}; registered: {', '.join(DATASETS)}")
        for field in ("options", "classes", "splits"):
            value = entry.get(field) or {}
            if not isinstance(value, dict):
                raise ConfigError(f"{key}.{field}: expected a mapping, got {value!r}")
        classes = dict(entry.get("classes") or {})
        for old, new in classes.items():
            if new is not None and (not isinstance(new, str) or not new):
                raise ConfigError(f"{key}.classes.{old}: expected a new class name or null (drop the class), "
                                  f"got {new!r}")
        splits = dict(entry.get("splits") or {})
        for union_split, split in splits.items():
            if not isinstance(split, str) or not split:
                raise ConfigError(f"{key}.splits.{union_split}: expected this source's split name, got {split!r}")
        specs.append(SourceSpec(name, dataset, root, dict(entry.get("options") or {}), classes, splits))
    return specs


@DATASETS.register("multi")
class MultiDataset(SegmentationDataset):
    """The union of several datasets (see the module docstring for ``data.options``).

    Attributes:
        datasets: the opened source datasets, in order.
        source_names: their names (the class-name prefixes).
        class_sources: for each unified class index, the name of its source.
        class_origin: for each unified class index, ``(source name, the source's own class name)`` (the first one
            when several source classes were merged into one).
    """

    OPTIONS: dict[str, Any] = {"sources": None}
    SPLITS = ("train", "val", "test")

    def __init__(self, root, split: str, modalities=None, transform=None, seed: int = 0, check: str = "headers",
                 **options):
        unknown = sorted(set(options) - set(self.OPTIONS))
        if unknown:
            raise ConfigError(f"data.options: unknown option(s) {', '.join(unknown)} for dataset 'multi' "
                              f"(options: sources)")
        if check not in CHECK_LEVELS:
            raise DataError(f"check={check!r}: expected one of {', '.join(CHECK_LEVELS)}")
        self.options = {**self.OPTIONS, **options}
        specs = parse_sources(self.options["sources"])
        self.root = Path(root)
        self.split = split
        self.transform = transform
        self.seed = seed
        self.datasets: list[SegmentationDataset] = []
        self.source_names: list[str] = []
        for i, spec in enumerate(specs):
            path = self.root / spec.root  # an absolute spec.root stays as it is
            if not path.is_dir():
                raise DataError(f"data.options.sources[{i}].root={spec.root!r}: folder {path} not found")
            ds = DATASETS.get(spec.dataset)(path, spec.splits.get(split, split), transform=None, seed=seed,
                                           check="none", **spec.options)
            name = spec.name or ds.description.name
            if "/" in name:
                raise ConfigError(f"data.options.sources[{i}].name: the dataset's own name {name!r} has a '/'; "
                                  f"give the source a name")
            if name in self.source_names:
                raise ConfigError(f"data.options.sources[{i}].name: {name!r} is used by an earlier source; give each "
                                  f"source a distinct name (the prefix of its class names)")
            self.datasets.append(ds)
            self.source_names.append(name)
        self._build_label_space(specs)
        self._select_modalities(modalities)
        self.ids = [f"{name}/{sid}" for name, ds in zip(self.source_names, self.datasets) for sid in ds.ids]
        self._index = [(d, j) for d, ds in enumerate(self.datasets) for j in range(len(ds))]
        if check != "none":
            problems = self.find_problems(full=(check == "full"))
            if problems:
                raise DataError(f"{self.root}: multi dataset split {split!r} has {len(problems)} problem(s)", problems)

    # -- the unified label space ---------------------------------------------------------------------------------
    def _build_label_space(self, specs: list[SourceSpec]) -> None:
        classes, palette, sources, origin, luts = [], [], [], [], []
        for i, (spec, ds, name) in enumerate(zip(specs, self.datasets, self.source_names)):
            own = list(ds.description.classes)
            bad = sorted(set(spec.classes) - set(own))
            if bad:
                raise ConfigError(f"data.options.sources[{i}].classes: {bad} not among the classes of {ds.root} "
                                  f"({', '.join(own)})")
            lut, local = [], {}
            for c, cls in enumerate(own):
                new = spec.classes.get(cls, cls)
                if new is None:
                    lut.append(-1)  # dropped: ignore
                    continue
                if new not in local:
                    local[new] = len(classes)
                    classes.append(f"{name}/{new}")
                    palette.append(tuple(ds.description.palette[c]))
                    sources.append(name)
                    origin.append((name, cls))
                lut.append(local[new])
            luts.append(lut)
        if not classes:
            raise ConfigError("data.options.sources: every class of every source was dropped (classes: null)")
        self.ignore_index = 255 if len(classes) < 255 else 65535
        self.luts = [torch.tensor([self.ignore_index if v < 0 else v for v in lut], dtype=torch.int64)
                     for lut in luts]
        self.class_sources = sources
        self.class_origin = origin
        if len(set(palette)) < len(palette):  # the sources' palettes collide: a distinct colour per class
            palette = default_palette(len(classes))
        self._classes, self._palette = tuple(classes), tuple(palette)

    def remap_label(self, source: int, label: torch.Tensor) -> torch.Tensor:
        """A label map of source ``source`` (its own class indices and ignore value) → union indices."""
        ds, lut = self.datasets[source], self.luts[source]
        valid = (label >= 0) & (label < len(lut)) & (label != ds.description.ignore_index)
        out = torch.full_like(label, self.ignore_index)
        out[valid] = lut[label[valid]]
        return out

    def _select_modalities(self, modalities) -> None:
        offered = []
        for ds in self.datasets:
            offered += [m for m in ds.description.modalities if m not in offered]
        names = offered if modalities is None else list(modalities)
        missing = [m for m in names if m not in offered]
        if missing:
            raise DataError(f"no source of the multi dataset has modality {', '.join(map(repr, missing))} (they "
                            f"have: {', '.join(offered)})")
        sources = {}
        for m in names:
            having = [ds for ds in self.datasets if m in ds.description.modalities]
            src = having[0].description.modalities[m]
            optional = len(having) < len(self.datasets) or any(ds.description.modalities[m].optional for ds in having)
            sources[m] = dataclasses.replace(src, optional=optional)
        for ds in self.datasets:
            ds.sources = {m: ds.description.modalities[m] for m in names if m in ds.description.modalities}
        self.sources = sources
        first = self.datasets[0].description
        self.description = DatasetDescription(
            root=self.root, name="+".join(self.source_names), classes=self._classes, palette=self._palette,
            ignore_index=self.ignore_index, modalities=sources, label=first.label,
            extra={"sources": list(self.source_names), "class_sources": list(self.class_sources)})

    # -- validation and loading ----------------------------------------------------------------------------------
    def find_problems(self, full: bool = False, workers: int = 4) -> list[str]:
        problems = []
        for ds in self.datasets:
            problems.extend(ds.find_problems(full=full, workers=workers))
        return problems

    def describe(self) -> DatasetDescription:
        return self.description

    def list_ids(self) -> list[str]:
        return list(self.ids)

    def unlabelled_ids(self) -> list[str]:
        return [i for ds in self.datasets for i in ds.unlabelled_ids()]

    def attributes(self, sample_id: str) -> dict[str, str]:
        """The source dataset's attributes of the sample, and ``source`` (as :meth:`load` gives them)."""
        name, local = sample_id.split("/", 1)
        ds = self.datasets[self.source_names.index(name)]
        return {**ds.attributes(local), "source": name}

    def load(self, index: int):
        source, local = self._index[index]
        sample = self.datasets[source].load(local)
        name = self.source_names[source]
        if sample["label"] is not None:
            sample["label"] = self.remap_label(source, sample["label"])
        meta = dict(sample["meta"])
        meta.update(id=f"{name}/{meta['id']}", split=self.split, source=name,
                    attributes={**meta.get("attributes", {}), "source": name})
        sample["meta"] = meta
        return sample
