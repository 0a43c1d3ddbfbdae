"""The SegFormer all-MLP decode head.

Paper: Xie et al., "SegFormer", NeurIPS 2021 (arXiv:2105.15203); as in mmsegmentation's ``SegformerHead``: each stage
map is projected to ``channels`` by a Linear layer, upsampled to the first (1/4) stage's size, the maps are
concatenated (deepest first), fused by a 1×1 conv + BN + ReLU, and classified after dropout.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from rgbx.models.layers import ConvBNReLU, init_weights, resize
from rgbx.models.registries import HEADS

__all__ = ["MLPHead"]


@HEADS.register("mlp")
class MLPHead(nn.Module):
    """All-MLP head.

    Args:
        in_channels: channels of each input stage map (e.g. ``encoder.feature_info.channels()``).
        num_classes: number of output classes K.
        channels: embedding width (256 for SegFormer-B0/B1, 768 for B2-B5 in the paper; CMX uses 512).
        dropout: dropout (``Dropout2d``) before the classifier.
    """

    compile_region = True  # compiled on its own under SpeedOptions(compile=True, compile_scope="blocks")

    def __init__(
        self, in_channels: Sequence[int], num_classes: int, channels: int = 256, dropout: float = 0.1
    ):
        super().__init__()
        self.in_channels = list(in_channels)
        self.num_classes = num_classes
        self.linear = nn.ModuleList(nn.Linear(c, channels) for c in self.in_channels)
        self.fuse = ConvBNReLU(channels * len(self.in_channels), channels, kernel_size=1)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, kernel_size=1)
        self.apply(init_weights)
        nn.init.normal_(self.classifier.weight, std=0.01)

    def forward(self, features: Sequence[torch.Tensor], return_decoder: bool = False):
        """Per-stage maps (B, C_i, H_i, W_i) → logits (B, K, H_0, W_0) at the first map's resolution; with
        ``return_decoder``, ``(logits, decoder)`` where ``decoder`` is the fused map the classifier reads (before
        dropout), (B, channels, H_0, W_0)."""
        if len(features) != len(self.linear):
            raise ValueError(f"MLPHead expects {len(self.linear)} stage maps, got {len(features)}")
        size = features[0].shape[-2:]
        # Each Linear is applied as the equivalent 1×1 convolution on the (B, C, H, W) map: same weights and
        # result, but the maps stay in the input's memory layout, so the upsampling and the concatenation below
        # work on plain NCHW tensors instead of transposed token views (which cost layout copies, on the CPU
        # several times the head's arithmetic).
        projected = [
            resize(F.conv2d(f, linear.weight[:, :, None, None], linear.bias), size)
            for linear, f in zip(self.linear, features, strict=True)
        ]
        x = self.fuse(torch.cat(projected[::-1], dim=1))
        logits = self.classifier(self.dropout(x))
        return (logits, x) if return_decoder else logits
