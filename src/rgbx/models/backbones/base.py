"""What a fusion needs from a backbone: a staged encoder whose stages can be run one at a time."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import nn

from rgbx.models.layers import FeatureInfo


@runtime_checkable
class StagedBackbone(Protocol):
    """A hierarchical encoder whose stages a fusion can interleave with its own modules.

    Attributes:
        feature_info: one entry per stage, ``{"num_chs", "reduction", "module", ...}``.
        stages: the stages; ``stages[i](x)`` maps stage ``i``'s input (the image for ``i = 0``, else the previous
            stage's output) to its (B, C_i, H_i, W_i) output.
    """

    feature_info: FeatureInfo
    stages: nn.ModuleList

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, C_in, H, W) → one (B, C_i, H / r_i, W / r_i) map per stage (sizes rounded up)."""
        ...

    def forward_stage(self, index: int, x: torch.Tensor, stem: nn.Module | None = None) -> torch.Tensor:
        """Run stage ``index`` alone; ``stem`` (stage 0 only) replaces the built-in input embedding."""
        ...

    def make_stem(self, in_channels: int) -> nn.Module:
        """A fresh first-stage input embedding for ``in_channels`` input channels (one per modality)."""
        ...
