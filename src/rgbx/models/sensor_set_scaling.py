"""Vector scaling per sensor set: a per-class scale and bias on the logits, one pair for each set of sensors.

Vector scaling (Guo et al., "On Calibration of Modern Neural Networks", ICML 2017, §4.2) maps the logits ``z`` to
``z' = s ⊙ z + b`` with a scale ``s`` and a bias ``b`` per class, fitted by the NLL on held-out pixels. A multi-modal
model gets one pair per sensor set, because its errors depend on which sensors it has: a model trained with every
sensor present that loses one tends to over-predict some classes — a bias that a per-class bias removes — and to be
over- or under-confident by class. Unlike temperature scaling this changes the predictions (the argmax).

:class:`SensorSetScaling` holds the pairs as buffers (a row per subset of the model's sensors, indexed by the bits of
the sensors present) and applies each sample's own: it is part of the model, so evaluation, prediction and the
exported ONNX file all use it. It is the identity until ``rgbx calibrate --scaling vector`` fits it
(:func:`rgbx.engine.calibration.fit_vector_scaling`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import nn

from rgbx.errors import ConfigError


class SensorSetScaling(nn.Module):
    """``forward(logits, present)``: ``logits`` (B, K, ...) times each sample's sensor set's scale plus its bias.

    Buffers ``scale`` and ``bias``, (2^M, K) for M sensors: row ``i`` is the set whose sensors are the bits of ``i``
    (sensor ``j`` of ``modalities`` is bit ``j``); all ones / zeros (the identity) until set."""

    def __init__(self, modalities: Sequence[str], num_classes: int):
        super().__init__()
        self.modalities = tuple(modalities)
        rows = 2 ** len(self.modalities)
        self.register_buffer("scale", torch.ones(rows, num_classes))
        self.register_buffer("bias", torch.zeros(rows, num_classes))

    def row(self, sensors: Iterable[str]) -> int:
        """The row of the set of ``sensors`` (names of :attr:`modalities`, in any order)."""
        sensors = set(sensors)
        unknown = sorted(sensors - set(self.modalities))
        if unknown or not sensors:
            raise ConfigError(f"sensor set {sorted(sensors)}: expected a non-empty subset of {list(self.modalities)}")
        return sum(1 << j for j, m in enumerate(self.modalities) if m in sensors)

    def set(self, sensors: Iterable[str], scale: torch.Tensor, bias: torch.Tensor) -> None:
        """Set the scale and bias ((K,) each) of one sensor set."""
        row = self.row(sensors)
        k = self.scale.shape[1]
        if tuple(scale.shape) != (k,) or tuple(bias.shape) != (k,):
            raise ConfigError(f"vector scaling of {'+'.join(sorted(sensors))}: expected a scale and a bias of shape "
                              f"({k},), got {tuple(scale.shape)} and {tuple(bias.shape)}")
        with torch.no_grad():
            self.scale[row] = scale.to(self.scale)
            self.bias[row] = bias.to(self.bias)

    def reset(self) -> None:
        """Back to the identity for every set."""
        with torch.no_grad():
            self.scale.fill_(1.0)
            self.bias.zero_()

    def rows(self, present: Mapping[str, torch.Tensor], batch: int, device: torch.device) -> torch.Tensor:
        """(B,) int64: each sample's row, from ``present`` (modality → (B,) bool; a modality not in it is absent).
        On the device, without a host synchronisation (so CUDA graphs and ONNX tracing see no data-dependent
        branch)."""
        index = torch.zeros(batch, dtype=torch.int64, device=device)
        for j, m in enumerate(self.modalities):
            if m in present:
                index = index + present[m].to(device=device, dtype=torch.int64) * (1 << j)
        return index

    def forward(self, logits: torch.Tensor, present: Mapping[str, torch.Tensor]) -> torch.Tensor:
        index = self.rows(present, logits.shape[0], logits.device)
        shape = (logits.shape[0], logits.shape[1]) + (1,) * (logits.dim() - 2)
        scale = self.scale.index_select(0, index).view(shape)
        bias = self.bias.index_select(0, index).view(shape)
        return logits * scale.to(logits.dtype) + bias.to(logits.dtype)
