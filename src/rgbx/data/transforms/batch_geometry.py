"""The geometric step of :class:`~rgbx.data.transforms.TrainTransform` applied to a whole batch, on the batch's device.

With ``TrainTransform(geometric_on="batch")`` the loader workers only read, decode, apply the photometric ops and
normalise; each sample keeps its source size and carries the four draws of its geometric step (``"geometry"``: the
resize factor, the two crop positions and the flip). :func:`~rgbx.data.sample.collate` stacks those samples (padding
maps of different sizes to the largest) and keeps the draws in :attr:`Batch.geometry <rgbx.data.sample.Batch>`.
:class:`BatchGeometry` then resizes, crops, pads and flips every map of the batch at once, on the GPU when the batch
is there, so the workers' CPUs are freed from the heaviest part of the augmentation.

The result is the per-sample pipeline's: the same draws (the geometric ones come first from each sample's
generator, whichever mode), the same resampling rule per kind of map (:mod:`.geometric`). Labels and
nearest-neighbour maps are bit for bit the same; bilinear maps agree up to float rounding (the weights are computed
once per output row and applied as a weighted sum of gathered source rows, then columns). The step works in
normalised units (normalising is affine per channel and commutes with resampling; padding uses the normalised
empty value).

Every output row (and column) of a sample is a short list of source rows and weights (its *taps*), built on the host
from the sample's draws: one tap for nearest neighbour, two for a bilinear enlargement, up to ``2 × factor + 1``
for an antialiased shrink, as ``F.interpolate(..., antialias=True)`` weighs them. The maps are then resampled with
one gather per tap and axis for the whole batch: a few dozen kernels per batch, no device → host read-back. Only a
sparse map (LiDAR, events) that a sample shrinks, whose point-keeping rule has no taps, is resampled sample by
sample.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from rgbx.data.sample import GeometryDraws
from rgbx.data.transforms.geometric import (
    crop_pad,
    crop_window,
    linear_taps,
    nearest_index,
    resize_sparse_down,
)
from rgbx.data.transforms.photometric import empty_value
from rgbx.errors import DataError
from rgbx.modalities import get_modality

__all__ = ["BatchGeometry", "GeometryDraws", "SamplePlan"]


@dataclass(frozen=True)
class SamplePlan:
    """One sample's geometric step in pixels: source size, resized size, crop origin in the resized image, flip."""

    size: tuple[int, int]
    new: tuple[int, int]
    top: int
    left: int
    flip: bool


@dataclass
class _Taps:
    """Output pixel → source pixels along one axis, for a batch: ``index`` (B, n, K) int64, ``weight`` (B, n, K)
    float32 or None (one tap, a copy), ``valid`` (B, n) bool (False: a padded pixel)."""

    index: torch.Tensor
    weight: torch.Tensor | None
    valid: torch.Tensor

    def to(self, device) -> _Taps:
        w = None if self.weight is None else self.weight.to(device, non_blocking=True)
        return _Taps(self.index.to(device, non_blocking=True), w, self.valid.to(device, non_blocking=True))


