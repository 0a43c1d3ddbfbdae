"""Resampling, cropping and padding of modalities and labels, each kind by its own rule.

The geometry is the same for all: pixel centres, ``align_corners=False``.

* **label**: nearest neighbour (only values present in the input; pad = ``ignore_index``).
* **dense modality without an invalid value** (RGB, thermal): bilinear, antialiased when shrinking; pad = 0.
* **dense modality with an invalid value** (depth): nearest neighbour, so a valid pixel is never blended with an
  invalid one and no "flying pixels" appear between foreground and background; pad = the invalid value.
* **sparse modality** (LiDAR, events): enlarging uses nearest neighbour. Shrinking keeps points: each output cell
  takes the whole channel vector of the valid source pixel (a pixel with any channel different from the empty
  value: ``invalid_value``, or 0 when the spec has none) whose centre is closest to the cell centre; a cell with no
  valid source pixel is empty. Values are only ever copied, never averaged, and points are not thrown away the way
  plain nearest-neighbour subsampling would. Where the nearest source pixel is valid the result equals nearest
  neighbour. Pad = the empty value.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rgbx.data.transforms.photometric import empty_value
from rgbx.modalities import ModalitySpec

__all__ = ["crop_pad", "resize_label", "resize_modality"]


def _nearest_index(n_in: int, n_out: int, device=None) -> torch.Tensor:
    """Source index of each output pixel: the source pixel containing the output pixel's centre
    (``align_corners=False`` geometry, halves rounded up), in exact integer arithmetic."""
    j = torch.arange(n_out, device=device)
    return ((2 * j + 1) * n_in // (2 * n_out)).clamp_(0, n_in - 1)


def _resize_nearest(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    iy = _nearest_index(x.shape[-2], size[0], x.device)
    ix = _nearest_index(x.shape[-1], size[1], x.device)
    return x[..., iy[:, None], ix[None, :]]


def _cells(n_in: int, n_out: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """For a shrink n_in → n_out: the output cell of each source pixel, and 2·n_out × (signed distance of the
    source pixel's centre from its cell's centre, in source pixels) as an exact integer."""
    i = torch.arange(n_in, device=device)
    cell = ((2 * i + 1) * n_out // (2 * n_in)).clamp_(0, n_out - 1)
    offset = (2 * i + 1) * n_out - (2 * cell + 1) * n_in
    return cell, offset


def _resize_sparse_down(x: torch.Tensor, size: tuple[int, int], empty: float) -> torch.Tensor:
    """Shrink a sparse map keeping points: each output cell copies the valid source pixel closest to its centre.

    Distances are compared exactly (integers), ties go to the larger source index, so where the nearest-neighbour
    source pixel is valid it is the one copied.
    """
    c, h, w = x.shape
    oh, ow = size
    dev = x.device
    cy, oy = _cells(h, oh, dev)
    cx, ox = _cells(w, ow, dev)
    # squared distance × (2·oh·2·ow)²: exact in int64 for any realistic image size
    dist = ((oy[:, None] * ow) ** 2 + (ox[None, :] * oh) ** 2).flatten()
    valid = (x != empty).any(dim=0).flatten()
    cell = (cy[:, None] * ow + cx[None, :]).flatten()
    never = torch.iinfo(torch.int64).max
    key = torch.where(valid, dist, torch.full_like(dist, never))
    best = torch.full((oh * ow,), never, dtype=torch.int64, device=dev).scatter_reduce(
        0, cell, key, reduce="amin"
    )
    winner = valid & (key == best[cell])
    cand = torch.where(winner, torch.arange(h * w, device=dev), torch.full_like(cell, -1))
    pick = torch.full((oh * ow,), -1, dtype=torch.long, device=dev).scatter_reduce(
        0, cell, cand, reduce="amax"
    )
    out = torch.full((c, oh * ow), empty, dtype=x.dtype, device=dev)
    has = pick >= 0
    out[:, has] = x.reshape(c, -1)[:, pick[has]]
    return out.view(c, oh, ow)


def resize_modality(x: torch.Tensor, size: tuple[int, int], spec: ModalitySpec) -> torch.Tensor:
    """Resize one (C, H, W) modality in physical units to ``size`` = (H', W') by the rule of its kind
    (see the module docstring)."""
    size = (int(size[0]), int(size[1]))
    h, w = x.shape[-2:]
    if (h, w) == size:
        return x
    if spec.sparse:
        if size[0] <= h and size[1] <= w:
            return _resize_sparse_down(x, size, empty_value(spec))
        return _resize_nearest(x, size)
    if spec.invalid_value is not None:
        return _resize_nearest(x, size)
    shrink = size[0] < h or size[1] < w
    y = F.interpolate(x[None].float(), size=size, mode="bilinear", align_corners=False, antialias=shrink)
    return y[0].to(x.dtype)


def resize_label(label: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour resize of an (H, W) label map (only copies existing class ids)."""
    if tuple(label.shape[-2:]) == tuple(size):
        return label
    return _resize_nearest(label, (int(size[0]), int(size[1])))


def crop_pad(x: torch.Tensor, top: int, left: int, size: tuple[int, int], fill: float) -> torch.Tensor:
    """Crop ``size`` at (top, left); where the image is smaller, pad at the bottom / right with ``fill``."""
    ch, cw = size
    part = x[..., top : top + ch, left : left + cw]
    ph, pw = ch - part.shape[-2], cw - part.shape[-1]
    if ph == 0 and pw == 0:
        return part
    out = torch.full((*x.shape[:-2], ch, cw), fill, dtype=x.dtype, device=x.device)
    out[..., : part.shape[-2], : part.shape[-1]] = part
    return out
