"""Training and evaluation transforms for multi-modal samples.

A transform takes a sample in physical units (see :mod:`rgbx.data.sample`) and a :class:`torch.Generator`, and
returns a new sample. Every random number comes from that generator, so a dataset that seeds it from
``(seed, epoch, index)`` gets reproducible, resumable training.

:class:`TrainTransform` runs two steps:

1. **Photometric, per modality.** Each modality gets exactly the operations its :class:`ModalitySpec` lists in
   ``photometric`` (looked up in :data:`PHOTOMETRIC`), and nothing else: colour jitter never touches depth, depth
   noise never touches RGB (the trap of the joint-transform libraries, ``docs/ecosystem.md`` §3.1). Each modality
   draws from its own generator, derived from the sample's generator and the modality name, so its augmentation
   does not depend on which other sensors the sample has.
2. **Geometric, jointly**: random resize by a factor in ``scale_range``, random crop to ``crop_size`` (padding when
   the image is smaller), random horizontal flip. The same parameters apply to every modality and to the label; no
   modality can silently pass through, because the step walks ``sample["inputs"]`` itself.

Resampling rule per kind of map (the geometry is the same for all: pixel centres, ``align_corners=False``):

* **label**: nearest neighbour (only values present in the input; pad = ``ignore_index``).
* **dense modality without an invalid value** (RGB, thermal): bilinear, antialiased when shrinking; pad = 0.
* **dense modality with an invalid value** (depth): nearest neighbour, so a valid pixel is never blended with an
  invalid one and no "flying pixels" appear between foreground and background; pad = the invalid value.
* **sparse modality** (LiDAR, events): enlarging uses nearest neighbour. Shrinking keeps points: each output cell
  takes the whole channel vector of the valid source pixel (a pixel with any channel different from the empty
  value: ``invalid_value``, or 0 when the spec has none) whose centre is closest to the cell centre; a cell with no
  valid source pixel is empty. Values are only ever copied, never averaged, and points are not thrown away the way
  plain nearest-neighbour subsampling would (projecting the same points onto a smaller image also fills more of its
  pixels). Where the nearest source pixel is valid the result equals nearest neighbour. Pad = the empty value.

:class:`EvalTransform` changes nothing (evaluation happens at the label's own resolution); it only checks the sample.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F

from rgbx.errors import ConfigError, DataError
from rgbx.modalities import ModalitySpec, get_modality
from rgbx.registry import Registry

Sample = dict
PhotometricOp = Callable[[torch.Tensor, torch.Generator, ModalitySpec], torch.Tensor]

PHOTOMETRIC: Registry[PhotometricOp] = Registry("photometric transform")

__all__ = [
    "PHOTOMETRIC",
    "ColorJitter",
    "DepthHoles",
    "DepthNoise",
    "EvalTransform",
    "EventDropout",
    "GaussianBlur",
    "GaussianNoise",
    "PointDropout",
    "ThermalGain",
    "TrainTransform",
    "empty_value",
    "resize_modality",
    "resize_label",
]


# ---------------------------------------------------------------------------------------------------------------
# random helpers (all draws from an explicit generator; ``None`` means torch's global generator)


def _uniform(generator: torch.Generator | None, low: float, high: float) -> float:
    u = float(torch.rand((), generator=generator))
    return low + (high - low) * u


def _chance(generator: torch.Generator | None, p: float) -> bool:
    # always consume one draw so the stream does not depend on p
    return float(torch.rand((), generator=generator)) < p


def empty_value(spec: ModalitySpec) -> float:
    """The physical value meaning "nothing here": ``spec.invalid_value``, or 0 when the spec has none."""
    return 0.0 if spec.invalid_value is None else float(spec.invalid_value)


def _valid_mask(x: torch.Tensor, spec: ModalitySpec) -> torch.Tensor:
    """(H, W) bool: pixels holding a measurement (all True for a dense modality without an invalid value)."""
    if spec.invalid_value is None and not spec.sparse:
        return torch.ones(x.shape[-2:], dtype=torch.bool, device=x.device)
    return (x != empty_value(spec)).any(dim=0)


# ---------------------------------------------------------------------------------------------------------------
# photometric transforms: (x (C,H,W) physical units, generator, spec) -> x


class ColorJitter:
    """Brightness, contrast, saturation and a small hue rotation on an image in [0, 1]; result clamped to [0, 1].

    Args:
        brightness, contrast, saturation: factors drawn from ``[1 - v, 1 + v]``.
        hue: rotation of the chroma plane (YIQ) by up to ``hue`` of a full turn either way.
        p: probability of applying the jitter at all.

    Saturation and hue only apply to 3-channel images; other channel counts get brightness and contrast.
    """

    def __init__(self, brightness=0.3, contrast=0.3, saturation=0.3, hue=0.03, p=0.8):
        self.brightness, self.contrast, self.saturation = brightness, contrast, saturation
        self.hue, self.p = hue, p

    def __call__(self, x: torch.Tensor, generator: torch.Generator, spec: ModalitySpec) -> torch.Tensor:
        apply = _chance(generator, self.p)
        b = _uniform(generator, 1 - self.brightness, 1 + self.brightness)
        c = _uniform(generator, 1 - self.contrast, 1 + self.contrast)
        s = _uniform(generator, 1 - self.saturation, 1 + self.saturation)
        h = _uniform(generator, -self.hue, self.hue)
        if not apply:
            return x
        x = x * b
        gray = _gray(x)
        x = (x - gray.mean()) * c + gray.mean()
        if x.shape[0] == 3:
            gray = _gray(x)
            x = gray + (x - gray) * s
            x = _rotate_hue(x, 2 * math.pi * h)
        return x.clamp(0.0, 1.0)


def _gray(x: torch.Tensor) -> torch.Tensor:
    if x.shape[0] != 3:
        return x.mean(dim=0, keepdim=True)
    w = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype, device=x.device).view(3, 1, 1)
    return (x * w).sum(dim=0, keepdim=True)


_RGB2YIQ = torch.tensor(
    [[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], dtype=torch.float64
)


def _rotate_hue(x: torch.Tensor, angle: float) -> torch.Tensor:
    cos, sin = math.cos(angle), math.sin(angle)
    rot = torch.tensor([[1, 0, 0], [0, cos, -sin], [0, sin, cos]], dtype=torch.float64)
    m = (torch.linalg.inv(_RGB2YIQ) @ rot @ _RGB2YIQ).to(x.dtype)
    return torch.einsum("ij,jhw->ihw", m, x)


class GaussianBlur:
    """Gaussian blur with probability ``p`` and sigma (pixels) drawn from ``sigma``.

    For a modality with an ``invalid_value`` the blur only averages valid pixels and invalid pixels stay invalid.
    """

    def __init__(self, sigma=(0.1, 1.5), p=0.2):
        self.sigma, self.p = sigma, p

    def __call__(self, x: torch.Tensor, generator: torch.Generator, spec: ModalitySpec) -> torch.Tensor:
        apply = _chance(generator, self.p)
        sigma = _uniform(generator, *self.sigma)
        if not apply or sigma <= 0:
            return x
        radius = max(1, math.ceil(3 * sigma))
        t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
        k = torch.exp(-(t**2) / (2 * sigma**2))
        k = k / k.sum()
        if spec.invalid_value is None:
            return _separable(x, k)
        valid = _valid_mask(x, spec).to(x.dtype)[None]
        num = _separable(x * valid, k)
        den = _separable(valid, k)
        out = num / den.clamp_min(1e-6)
        return torch.where(valid.bool(), out, x)


def _separable(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    c, r = x.shape[0], k.numel() // 2
    y = x[:, None]  # (C, 1, H, W): each channel is its own image
    y = F.conv2d(F.pad(y, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    y = F.conv2d(F.pad(y, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1))
    return y[:, 0].reshape(c, *x.shape[1:])


class DepthNoise:
    """Depth-proportional Gaussian noise: ``d + N(0, (relative_std * d)^2)`` on valid pixels, with probability ``p``.

    Invalid pixels stay invalid and valid pixels stay valid (clamped to at least ``min_depth``).
    """

    def __init__(self, relative_std=0.01, p=0.5, min_depth=1e-3):
        self.relative_std, self.p, self.min_depth = relative_std, p, min_depth

    def __call__(self, x: torch.Tensor, generator: torch.Generator, spec: ModalitySpec) -> torch.Tensor:
        apply = _chance(generator, self.p)
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype)
        if not apply:
            return x
        valid = _valid_mask(x, spec)[None]
        noisy = (x + noise.to(x.device) * self.relative_std * x.abs()).clamp_min(self.min_depth)
        return torch.where(valid, noisy, x)


class DepthHoles:
    """Random rectangular holes set to the invalid value, with probability ``p``.

    Args:
        max_holes: up to this many holes (at least one when applied).
        size: each side of a hole is this fraction range of the image side.

    The spec must have an ``invalid_value`` (a hole must be recognisable as "no measurement").
    """

    def __init__(self, max_holes=3, size=(0.03, 0.15), p=0.5):
        self.max_holes, self.size, self.p = max_holes, size, p

    def __call__(self, x: torch.Tensor, generator: torch.Generator, spec: ModalitySpec) -> torch.Tensor:
        if spec.invalid_value is None:
            raise ConfigError(
                f"photometric transform 'depth_holes' needs an invalid_value, modality {spec.name!r} has none"
            )
        apply = _chance(generator, self.p)
        n = int(torch.randint(1, self.max_holes + 1, (), generator=generator))
        boxes = torch.rand((self.max_holes, 4), generator=generator).tolist()
        if not apply:
            return x
        h, w = x.shape[-2:]
        out = x.clone()
        lo, hi = self.size
        for fy, fx, fh, fw in boxes[:n]:
            bh = max(1, round((lo + (hi - lo) * fh) * h))
            bw = max(1, round((lo + (hi - lo) * fw) * w))
            y0 = int(fy * (h - bh + 1))
            x0 = int(fx * (w - bw + 1))
            out[:, y0 : y0 + bh, x0 : x0 + bw] = spec.invalid_value
        return out


class ThermalGain:
    """Random gain and offset ``x * g + o`` (sensor AGC / calibration drift), with probability ``p``.

    Invalid pixels (when the spec has an invalid value) are kept as they are.
    """

    def __init__(self, gain=(0.8, 1.2), offset=(-0.1, 0.1), p=0.8):
        self.gain, self.offset, self.p = gain, offset, p

    def __call__(self, x: torch.Tensor, generator: torch.Generator, spec: ModalitySpec) -> torch.Tensor:
        apply = _chance(generator, self.p)
        g = _uniform(generator, *self.gain)
        o = _uniform(generator, *self.offset)
        if not apply:
            return x
        return torch.where(_valid_mask(x, spec)[None], x * g + o, x)


class GaussianNoise:
    """Small additive Gaussian noise, standard deviation drawn from ``std`` (physical units), probability ``p``.

    Invalid pixels (when the spec has an invalid value) are kept as they are.
    """

    def __init__(self, std=(0.0, 0.02), p=0.5):
        self.std, self.p = std, p

    def __call__(self, x: torch.Tensor, generator: torch.Generator, spec: ModalitySpec) -> torch.Tensor:
        apply = _chance(generator, self.p)
        std = _uniform(generator, *self.std)
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype)
        if not apply:
            return x
        return torch.where(_valid_mask(x, spec)[None], x + std * noise.to(x.device), x)


class PointDropout:
    """Drop a random fraction (drawn from ``fraction``) of the valid points of a sparse map, probability ``p``.

    Dropped points become the empty value in every channel; no value is ever created or changed.
    """

    def __init__(self, fraction=(0.0, 0.3), p=0.5):
        self.fraction, self.p = fraction, p

    def __call__(self, x: torch.Tensor, generator: torch.Generator, spec: ModalitySpec) -> torch.Tensor:
        apply = _chance(generator, self.p)
        f = _uniform(generator, *self.fraction)
        u = torch.rand(x.shape[-2:], generator=generator)
        if not apply:
            return x
        drop = (u.to(x.device) < f) & _valid_mask(x, spec)
        return torch.where(drop[None], torch.full_like(x, empty_value(spec)), x)


class EventDropout:
    """Binomial thinning of event counts: each event survives with probability ``1 - f``, ``f`` drawn from
    ``fraction``; applied with probability ``p``.

    Counts stay integer-valued and keep their sign (non-negative counts stay non-negative); a pixel never gains
    events. Non-integer input is rounded first.
    """

    def __init__(self, fraction=(0.0, 0.5), p=0.5):
        self.fraction, self.p = fraction, p

    def __call__(self, x: torch.Tensor, generator: torch.Generator, spec: ModalitySpec) -> torch.Tensor:
        apply = _chance(generator, self.p)
        f = _uniform(generator, *self.fraction)
        if not apply:
            return x
        counts = x.abs().round().to(torch.float32).cpu()
        keep = torch.binomial(counts, torch.full_like(counts, 1.0 - f), generator=generator)
        return torch.sign(x) * keep.to(device=x.device, dtype=x.dtype)


PHOTOMETRIC.register("color_jitter", ColorJitter())
PHOTOMETRIC.register("gaussian_blur", GaussianBlur())
PHOTOMETRIC.register("depth_noise", DepthNoise())
PHOTOMETRIC.register("depth_holes", DepthHoles())
PHOTOMETRIC.register("thermal_gain", ThermalGain())
PHOTOMETRIC.register("gaussian_noise", GaussianNoise())
PHOTOMETRIC.register("point_dropout", PointDropout())
PHOTOMETRIC.register("event_dropout", EventDropout())


# ---------------------------------------------------------------------------------------------------------------
# resampling


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


def _crop_pad(x: torch.Tensor, top: int, left: int, size: tuple[int, int], fill: float) -> torch.Tensor:
    """Crop ``size`` at (top, left); where the image is smaller, pad at the bottom / right with ``fill``."""
    ch, cw = size
    part = x[..., top : top + ch, left : left + cw]
    ph, pw = ch - part.shape[-2], cw - part.shape[-1]
    if ph == 0 and pw == 0:
        return part
    out = torch.full((*x.shape[:-2], ch, cw), fill, dtype=x.dtype, device=x.device)
    out[..., : part.shape[-2], : part.shape[-1]] = part
    return out


def _check_sample(sample: Sample) -> tuple[int, int] | None:
    """The common (H, W) of the sample's maps, or None when it has none; :class:`DataError` on bad shapes."""
    sizes = {name: tuple(x.shape[-2:]) for name, x in sample["inputs"].items()}
    for name, x in sample["inputs"].items():
        if x.dim() != 3:
            raise DataError(f"modality {name!r} must be (C, H, W), got shape {tuple(x.shape)}")
    label = sample.get("label")
    if label is not None:
        if label.dim() != 2:
            raise DataError(f"label must be (H, W), got shape {tuple(label.shape)}")
        sizes["label"] = tuple(label.shape)
    if not sizes:
        return None
    if len(set(sizes.values())) > 1:
        sid = sample.get("meta", {}).get("id", "?")
        raise DataError(
            f"sample {sid}: modalities and label differ in size {sizes}; they must share one pixel grid"
        )
    return next(iter(sizes.values()))


