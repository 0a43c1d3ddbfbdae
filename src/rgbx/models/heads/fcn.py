"""The FCN decode head, mmsegmentation style; usable as the main head or as an auxiliary head.

Paper: Long et al., "Fully Convolutional Networks for Semantic Segmentation", CVPR 2015. The form here is
mmsegmentation's ``FCNHead`` (``mmseg/models/decode_heads/fcn_head.py``) as used for auxiliary heads: one stage map
(``in_index``, stage 2 = 1/16 by default) → ``num_convs`` × (k×k conv → BN → ReLU) → optional concat of the input
and a further conv (``concat_input``) → ``Dropout2d`` → 1×1 classifier. The parameter names follow mmseg
(``convs.0.conv.weight``, ``convs.0.bn.*``, ``conv_seg.*``), so mmseg-trained auxiliary heads map onto it by prefix.

DFormer's own auxiliary ``FCNHead`` (``models/decoders/fcnhead.py``) differs: a 3×3 conv *with* bias, ``channels =
in_channels // 4`` and no dropout, named ``conv.0`` / ``classifier``.

This module also defines :class:`ConvModule`, the conv → norm → activation unit with mmcv's attribute names
(``conv``, ``bn``) that the mmseg-style heads share.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from rgbx.models.layers import init_weights
from rgbx.models.registries import HEADS

__all__ = ["ConvModule", "FCNHead"]


class ConvModule(nn.Module):
    """Conv → BatchNorm → ReLU with mmcv ``ConvModule``'s attribute names and bias rule.

    Args:
        in_channels, out_channels, kernel_size, dilation: of the conv; padding keeps the size
            (``kernel_size // 2 * dilation``).
        norm: add a ``BatchNorm2d`` (attribute ``bn``); the conv then has no bias (mmcv's ``bias="auto"``).
        act: end with a ReLU.
        bias: force the conv bias on/off (default: only when there is no norm).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 1,
        *,
        dilation: int = 1,
        norm: bool = True,
        act: bool = True,
        bias: bool | None = None,
    ):
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            padding=(kernel_size // 2) * dilation,
            dilation=dilation,
            bias=(not norm) if bias is None else bias,
        )
        self.bn = nn.BatchNorm2d(out_channels) if norm else None
        self.act = nn.ReLU(inplace=True) if act else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        if self.act is not None:
            x = self.act(x)
        return x


@HEADS.register("fcn")
class FCNHead(nn.Module):
    """FCN head on one stage map.

    Args:
        in_channels: channels of each stage map passed to :meth:`forward` (the ``HEADS`` contract; the head reads
            ``in_channels[in_index]``), or a single int: the channels of the one map it is given.
        num_classes: number of output classes K.
        channels: width of the convs (mmseg's auxiliary heads use 256).
        in_index: which stage map to use (2 = the 1/16 map, as for mmseg / DFormer auxiliary heads).
        num_convs: number of k×k conv-BN-ReLU units (0: none, then ``channels`` must equal the input channels).
        kernel_size, dilation: of those convs.
        concat_input: concatenate the input map with the conv output and fuse by one more conv (mmseg's
            ``FCNHead`` default is True; its auxiliary-head configs, and this default, use False).
        dropout: ``Dropout2d`` before the classifier.

    ``forward`` returns logits at the resolution of the selected map (1/16 by default); the
    :class:`~rgbx.models.Segmentor` (or the method using it as an auxiliary head) upsamples them.
    """

    compile_region = True  # compiled on its own under SpeedOptions(compile=True, compile_scope="blocks")

    def __init__(
        self,
        in_channels: Sequence[int] | int,
        num_classes: int,
        channels: int = 256,
        in_index: int = 2,
        num_convs: int = 1,
        kernel_size: int = 3,
        dilation: int = 1,
        concat_input: bool = False,
        dropout: float = 0.1,
    ):
        super().__init__()
        if isinstance(in_channels, int):
            self.in_channels = [in_channels]
            self.in_index = 0
        else:
            self.in_channels = list(in_channels)
            if not -len(self.in_channels) <= in_index < len(self.in_channels):
                raise ValueError(
                    f"FCNHead: in_index {in_index} is out of range for {len(self.in_channels)} stages"
                )
            self.in_index = in_index
        if num_convs < 0:
            raise ValueError(f"FCNHead: num_convs must be >= 0, got {num_convs}")
        c_in = self.in_channels[self.in_index]
        if num_convs == 0 and c_in != channels:
            raise ValueError(
                f"FCNHead: num_convs=0 needs channels == input channels ({c_in}), got {channels}"
            )
        self.num_classes = num_classes
        self.channels = channels
        self.concat_input = concat_input
        if num_convs == 0:
            self.convs = nn.Identity()
        else:
            self.convs = nn.Sequential(
                *(
                    ConvModule(c_in if i == 0 else channels, channels, kernel_size, dilation=dilation)
                    for i in range(num_convs)
                )
            )
        self.conv_cat = ConvModule(c_in + channels, channels, kernel_size) if concat_input else None
        self.dropout = nn.Dropout2d(dropout)
        self.conv_seg = nn.Conv2d(channels, num_classes, kernel_size=1)
        self.apply(init_weights)
        nn.init.normal_(self.conv_seg.weight, std=0.01)
        nn.init.zeros_(self.conv_seg.bias)

    @property
    def classifier(self) -> nn.Conv2d:
        """The final 1×1 conv (``conv_seg`` in mmseg's naming)."""
        return self.conv_seg

    def forward(self, features: Sequence[torch.Tensor] | torch.Tensor, return_decoder: bool = False):
        """Stage maps (the selected one is (B, C, H_i, W_i)), or the one map itself → logits (B, K, H_i, W_i); with
        ``return_decoder``, ``(logits, decoder)``, the map the classifier reads (before dropout)."""
        if isinstance(features, torch.Tensor):
            x = features
        elif len(features) != len(self.in_channels):
            raise ValueError(f"FCNHead expects {len(self.in_channels)} stage map(s), got {len(features)}")
        else:
            x = features[self.in_index]
        out = self.convs(x)
        if self.conv_cat is not None:
            out = self.conv_cat(torch.cat([x, out], dim=1))
        logits = self.conv_seg(self.dropout(out))
        return (logits, out) if return_decoder else logits
