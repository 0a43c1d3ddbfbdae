"""Loose input files (not a dataset folder): what ``rgbx predict`` reads for a user's own captures.

Inputs are given per modality as a file or a folder (``rgb=frames/ depth=depth/``); folders are matched by file
stem. Integer files (PNG, uint16 PNG, integer .npy) are scaled by the modality spec's ``scale`` (or, with
``storage``, by the scale the model's training data stored the sensor with, e.g. 16-bit thermal); float ``.npy``
files are taken as physical units already (e.g. depth in metres).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import replace
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


def resize_nearest(arr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(C, H, W) → (C, h, w) by nearest neighbour (pixel centres), for sensors stored at a lower resolution."""
    h, w = size
    H, W = arr.shape[-2:]
    if (H, W) == (h, w):
        return arr
    rows = np.minimum(((np.arange(h) + 0.5) * H / h).astype(np.int64), H - 1)
    cols = np.minimum(((np.arange(w) + 0.5) * W / w).astype(np.int64), W - 1)
    return arr[:, rows][:, :, cols]


def one_frame_size(inputs: Mapping[str, torch.Tensor], storage: Mapping | None = None,
                   where: str = "the frame") -> dict[str, torch.Tensor]:
    """One frame's sensors ``{name: (C, H, W)}`` brought to one size: a sensor that the model's training data stored
    at another resolution (``resize: nearest`` in its dataset.yaml, recorded in ``storage``) is resampled to the
    other sensors' size, as the dataset resampled it to the label's; any other difference is a
    :class:`~rgbx.errors.DataError` naming each sensor's size (``where``: what the message calls the frame)."""
    resized = {n for n in inputs if ((storage or {}).get(n) or {}).get("resize")}
    fixed = {tuple(x.shape[-2:]) for n, x in inputs.items() if n not in resized}
    out = dict(inputs)
    if len(fixed) == 1:
        size = next(iter(fixed))
        for n in resized:
            out[n] = torch.from_numpy(np.ascontiguousarray(resize_nearest(out[n].numpy(), size)))
    sizes = {n: tuple(x.shape[-2:]) for n, x in out.items()}
    if len(set(sizes.values())) > 1:
        hint = ("; the model resamples only the sensors its training data stored at another resolution ('resize: "
                "nearest' in dataset.yaml)" + (f", {', '.join(sorted(resized))} here" if resized else ", none here"))
        raise DataError(f"{where}: the sensors' frames differ in size: "
                        f"{', '.join(f'{n} {h}x{w}' for n, (h, w) in sizes.items())}; resample them to one size (rgbx "
                        f"predicts at that size){hint}")
    return out


def stored_spec(modality: str, storage: Mapping | None = None):
    """The modality's spec with the ``encoding`` / ``dtype`` / ``scale`` that ``storage`` (``{sensor: {encoding,
    dtype, scale}}``, e.g. what a model file records of its training data:
    :func:`rgbx.models.model_file.recorded_storage`) gives for it; the spec itself when it gives none, or gives a
    float storage: loose float files are physical units already, and integer ones (a 16-bit depth PNG next to
    training data in float .npy) are read as the sensor's own encoding."""
    spec = get_modality(modality)
    given = (storage or {}).get(modality) or {}
    if given.get("dtype") is not None and np.dtype(given["dtype"]).kind == "f":
        return spec
    fields = {k: given[k] for k in ("encoding", "dtype", "scale") if given.get(k) is not None}
    if "scale" in fields:
        fields["scale"] = float(fields["scale"])
    return replace(spec, **fields) if fields else spec


def read_modality_file(path: str | Path, modality: str, storage: Mapping | None = None) -> torch.Tensor:
    """(C, H, W) float32 tensor in physical units, with a clear error for a wrong channel count. ``storage``:
    ``{sensor: {dtype, scale, ...}}`` read instead of the sensor's built-in encoding (:func:`stored_spec`; a model's
    ``Predictor.storage``, the storage of its training data)."""
    path = Path(path)
    spec = stored_spec(modality, storage)
    arr = read_array(path, encoding_for(path))
    if arr.shape[0] != spec.channels:
        hint = ""
        if spec.channels == 1 and arr.shape[0] == 3:
            hint = " (a 3-channel image; save single-channel sensor data as a 1-channel PNG or .npy)"
        elif arr.shape[0] == 1 and _is_palette_image(path):
            hint = PALETTE_HINT
        raise DataError(f"{path}: {arr.shape[0]} channel(s), expected {spec.channels} for {modality!r}{hint}")
    return physical_units(arr, spec, str(path))


# a sensor image saved in palette mode (PNG8, GIF-like): its pixels are indices into a colour table
PALETTE_HINT = ("; it is a palette (indexed-colour) image, which rgbx reads as its indices, as for labels: save sensor "
                "images as RGB or gray (PIL: Image.open(p).convert('RGB').save(p))")

def _is_palette_image(path: Path) -> bool:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.mode == "P"
    except OSError:
        return False


