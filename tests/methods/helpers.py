"""Tiny models, batches and teacher-loaded methods shared by the distillation-recipe tests."""

from __future__ import annotations

import torch

import rgbx
from rgbx.data.sample import Batch
from rgbx.engine.checkpoint import save_model
from rgbx.engine.config import MethodConfig
from rgbx.methods import METHODS

CHANNELS = {"rgb": 3, "depth": 1, "thermal": 1}


def tiny_model(seed: int = 0, modalities=("rgb", "depth", "thermal"), fusion: str = "mean", num_classes: int = 3):
    torch.manual_seed(seed)
    return rgbx.create_model(backbone="mit_nano", fusion=fusion, modalities=list(modalities),
                             num_classes=num_classes, head_channels=16)


def tiny_batch(modalities=("rgb", "depth", "thermal"), seed: int = 0, label_fill: int | None = None) -> Batch:
    """Two 16×16 samples, every modality present, the top 3 label rows ignored (255)."""
    g = torch.Generator().manual_seed(seed)
    inputs = {m: torch.randn(2, CHANNELS[m], 16, 16, generator=g) for m in modalities}
    present = {m: torch.ones(2, dtype=torch.bool) for m in modalities}
    label = torch.randint(0, 3, (2, 16, 16), generator=g)
    label[:, :3, :] = 255
    if label_fill is not None:
        label.fill_(label_fill)
    return Batch(inputs, present, label)


def method_with_teacher(name: str, tmp_path, teacher, student, **options):
    """Method ``name`` with ``teacher`` saved to disk and loaded by its ``prepare``, for ``student``."""
    path = save_model(tmp_path / "teacher.safetensors", teacher)
    method = METHODS.get(name)(MethodConfig(name=name, options={"teacher": str(path), **options}), ignore_index=255)
    method.prepare(student, torch.device("cpu"))
    return method
