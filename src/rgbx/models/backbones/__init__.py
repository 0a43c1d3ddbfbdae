"""Encoders. Importing this package registers every backbone family in ``BACKBONES``."""

from rgbx.models.backbones import mit
from rgbx.models.backbones.base import StagedBackbone
from rgbx.models.backbones.mit import MiTArch, MixTransformer

__all__ = ["MiTArch", "MixTransformer", "StagedBackbone", "mit"]
