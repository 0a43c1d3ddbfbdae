"""Writing the synthetic dataset to disk in the rgbx user-dataset format (``docs/dataset-format.md``).

Samples are rendered and written by a pool of worker processes; each sample depends only on ``(seed, index)``
so the output is identical for any number of workers. Sample ``i`` of split ``name`` uses the index
:func:`sample_index` ``(name, i)``, so splits never share scenes and growing one split leaves the others unchanged.
"""

from __future__ import annotations

import csv
import multiprocessing
import os
import re
import shutil
import sys
import zlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import yaml

from rgbx.data.synth.classes import CLASSES, IGNORE_INDEX, MODALITIES, PALETTE
from rgbx.data.synth.sample import check_conditions, check_size, render_sample
from rgbx.errors import RgbxError
from rgbx.modalities.encodings import write_array

DATASET_NAME = "rgbx-synth"
# 2: LiDAR returns beyond 65.534 m are stored as 0 (no return), not clipped to 65.535 m; other files unchanged
GENERATOR_VERSION = 2
DEFAULT_SPLITS: dict[str, int] = {"train": 800, "val": 100, "test": 100}

# scale: physical value = file value × scale (see rgbx.modalities.builtin)
_SCALES = {"rgb": 1 / 255, "depth": 0.001, "thermal": 1 / 255, "lidar": 0.001, "event": 1.0}
_OWNED = (*MODALITIES, "label", "splits")  # folders a synth output consists of
_SPLIT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


def sample_index(split: str, i: int) -> int:
    """The ``index`` for :func:`render_sample` of sample ``i`` of split ``split`` (disjoint across splits)."""
    return (zlib.crc32(split.encode()) << 32) + i


def sample_id(split: str, i: int) -> str:
    return f"{split}_{i:06d}"


def _check_splits(splits: Mapping[str, int]) -> dict[str, int]:
    if not isinstance(splits, Mapping) or not splits:
        raise RgbxError(f"splits must be a non-empty mapping of split name → sample count, got {splits!r}")
    out = {}
    for name, n in splits.items():
        if not isinstance(name, str) or not _SPLIT_NAME.match(name):
            raise RgbxError(f"split name {name!r} must be letters, digits, '_' or '-' (e.g. 'train')")
        if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 0 or n >= 2**32:
            raise RgbxError(f"split {name!r}: sample count must be a non-negative integer, got {n!r}")
        out[name] = int(n)
    if sum(out.values()) == 0:
        raise RgbxError("splits ask for 0 samples in total")
    offsets = {zlib.crc32(name.encode()) for name in out}
    if len(offsets) != len(out):  # pragma: no cover - needs a crc32 collision between two split names
        raise RgbxError(f"split names {list(out)} collide; rename one")
    return out


