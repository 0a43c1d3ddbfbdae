"""Modalities are first-class: a registry of :class:`ModalitySpec` plus their on-disk encodings."""

from rgbx.modalities.builtin import BUILTIN_MODALITIES  # registers rgb, depth, thermal, lidar, event, ...
from rgbx.modalities.encodings import ENCODINGS, read_array, write_array
from rgbx.modalities.spec import (
    MODALITIES,
    ModalitySpec,
    declare_modality,
    get_modality,
    register_modality,
    spec_from_dict,
    spec_to_dict,
)

__all__ = [
    "BUILTIN_MODALITIES",
    "ENCODINGS",
    "MODALITIES",
    "ModalitySpec",
    "declare_modality",
    "get_modality",
    "read_array",
    "register_modality",
    "spec_from_dict",
    "spec_to_dict",
    "write_array",
]
