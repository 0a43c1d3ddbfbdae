"""The fusion-encoder contract shared by every fusion: input checks, presence masks and the output record.

A fusion encoder takes ``inputs`` (modality → (B, C, H, W) normalised tensor; any non-empty subset of its
modalities) and optional ``present`` masks (modality → (B,) bool; see :class:`rgbx.data.Batch`), runs its
encoder(s) and returns an :class:`EncoderOutput`.

Rules every fusion follows:

* A modality that is passed but absent for every sample is not computed, and a modality that is not passed is
  absent. (If no passed modality is present for any sample, the first passed one is computed anyway so that the
  outputs have shapes; everything it produces is masked out.)
* What an absent sample holds in ``inputs`` never reaches the outputs: features are masked with ``torch.where``
  before they are mixed with anything.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from rgbx.data.sample import PresenceMasks
from rgbx.errors import ConfigError
from rgbx.modalities import get_modality
from rgbx.models.input_encoding import InputEncoding
from rgbx.models.layers import FeatureInfo

__all__ = ["EncoderOutput", "FusionEncoder", "PresenceMasks", "others_weights"]


@dataclass
class EncoderOutput:
    """What a fusion encoder returns.

    Attributes:
        fused: one (B, C_i, H_i, W_i) map per stage, the input of the head.
        features: modality → its per-stage maps, for the modalities that were computed; samples for which the
            modality is absent hold zeros.
        present: modality → (B,) bool, the presence masks used (for every passed modality).
    """

    fused: list[torch.Tensor]
    features: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    present: dict[str, torch.Tensor] = field(default_factory=dict)


def others_weights(present: torch.Tensor) -> torch.Tensor:
    """Weights for "the mean of the *other* present modalities".

    Args:
        present: (B, N) bool, one column per modality slot.

    Returns:
        (B, N, N) float ``w`` with ``w[b, m, j] = present[b, j] / #{j' ≠ m present in b}`` for ``j ≠ m`` and 0 on
        the diagonal; a row is all zero when no other modality is present (then "the others" contribute nothing).
    """
    p = present.float()
    n = p.shape[1]
    w = p.unsqueeze(1) * (1.0 - torch.eye(n, dtype=p.dtype, device=p.device))
    return w / w.sum(dim=-1, keepdim=True).clamp(min=1.0)


class FusionEncoder(nn.Module):
    """Base class: holds the modality list and checks inputs.

    Attributes:
        modalities: the modalities the encoder was built for, in a fixed order (the order of ``features``).
        sensor_channels: modality → the channels of the tensors it is passed (from the modality registry).
        in_channels: modality → the channels its first layers see: ``sensor_channels`` unless an input encoding
            maps a sensor to other channels (:mod:`rgbx.models.input_encoding`).
        input_encoding: the :class:`~rgbx.models.input_encoding.InputEncoding` that :meth:`prepare` applies
            (empty: inputs pass as rgbx normalises them).
        input_fill: modality → the network input, per channel, that stands for an absent sensor (its spec's
            ``fill``, encoded).
        feature_info: channels / reduction of the fused stage maps.
    """

    feature_info: FeatureInfo

    def __init__(self, modalities: Sequence[str], input_encoding: Mapping | None = None):
        super().__init__()
        if isinstance(modalities, str):
            raise ConfigError(f"modalities must be a list of names, got the string {modalities!r}")
        modalities = tuple(modalities)
        if not modalities:
            raise ConfigError("a fusion needs at least one modality")
        duplicates = sorted({m for m in modalities if modalities.count(m) > 1})
        if duplicates:
            raise ConfigError(f"modalities listed more than once: {', '.join(duplicates)}")
        self.modalities = modalities
        self.sensor_channels = {m: get_modality(m).channels for m in modalities}
        self.input_encoding = InputEncoding(input_encoding, modalities)
        self.in_channels = {m: self.input_encoding.channels(m) for m in modalities}
        self.input_fill = {m: self.input_encoding.fill(m) for m in modalities}

    def _weight_dtype(self) -> torch.dtype:
        return next(self.parameters(), torch.empty(0)).dtype

    def prepare(
        self, inputs: Mapping[str, torch.Tensor], present: Mapping[str, torch.Tensor] | None = None
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Check inputs and resolve presence masks.

        Returns:
            ``inputs`` (in the network's encoding, see :attr:`input_encoding`) and ``present`` (bool (B,) per passed
            modality), both ordered as :attr:`modalities`.

        Raises:
            ConfigError: no inputs, a modality this model was not built for, a tensor that is not (B, C, H, W) with
                the modality's channel count, sizes that differ between modalities, or a malformed mask.
        """
        if not isinstance(inputs, Mapping) or not inputs:
            raise ConfigError(
                f"the model needs a dict of modality → (B, C, H, W) tensors with at least one of: "
                f"{', '.join(self.modalities)}"
            )
        for name in inputs:
            if name not in self.sensor_channels:
                raise ConfigError(
                    f"modality {name!r} is not one this model was built for; its modalities: "
                    f"{', '.join(self.modalities)}"
                )
        ordered = {m: inputs[m] for m in self.modalities if m in inputs}
        ref_name, ref = next(iter(ordered.items()))
        for name, x in ordered.items():
            expected = self.sensor_channels[name]
            if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != expected:
                shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
                raise ConfigError(
                    f"modality {name!r}: input has shape {shape}, expected (B, {expected}, H, W) "
                    f"({expected} channel{'s' if expected > 1 else ''})"
                )
            if x.shape[0] != ref.shape[0] or x.shape[2:] != ref.shape[2:]:
                raise ConfigError(
                    f"modality {name!r}: input has shape {tuple(x.shape)} but {ref_name!r} has "
                    f"{tuple(ref.shape)}; all modalities need the same batch size and H×W"
                )
            if not x.is_floating_point():  # e.g. an image's 0-255 bytes, not yet decoded and normalised
                raise ConfigError(
                    f"modality {name!r}: input of dtype {x.dtype}; the model takes floating-point inputs, normalised "
                    f"as rgbx's loaders do (values in the modality's unit, then "
                    f"rgbx.modalities.get_modality({name!r}).normalize)"
                )
            if x.dtype == torch.float64 and self._weight_dtype() != torch.float64:
                raise ConfigError(f"modality {name!r}: input of dtype torch.float64 for a model with "
                                  f"{self._weight_dtype()} weights: convert the input (x.float()) or the model")
            if (x.dtype in (torch.float16, torch.bfloat16) and self._weight_dtype() == torch.float32
                    and not torch.is_autocast_enabled(x.device.type)):
                raise ConfigError(f"modality {name!r}: input of dtype {x.dtype} for a model with torch.float32 "
                                  f"weights: convert the input (x.float()) or the model (model.to({x.dtype})), or "
                                  f"run the model under torch.autocast")
        batch = ref.shape[0]
        present_in, present = present, dict(present or {})
        for name in present:
            if name not in self.sensor_channels:
                raise ConfigError(
                    f"present mask for modality {name!r}, which is not one this model was built for; its "
                    f"modalities: {', '.join(self.modalities)}"
                )
        masks = {}
        known = present_in if isinstance(present_in, PresenceMasks) else PresenceMasks()
        certain = [m for m in ordered if m in known.certain]
        for name, x in ordered.items():
            mask = present.get(name)
            if mask is None:
                mask = torch.ones(batch, dtype=torch.bool, device=x.device)
                certain.append(name)
            else:
                mask = torch.as_tensor(mask, device=x.device)
                if mask.shape != (batch,):
                    raise ConfigError(
                        f"present mask for modality {name!r} has shape {tuple(mask.shape)}, expected ({batch},)"
                    )
                if mask.dtype != torch.bool and bool(((mask != 0) & (mask != 1)).any()):  # not a 0/1 flag
                    raise ConfigError(f"present mask for modality {name!r}: values {mask.tolist()[:8]}; expected "
                                      f"True / False (or 1 / 0) per sample")
                mask = mask.bool()
            masks[name] = mask
        if self.input_encoding:
            ordered = self.input_encoding(ordered)
        if known.on_device:  # nothing decided on the host: every passed mask is applied on the device
            return ordered, PresenceMasks(masks, on_device=True)
        host = {m: known.host[m] for m in masks if m in known.host and m in present}
        return ordered, PresenceMasks(masks, certain, host)

    @staticmethod
    def computed(present: Mapping[str, torch.Tensor]) -> list[str]:
        """The passed modalities present for at least one sample (the first passed one if there are none).

        A mask is read back from the device (one synchronisation) only for modalities about which a
        :class:`~rgbx.data.sample.PresenceMasks` knows nothing on the host."""
        if isinstance(present, PresenceMasks):
            names = [m for m in present if present.any_present(m)]
        else:
            names = [m for m, mask in present.items() if bool(mask.any())]
        return names or list(present)[:1]

    def forward(
        self, inputs: Mapping[str, torch.Tensor], present: Mapping[str, torch.Tensor] | None = None
    ) -> EncoderOutput:
        raise NotImplementedError
