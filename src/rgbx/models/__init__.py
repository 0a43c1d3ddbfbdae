"""Models: backbones, fusion encoders, heads and the :class:`Segmentor` that chains them.

Importing this package registers every built-in backbone, fusion and head (explicit imports below).

Example:
    >>> from rgbx.models import create_model, list_models
    >>> model = create_model(backbone="mit_b0", fusion="cmx", modalities=["rgb", "depth"], num_classes=40)
    >>> out = model({"rgb": rgb, "depth": depth}, present={"depth": has_depth})
    >>> out.logits  # (B, 40, H, W)
"""

from rgbx.models import backbones, fusions, heads  # noqa: F401  (fills the registries)
from rgbx.models.config import ModelConfig
from rgbx.models.fusions.base import EncoderOutput, FusionEncoder
from rgbx.models.layers import FeatureInfo
from rgbx.models.registries import BACKBONES, FUSIONS, HEADS
from rgbx.models.segmentor import Segmentor, SegOutput, create_model, list_models

__all__ = [
    "BACKBONES",
    "FUSIONS",
    "HEADS",
    "EncoderOutput",
    "FeatureInfo",
    "FusionEncoder",
    "ModelConfig",
    "SegOutput",
    "Segmentor",
    "create_model",
    "list_models",
]
