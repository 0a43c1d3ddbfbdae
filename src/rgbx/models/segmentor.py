"""The segmentation model: fusion encoder → head → logits at input resolution; plus the factory functions."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import torch
from torch import nn

from rgbx.models.config import ModelConfig
from rgbx.models.fusions.base import FusionEncoder
from rgbx.models.layers import LOWP_NORMS, check_attn_impl, resize
from rgbx.models.registries import BACKBONES, FUSIONS, HEADS
from rgbx.models.sensor_set_scaling import SensorSetScaling

__all__ = ["SegOutput", "Segmentor", "create_model", "list_models"]


@dataclass
class SegOutput:
    """What :class:`Segmentor` returns.

    Attributes:
        logits: (B, K, H, W), bilinearly upsampled to the input size.
        fused: the fused encoder maps, one (B, C_i, H_i, W_i) per stage.
        features: modality → per-stage maps, for the modalities the encoder computed (zeros for absent samples).
        present: modality → (B,) bool, the presence masks used.
        decoder: the decode head's last feature map, the one its classifier reads (B, C_head, H_0, W_0), when the
            forward pass was asked for it (``return_decoder=True``; e.g. MS3's pixel embeddings), else None.
    """

    logits: torch.Tensor
    fused: list[torch.Tensor]
    features: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    present: dict[str, torch.Tensor] = field(default_factory=dict)
    decoder: torch.Tensor | None = None


def _build(factory, key: str, options: dict, **kwargs):
    """``factory(**kwargs, **options)``; an option the component does not take is a ConfigError naming it."""
    import inspect

    from rgbx.errors import ConfigError

    if options:
        params = inspect.signature(factory).parameters
        if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            unknown = sorted(set(options) - set(params))
            if unknown:
                valid = sorted(set(params) - set(kwargs) - {"self"})
                raise ConfigError(f"model.{key}: {getattr(factory, '__name__', factory)} takes no {unknown}; "
                                  f"valid: {valid}")
        clash = sorted(set(options) & set(kwargs))
        if clash:
            raise ConfigError(f"model.{key}: {clash} are set by the model config itself, not here")
    return factory(**kwargs, **options)


def _takes(factory, name: str) -> bool:
    import inspect

    params = inspect.signature(factory).parameters
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


class Segmentor(nn.Module):
    """Multi-modal segmentation model built from a :class:`ModelConfig`.

    Example:
        >>> model = create_model(fusion="mean", modalities=["rgb", "depth"], num_classes=10)
        >>> out = model({"rgb": torch.randn(2, 3, 64, 64)})  # any non-empty subset of the modalities
        >>> out.logits.shape
        torch.Size([2, 10, 64, 64])
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config.validate()
        self.matmul_resize = False  # the final resize of the logits: set_matmul_resize
        fusion = FUSIONS.get(config.fusion)
        if config.input_encoding and not _takes(fusion, "input_encoding"):
            from rgbx.errors import ConfigError

            raise ConfigError(f"model.input_encoding: the fusion {config.fusion!r} does not take an input encoding "
                              "(its constructor needs an input_encoding argument, passed on to FusionEncoder)")
        self.encoder: FusionEncoder = _build(
            fusion, "fusion_options", config.fusion_options,
            backbone=config.backbone,
            modalities=config.modalities,
            drop_path_rate=config.drop_path_rate,
            attn_impl=config.attn_impl,
            **({"pretrained": config.pretrained} if config.pretrained else {}),
            **({"input_encoding": config.input_encoding} if config.input_encoding else {}),
        )
        self.head = _build(
            HEADS.get(config.head), "head_options", config.head_options,
            in_channels=self.encoder.feature_info.channels(),
            num_classes=config.num_classes,
            channels=config.head_channels,
        )
        # per sensor set, a per-class scale and bias on the logits (rgbx calibrate --scaling vector)
        self.set_scaling = SensorSetScaling(config.modalities, config.num_classes) if config.vector_scaling else None

    @property
    def modalities(self) -> tuple[str, ...]:
        return self.encoder.modalities

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    def set_attn_impl(self, attn_impl: str) -> None:
        """Switch every backbone attention layer to ``"sdpa"`` or ``"eager"`` (weights unchanged)."""
        check_attn_impl(attn_impl)
        for module in self.modules():
            if module is not self and hasattr(module, "set_attn_impl"):
                module.set_attn_impl(attn_impl)
        self.config = replace(self.config, attn_impl=attn_impl)

    def set_fold_head(self, fold: bool) -> None:
        """Switch every decode head that can (``set_fold``: the MLP and light-Hamburger heads) to applying its
        fusion convolution per stage, before the upsampling (the same function in fewer operations; weights
        unchanged), or back to the reference order."""
        for module in self.modules():
            if module is not self and hasattr(module, "set_fold"):
                module.set_fold(fold)

    def set_matmul_resize(self, on: bool) -> None:
        """Bilinear resizing (the decode heads', DFormer's window attention's and the logits' final one) as two
        matrix products (:func:`rgbx.models.layers.resize_by_matmul`: for GPUs, no atomics in its backward pass),
        or by ``F.interpolate``. Weights unchanged, the same values up to rounding."""
        self.matmul_resize = bool(on)
        for module in self.modules():
            if module is not self and hasattr(module, "matmul_resize"):
                module.matmul_resize = bool(on)

    def set_lowp_norms(self, lowp: bool) -> None:
        """Switch every rgbx LayerNorm (:class:`rgbx.models.layers.LayerNorm`) to running in bf16 under bf16
        autocast (bf16 in, bf16 out), or back to fp32 as CUDA's autocast runs it. Weights unchanged; outside bf16
        autocast no difference."""
        for module in self.modules():
            if isinstance(module, LOWP_NORMS):
                module.lowp = lowp

    def add_vector_scaling(self) -> SensorSetScaling:
        """Give the model a :class:`~rgbx.models.sensor_set_scaling.SensorSetScaling` (the identity) if it has none,
        and return it; the config then says ``vector_scaling=True``, so a saved file rebuilds it."""
        if self.set_scaling is None:
            device = next(self.parameters()).device
            self.set_scaling = SensorSetScaling(self.config.modalities, self.config.num_classes).to(device)
            self.config = replace(self.config, vector_scaling=True)
        return self.set_scaling

    def forward(
        self, inputs: Mapping[str, torch.Tensor], present: Mapping[str, torch.Tensor] | None = None,
        return_decoder: bool = False,
    ) -> SegOutput:
        """Segment.

        Args:
            inputs: modality → (B, C_m, H, W) normalised tensors; any non-empty subset of :attr:`modalities`.
            present: modality → (B,) bool (as in :class:`rgbx.data.Batch`); ``None`` or a missing entry means the
                modality is present for every sample.
            return_decoder: also return the decode head's feature map (:attr:`SegOutput.decoder`); the head must
                accept ``return_decoder`` (the built-in ones do).

        Raises:
            ConfigError: an input of a modality the model was not built for, or with the wrong shape.
        """
        encoded = self.encoder(inputs, present)
        size = next(iter(inputs.values())).shape[-2:]
        decoder = None
        if return_decoder:
            logits, decoder = self.head(encoded.fused, return_decoder=True)
        else:
            logits = self.head(encoded.fused)
        if self.set_scaling is not None:  # per class, so it commutes with the bilinear resize: applied before it
            logits = self.set_scaling(logits, self._masks(inputs, present, encoded.present, logits.shape[0]))
        return SegOutput(
            logits=resize(logits, size, matmul=self.matmul_resize), fused=encoded.fused, features=encoded.features,
            present=encoded.present, decoder=decoder,
        )

    @staticmethod
    def _masks(inputs: Mapping[str, torch.Tensor], given: Mapping[str, torch.Tensor] | None,
               used: Mapping[str, torch.Tensor], batch: int) -> dict[str, torch.Tensor]:
        """Each passed modality's (B,) presence: the encoder's (checked) masks, else the caller's, else present for
        every sample (a fusion of one's own need not report its masks for the sensor-set scaling to be right)."""
        device = next(iter(inputs.values())).device
        return {m: used[m] if m in used else given[m] if given is not None and m in given
                else torch.ones(batch, dtype=torch.bool, device=device) for m in inputs}


def create_model(config: ModelConfig | None = None, **overrides) -> Segmentor:
    """Build a :class:`Segmentor`.

    Args:
        config: a full configuration (defaults: :class:`ModelConfig`'s).
        **overrides: fields to override, e.g. ``create_model(fusion="mean", modalities=["rgb"], num_classes=10)``.

    Raises:
        ConfigError: an unknown field, an unregistered name (the message lists the registered ones) or a bad value.
    """
    base = config.to_dict() if config is not None else {}
    return Segmentor(ModelConfig.from_dict({**base, **overrides}))


def list_models() -> dict[str, list[str]]:
    """The registered component names: ``{"backbones": [...], "fusions": [...], "heads": [...]}``."""
    return {"backbones": BACKBONES.names(), "fusions": FUSIONS.names(), "heads": HEADS.names()}
