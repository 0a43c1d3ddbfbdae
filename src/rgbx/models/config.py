"""The typed model configuration."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from rgbx.errors import ConfigError
from rgbx.modalities import get_modality
from rgbx.models.input_encoding import check_input_encoding
from rgbx.models.layers import ATTN_IMPLS
from rgbx.models.registries import BACKBONES, FUSIONS, HEADS

__all__ = ["ModelConfig"]


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to build a :class:`rgbx.models.Segmentor`.

    Attributes:
        backbone: registered backbone name (``rgbx.models.list_models()["backbones"]``).
        fusion: registered fusion name (``"cmx"``, ``"mean"``, ...).
        head: registered head name (``"mlp"``).
        modalities: the modalities the model is built for; at run time any non-empty subset may be passed.
        num_classes: number of classes; must be set (> 0).
        head_channels: the head's embedding width.
        drop_path_rate: stochastic depth rate of the encoder(s).
        attn_impl: ``"sdpa"`` (fused attention) or ``"eager"`` (explicit softmax, for FLOP counting).
        pretrained: backbone weights to start from: a local file, or a name the backbone knows (e.g.
            ``"imagenet"`` for ``efficientnet_lite0``); empty = random initialisation. Used only when a model is
            created for training; a trained checkpoint carries its own weights.
        fusion_options, head_options: extra keyword arguments of the fusion / head (e.g. the ``ktb`` fusion's
            ranks, the ``ham`` head's ``md_r``); an unknown one is a ConfigError listing the valid ones.
        input_encoding: modality → ``{source, mean, std}``: what the network's first layers were trained to see,
            where it differs from rgbx's normalisation (e.g. a released CMX or DFormer model: blue-first RGB,
            DFormer's depth scale; :mod:`rgbx.models.input_encoding`). Empty: every sensor as rgbx normalises it.
        vector_scaling: the logits pass through a per-class scale and bias of each sample's sensor set
            (:mod:`rgbx.models.sensor_set_scaling`; fitted by ``rgbx calibrate --scaling vector``, the identity
            until then).
    """

    backbone: str = "mit_b0"
    fusion: str = "cmx"
    head: str = "mlp"
    modalities: list[str] = field(default_factory=lambda: ["rgb", "depth"])
    num_classes: int = 0
    head_channels: int = 256
    drop_path_rate: float = 0.1
    attn_impl: str = "sdpa"
    pretrained: str = ""
    fusion_options: dict[str, Any] = field(default_factory=dict)
    head_options: dict[str, Any] = field(default_factory=dict)
    input_encoding: dict[str, Any] = field(default_factory=dict)
    vector_scaling: bool = False

    def __post_init__(self):
        if isinstance(self.modalities, str):
            raise ConfigError(
                f"modalities must be a list of modality names, got the string {self.modalities!r}"
            )
        object.__setattr__(self, "modalities", list(self.modalities))

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelConfig:
        """Build from a plain dict (e.g. parsed YAML). Unknown keys raise :class:`ConfigError`; values are checked by
        :meth:`validate` (called when a model is built)."""
        valid = cls.field_names()
        unknown = [k for k in data if k not in valid]
        if unknown:
            raise ConfigError(
                f"unknown model config key{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
                f"valid keys: {', '.join(valid)}"
            )
        return cls(**dict(data))

    def validate(self) -> ModelConfig:
        """Check every value; raise :class:`ConfigError` naming the key and what is allowed. Returns ``self``."""
        BACKBONES.get(self.backbone)
        FUSIONS.get(self.fusion)
        HEADS.get(self.head)
        if not self.modalities or not all(isinstance(m, str) for m in self.modalities):
            raise ConfigError(
                f"modalities must be a non-empty list of modality names, got {self.modalities!r}"
            )
        duplicates = sorted({m for m in self.modalities if self.modalities.count(m) > 1})
        if duplicates:
            raise ConfigError(f"modalities: listed more than once: {', '.join(duplicates)}")
        for m in self.modalities:
            get_modality(m)
        if (
            isinstance(self.num_classes, bool)
            or not isinstance(self.num_classes, int)
            or self.num_classes <= 0
        ):
            raise ConfigError(
                f"num_classes must be a positive integer (the number of classes), got {self.num_classes!r}"
            )
        if (
            isinstance(self.head_channels, bool)
            or not isinstance(self.head_channels, int)
            or self.head_channels <= 0
        ):
            raise ConfigError(f"head_channels must be a positive integer, got {self.head_channels!r}")
        if not isinstance(self.drop_path_rate, int | float) or not 0.0 <= self.drop_path_rate < 1.0:
            raise ConfigError(f"drop_path_rate must be a number in [0, 1), got {self.drop_path_rate!r}")
        if self.attn_impl not in ATTN_IMPLS:
            raise ConfigError(f"attn_impl must be one of {', '.join(ATTN_IMPLS)}, got {self.attn_impl!r}")
        check_input_encoding(self.input_encoding, self.modalities)
        if not isinstance(self.vector_scaling, bool):
            raise ConfigError(f"vector_scaling must be true or false, got {self.vector_scaling!r}")
        return self
