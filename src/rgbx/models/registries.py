"""The model component registries: backbones, fusions and heads.

Each family file registers its entries; ``rgbx.models.__init__`` imports every family explicitly, so a name that is
not found is a wrong name and the error lists the registered ones.

Contracts (what a registered factory is called with):

* ``BACKBONES[name](in_channels=..., drop_path_rate=..., attn_impl=...)`` → a staged encoder (see
  :class:`rgbx.models.backbones.base.StagedBackbone`).
* ``FUSIONS[name](backbone=..., modalities=..., drop_path_rate=..., attn_impl=...)`` → a
  :class:`rgbx.models.fusions.base.FusionEncoder`.
* ``HEADS[name](in_channels=[...], num_classes=..., channels=...)`` → a module mapping the list of fused stage maps to
  logits at the resolution of the first stage map it uses (the Segmentor upsamples them to the input size).
"""

from __future__ import annotations

from rgbx.errors import ConfigError
from rgbx.registry import Registry

BACKBONES: Registry = Registry("backbone")
FUSIONS: Registry = Registry("fusion")
HEADS: Registry = Registry("head")

__all__ = ["BACKBONES", "FUSIONS", "HEADS", "build_backbone"]


def build_backbone(name: str, *, in_channels, drop_path_rate: float, attn_impl: str, pretrained: str = ""):
    """Build a registered backbone; ``pretrained`` is passed only when set, and a backbone that cannot load
    weights says so."""
    factory = BACKBONES.get(name)
    if not pretrained:
        return factory(in_channels=in_channels, drop_path_rate=drop_path_rate, attn_impl=attn_impl)
    try:
        return factory(in_channels=in_channels, drop_path_rate=drop_path_rate, attn_impl=attn_impl,
                       pretrained=pretrained)
    except TypeError as e:
        if "pretrained" not in str(e):
            raise
        raise ConfigError(f"backbone {name!r} cannot load pretrained weights (model.pretrained={pretrained!r})") from None
