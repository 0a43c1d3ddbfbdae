"""Sensor-dropout consistency: the model's prediction from all its sensors teaches its own prediction from a random
subset of them, so that losing a sensor changes the output as little as possible.

    L = CE(f(x), y) + CE(f(x_S), y) + λ · T² · KL( softmax(f(x) / T) ‖ softmax(f(x_S) / T) )      (1)

x: the batch's sensors (after ``method.modality_dropout``, as every rgbx method); S: each of them dropped per sample
with probability ``options.drop`` (at least one kept); the full-sensor prediction is a target only (no gradient
through it in the KL term), averaged over all pixels (labels are not needed for it); λ = ``options.weight``,
T = ``options.temperature``. CE is the configured segmentation loss (``method.loss``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from rgbx.methods import METHODS, Method, drop_modalities


@METHODS.register("dropout_consistency")
class DropoutConsistency(Method):
    @dataclass
    class Options:
        weight: float = 1.0  # λ
        temperature: float = 1.0  # T
        drop: float = 0.5  # probability of dropping each sensor for the subset S

        def __post_init__(self):
            if self.weight < 0 or self.temperature <= 0 or not 0 < self.drop < 1:
                raise ValueError(f"need weight >= 0, temperature > 0 and 0 < drop < 1, got weight {self.weight}, "
                                 f"temperature {self.temperature}, drop {self.drop}")

    def step(self, model, batch, generator: torch.Generator) -> dict[str, torch.Tensor]:
        batch = drop_modalities(batch, self.config.modality_dropout, generator)
        subset = drop_modalities(batch, self.options.drop, generator)
        full_logits = model(batch.inputs, batch.present).logits
        subset_logits = model(subset.inputs, subset.present).logits
        t = self.options.temperature
        target = F.softmax(full_logits.detach().float() / t, dim=1)
        kl = F.kl_div(F.log_softmax(subset_logits.float() / t, dim=1), target, reduction="none").sum(1).mean()
        return {  # eq. (1), term by term
            self.loss_name: self.segmentation_loss(full_logits, batch.label),
            f"{self.loss_name}_subset": self.segmentation_loss(subset_logits, batch.label),
            "consistency": self.options.weight * t * t * kl,
        }
