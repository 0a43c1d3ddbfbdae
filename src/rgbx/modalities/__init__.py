"""Modalities are first-class: a registry of :class:`ModalitySpec` plus their on-disk encodings."""

from rgbx.modalities import builtin  # noqa: F401  (registers rgb, depth, thermal, lidar, event)
from rgbx.modalities.encodings import ENCODINGS, read_array, write_array
from rgbx.modalities.spec import MODALITIES, ModalitySpec, get_modality, register_modality

__all__ = [
    "ENCODINGS",
    "MODALITIES",
    "ModalitySpec",
    "get_modality",
    "read_array",
    "register_modality",
    "write_array",
]
