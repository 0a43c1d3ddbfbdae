"""The ``dformerv2`` fusion: DFormerv2's geometry-attention encoder (:mod:`rgbx.models.backbones.dformerv2`) as a
fusion encoder.

DFormerv2 fuses through its attention: depth is not encoded by layers of its own but turned, at every stage, into
an additive bias of the RGB tokens' self-attention (the geometry prior). So there is no separate fusion module and
no depth feature map: ``fused`` is the encoder's four stage maps, as in the original, and ``features`` holds them
under ``"rgb"`` only (the depth-like modality has no maps of its own; it is listed in ``present``).

Modalities: exactly ``"rgb"`` and one depth-like modality, ``"depth"`` (1 channel) or ``"hha"`` (3 channels; its
channel 0, horizontal disparity, gives the prior — the original likewise uses channel 0 of the 3-channel "depth"
image its loader makes).

Absent modalities, per sample, as in the ``dformer`` fusion: a missing input is replaced by its modality's *fill
value* (``ModalitySpec.fill`` in the network's input encoding; 0 for depth, hha and rgb in rgbx's normalisation).

* depth (or hha) not passed, or ``present`` False for a sample: that sample's depth is a constant map. Every
  depth distance ``|z_p − z_p'|`` is then zero, so the geometry prior of that sample is the positional decay
  alone (the mixing weight ``w0`` times the spatial distance, per head): the encoder runs as a plain RGB
  transformer with a distance-decayed attention, and the result is exactly what running that sample alone without
  depth gives (eval mode). Nothing the absent sample held in ``inputs`` reaches any output. (The original has no
  rule for a missing depth; its loaders always provide one.)
* rgb absent: the same rule on the RGB input, so a depth-only sample is encoded from a mean-RGB image whose
  attention is shaped by its depth.
* a sample with no present modality gets all-zero ``fused`` maps.
"""

from __future__ import annotations

import torch

from rgbx.models.backbones.dformerv2 import DFORMERV2_VARIANTS
from rgbx.models.fusions.dformer import DFormerFusion
from rgbx.models.registries import FUSIONS

__all__ = ["DFormerv2Fusion"]


@FUSIONS.register("dformerv2")
class DFormerv2Fusion(DFormerFusion):
    """DFormerv2 RGB-D encoder as a fusion (see the module docstring): the ``dformer`` fusion's inputs, checks and
    absent-modality rule, with DFormerv2's encoder, which has no depth maps of its own.

    Args:
        backbone: ``"dformerv2_s"`` (default), ``"dformerv2_b"``, ``"dformerv2_l"`` (or the test variant
            ``"dformerv2_nano"``).
        modalities: ``"rgb"`` and one of ``"depth"``, ``"hha"`` (any order).
        drop_path_rate: stochastic depth (DFormerv2's NYU configs: 0.25 / 0.2 / 0.3 for S / B / L).
        attn_impl: ``"sdpa"`` or ``"eager"``.
        pretrained: a local released DFormerv2 checkpoint (segmentation ``backbone.*`` / ``decode_head.*`` keys or an
            ImageNet-pretrained encoder), loaded strictly into the encoder.
        input_encoding: the network's own input encoding per modality, where it differs from rgbx's normalisation
            (:mod:`rgbx.models.input_encoding`; set by ``model.input_encoding``).
    """

    fusion_name = "dformerv2"
    variants = DFORMERV2_VARIANTS
    family = "DFormerv2"
    default_backbone = "dformerv2_s"

    def encode(self, rgb: torch.Tensor, depth: torch.Tensor) -> tuple[list[torch.Tensor], None]:
        """The four stage maps; depth shapes the attention and has no maps of its own."""
        return self.encoder(rgb, depth), None
