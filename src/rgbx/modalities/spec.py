"""What a modality is: one :class:`ModalitySpec` per sensor type, registered by name.

A spec says how many channels the sensor has, how it is stored on disk, how raw file values become physical units,
how it is normalised for a network, what to feed when it is absent, whether it is sparse (resampled without
interpolation), which photometric augmentations suit it, and how to draw it. Adding a modality is registering one
spec (see ``builtin.py``); nothing else in rgbx names modalities.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields

import torch

from rgbx.errors import ConfigError
from rgbx.registry import Registry


@dataclass(frozen=True)
class ModalitySpec:
    """Description of one sensor modality.

    Attributes:
        name: registry key, also the folder name in the user-dataset format.
        channels: number of channels the network sees.
        description: one line for ``rgbx info``.
        encoding: default on-disk encoding (a name in ``rgbx.modalities.encodings.ENCODINGS``).
        dtype: default stored dtype ("uint8", "uint16", "float32", ...), checked by dataset validation.
        scale: physical value = file value × scale (e.g. 0.001 for millimetre PNGs → metres).
        unit: unit of the physical value, for documentation and panels.
        mean, std: per-channel normalisation in physical units: ``(x - mean) / std``.
        fill: normalised value fed for an absent modality.
        invalid_value: physical value meaning "no measurement" (kept as is by the pipeline), or None.
        sparse: resample with nearest neighbour and never blend values (LiDAR points, event counts).
        photometric: names of photometric transforms (``rgbx.data.transforms.PHOTOMETRIC``) used in training.
        colormap: how panels draw it: "rgb", "gray", "turbo", "inferno", "polarity".
        display_range: physical range mapped to the colormap for panels (None = per-image min/max).
    """

    name: str
    channels: int
    description: str
    encoding: str = "png"
    dtype: str = "uint8"
    scale: float = 1.0
    unit: str = ""
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    fill: float = 0.0
    invalid_value: float | None = None
    sparse: bool = False
    photometric: tuple[str, ...] = ()
    colormap: str = "gray"
    display_range: tuple[float, float] | None = None
    extra: dict = field(default_factory=dict, compare=False)

    def __post_init__(self):
        if self.channels < 1:
            raise ValueError(f"modality {self.name!r}: channels must be >= 1")
        for what in ("mean", "std"):
            values = getattr(self, what)
            if len(values) == 1 and self.channels > 1:
                object.__setattr__(self, what, tuple(values) * self.channels)
            elif len(values) != self.channels:
                raise ValueError(f"modality {self.name!r}: {what} has {len(values)} values for {self.channels} channels")

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Physical units (…, C, H, W) → network input."""
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
        return (x - mean).div_(std)  # the difference is a new tensor: divided in place, one allocation less

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Network input (…, C, H, W) → physical units."""
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
        return x * std + mean


MODALITIES: Registry[ModalitySpec] = Registry("modality", "modalities")


def register_modality(spec: ModalitySpec) -> ModalitySpec:
    """Register a new sensor type; afterwards datasets, transforms, models and panels all handle it."""
    MODALITIES.register(spec.name, spec)
    return spec


def get_modality(name: str) -> ModalitySpec:
    return MODALITIES.get(name)


# the fields that define a sensor (ModalitySpec minus its name and ``extra``), as a model file or dataset.yaml states
# them; ``description`` is documentation and does not count when two declarations are compared
SPEC_FIELDS = tuple(f.name for f in fields(ModalitySpec) if f.name not in ("name", "extra"))
COLORMAPS = ("rgb", "gray", "turbo", "inferno", "polarity")


def spec_to_dict(spec: ModalitySpec) -> dict:
    """The spec as plain JSON / YAML values (the inverse of :func:`spec_from_dict`)."""
    out = {}
    for name in SPEC_FIELDS:
        value = getattr(spec, name)
        out[name] = list(value) if isinstance(value, tuple) else value
    return out


def spec_from_dict(name: str, data: Mapping) -> ModalitySpec:
    """A :class:`ModalitySpec` from plain values; a ConfigError names an unknown field or a wrong value."""
    unknown = sorted(set(data) - set(SPEC_FIELDS))
    if unknown:
        raise ConfigError(f"sensor {name!r}: unknown field{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} "
                          f"(expected: {', '.join(SPEC_FIELDS)})")
    if "channels" not in data:
        raise ConfigError(f"sensor {name!r}: 'channels' is required (the number of channels the network sees)")
    values = dict(data)
    values.setdefault("description", "a sensor declared outside rgbx")
    try:
        for key in ("mean", "std", "photometric", "display_range"):
            if values.get(key) is not None and not isinstance(values[key], list | tuple):
                raise ValueError(f"{key} must be a list, got {values[key]!r}")
        if "photometric" in values:
            values["photometric"] = tuple(values["photometric"])
        if values.get("display_range") is not None:
            values["display_range"] = tuple(float(v) for v in values["display_range"])
            if len(values["display_range"]) != 2:
                raise ValueError("display_range must be [low, high]")
        if not isinstance(values["channels"], int) or isinstance(values["channels"], bool):
            raise ValueError(f"channels must be an integer, got {values['channels']!r}")
        values["mean"] = tuple(float(v) for v in values.get("mean", (0.0,)))
        values["std"] = tuple(float(v) for v in values.get("std", (1.0,)))
        if any(v <= 0 for v in values["std"]):
            raise ValueError(f"std must be positive, got {list(values['std'])}")
        if values.get("colormap", "gray") not in COLORMAPS:
            raise ValueError(f"colormap must be one of {', '.join(COLORMAPS)}, got {values['colormap']!r}")
        return ModalitySpec(name=name, **values)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"sensor {name!r}: {e}") from None


def declare_modality(spec: ModalitySpec, where: str) -> ModalitySpec:
    """Register a sensor declared in a file (a dataset.yaml, a model file) rather than in Python code.

    Declaring it again with the same fields (the dataset opened twice, a model file of a run on that dataset) is a
    no-op; a different definition under a registered name is a ConfigError that names ``where`` and the fields
    that differ. Returns the registered spec."""
    if spec.name in MODALITIES:
        current = MODALITIES.get(spec.name)
        ours, theirs = spec_to_dict(current), spec_to_dict(spec)
        differs = [f"{k} {theirs[k]!r} (registered: {ours[k]!r})" for k in SPEC_FIELDS
                   if k != "description" and ours[k] != theirs[k]]
        if differs:
            raise ConfigError(f"{where}: sensor {spec.name!r} is already registered with other values: "
                              + "; ".join(differs))
        return current
    return register_modality(spec)
