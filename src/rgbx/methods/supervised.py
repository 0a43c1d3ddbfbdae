"""Plain supervised training: pixel-wise cross-entropy, optionally with modality dropout.

    L = CE(f(x_S), y),  S = the modalities kept after dropping each with probability p (at least one kept)

CE is the configured segmentation loss (``method.loss``: cross-entropy, or its hard-pixel mining form ``ohem``;
:mod:`rgbx.methods.losses`), optionally class-weighted (``class_weights``, e.g. ENet's 1 / ln(1.02 + p_c)).
"""

from __future__ import annotations

import torch

from rgbx.methods.base import METHODS, Method, drop_modalities


@METHODS.register("supervised")
class Supervised(Method):
    def step(self, model, batch, generator: torch.Generator) -> dict[str, torch.Tensor]:
        batch = drop_modalities(batch, self.config.modality_dropout, generator)
        out = model(batch.inputs, batch.present)
        return {self.loss_name: self.segmentation_loss(out.logits, batch.label)}

    def graph_refusal(self) -> str | None:
        return None  # a captured step's presence masks are decided on the device, modality dropout included

