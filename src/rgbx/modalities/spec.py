"""What a modality is: one :class:`ModalitySpec` per sensor type, registered by name.

A spec says how many channels the sensor has, how it is stored on disk, how raw file values become physical units,
how it is normalised for a network, what to feed when it is absent, whether it is sparse (resampled without
interpolation), which photometric augmentations suit it, and how to draw it. Adding a modality is registering one
spec (see ``builtin.py``); nothing else in rgbx names modalities.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

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


MODALITIES: Registry[ModalitySpec] = Registry("modality")


def register_modality(spec: ModalitySpec) -> ModalitySpec:
    """Register a new sensor type; afterwards datasets, transforms, models and panels all handle it."""
    MODALITIES.register(spec.name, spec)
    return spec


def get_modality(name: str) -> ModalitySpec:
    return MODALITIES.get(name)
