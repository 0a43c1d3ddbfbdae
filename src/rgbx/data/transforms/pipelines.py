"""The training and evaluation pipelines: per-modality photometric ops, then one joint geometric step.

:class:`TrainTransform` runs two steps:

1. **Photometric, per modality** (:mod:`.photometric`). Each modality draws from its own generator, derived from the
   sample's generator and the modality name, so its augmentation does not depend on which other sensors the sample
   has.
2. **Geometric, jointly**: random resize by a factor in ``scale_range``, random crop to ``crop_size`` (padding when
   the image is smaller), random horizontal flip. The same parameters apply to every modality and to the label; no
   modality can silently pass through, because the step walks ``sample["inputs"]`` itself. Each kind of map is
   resampled by its own rule (:mod:`.geometric`).

:class:`EvalTransform` changes nothing (evaluation happens at the label's own resolution); it only checks the sample.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence

import torch

from rgbx.data.transforms.batch_geometry import BatchGeometry
from rgbx.data.transforms.geometric import crop_window, resize_crop, resize_crop_label
from rgbx.data.transforms.photometric import PHOTOMETRIC, PhotometricOp, _chance, _uniform
from rgbx.errors import ConfigError, DataError
from rgbx.modalities import get_modality

Sample = dict

__all__ = ["EvalTransform", "TrainTransform"]


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
        scales: instead, the resize factor is one of these, each as likely (CMX and DFormer draw from
            ``(0.5, 0.75, 1, 1.25, 1.5, 1.75)``); None: ``scale_range``.
        hflip_prob: probability of a horizontal flip.
        ignore_index: label value of padded pixels.
        photometric: True to apply each modality's ``spec.photometric`` ops, False for none, or a mapping
            name → op (or None to disable) overriding entries of :data:`PHOTOMETRIC`.
        sensor_ops: sensor → the ops it gets instead of its spec's list (:func:`.photometric.build_photometric_ops`
            builds them from ``data.photometric_ops``); unless ``photometric`` is False.
        geometric_on: ``"sample"``: the geometric step runs here, on each sample (in the loader workers).
            ``"batch"``: it is left for the batch: the sample keeps its size and carries its geometric draws
            (``sample["geometry"]``), and :meth:`batch_geometry` applies them to the collated batch on its device
            (:mod:`.batch_geometry`; the same draws and rules, so the same result up to float rounding).
        pad_fill: sensor → its padding value per channel, in physical units (default: the sensor's empty value:
            black, no measurement). The trainer fills it with the network's zero input for
            ``data.crop_padding=centre``.
        pad_centre: where the crop covers an axis entirely, pad on both sides (the odd pixel after the image), as
            CMX's and DFormer's ``random_crop_pad_to_shape`` do; False: after the image (bottom / right).

    Call as ``transform(sample, generator)``; the sample's ``meta`` and any extra keys are kept, missing modalities
    stay missing and a ``None`` label stays ``None``. Output maps are all ``crop_size`` (``geometric_on="sample"``).
    """

    def __init__(
        self,
        crop_size: int | tuple[int, int] = (512, 512),
        scale_range: tuple[float, float] = (0.5, 2.0),
        hflip_prob: float = 0.5,
        ignore_index: int = 255,
        photometric: bool | Mapping[str, PhotometricOp | None] = True,
        geometric_on: str = "sample",
        scales: Sequence[float] | None = None,
        sensor_ops: Mapping[str, Sequence[PhotometricOp]] | None = None,
        pad_fill: Mapping[str, Sequence[float]] | None = None,
        pad_centre: bool = False,
    ):
        self.crop_size = _pair(crop_size, "crop_size")
        self.scales = None if scales is None else tuple(float(s) for s in scales)
        if self.scales is not None and (not self.scales or min(self.scales) <= 0):
            raise ConfigError(f"scales must be a non-empty list of positive resize factors, got {scales}")
        lo, hi = (float(s) for s in scale_range)
        if not 0 < lo <= hi:
            raise ConfigError(f"scale_range must satisfy 0 < low <= high, got {scale_range}")
        if not 0.0 <= hflip_prob <= 1.0:
            raise ConfigError(f"hflip_prob must be in [0, 1], got {hflip_prob}")
        self.scale_range = (lo, hi)
        self.hflip_prob = float(hflip_prob)
        self.ignore_index = int(ignore_index)
        self.photometric = photometric
        self.sensor_ops = {name: list(ops) for name, ops in (sensor_ops or {}).items()}
        if geometric_on not in ("sample", "batch"):
            raise ConfigError(f"geometric_on must be 'sample' or 'batch', got {geometric_on!r}")
        self.geometric_on = geometric_on
        self.pad_fill = {}
        for name, values in (pad_fill or {}).items():
            channels = get_modality(name).channels
            if isinstance(values, str) or not isinstance(values, Sequence) or len(values) != channels:
                raise ConfigError(f"pad_fill[{name!r}]: expected {channels} value(s), one per channel, got {values!r}")
            self.pad_fill[name] = tuple(float(v) for v in values)
        self.pad_centre = bool(pad_centre)

    def batch_geometry(self) -> BatchGeometry:
        """The geometric step for batches of samples made with ``geometric_on="batch"``."""
        return BatchGeometry(self.crop_size, self.ignore_index, self.pad_fill, self.pad_centre)

    def _photometric_op(self, name: str) -> PhotometricOp | None:
        if isinstance(self.photometric, Mapping) and name in self.photometric:
            return self.photometric[name]
        return PHOTOMETRIC.get(name)

    def __call__(self, sample: Sample, generator: torch.Generator | None = None) -> Sample:
        size = _check_sample(sample)
        # a fixed number of draws, in a fixed order, whatever the sample holds
        if self.scales is None:
            scale = _uniform(generator, *self.scale_range)
        else:  # one draw either way: the draws after it stay the same
            scale = self.scales[min(int(_uniform(generator, 0.0, 1.0) * len(self.scales)), len(self.scales) - 1)]
        u_top = float(torch.rand((), generator=generator))
        u_left = float(torch.rand((), generator=generator))
        flip = _chance(generator, self.hflip_prob)
        photo_seed = int(torch.randint(0, 2**62, (), generator=generator))

        inputs = {}
        for name, x in sample["inputs"].items():
            spec = get_modality(name)
            if self.photometric is not False:
                g = torch.Generator().manual_seed(photo_seed ^ zlib.crc32(name.encode()))
                ops = (self.sensor_ops[name] if name in self.sensor_ops
                       else [self._photometric_op(op_name) for op_name in spec.photometric])
                for op in ops:
                    if op is not None:
                        x = op(x, g, spec)
            inputs[name] = x
        label = sample.get("label")
        if size is None:
            return {**sample, "inputs": inputs, "label": label}

        if self.geometric_on == "batch":
            draws = torch.tensor([scale, u_top, u_left, float(flip)], dtype=torch.float64)
            return {**sample, "inputs": inputs, "label": label, "geometry": draws}
        new, top, left = crop_window(size, self.crop_size, scale, u_top, u_left, self.pad_centre)

        for name, x in inputs.items():
            spec = get_modality(name)
            fill = self.pad_fill.get(name)
            x = resize_crop(x, new, top, left, self.crop_size, spec,
                            None if fill is None else torch.tensor(fill).view(-1, 1, 1))
            inputs[name] = x.flip(-1) if flip else x
        if label is not None:
            label = resize_crop_label(label, new, top, left, self.crop_size, self.ignore_index)
            label = label.flip(-1) if flip else label
        return {**sample, "inputs": inputs, "label": label}

    def __repr__(self) -> str:
        return (
            f"TrainTransform(crop_size={self.crop_size}, scale_range={self.scale_range}, scales={self.scales}, "
            f"hflip_prob={self.hflip_prob}, ignore_index={self.ignore_index}, photometric={self.photometric!r}, "
            f"sensor_ops={self.sensor_ops!r}, "
            f"geometric_on={self.geometric_on!r}, pad_fill={self.pad_fill}, pad_centre={self.pad_centre})"
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
