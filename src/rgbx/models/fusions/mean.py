"""Parallel multimodal learning with one shared encoder and a per-stage mean over the present modalities.

The scheme of AnySeg (Zheng et al., https://github.com/zhengxuJosh/AnySeg, ``seg_block.Seg``): every modality goes
through the *same* encoder and the fused feature of each stage is the mean over modalities. rgbx differences:

* each modality has its own first patch embedding (the stem), since channel counts differ (AnySeg repeats every
  modality to 3 channels); every other weight is shared;
* the mean is taken per sample over the modalities present for that sample (weights ``present / count``), so a
  sample that has only depth gets exactly depth's features; and all samples run as one batch.

Absent modalities: a modality absent for the whole batch is not computed; for a sample where it is absent its
features are zeroed and it has weight 0 in the mean. A sample with no present modality gets all-zero fused features.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from rgbx.models.fusions.base import EncoderOutput, FusionEncoder
from rgbx.models.layers import mask_absent
from rgbx.models.registries import FUSIONS, build_backbone

__all__ = ["MeanFusion"]


@FUSIONS.register("mean")
class MeanFusion(FusionEncoder):
    """One weight-shared backbone for all modalities, per-modality stems, per-stage masked mean.

    Args:
        backbone: a registered backbone name (e.g. ``"mit_b0"``).
        modalities: registered modality names.
        drop_path_rate: the backbone's stochastic depth rate.
        attn_impl: the backbone's attention implementation, ``"sdpa"`` or ``"eager"``.
        input_encoding: the network's own input encoding per modality, where it differs from rgbx's normalisation
            (:mod:`rgbx.models.input_encoding`; set by ``model.input_encoding``).
    """

    def __init__(
        self,
        backbone: str = "mit_b0",
        modalities: Sequence[str] = ("rgb", "depth"),
        drop_path_rate: float = 0.1,
        attn_impl: str = "sdpa",
        pretrained: str = "",
        input_encoding: Mapping | None = None,
    ):
        super().__init__(modalities, input_encoding)
        self.backbone = build_backbone(backbone, in_channels=None, drop_path_rate=drop_path_rate,
                                       attn_impl=attn_impl, pretrained=pretrained)
        self.stems = nn.ModuleDict({m: self.backbone.make_stem(c) for m, c in self.in_channels.items()})
        self.feature_info = self.backbone.feature_info

    def forward(
        self, inputs: Mapping[str, torch.Tensor], present: Mapping[str, torch.Tensor] | None = None
    ) -> EncoderOutput:
        """Encode and fuse.

        Args:
            inputs: modality → (B, C_m, H, W); any non-empty subset of :attr:`modalities`.
            present: modality → (B,) bool; missing entries (or ``None``) mean present for every sample.

        Returns:
            :class:`EncoderOutput` with 4 fused maps and the per-modality maps of the computed modalities.
        """
        inputs, present = self.prepare(inputs, present)
        names = self.computed(present)
        # Stage 0 per modality (own stem), then all modalities as one batch through the shared stages.
        # (an absent sample's input zeroed first: whatever it holds, NaN too, reaches no stem, gradient or BatchNorm)
        x = torch.cat([self.backbone.forward_stage(0, mask_absent(inputs[m], present[m]), stem=self.stems[m])
                       for m in names])
        stage_outputs = [x]
        for index in range(1, len(self.backbone.stages)):
            x = self.backbone.forward_stage(index, x)
            stage_outputs.append(x)

        masks = torch.stack([present[m] for m in names], dim=1)  # (B, M)
        features: dict[str, list[torch.Tensor]] = {m: [] for m in names}
        fused = []
        for index, out in enumerate(stage_outputs):
            per_modality = [mask_absent(f, present[m]) for m, f in zip(names, out.chunk(len(names)))]
            for m, f in zip(names, per_modality):
                features[m].append(f)
            fused.append(self.fuse(index, names, per_modality, masks))
        return EncoderOutput(fused=fused, features=features, present=present)

    def fuse(self, index: int, names: list[str], per_modality: list[torch.Tensor], masks: torch.Tensor) -> torch.Tensor:
        """Stage ``index``'s fused map: the mean of the modalities' maps (absent ones zeroed) over the present ones.

        Args:
            index: the stage (0-3).
            names: the computed modalities, in the order of ``per_modality`` and of ``masks``' columns.
            per_modality: (B, C, H, W) per modality, zero where absent.
            masks: (B, M) bool, which modality each sample has.

        A subclass that weighs the modalities otherwise overrides this alone (``examples/plugin`` has a gated one).
        """
        count = masks.sum(dim=1).clamp(min=1).to(per_modality[0].dtype).view(-1, 1, 1, 1)
        return torch.stack(per_modality).sum(dim=0) / count
