"""Training recipes. Each registers in :data:`METHODS` by name (``method.name`` in the config)."""

from rgbx.methods import (  # noqa: F401  (register "anyseg", "ktb", "ms3", "omni_pretrain", "primkd", "supervised")
    anyseg,
    ktb,
    ms3,
    omni_pretrain,
    primkd,
    supervised,
)
from rgbx.methods.base import METHODS, Method, drop_modalities

__all__ = ["METHODS", "Method", "drop_modalities"]
