"""Plain supervised training: pixel-wise cross-entropy, optionally with modality dropout.

    L = CE(f(x_S), y),  S = the modalities kept after dropping each with probability p (at least one kept)

optionally class-weighted (``class_weights``, e.g. ENet's 1 / ln(1.02 + p_c)).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rgbx.methods.base import METHODS, Method, drop_modalities


@METHODS.register("supervised")
class Supervised(Method):
    def step(self, model, batch, generator: torch.Generator) -> dict[str, torch.Tensor]:
        batch = drop_modalities(batch, self.config.modality_dropout, generator)
        out = model(batch.inputs, batch.present)
        return {"ce": cross_entropy(out.logits, batch.label, self.ignore_index, self.class_weights,
                                   self.config.label_smoothing)}

    def graph_refusal(self) -> str | None:
        return None  # a captured step's presence masks are decided on the device, modality dropout included


def cross_entropy(logits: torch.Tensor, label: torch.Tensor, ignore_index: int,
                  class_weights: torch.Tensor | None = None, label_smoothing: float = 0.0) -> torch.Tensor:
    """Pixel-wise (weighted) cross-entropy averaged over labelled pixels; 0 (not NaN) when a batch has none."""
    weight = None if class_weights is None else class_weights.to(logits.device)
    total = F.cross_entropy(logits.float(), label, weight=weight, ignore_index=ignore_index,
                            label_smoothing=label_smoothing, reduction="sum")
    valid = label != ignore_index
    if weight is None:
        norm = valid.sum()
    else:
        norm = weight[label.clamp(0, len(weight) - 1)].masked_fill(~valid, 0).sum()
    return total / norm.clamp(min=1e-6)
