"""Zero-shot segmentation with an MS3-trained model: classes given only by their language embeddings.

Each pixel gets the class whose improved language embedding is nearest to its pixel embedding::

    score_k(i) = I_i · M_I(T_k) / τ,   ŷ_i = argmax_k score_k(i)

with I the model's decoder map through MS3's language projection head (both L2-normalised), T_k the text embedding
of the k-th *new* class (any names: another dataset's classes, synonyms, coarser or finer labels) and M_I the
language improver learnt in training. :class:`ZeroShotSegmentor` wraps model + head + embeddings as a model whose
``logits`` are these scores, so every evaluation path (``rgbx eval --zero-shot``: anymodal table, multi-scale,
robustness) and :func:`zero_shot_predict` use it unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from rgbx.errors import ConfigError
from rgbx.methods.ms3 import MS3Head, load_class_embeddings, load_ms3_head
from rgbx.models.layers import resize
from rgbx.models.segmentor import SegOutput

__all__ = ["ZeroShotSegmentor", "load_zero_shot", "zero_shot_predict"]


class ZeroShotSegmentor(nn.Module):
    """A segmentation model over a new class set.

    Args:
        model: the MS3-trained :class:`~rgbx.models.Segmentor`.
        head: its :class:`~rgbx.methods.ms3.MS3Head` (``load_ms3_head``).
        embeddings: (K', C) raw language embeddings of the new classes (before M_I).
        temperature: τ of training (only scales the scores; the argmax does not depend on it).
        classes: the names of the K' classes (informational).
    """

    def __init__(self, model: nn.Module, head: MS3Head, embeddings: torch.Tensor, temperature: float = 0.07,
                 classes: Sequence[str] | None = None):
        super().__init__()
        if embeddings.ndim != 2 or embeddings.shape[1] != head.embed_dim:
            raise ConfigError(f"zero-shot class embeddings have shape {tuple(embeddings.shape)}; the MS3 head "
                              f"expects (classes, {head.embed_dim})")
        self.model, self.head, self.temperature = model, head, float(temperature)
        self.register_buffer("embeddings", embeddings.float())
        self.classes = list(classes) if classes is not None else [str(i) for i in range(len(embeddings))]

    @property
    def modalities(self) -> tuple[str, ...]:
        return self.model.modalities

    @property
    def num_classes(self) -> int:
        return self.embeddings.shape[0]

    @property
    def config(self):
        return self.model.config

    def forward(self, inputs: Mapping[str, torch.Tensor], present: Mapping[str, torch.Tensor] | None = None
                ) -> SegOutput:
        out = self.model(inputs, present, return_decoder=True)
        pixels = self.head.pixel_language(out.decoder)  # I, (B, C, h, w)
        text = self.head.language(self.embeddings)  # M_I(T), (K', C)
        scores = torch.einsum("bchw,kc->bkhw", pixels, text) / self.temperature
        size = next(iter(inputs.values())).shape[-2:]
        return SegOutput(logits=resize(scores, size), fused=out.fused, features=out.features, present=out.present,
                         decoder=out.decoder)


def load_zero_shot(checkpoint: str | Path, embeddings: str | Path, classes: Sequence[str],
                   head: str | Path | None = None, device: str | torch.device = "cpu") -> ZeroShotSegmentor:
    """Model weights + MS3 head (default: ``ms3_head.safetensors`` next to ``checkpoint``) + the language embeddings
    of ``classes`` from the safetensors file ``embeddings`` → a :class:`ZeroShotSegmentor` in eval mode."""
    from rgbx.engine.checkpoint import load_model

    checkpoint = Path(checkpoint)
    model, _ = load_model(checkpoint, device)
    ms3_head, meta = load_ms3_head(head if head is not None else checkpoint.parent, device)
    if ms3_head.in_channels != model.head.classifier.in_channels:
        raise ConfigError(f"the MS3 head reads {ms3_head.in_channels} decoder channels, the model "
                          f"{checkpoint} has {model.head.classifier.in_channels}: they come from different runs")
    text = load_class_embeddings(embeddings, list(classes))
    return ZeroShotSegmentor(model, ms3_head, text, meta.get("temperature", 0.07), classes).to(device).eval()


@torch.no_grad()
def zero_shot_predict(segmentor: ZeroShotSegmentor, inputs: Mapping[str, torch.Tensor],
                      present: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
    """(B, H, W) int64 labels in the new class set (0 … K'−1)."""
    segmentor.eval()
    return segmentor(inputs, present).logits.argmax(1)
