"""Encoders. Importing this package registers every backbone family in ``BACKBONES``."""

from rgbx.models.backbones import dformer, mit, timm_backbone
from rgbx.models.backbones import dformerv2 as dformerv2  # registers dformerv2_s/b/l/nano
from rgbx.models.backbones import omni as omni  # registers omni_t/s/b/l/nano
from rgbx.models.backbones.base import StagedBackbone
from rgbx.models.backbones.dformer import DFormer, DFormerArch
from rgbx.models.backbones.mit import MiTArch, MixTransformer
from rgbx.models.backbones.timm_backbone import TimmBackbone

__all__ = [
    "DFormer",
    "DFormerArch",
    "MiTArch",
    "MixTransformer",
    "StagedBackbone",
    "TimmBackbone",
    "dformer",
    "mit",
    "timm_backbone",
]
