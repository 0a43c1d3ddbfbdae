"""OmniSegmentor's multi-modal pretraining (Yin et al., NeurIPS 2025): RGB plus ONE supplementary modality per step.

The paper pretrains on ImageNeXt (ImageNet with synthesised depth, thermal, LiDAR and events). At every iteration
the model sees RGB and a single supplementary modality drawn at random; feeding all modalities at once costs more
and pretrains worse (83.0 vs 79.9 % top-1, its ablation), since the modalities then compete in one optimisation
step. The paper states no loss equation with a number; the step is::

    m  ~ U(S)          S = the supplementary modalities some sample of the batch has (``candidates`` narrows it)
    L  = CE(f(x_rgb, x_m), y)

rgbx's adaptation: the loss is the task's pixel-wise cross-entropy, so any rgbx dataset (the built-in synthetic one,
the public benchmarks, your folders) can serve as the pretraining corpus; the paper's ImageNeXt stage is image
classification. One draw per step for the whole batch, as in the paper, so only the stem and MLPs of the chosen
modality run and get gradients that step (``find_unused_parameters`` is set automatically under DDP for recipes
other than ``supervised``). Samples that lack the drawn modality are trained on RGB alone in that step.

Fine-tuning to any modality set afterwards: ``model.pretrained`` = this run's ``model.safetensors`` (the ``omni``
fusion extends the weights to modalities they lack, ``fusion_options.init_from``; ``docs/models/omni.md``).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch

from rgbx.data.sample import host_masks
from rgbx.errors import ConfigError
from rgbx.methods.base import METHODS, Method

__all__ = ["OmniPretraining", "draw_supplementary"]


def draw_supplementary(batch, anchor: str, candidates: list[str] | None, generator: torch.Generator) -> str | None:
    """One supplementary modality drawn uniformly among ``candidates`` (default: every modality of the batch but the
    anchor) that at least one sample of the batch has; None if the batch has none of them. Reads presence from the
    host-side masks (no device read-back)."""
    names = [m for m in batch.modalities if m != anchor and (candidates is None or m in candidates)]
    if not names:
        return None
    present = host_masks(batch.present, names)  # (B, M) bool on the CPU
    available = [m for j, m in enumerate(names) if bool(present[:, j].any())]
    if not available:
        return None
    return available[int(torch.randint(len(available), (1,), generator=generator))]


@METHODS.register("omni_pretrain")
class OmniPretraining(Method):
    """RGB + one randomly drawn supplementary modality per step (see the module docstring).

    ``selected`` counts how often each modality was drawn (``"none"``: a batch with no candidate, trained on the
    anchor alone).
    """

    @dataclass
    class Options:
        anchor: str = "rgb"  # the modality every step keeps
        candidates: list[str] | None = None  # supplementary modalities to draw from (default: all the batch has)

    def __init__(self, config, **kwargs):
        super().__init__(config, **kwargs)
        if self.options.candidates is not None and not self.options.candidates:
            raise ConfigError("method.options.candidates: give at least one modality, or leave it unset for all")
        if self.options.candidates and set(self.options.candidates) <= {self.options.anchor}:
            raise ConfigError(f"method.options.candidates={list(self.options.candidates)} holds only the anchor "
                              f"{self.options.anchor!r} (method.options.anchor), which every step keeps anyway: no "
                              f"supplementary modality would ever be drawn; name the supplementary modalities to draw "
                              f"from (e.g. [depth]), or leave it unset for all")
        if getattr(config, "modality_dropout", 0.0):
            raise ConfigError("method omni_pretrain draws its own modality per step; set method.modality_dropout=0")
        self.selected: Counter[str] = Counter()
        self._sensors = 0

    def drops_sensors(self) -> bool:
        return self._sensors > 2  # the anchor and one supplementary modality per step: the others absent

    def prepare(self, model: torch.nn.Module, device: torch.device) -> None:
        model = getattr(model, "module", model)  # under DDP, the wrapped model
        modalities = list(getattr(getattr(model, "config", None), "modalities", None) or [])
        self._sensors = len(modalities)
        if not modalities:
            return
        wanted = [self.options.anchor, *(self.options.candidates or [])]
        unknown = [m for m in wanted if m not in modalities]
        if unknown:
            raise ConfigError(f"method.options: {unknown} not among the model's modalities {modalities}")
        if len(modalities) < 2:
            raise ConfigError(f"method omni_pretrain needs a model with supplementary modalities besides "
                              f"{self.options.anchor!r}; model.modalities={modalities}")

    def step(self, model, batch, generator: torch.Generator) -> dict[str, torch.Tensor]:
        anchor = self.options.anchor
        chosen = draw_supplementary(batch, anchor, self.options.candidates, generator)
        self.selected[chosen or "none"] += 1
        view = batch.with_modalities([anchor] if chosen is None else [anchor, chosen])
        out = model(view.inputs, view.present)
        return {self.loss_name: self.segmentation_loss(out.logits, batch.label)}