def _positions(start: int, count: int, n_out: int, flip: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions in the resized axis (length ``n_out``) of the crop's ``count`` output pixels from ``start``, and
    which of them lie inside it (the rest is padding: after the image, and before it where ``start`` is negative;
    the flip then mirrors the padded crop)."""
    p = torch.arange(start, start + count, dtype=torch.int64)
    if flip:
        p = p.flip(0)
    return p, (p >= 0) & (p < n_out)


def nearest_taps(n_in: int, n_out: int, start: int, count: int, flip: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(count, 1) source index and (count,) validity of a nearest-neighbour resize ``n_in`` → ``n_out``, cropped
    to ``count`` pixels from ``start`` (the rule of :func:`~rgbx.data.transforms.geometric.resize_label`)."""
    p, valid = _positions(start, count, n_out, flip)
    index = nearest_index(n_in, n_out)[p.clamp(0, n_out - 1)]
    return index[:, None], valid


def bilinear_taps(n_in: int, n_out: int, start: int, count: int, flip: bool, antialias: bool
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(count, K) source indices and float32 weights, and (count,) validity, of a bilinear resize ``n_in`` →
    ``n_out`` (``align_corners=False``), cropped to ``count`` pixels from ``start``: the weights the per-sample
    path uses. Without ``antialias`` (an enlargement), two taps, as
    :func:`~rgbx.data.transforms.geometric.linear_taps` computes them. With it (a shrink), the taps of
    ``F.interpolate(..., antialias=True)`` on the CPU: a triangle filter stretched by the shrink factor, cut at the
    borders and renormalised, in the kernel's float32 arithmetic (its promotions to float64 included)."""
    p, valid = _positions(start, count, n_out, flip)
    p = p.clamp(0, n_out - 1)
    if not antialias:
        lo = int(p.min())
        i0, i1, lam = linear_taps(n_in, n_out, slice(lo, int(p.max()) + 1))
        at = p - lo
        return torch.stack([i0[at], i1[at]], 1), torch.stack([1 - lam[at], lam[at]], 1).float(), valid
    f32 = torch.float32
    scale = torch.tensor(n_in, dtype=f32) / n_out
    s = float(scale)
    support = scale if s >= 1.0 else torch.tensor(1.0, dtype=f32)
    inv = (1.0 / scale.double()).float() if s >= 1.0 else torch.tensor(1.0, dtype=f32)
    center = (scale.double() * (p.double() + 0.5)).float()
    lo = ((center - support).double() + 0.5).trunc().long().clamp_min(0)
    hi = ((center + support).double() + 0.5).trunc().long().clamp_max(n_in)
    k = math.ceil(float(support)) * 2 + 1
    size = (hi - lo).clamp(0, k)
    src = lo[:, None] + torch.arange(k)  # (count, K) candidate source pixels
    arg = (((src.to(f32) - center[:, None]).double() + 0.5) * inv.double()).float().abs()
    w = torch.where(arg < 1.0, (1.0 - arg.double()).float(), torch.zeros((), dtype=f32))
    w = torch.where(torch.arange(k) < size[:, None], w, torch.zeros((), dtype=f32))
    total = w[:, 0].clone()
    for j in range(1, k):  # summed in order, as the kernel does
        total += w[:, j]
    w = torch.where(total[:, None] != 0, w / total[:, None], w)
    return src.clamp_max(n_in - 1), w, valid


def _stack(parts: list[tuple]) -> _Taps:
    """Batch the per-sample taps, padding the tap lists to the longest with zero-weight copies of the first."""
    k = max(p[0].shape[1] for p in parts)
    index = torch.stack([torch.cat([p[0], p[0][:, :1].expand(-1, k - p[0].shape[1])], 1) for p in parts])
    weighted = len(parts[0]) == 3
    weight = None
    if weighted:
        weight = torch.stack([torch.cat([p[1], p[1].new_zeros(p[1].shape[0], k - p[1].shape[1])], 1)
                              for p in parts])
    valid = torch.stack([p[-1] for p in parts])
    return _Taps(index, weight, valid)


def _along(x: torch.Tensor, dim: int, taps: _Taps) -> torch.Tensor:
    """Resample axis ``dim`` of (B, C, H, W) (2: rows, 3: columns) by the taps: one gather per tap, summed with the
    taps' weights (a plain copy for one unweighted tap). Padded output pixels are left as they come (the caller
    fills them)."""
    line = (lambda t: t[:, None, :, None]) if dim == 2 else (lambda t: t[:, None, None, :])  # (B, n) → broadcast
    shape = list(x.shape)
    shape[dim] = taps.index.shape[1]
    if taps.weight is None:
        return x.gather(dim, line(taps.index[..., 0]).expand(shape))
    x = x.float()
    out = None
    for k in range(taps.index.shape[2]):
        part, w = x.gather(dim, line(taps.index[..., k]).expand(shape)), line(taps.weight[..., k])
        out = part.mul_(w) if out is None else out.addcmul_(part, w)
    return out


def _resample(x: torch.Tensor, rows: _Taps, cols: _Taps) -> torch.Tensor:
    """(B, C, H, W) → (B, C, h, w) by the taps: rows first, then columns."""
    return _along(_along(x, 2, rows), 3, cols)


class BatchGeometry:
    """Resize (factor drawn in ``scale_range``) → crop to ``crop_size`` with padding → horizontal flip, for a whole
    collated batch whose samples carry their draws (see the module docstring); built by
    :meth:`TrainTransform.batch_geometry <rgbx.data.transforms.TrainTransform.batch_geometry>`.

    Call on a :class:`~rgbx.data.sample.Batch` (on any device) holding normalised maps at source size and
    :attr:`~rgbx.data.sample.Batch.geometry`; returns the batch with every map and the label at ``crop_size``, the
    absent samples' maps at their modality's fill value, and ``geometry`` None.
    """

    def __init__(self, crop_size: tuple[int, int], ignore_index: int = 255,
                 pad_fill: Mapping[str, Sequence[float]] | None = None, centre: bool = False):
        self.crop_size = (int(crop_size[0]), int(crop_size[1]))
        self.ignore_index = int(ignore_index)
        self.pad_fill = {name: tuple(float(v) for v in values) for name, values in (pad_fill or {}).items()}
        self.centre = bool(centre)
        self._values: dict[tuple[str, str, torch.device, torch.dtype], torch.Tensor] = {}

    def _normalised(self, kind: str, name: str, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """(C, 1, 1) on ``device``: modality ``name``'s empty value (``kind`` "empty") or its padding ("pad":
        ``pad_fill``'s values, else the empty value), normalised. Made once per device: a copy from the host waits
        for the device's queued work."""
        key = (kind, name, torch.device(device), dtype)
        if key not in self._values:
            spec = get_modality(name)
            if kind == "pad" and name in self.pad_fill:
                physical = torch.tensor(self.pad_fill[name], dtype=dtype).view(-1, 1, 1)
            else:
                physical = torch.full((spec.channels, 1, 1), empty_value(spec), dtype=dtype)
            self._values[key] = spec.normalize(physical).to(device)
        return self._values[key]

    def empty(self, name: str, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """(C, 1, 1): modality ``name``'s empty value, normalised, on ``device``."""
        return self._normalised("empty", name, device, dtype)

    def pad(self, name: str, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """(C, 1, 1): what the crop pads modality ``name`` with, normalised, on ``device``."""
        return self._normalised("pad", name, device, dtype)

    def plans(self, geometry: GeometryDraws) -> list[SamplePlan]:
        """Each sample's step in pixels, computed from its draws as the per-sample pipeline computes it."""
        plans = []
        for (scale, u_top, u_left, flip), (h, w) in zip(geometry.draws.tolist(), geometry.sizes.tolist()):
            new, top, left = crop_window((h, w), self.crop_size, scale, u_top, u_left, self.centre)
            plans.append(SamplePlan((h, w), new, top, left, flip >= 0.5))
        return plans

    def __call__(self, batch):
        geometry = batch.geometry
        if geometry is None:
            raise DataError("BatchGeometry: the batch carries no geometric draws; its samples must come from "
                            "TrainTransform(geometric_on='batch')")
        maps = {**batch.inputs, **({} if batch.label is None else {"label": batch.label})}
        if not maps:
            raise DataError("BatchGeometry: the batch has neither maps nor a label")
        if len(geometry) != len(batch):
            raise DataError(f"BatchGeometry: {len(geometry)} geometric draws for a batch of {len(batch)} samples")
        device = next(iter(maps.values())).device
        plans = self.plans(geometry)
        ch, cw = self.crop_size
        taps = {}

        def axis_taps(rule: str) -> tuple[_Taps, _Taps]:
            if rule not in taps:
                if rule == "nearest":
                    rows = _stack([nearest_taps(p.size[0], p.new[0], p.top, ch, False) for p in plans])
                    cols = _stack([nearest_taps(p.size[1], p.new[1], p.left, cw, p.flip) for p in plans])
                else:  # antialiased on both axes when either shrinks, as resize_modality does
                    aa = [p.new[0] < p.size[0] or p.new[1] < p.size[1] for p in plans]
                    rows = _stack([bilinear_taps(p.size[0], p.new[0], p.top, ch, False, a)
                                   for p, a in zip(plans, aa)])
                    cols = _stack([bilinear_taps(p.size[1], p.new[1], p.left, cw, p.flip, a)
                                   for p, a in zip(plans, aa)])
                taps[rule] = (rows.to(device), cols.to(device))
            return taps[rule]

        def place(out: torch.Tensor, fill: torch.Tensor | int, rule: str) -> torch.Tensor:
            rows, cols = axis_taps(rule)
            pad = ~(rows.valid[:, None, :, None] & cols.valid[:, None, None, :])
            return out.masked_fill_(pad, fill) if isinstance(fill, int) else torch.where(pad, fill, out)

        inputs = {}
        for name, x in batch.inputs.items():
            spec = get_modality(name)
            if x.dim() != 4:
                raise DataError(f"BatchGeometry: modality {name!r} must be (B, C, H, W), got {tuple(x.shape)}")
            pad = self.pad(name, device, x.dtype)
            rule = "bilinear" if not spec.sparse and spec.invalid_value is None else "nearest"
            out = place(_resample(x, *axis_taps(rule)).to(x.dtype), pad[None], rule)
            if spec.sparse:  # a shrink keeps points, sample by sample
                for i, p in enumerate(plans):
                    if p.new[0] < p.size[0] or p.new[1] < p.size[1]:
                        part = resize_sparse_down(x[i, :, : p.size[0], : p.size[1]], p.new,
                                                  self.empty(name, device, x.dtype))
                        part = crop_pad(part, p.top, p.left, self.crop_size, pad)
                        out[i] = part.flip(-1) if p.flip else part
            absent = ~batch.present[name].to(device, non_blocking=True).view(-1, 1, 1, 1)
            inputs[name] = out.masked_fill_(absent, spec.fill)
        label = None
        if batch.label is not None:
            if batch.label.dim() != 3:
                raise DataError(f"BatchGeometry: the label must be (B, H, W), got {tuple(batch.label.shape)}")
            out = _resample(batch.label[:, None], *axis_taps("nearest"))
            label = place(out, self.ignore_index, "nearest")[:, 0]
        return batch.replace(inputs=inputs, label=label, geometry=None)

    def __repr__(self) -> str:
        return (f"BatchGeometry(crop_size={self.crop_size}, ignore_index={self.ignore_index}, "
                f"pad_fill={self.pad_fill}, centre={self.centre})")

