"""Loose input files (not a dataset folder): what ``rgbx predict`` reads for a user's own captures.

Inputs are given per modality as a file or a folder (``rgb=frames/ depth=depth/``); folders are matched by file
stem. Integer files (PNG, uint16 PNG, integer .npy) are scaled by the modality spec's ``scale``; float ``.npy`` files
are taken as physical units already (e.g. depth in metres).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from rgbx.errors import DataError
from rgbx.modalities import ENCODINGS, get_modality, read_array


def encoding_for(path: Path) -> str:
    suffix = path.suffix.lower()
    for name in ENCODINGS.names():
        if suffix in ENCODINGS.get(name).suffixes:
            return name
    raise DataError(f"{path}: unsupported file type {suffix!r} (supported: "
                    f"{', '.join(s for n in ENCODINGS.names() for s in ENCODINGS.get(n).suffixes)})")


def read_modality_file(path: str | Path, modality: str) -> torch.Tensor:
    """(C, H, W) float32 tensor in physical units, with a clear error for a wrong channel count."""
    path = Path(path)
    spec = get_modality(modality)
    arr = read_array(path, encoding_for(path))
    if arr.shape[0] != spec.channels:
        hint = ""
        if spec.channels == 1 and arr.shape[0] == 3:
            hint = " (a 3-channel image; save single-channel sensor data as a 1-channel PNG or .npy)"
        raise DataError(f"{path}: {arr.shape[0]} channel(s), expected {spec.channels} for {modality!r}{hint}")
    return physical_units(arr, spec)


def physical_units(arr: np.ndarray, spec) -> torch.Tensor:
    """(C, H, W) values as stored → float32 physical units: integers are the sensor's encoding, scaled by
    ``spec.scale``; floating-point values are physical units already."""
    scale = 1.0 if np.issubdtype(arr.dtype, np.floating) else spec.scale
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32) * np.float32(scale))


def discover_samples(sources: dict[str, Path]) -> list[tuple[str, dict[str, Path]]]:
    """Match per-modality files/folders into samples: ``[(id, {modality: path})]``, sorted by id.

    A folder contributes every readable file in it; the same stem across folders is one sample. A sample may lack
    some modalities (missing sensors are normal).
    """
    samples: dict[str, dict[str, Path]] = {}
    for modality, src in sources.items():
        get_modality(modality)  # unknown modality → clear error
        src = Path(src)
        if src.is_file():
            samples.setdefault(src.stem, {})[modality] = src
        elif src.is_dir():
            found = 0
            for name in sorted(os.listdir(src)):
                p = src / name
                try:
                    encoding_for(p)
                except DataError:
                    continue
                samples.setdefault(p.stem, {})[modality] = p
                found += 1
            if not found:
                raise DataError(f"{src}: no readable files for {modality!r}")
        else:
            raise DataError(f"{src}: not found (given for {modality!r})")
    if len(sources) > 1 and all(Path(s).is_file() for s in sources.values()):
        # explicit single files: one sample whatever the stems are
        return [(Path(next(iter(sources.values()))).stem, {m: Path(p) for m, p in sources.items()})]
    return sorted(samples.items())