def _is_synth_output(path: Path) -> bool:
    try:
        meta = yaml.safe_load((path / "dataset.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(meta, dict) and meta.get("name") == DATASET_NAME and isinstance(meta.get("synth"), dict)


def _prepare(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise RgbxError(f"{out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        if not _is_synth_output(out):
            raise RgbxError(
                f"{out}: directory is not empty and is not an earlier rgbx-synth output; choose an empty or new folder"
            )
        if not overwrite:
            raise RgbxError(f"{out}: holds an earlier rgbx-synth output (its dataset.yaml may have been edited); pass "
                            f"--overwrite (overwrite=True) to replace it, or choose a new folder")
        for name in _OWNED:
            if (out / name).is_dir():
                shutil.rmtree(out / name)
        # dataset.yaml.orig: `rgbx data synthesize`'s backup of the dataset.yaml replaced here, stale once it is
        for name in ("attributes.csv", "dataset.yaml", "dataset.yaml.orig"):
            if (out / name).is_file():
                (out / name).unlink()
    out.mkdir(parents=True, exist_ok=True)
    for name in _OWNED:
        (out / name).mkdir()


def dataset_yaml(seed: int, size: tuple[int, int], splits: dict[str, int], conditions: Sequence[str]) -> dict:
    """The ``dataset.yaml`` content of a synth output."""
    return {
        "name": DATASET_NAME,
        "classes": list(CLASSES),
        "palette": [list(c) for c in PALETTE],
        "ignore_index": IGNORE_INDEX,
        "label": {"folder": "label", "encoding": "png"},
        "modalities": {m: {"encoding": "png", "scale": float(_SCALES[m])} for m in MODALITIES},
        "synth": {
            "seed": seed,
            "size": list(size),
            "version": GENERATOR_VERSION,
            "conditions": list(conditions),
            "splits": dict(splits),
        },
    }


def _write_one(task: tuple) -> tuple[str, str]:
    """Render and write one sample; runs in a worker process. Returns ``(id, condition)``."""
    out, seed, index, sid, size, conditions = task
    sample = render_sample(seed, index, size, conditions=conditions)
    out = Path(out)
    for m in MODALITIES:
        write_array(out / m / f"{sid}.png", sample[m])
    write_array(out / "label" / f"{sid}.png", sample["label"])
    return sid, sample["condition"]


def _context():
    # fork starts workers instantly (no re-import of torch); elsewhere use the platform default
    if sys.platform.startswith("linux") and "fork" in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context()


def generate(
    out_dir: str | os.PathLike,
    splits: Mapping[str, int] | None = None,
    size: tuple[int, int] = (240, 320),
    seed: int = 0,
    workers: int | None = None,
    conditions: Sequence[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
    overwrite: bool = False,
) -> Path:
    """Render the synthetic dataset into ``out_dir`` (user-dataset format) and return its path.

    Args:
        out_dir: a new or empty folder, or with ``overwrite`` an earlier rgbx-synth output (its dataset.yaml,
            dataset.yaml.orig, attributes.csv and modality / label / splits folders are replaced; other files kept).
        splits: split name → number of samples; default ``{"train": 800, "val": 100, "test": 100}``. A split of 0
            samples is left out (no empty split file).
        size: (height, width) of every image.
        seed: dataset seed; the same seed (and arguments) give byte-identical files.
        workers: processes rendering in parallel (default ``os.cpu_count()``); 1 renders in this process.
        conditions: restrict the conditions drawn (uniformly) to these names; default all of ``CONDITIONS``.
        progress: called as ``progress(n_done, n_total)`` after each written sample.
        overwrite: replace an earlier rgbx-synth output in ``out_dir`` (without it, that is an error).

    Writes ``dataset.yaml``, ``<modality>/<id>.png`` for rgb, depth, thermal, lidar and event, ``label/<id>.png``,
    ``splits/<split>.txt`` and ``attributes.csv`` (``id,condition``); ids look like ``train_000123``.
    """
    splits = {name: n for name, n in _check_splits(DEFAULT_SPLITS if splits is None else splits).items() if n}
    size = check_size(size)
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise RgbxError(f"seed must be a non-negative integer, got {seed!r}")
    seed = int(seed)
    conds = check_conditions(conditions)
    if workers is None:
        workers = os.cpu_count() or 1
    if not isinstance(workers, (int, np.integer)) or isinstance(workers, bool) or workers < 1:
        raise RgbxError(f"workers must be a positive integer, got {workers!r}")
    if progress is not None and not callable(progress):
        raise RgbxError("progress must be a callable(n_done, n_total)")

    out = Path(out_dir)
    _prepare(out, overwrite)
    # written first, so that an interrupted run can be overwritten by the next one (with overwrite)
    (out / "dataset.yaml").write_text(
        yaml.safe_dump(dataset_yaml(seed, size, splits, conds), sort_keys=False)
    )

    tasks = [
        (str(out), seed, sample_index(name, i), sample_id(name, i), size, conds)
        for name, n in splits.items()
        for i in range(n)
    ]
    total = len(tasks)
    conditions_of: dict[str, str] = {}

    def collect(results):
        for sid, cond in results:
            conditions_of[sid] = cond
            if progress is not None:
                progress(len(conditions_of), total)

    workers = min(int(workers), total)
    if workers == 1:
        collect(map(_write_one, tasks))
    else:
        chunk = max(1, min(8, total // (workers * 8)))
        with _context().Pool(workers) as pool:
            collect(pool.imap_unordered(_write_one, tasks, chunksize=chunk))

    for name, n in splits.items():
        ids = [sample_id(name, i) for i in range(n)]
        (out / "splits" / f"{name}.txt").write_text("".join(f"{i}\n" for i in ids))
    with open(out / "attributes.csv", "w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["id", "condition"])
        for task in tasks:
            writer.writerow([task[3], conditions_of[task[3]]])
    return out
