"""Encoders. Importing this package registers every backbone family in ``BACKBONES``."""

from rgbx.models.backbones import mit, timm_backbone
from rgbx.models.backbones.base import StagedBackbone
from rgbx.models.backbones.mit import MiTArch, MixTransformer
from rgbx.models.backbones.timm_backbone import TimmBackbone

__all__ = ["MiTArch", "MixTransformer", "StagedBackbone", "TimmBackbone", "mit", "timm_backbone"]
