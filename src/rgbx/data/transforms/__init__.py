"""Transforms for multi-modal samples (physical units in, physical units out), all randomness from an explicit
:class:`torch.Generator` so that a dataset seeding it from ``(seed, epoch, index)`` gets reproducible, resumable
training: :mod:`.photometric` (per-modality ops), :mod:`.geometric` (per-kind resampling), :mod:`.pipelines`
(:class:`TrainTransform`, :class:`EvalTransform`), :mod:`.batch_geometry` (the geometric step on a whole batch, on
its device)."""

from rgbx.data.transforms.batch_geometry import BatchGeometry, GeometryDraws
from rgbx.data.transforms.geometric import (
    crop_pad,
    resize_crop,
    resize_crop_label,
    resize_label,
    resize_modality,
)
from rgbx.data.transforms.photometric import (
    PHOTOMETRIC,
    ColorJitter,
    DepthHoles,
    DepthNoise,
    EventDropout,
    GaussianBlur,
    GaussianNoise,
    Misalignment,
    PhotometricOp,
    PointDropout,
    ThermalGain,
    empty_value,
)
from rgbx.data.transforms.pipelines import EvalTransform, TrainTransform

__all__ = ["PHOTOMETRIC", "BatchGeometry", "ColorJitter", "DepthHoles", "DepthNoise", "EvalTransform", "EventDropout",
           "GaussianBlur", "GaussianNoise", "GeometryDraws", "Misalignment", "PhotometricOp", "PointDropout", "ThermalGain",
           "TrainTransform", "crop_pad", "empty_value", "resize_crop", "resize_crop_label", "resize_label",
           "resize_modality"]
