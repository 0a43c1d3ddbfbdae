"""A gated fusion: one encoder shared by the sensors (as rgbx's ``mean`` fusion), and at each stage a learned weight
per sensor and pixel instead of the plain mean (after the gated fusion of RGB-D segmentation, Cheng et al., CVPR
2017):

    w_m(p) = softmax over the sensors m present for the sample of  g_s(F_m(p))      (1)
    F(p)   = Σ_m w_m(p) · F_m(p)                                                    (2)

with F_m the stage-s map of sensor m and g_s a 1×1 convolution of stage s (C_s → 1) shared by the sensors. An absent
sensor gets weight 0, so a sample with one sensor gets exactly that sensor's features, as with the mean.

Only :meth:`MeanFusion.fuse` changes: the shared encoder, the sensors' own stems, absent sensors and the
output are rgbx's.
"""

from __future__ import annotations

import torch
from torch import nn

from rgbx.models import FUSIONS
from rgbx.models.fusions import MeanFusion


@FUSIONS.register("gated")
class GatedFusion(MeanFusion):
    """:class:`~rgbx.models.fusions.MeanFusion` with a per-pixel softmax gate over the present sensors (module
    docstring). Takes MeanFusion's arguments (``model.fusion_options`` reach both)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.gates = nn.ModuleList(nn.Conv2d(c, 1, kernel_size=1) for c in self.feature_info.channels())
        for gate in self.gates:  # start as the mean: equal weights for every present sensor
            nn.init.zeros_(gate.weight)
            nn.init.zeros_(gate.bias)

    def fuse(self, index, names, per_modality, masks):
        scores = torch.cat([self.gates[index](f) for f in per_modality], dim=1)  # (B, M, H, W)
        scores = scores.float().masked_fill(~masks[:, :, None, None], float("-inf"))
        weights = torch.softmax(scores, dim=1).nan_to_num(0.0)  # eq. (1); a sample with no sensor: all 0
        return torch.einsum("bmhw,mbchw->bchw", weights.to(per_modality[0].dtype), torch.stack(per_modality))  # (2)
