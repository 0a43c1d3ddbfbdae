"""Shared fixtures for the model tests: tiny inputs and tiny models (``mit_nano``)."""

from __future__ import annotations

import pytest
import torch

from rgbx.modalities import get_modality
from rgbx.models import create_model

ALL = ("rgb", "depth", "thermal")
# fusions that take only their own backbone family: their tiny variant (every other fusion gets mit_nano)
TINY_BACKBONES = {"omni": "omni_nano", "dformer": "dformer_nano"}


def _make_inputs(modalities, batch=2, height=64, width=64, seed=0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {m: torch.randn(batch, get_modality(m).channels, height, width, generator=gen) for m in modalities}


def _tiny_model(fusion: str, modalities=ALL, num_classes: int = 5, **kwargs):
    torch.manual_seed(0)
    return create_model(
        backbone=TINY_BACKBONES.get(fusion, "mit_nano"), fusion=fusion, modalities=list(modalities),
        num_classes=num_classes, **kwargs
    )


@pytest.fixture
def make_inputs():
    """``make_inputs(modalities, batch=2, height=64, width=64, seed=0)`` → modality → random (B, C, H, W)."""
    return _make_inputs


@pytest.fixture
def tiny_model():
    """``tiny_model(fusion, modalities=ALL, num_classes=5, **config)`` → a seeded ``mit_nano`` Segmentor (the
    fusion's own tiny backbone for those in ``TINY_BACKBONES``)."""
    return _tiny_model
