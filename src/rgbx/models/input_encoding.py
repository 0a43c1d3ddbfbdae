"""What a network's first layers were trained to see, where that differs from rgbx's normalisation.

rgbx feeds every sensor as its :class:`~rgbx.modalities.ModalitySpec` normalises it, ``(x − mean) / std`` in the
sensor's physical units, with the channels in the order the loaders read them (RGB: red, green, blue). Weights
trained by other code bases saw something else:

* CMX and DFormer read their images with OpenCV, so their RGB (and CMX's HHA) arrive blue first, normalised with
  ImageNet's statistics in red-green-blue order;
* DFormer feeds its 8-bit depth PNG value v as (v / 255 − 0.48) / 0.28;
* CMX repeats a one-channel thermal image three times and normalises each copy with ImageNet's statistics.

An input encoding states, per modality, the network's own input in the sensor's physical units::

    model.input_encoding = {"rgb": {"source": [2, 1, 0], "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}}

network channel k = (physical channel ``source[k]`` − ``mean[k]``) / ``std[k]``; ``source`` defaults to the sensor's
own channels in order, and may repeat a channel (``[0, 0, 0]``: a one-channel image fed to a three-channel layer).

The fusion encoder applies it to each input after checking it (:meth:`rgbx.models.fusions.base.FusionEncoder.prepare`:
one multiply-add per channel). Everything outside the model keeps rgbx's normalisation: datasets, transforms,
corruptions, exported files' inputs. A converted released checkpoint so computes from the same files what its own
code computed, zero-padded borders included: nothing is folded into its weights. A modality without an entry is fed
as rgbx normalises it. ``rgbx convert`` sets the encoding of the CMX and DFormer layouts
(:func:`rgbx.models.convert.reference_input_encoding`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from rgbx.errors import ConfigError
from rgbx.modalities import get_modality

__all__ = ["ChannelEncoding", "InputEncoding", "check_input_encoding", "describe_input_encoding"]

_FIELDS = ("source", "mean", "std")


@dataclass(frozen=True)
class ChannelEncoding:
    """One modality's network input: channel k = (physical channel ``source[k]`` − ``mean[k]``) / ``std[k]``."""

    source: tuple[int, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def affine(self, modality: str) -> tuple[list[float], list[float]]:
        """(scale, shift) per network channel, from rgbx's normalised input: ``scale[k] · u[source[k]] + shift[k]``.

        u = (x − m) / s (rgbx) and z = (x − mean) / std (the network) give z = u · s / std + (m − mean) / std."""
        spec = get_modality(modality)
        scale = [spec.std[c] / s for c, s in zip(self.source, self.std, strict=True)]
        shift = [(spec.mean[c] - m) / s for c, m, s in zip(self.source, self.mean, self.std, strict=True)]
        return scale, shift


def _numbers(value, where: str, kind=float) -> tuple:
    if isinstance(value, str) or not isinstance(value, Sequence) or not value:
        raise ConfigError(f"{where} must be a non-empty list, got {value!r}")
    out = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, int | float) or (kind is int and not isinstance(v, int)):
            raise ConfigError(f"{where} must hold {'integers' if kind is int else 'numbers'}, got {v!r}")
        out.append(kind(v))
    return tuple(out)


def check_input_encoding(encoding: Mapping | None, modalities: Sequence[str]) -> dict[str, ChannelEncoding]:
    """Check ``model.input_encoding`` against the model's modalities; a ConfigError names the key and the value.

    Returns modality → :class:`ChannelEncoding` (an entry that changes nothing is kept: the caller decides)."""
    if not encoding:
        return {}
    if not isinstance(encoding, Mapping):
        raise ConfigError(f"model.input_encoding must map modality names to {{source, mean, std}}, got {encoding!r}")
    out = {}
    for name, entry in encoding.items():
        where = f"model.input_encoding.{name}"
        if name not in modalities:
            raise ConfigError(f"{where}: {name!r} is not one of the model's modalities ({', '.join(modalities)})")
        if not isinstance(entry, Mapping):
            raise ConfigError(f"{where} must be a mapping with keys {', '.join(_FIELDS)}, got {entry!r}")
        unknown = sorted(set(entry) - set(_FIELDS))
        if unknown:
            raise ConfigError(f"{where}: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} "
                              f"(expected: {', '.join(_FIELDS)})")
        missing = [k for k in ("mean", "std") if k not in entry]
        if missing:
            raise ConfigError(f"{where}: {' and '.join(missing)} required (the network's normalisation, in the "
                              "sensor's physical units)")
        channels = get_modality(name).channels
        source = _numbers(entry["source"], f"{where}.source", int) if entry.get("source") is not None else tuple(
            range(channels))
        bad = [c for c in source if not 0 <= c < channels]
        if bad:
            raise ConfigError(f"{where}.source: {name!r} has {channels} channel{'s' if channels > 1 else ''} "
                              f"(0 … {channels - 1}), got {list(source)}")
        mean = _numbers(entry["mean"], f"{where}.mean")
        std = _numbers(entry["std"], f"{where}.std")
        for key, values in (("mean", mean), ("std", std)):
            if len(values) != len(source):
                raise ConfigError(f"{where}.{key} has {len(values)} values for {len(source)} network channels "
                                  f"(source {list(source)})")
        if any(s <= 0 for s in std):
            raise ConfigError(f"{where}.std must be positive, got {list(std)}")
        out[name] = ChannelEncoding(source, mean, std)
    return out


