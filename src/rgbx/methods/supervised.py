"""Plain supervised training: pixel-wise cross-entropy, optionally with modality dropout.

    L = CE(f(x_S), y),  S = the modalities kept after dropping each with probability p (at least one kept)
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
        ce = F.cross_entropy(out.logits.float(), batch.label, ignore_index=self.ignore_index,
                             label_smoothing=self.config.label_smoothing)
        return {"ce": ce}