# floats above this many times the largest value a sensor's integer encoding can hold are taken for a unit mistake
# (RGB as 0-255 floats, depth in millimetres as floats); outdoor depth in metres may exceed a 16-bit PNG's 65.5 m
FLOAT_RANGE_MARGIN = 4.0


def physical_units(arr: np.ndarray, spec, where: str = "") -> torch.Tensor:
    """(C, H, W) values as stored → float32 physical units: integers are the sensor's encoding, scaled by
    ``spec.scale``; floating-point values are physical units already. Values that cannot be either (integers wider
    than the encoding, or narrower — 8-bit depth is relative, not millimetres —, floats far above what the encoding
    can express) are an error naming ``where`` (a file, or the sensor) and what was expected."""
    check_encoding(arr, spec, where or f"sensor {spec.name!r}")
    scale = 1.0 if np.issubdtype(arr.dtype, np.floating) else spec.scale
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32) * np.float32(scale))


def check_encoding(arr: np.ndarray, spec, where: str) -> None:
    """Refuse values that are neither ``spec``'s integer encoding nor physical units (see :func:`physical_units`)."""
    if not np.issubdtype(np.dtype(spec.dtype), np.integer) or arr.size == 0:
        return
    encoding = np.iinfo(spec.dtype)
    unit = spec.unit or "physical units"
    stored = f"{spec.dtype} {f'× {spec.scale:g} ' if spec.scale != 1 else ''}= {unit}"
    if np.issubdtype(arr.dtype, np.integer):
        top = int(arr.max())
        if top > encoding.max:
            raise DataError(f"{where}: integer values up to {top}; {spec.name!r} is read as its encoding ({stored}, "
                            f"at most {encoding.max}) or as floats in {unit}. Files stored otherwise are read as the "
                            f"model's training data stored them when its model file records that (rgbx train "
                            f"records each sensor's dtype and scale from dataset.yaml); otherwise convert them to "
                            f"float32 .npy in {unit} (file value × your scale), or in Python give the storage: "
                            f"Predictor.from_file(..., storage={{{spec.name!r}: {{'dtype': 'uint16', "
                            f"'scale': S}}}}) or read_modality_file(path, {spec.name!r}, storage=...)")
        if arr.dtype.itemsize < np.dtype(spec.dtype).itemsize:
            why = " (an 8-bit depth image holds relative depth, not millimetres)" if spec.name == "depth" else ""
            raise DataError(f"{where}: {arr.dtype} values; {spec.name!r} is read as its encoding ({stored}): "
                            f"{arr.dtype} cannot hold it{why}; give {spec.dtype} or floats in {unit}")
    elif np.issubdtype(arr.dtype, np.floating):
        finite = arr[np.isfinite(arr)]
        bound = encoding.max * spec.scale
        if finite.size and float(np.abs(finite).max()) > FLOAT_RANGE_MARGIN * bound:
            raise DataError(f"{where}: float values up to {float(np.abs(finite).max()):g}; floats are read as "
                            f"{unit} (its encoding reaches {bound:g}): give the encoding as {spec.dtype} "
                            f"({stored}) or convert the floats to {unit}")


def discover_samples(sources: dict[str, Path], report: Callable[[str], None] | None = print
                     ) -> list[tuple[str, dict[str, Path]]]:
    """Match per-modality files/folders into samples: ``[(id, {modality: path})]``, sorted by id.

    A folder contributes every readable file in it; the same stem across folders is one sample. A sample may lack
    some modalities (missing sensors are normal); when the samples do not all have the same sensors, ``report``
    (None: nothing) gets one line counting the samples of each sensor set (:func:`sensor_set_counts`).
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
    if len(sources) > 1 and all(len(paths) == 1 for paths in samples.values()):
        # folders matched by file stem, and no stem in two of them: each file would be predicted from one sensor
        firsts = {m: next(sid for sid, paths in sorted(samples.items()) if m in paths) for m in sources}
        raise DataError(f"no file name is shared by the sensors' folders ({', '.join(f'{m}: {sid}' for m, sid in firsts.items())} "
                        f"...): folders are matched by file name without extension, so name a sample's files alike "
                        f"(rgb/0001.png, depth/0001.png)")
    found = sorted(samples.items())
    counts = sensor_set_counts(found, list(sources))
    if report is not None and len(counts) > 1:
        report(f"note: the folders' file names make {len(found)} frames: "
               + ", ".join(f"{s}: {n} frame{'s' if n != 1 else ''}" for s, n in counts.items())
               + " (folders are matched by file name; a frame without a sensor's file goes without that sensor)")
    return found


def sensor_set_counts(samples, order) -> dict[str, int]:
    """``{"rgb+depth": 4, "depth": 10}``: how many of ``samples`` (``[(id, {modality: path})]``) have each set of
    sensors, the sets named in ``order``'s order, larger sets first."""
    counts: dict[str, int] = {}
    for _, paths in samples:
        key = "+".join(m for m in order if m in paths)
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[0].count("+"), -kv[1])))