def describe_input_encoding(modality: str, entry: Mapping) -> str:
    """One line for ``rgbx convert`` / ``rgbx info``: e.g. ``rgb: channels [2, 1, 0], (x − [0.485, …]) / […]``."""
    enc = check_input_encoding({modality: entry}, [modality])[modality]
    unit = get_modality(modality).unit
    def numbers(values) -> str:
        return "[" + ", ".join(f"{v:g}" for v in values) + "]"

    source = "" if enc.source == tuple(range(get_modality(modality).channels)) else f"channels {list(enc.source)}, "
    return (f"{modality}: {source}(x − {numbers(enc.mean)}) / {numbers(enc.std)}"
            + (f", x in {unit}" if unit else ""))


class InputEncoding(nn.Module):
    """Maps rgbx-normalised inputs to the network's own encoding (see the module docstring).

    Args:
        encoding: modality → ``{source, mean, std}`` (checked with :func:`check_input_encoding`).
        modalities: the model's modalities.

    The scales, shifts and fill values are buffers that are not saved in state dicts (they follow from the
    config)."""

    def __init__(self, encoding: Mapping | None, modalities: Sequence[str]):
        super().__init__()
        self.encodings = check_input_encoding(encoding, modalities)
        self.modalities = tuple(modalities)
        self._slot = {m: i for i, m in enumerate(self.modalities)}  # buffer names by position: any sensor name works
        self._index: dict[str, list[int] | None] = {}
        for name, enc in self.encodings.items():
            scale, shift = enc.affine(name)
            i = self._slot[name]
            self.register_buffer(f"scale_{i}", torch.tensor(scale).view(1, -1, 1, 1), persistent=False)
            self.register_buffer(f"shift_{i}", torch.tensor(shift).view(1, -1, 1, 1), persistent=False)
            own = tuple(range(get_modality(name).channels))
            self._index[name] = None if enc.source == own else list(enc.source)
        for name, i in self._slot.items():
            self.register_buffer(f"fill_{i}", torch.tensor(self.fill(name)).view(1, -1, 1, 1), persistent=False)

    def __bool__(self) -> bool:  # an nn.Module is always truthy; an empty encoding is not
        return bool(self.encodings)

    def channels(self, modality: str) -> int:
        """The network's input channels for ``modality``."""
        enc = self.encodings.get(modality)
        return len(enc.source) if enc is not None else get_modality(modality).channels

    def fill(self, modality: str) -> tuple[float, ...]:
        """The network input, per channel, for an absent sensor: the encoding of the sensor's fill value."""
        spec = get_modality(modality)
        enc = self.encodings.get(modality)
        if enc is None:
            return (float(spec.fill),) * spec.channels
        scale, shift = enc.affine(modality)
        return tuple(a * float(spec.fill) + b for a, b in zip(scale, shift, strict=True))

    def zero(self, modality: str) -> tuple[float, ...] | None:
        """The rgbx-normalised input, per sensor channel, that the network sees as 0 on every channel: what the
        references' zero padding after their own normalisation puts into a border. ``None`` when no such input
        exists (a sensor channel fed to two network channels that need different values, e.g. CMX's thermal,
        repeated three times and normalised with three different means)."""
        enc = self.encodings.get(modality)
        channels = get_modality(modality).channels
        if enc is None:
            return (0.0,) * channels
        scale, shift = enc.affine(modality)
        values: list[float | None] = [None] * channels
        for c, a, b in zip(enc.source, scale, shift, strict=True):
            if values[c] is not None and not math.isclose(values[c], -b / a, rel_tol=1e-6, abs_tol=1e-9):
                return None
            values[c] = -b / a
        return tuple(0.0 if v is None else v for v in values)

    def forward(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = dict(inputs)
        for name, x in inputs.items():
            if name not in self.encodings:
                continue
            index = self._index[name]
            if index is not None:
                x = x[:, index]
            i = self._slot[name]
            scale, shift = getattr(self, f"scale_{i}"), getattr(self, f"shift_{i}")
            out[name] = torch.addcmul(shift.to(x.dtype), x, scale.to(x.dtype))
        return out

    def fill_tensor(self, modality: str, dtype: torch.dtype) -> torch.Tensor:
        """:meth:`fill` as a (1, C, 1, 1) tensor on the module's device (a buffer: no host copy, so a captured CUDA
        graph can use it)."""
        return getattr(self, f"fill_{self._slot[modality]}").to(dtype)

    def extra_repr(self) -> str:
        return ", ".join(f"{m}: source {list(e.source)} mean {list(e.mean)} std {list(e.std)}"
                         for m, e in self.encodings.items())