def _pair(v, what: str) -> tuple[int, int]:
    if isinstance(v, int):
        v = (v, v)
    v = tuple(int(a) for a in v)
    if len(v) != 2 or min(v) < 1:
        raise ConfigError(f"{what} must be one positive int or (H, W), got {v}")
    return v


# ---------------------------------------------------------------------------------------------------------------
# the pipelines


class TrainTransform:
    """Training augmentation: per-modality photometric, then joint resize → crop (with padding) → horizontal flip.

    Args:
        crop_size: output (H, W) (or one int for a square).
        scale_range: the resize factor is drawn uniformly from this range.
        hflip_prob: probability of a horizontal flip.
        ignore_index: label value of padded pixels.
        photometric: True to apply each modality's ``spec.photometric`` ops, False for none, or a mapping
            name → op (or None to disable) overriding entries of :data:`PHOTOMETRIC`.

    Call as ``transform(sample, generator)``; the sample's ``meta`` and any extra keys are kept, missing modalities
    stay missing and a ``None`` label stays ``None``. Output maps are all ``crop_size``.
    """

    def __init__(
        self,
        crop_size: int | tuple[int, int] = (512, 512),
        scale_range: tuple[float, float] = (0.5, 2.0),
        hflip_prob: float = 0.5,
        ignore_index: int = 255,
        photometric: bool | Mapping[str, PhotometricOp | None] = True,
    ):
        self.crop_size = _pair(crop_size, "crop_size")
        lo, hi = (float(s) for s in scale_range)
        if not 0 < lo <= hi:
            raise ConfigError(f"scale_range must satisfy 0 < low <= high, got {scale_range}")
        if not 0.0 <= hflip_prob <= 1.0:
            raise ConfigError(f"hflip_prob must be in [0, 1], got {hflip_prob}")
        self.scale_range = (lo, hi)
        self.hflip_prob = float(hflip_prob)
        self.ignore_index = int(ignore_index)
        self.photometric = photometric

    def _photometric_op(self, name: str) -> PhotometricOp | None:
        if isinstance(self.photometric, Mapping) and name in self.photometric:
            return self.photometric[name]
        return PHOTOMETRIC.get(name)

    def __call__(self, sample: Sample, generator: torch.Generator | None = None) -> Sample:
        size = _check_sample(sample)
        # a fixed number of draws, in a fixed order, whatever the sample holds
        scale = _uniform(generator, *self.scale_range)
        u_top = float(torch.rand((), generator=generator))
        u_left = float(torch.rand((), generator=generator))
        flip = _chance(generator, self.hflip_prob)
        photo_seed = int(torch.randint(0, 2**62, (), generator=generator))

        inputs = {}
        for name, x in sample["inputs"].items():
            spec = get_modality(name)
            if self.photometric is not False:
                g = torch.Generator().manual_seed(photo_seed ^ zlib.crc32(name.encode()))
                for op_name in spec.photometric:
                    op = self._photometric_op(op_name)
                    if op is not None:
                        x = op(x, g, spec)
            inputs[name] = x
        label = sample.get("label")
        if size is None:
            return {**sample, "inputs": inputs, "label": label}

        h, w = size
        new = (max(1, round(h * scale)), max(1, round(w * scale)))
        ch, cw = self.crop_size
        top = min(int(u_top * (max(new[0] - ch, 0) + 1)), max(new[0] - ch, 0))
        left = min(int(u_left * (max(new[1] - cw, 0) + 1)), max(new[1] - cw, 0))

        for name, x in inputs.items():
            spec = get_modality(name)
            x = resize_modality(x, new, spec)
            x = _crop_pad(x, top, left, self.crop_size, empty_value(spec))
            inputs[name] = x.flip(-1) if flip else x
        if label is not None:
            label = _crop_pad(resize_label(label, new), top, left, self.crop_size, self.ignore_index)
            label = label.flip(-1) if flip else label
        return {**sample, "inputs": inputs, "label": label}

    def __repr__(self) -> str:
        return (
            f"TrainTransform(crop_size={self.crop_size}, scale_range={self.scale_range}, "
            f"hflip_prob={self.hflip_prob}, ignore_index={self.ignore_index}, photometric={self.photometric!r})"
        )


class EvalTransform:
    """Evaluation transform: no resize, crop or augmentation (metrics are computed at the label's resolution).

    It checks that every map shares one (H, W) and returns a new sample dict with the same tensors. The
    ``generator`` argument exists so train and eval transforms are called the same way; it is not used.
    """

    def __call__(self, sample: Sample, generator: torch.Generator | None = None) -> Sample:
        _check_sample(sample)
        return {**sample, "inputs": dict(sample["inputs"]), "label": sample.get("label")}

    def __repr__(self) -> str:
        return "EvalTransform()"
