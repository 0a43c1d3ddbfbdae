"""On-disk encodings of modality arrays.

An encoding turns a file into a raw ``(C, H, W)`` float32 array of file values (the modality spec's ``scale`` then
makes physical units) and back. Every read error names the file and what was expected.

- ``png``: 8- or 16-bit PNG (also reads JPEG/BMP/TIFF); 1 channel (L / I;16), 2 (LA), 3 (RGB) or 4 (RGBA).
- ``npy``: a NumPy array of shape (H, W) or (C, H, W), any numeric dtype; (H, W, C) with 1–4 channels last and more
  than 4 rows is read as channels-last.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from rgbx.errors import DataError
from rgbx.registry import Registry


@dataclass(frozen=True)
class Encoding:
    name: str
    suffixes: tuple[str, ...]
    read: Callable[[Path], np.ndarray]
    write: Callable[[Path, np.ndarray], None]


ENCODINGS: Registry[Encoding] = Registry("encoding")


def _read_image(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("P", "CMYK", "YCbCr"):
                im = im.convert("RGB") if im.mode != "P" else im
            arr = np.asarray(im)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{path}: unreadable image ({e})") from None
    if arr.ndim == 2:
        arr = arr[None]
    else:
        arr = arr.transpose(2, 0, 1)
    return arr


def _write_image(path: Path, arr: np.ndarray) -> None:
    """Write (C, H, W) or (H, W) integer values; uint16 for 1-channel values above 255."""
    arr = np.asarray(arr)
    if arr.ndim == 3:
        arr = arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0)
    if arr.dtype == np.uint16 or (arr.ndim == 2 and arr.dtype != np.uint8 and arr.max(initial=0) > 255):
        if arr.ndim != 2:
            raise ValueError("16-bit PNGs must have one channel")
        img = Image.fromarray(np.clip(arr, 0, 65535).astype(np.uint16))
    else:
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    img.save(path, compress_level=1)


def is_channels_last(shape: tuple[int, ...]) -> bool:
    """Whether a 3-D array is (H, W, C) as image libraries write it: 1-4 channels last and more than 4 rows first
    (``(1, H, W)`` and ``(C, H, W)`` stay channels-first)."""
    return len(shape) == 3 and shape[2] <= 4 and shape[0] > 4


def _read_npy(path: Path) -> np.ndarray:
    try:
        arr = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (ValueError, OSError, EOFError) as e:
        raise DataError(f"{path}: unreadable .npy ({e})") from None
    if not isinstance(arr, np.ndarray):  # an .npz archive under a .npy name
        raise DataError(f"{path}: not a single NumPy array (an .npz archive?); save one array with numpy.save")
    if arr.ndim == 2:
        arr = arr[None]
    elif is_channels_last(arr.shape):
        arr = arr.transpose(2, 0, 1)
    if arr.ndim != 3:
        raise DataError(f"{path}: expected an array of shape (H, W), (C, H, W) or (H, W, C), got {arr.shape}")
    return arr


def _write_npy(path: Path, arr: np.ndarray) -> None:
    np.save(path, np.asarray(arr))


ENCODINGS.register("png", Encoding("png", (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"), _read_image, _write_image))
ENCODINGS.register("npy", Encoding("npy", (".npy",), _read_npy, _write_npy))


def read_array(path: str | Path, encoding: str = "png") -> np.ndarray:
    """Read a file as a raw (C, H, W) array (dtype as stored)."""
    return ENCODINGS.get(encoding).read(Path(path))


def write_array(path: str | Path, arr: np.ndarray, encoding: str = "png") -> None:
    ENCODINGS.get(encoding).write(Path(path), arr)
