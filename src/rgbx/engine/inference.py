"""Test-time inference: single pass, or multi-scale + horizontal-flip averaging of class probabilities.

Each modality is resized in physical units by its own rule (``rgbx.data.transforms.resize_modality``: bilinear for
dense images, nearest for depth, point-preserving for sparse LiDAR / events), so no invalid or interpolated sensor
values are invented at other scales; the logits of every pass are resized back to the input size and their softmax
probabilities averaged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F

from rgbx.data.transforms import resize_modality
from rgbx.modalities import get_modality


def _rescale(name: str, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    spec = get_modality(name)
    physical = spec.denormalize(x)
    resized = torch.stack([resize_modality(sample, size, spec) for sample in physical])
    return spec.normalize(resized)


def predict_logits(model: torch.nn.Module, inputs: Mapping[str, torch.Tensor],
                   present: Mapping[str, torch.Tensor] | None = None, scales: Sequence[float] = (1.0,),
                   flip: bool = False) -> torch.Tensor:
    """(B, K, H, W) scores at the input size: the model's logits for one plain pass, else the mean softmax
    probability over ``scales`` × (identity, horizontal flip)."""
    scales = tuple(float(s) for s in scales)
    if scales == (1.0,) and not flip:
        return model(inputs, present).logits
    h, w = next(iter(inputs.values())).shape[-2:]
    total = None
    for scale in scales:
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        scaled = {m: x if size == (h, w) else _rescale(m, x, size) for m, x in inputs.items()}
        for flipped in ((False, True) if flip else (False,)):
            view = {m: x.flip(-1) for m, x in scaled.items()} if flipped else scaled
            logits = model(view, present).logits
            if flipped:
                logits = logits.flip(-1)
            if logits.shape[-2:] != (h, w):
                logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
            probs = logits.float().softmax(1)
            total = probs if total is None else total + probs
    return total / (len(scales) * (2 if flip else 1))
