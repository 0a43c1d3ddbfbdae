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
        weight = None if self.class_weights is None else self.class_weights.to(out.logits.device)
        ce = F.cross_entropy(out.logits.float(), batch.label, weight=weight, ignore_index=self.ignore_index,
                             label_smoothing=self.config.label_smoothing)
        return {"ce": ce}
