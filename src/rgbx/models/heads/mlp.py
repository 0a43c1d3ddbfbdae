"""The SegFormer all-MLP decode head.

Paper: Xie et al., "SegFormer", NeurIPS 2021 (arXiv:2105.15203); as in mmsegmentation's ``SegformerHead``: each stage
map is projected to ``channels`` by a Linear layer, upsampled to the first (1/4) stage's size, the maps are
concatenated (deepest first), fused by a 1×1 conv + BN + ReLU, and classified after dropout.

``fold`` (:meth:`MLPHead.set_fold`, the ``fold_head`` speed switch) computes the same function in fewer operations:
the per-stage Linear and that stage's slice of the fusion conv are one 1×1 conv (their weights multiplied at each
call, so both keep learning), applied at the stage's own resolution before the upsampling
(:func:`~rgbx.models.layers.conv1x1_resized_concat`). CMX's 512-channel head at 480×640: 21.7 → 1.9 GMAC per image.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from rgbx.models.layers import ConvBNReLU, conv1x1_resized_concat, init_weights, resize
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
        self.fold = False
        self.matmul_resize = False  # SpeedOptions.matmul_resize (Segmentor.set_matmul_resize)

    def set_fold(self, fold: bool) -> None:
        """Fold the per-stage Linear layers into the fusion conv and apply it at each stage's resolution (see the
        module docstring); ``False``: the reference order of operations."""
        self.fold = bool(fold)
        for layer in (*self.linear, self.fuse[0]):  # multiplied together before use: they keep fp32 weights
            layer.keep_weight_dtype = self.fold

    def _folded_fusion(self, features: Sequence[torch.Tensor], size) -> torch.Tensor:
        """``fuse[0](cat(resize(linear_i(f_i))))`` (deepest first) as one 1×1 conv per stage at its resolution."""
        stages = len(self.linear)
        fuse = self.fuse[0].weight.reshape(self.fuse[0].out_channels, stages, -1)  # (C, stage in cat order, C)
        dtype = torch.promote_types(fuse.dtype, torch.float32)
        with torch.autocast(features[0].device.type, enabled=False):  # the tiny weight products in fp32 (or fp64)
            weights, bias = [], 0
            for i, linear in enumerate(self.linear):
                w_i = fuse[:, stages - 1 - i].to(dtype)
                weights.append(w_i @ linear.weight.to(dtype))
                bias = bias + w_i @ linear.bias.to(dtype)
        return conv1x1_resized_concat(features, torch.cat(weights, dim=1), size, bias, self.matmul_resize)

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
        if self.fold:
            x = self.fuse[2](self.fuse[1](self._folded_fusion(features, size)))
        else:
            projected = [
                resize(F.conv2d(f, linear.weight[:, :, None, None], linear.bias), size, matmul=self.matmul_resize)
                for linear, f in zip(self.linear, features, strict=True)
            ]
            x = self.fuse(torch.cat(projected[::-1], dim=1))
        logits = self.classifier(self.dropout(x))
        return (logits, x) if return_decoder else logits
