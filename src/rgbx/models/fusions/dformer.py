"""The ``dformer`` fusion: DFormer's joint RGB-D encoder (:mod:`rgbx.models.backbones.dformer`) as a fusion encoder.

DFormer fuses inside its blocks (the depth branch gates and queries the RGB branch in every block), so there is no
separate fusion module: ``fused`` is the RGB branch's four stage maps, as in the original, and ``features`` holds
the RGB branch's maps under ``"rgb"`` and the (half-width) depth branch's maps under the depth-like modality.

Modalities: exactly ``"rgb"`` and one depth-like modality, ``"depth"`` (1 channel) or ``"hha"`` (3 channels; its
channel 0, horizontal disparity, feeds the depth stem — the original likewise feeds channel 0 of whatever
3-channel "depth" image it is given).

Absent modalities. The two branches are entangled, so a missing input cannot simply be skipped; and the original's
rule (no depth → feed the RGB image to the depth stem) is not used here, since it makes "no depth" look like a depth
map with RGB statistics. Instead a missing input is replaced by its modality's *fill value* (the normalised value
the data pipeline uses for an absent modality, ``ModalitySpec.fill``; 0 for depth, hha and rgb, i.e. the
dataset-mean image), per sample:

* depth (or hha) not passed, or ``present`` False for a sample: that sample's depth input is the constant fill map
  and the depth branch still runs (the RGB branch needs its output). The result is exactly what running that
  sample alone without depth gives (in eval mode; BatchNorm in training mixes batch statistics, as always), and
  nothing the absent sample held in ``inputs`` reaches any output.
* rgb absent: the same rule on the RGB input, so a depth-only sample is encoded from a mean-RGB image plus its
  depth; ``fused`` are still the RGB-branch maps.
* a sample with no present modality gets all-zero ``fused`` maps.

``features[m]`` exists for the modalities present for at least one sample (:meth:`FusionEncoder.computed`) and is
zero for samples where ``m`` is absent. The depth branch's last-stage map is its state entering the encoder's last
block (that block computes no depth output).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from rgbx.errors import ConfigError
from rgbx.models.backbones.dformer import DFORMER_VARIANTS, DFormer
from rgbx.models.fusions.base import EncoderOutput, FusionEncoder
from rgbx.models.layers import mask_absent
from rgbx.models.registries import FUSIONS, build_backbone

__all__ = ["DEPTH_LIKE", "DFormerFusion"]

DEPTH_LIKE = ("depth", "hha")


@FUSIONS.register("dformer")
class DFormerFusion(FusionEncoder):
    """DFormer RGB-D encoder as a fusion (see the module docstring).

    Args:
        backbone: ``"dformer_t"`` (default), ``"dformer_s"``, ``"dformer_b"``, ``"dformer_l"`` (or the test variant
            ``"dformer_nano"``).
        modalities: ``"rgb"`` and one of ``"depth"``, ``"hha"`` (any order).
        drop_path_rate: stochastic depth (DFormer configs: 0.1; 0.15 for L on NYU).
        attn_impl: the window attention's implementation, ``"sdpa"`` or ``"eager"``.
        pretrained: a local released DFormer checkpoint (segmentation ``backbone.*`` / ``decode_head.*`` keys or an
            ImageNet-pretrained encoder), loaded strictly into the encoder.
        input_encoding: the network's own input encoding per modality, where it differs from rgbx's normalisation
            (:mod:`rgbx.models.input_encoding`; set by ``model.input_encoding``).
    """

    # what the subclass for DFormerv2 (rgbx.models.fusions.dformerv2) changes
    fusion_name = "dformer"
    variants = DFORMER_VARIANTS
    family = "DFormer"
    default_backbone = "dformer_t"

    def __init__(
        self,
        backbone: str | None = None,
        modalities: Sequence[str] = ("rgb", "depth"),
        drop_path_rate: float = 0.1,
        attn_impl: str = "sdpa",
        pretrained: str = "",
        input_encoding: Mapping | None = None,
    ):
        super().__init__(modalities, input_encoding)
        backbone = backbone or self.default_backbone
        depth_like = [m for m in self.modalities if m in DEPTH_LIKE]
        if len(self.modalities) != 2 or "rgb" not in self.modalities or len(depth_like) != 1:
            raise ConfigError(
                f"the {self.fusion_name} fusion needs exactly 'rgb' and one of {', '.join(map(repr, DEPTH_LIKE))}, "
                f"got {list(self.modalities)}"
            )
        if backbone not in self.variants:
            raise ConfigError(
                f"the {self.fusion_name} fusion needs a {self.family} backbone ({', '.join(self.variants)}), got "
                f"{backbone!r}"
            )
        self.depth_name = depth_like[0]
        wrong = {m: c for m, c in self.in_channels.items() if c < (3 if m == "rgb" else 1)}
        if wrong:
            raise ConfigError(f"the {self.fusion_name} fusion reads 3 RGB channels and the first depth channel; the input "
                              f"encoding gives {', '.join(f'{m}: {c}' for m, c in wrong.items())}")
        self.encoder: DFormer | nn.Module = build_backbone(
            backbone, in_channels=None, drop_path_rate=drop_path_rate, attn_impl=attn_impl, pretrained=pretrained
        )
        self.feature_info = self.encoder.feature_info

    def _input(self, name: str, inputs: Mapping[str, torch.Tensor], present: Mapping[str, torch.Tensor],
               shape: tuple[int, int, int], ref: torch.Tensor) -> torch.Tensor:
        """The encoder input for ``name``: the passed tensor where present, the fill value elsewhere."""
        channels = 3 if name == "rgb" else 1
        fill = self.input_encoding.fill_tensor(name, ref.dtype)[:, :channels].expand(shape[0], channels, *shape[1:])
        if name not in inputs:
            return fill.contiguous()  # its own memory, as the passed inputs have
        x = inputs[name][:, :channels]
        return torch.where(present[name].view(-1, 1, 1, 1), x.to(ref.dtype), fill)

    def forward(
        self, inputs: Mapping[str, torch.Tensor], present: Mapping[str, torch.Tensor] | None = None
    ) -> EncoderOutput:
        """Encode.

        Args:
            inputs: ``rgb`` (B, 3, H, W) and/or the depth-like modality (B, 1 or 3, H, W); at least one.
            present: modality → (B,) bool; missing entries (or ``None``) mean present for every sample.

        Returns:
            :class:`EncoderOutput`: ``fused`` = the 4 RGB-branch maps; ``features`` = ``{"rgb": RGB-branch maps,
            depth name: depth-branch maps}`` for the modalities present for some sample.
        """
        inputs, present = self.prepare(inputs, present)
        names = self.computed(present)
        ref = next(iter(inputs.values()))
        shape = (ref.shape[0], ref.shape[2], ref.shape[3])
        rgb = self._input("rgb", inputs, present, shape, ref)
        depth = self._input(self.depth_name, inputs, present, shape, ref)
        outs, outs_e = self.encode(rgb, depth)
        any_present = torch.stack(list(present.values()), dim=1).any(dim=1)
        fused = [mask_absent(x, any_present) for x in outs]
        features: dict[str, list[torch.Tensor]] = {}
        for m in names:
            maps = outs if m == "rgb" else outs_e
            if maps is not None:
                features[m] = [mask_absent(x, present[m]) for x in maps]
        return EncoderOutput(fused=fused, features=features, present=present)

    def encode(self, rgb: torch.Tensor, depth: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
        """The encoder's RGB-branch stage maps and its depth branch's (None for an encoder without one)."""
        return self.encoder.forward_features(rgb, depth)
