"""Decode heads. Importing this package registers every head family in ``HEADS``."""

from rgbx.models.heads import mlp
from rgbx.models.heads.mlp import MLPHead

__all__ = ["MLPHead", "mlp"]
