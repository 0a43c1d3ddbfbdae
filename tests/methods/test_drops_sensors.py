"""Which methods show the model samples with a sensor absent (recorded in model files as
``training.absent_sensors_seen``; rgbx.Predictor warns when its sensor checks leave one out of a model that never)."""

from __future__ import annotations

import pytest

import rgbx
from rgbx.engine.config import MethodConfig
from rgbx.methods import METHODS


@pytest.mark.parametrize("name, dropout, options, expected", [
    ("supervised", 0.0, {}, False),
    ("supervised", 0.5, {}, True),  # method.modality_dropout
    ("primkd", 0.0, {"teacher": "t.safetensors"}, False),
    ("primkd", 0.3, {"teacher": "t.safetensors"}, True),
    ("anyseg", 0.0, {"teacher": "t.safetensors"}, True),  # its own anymodal dropout, 0.5 by default
    ("anyseg", 0.0, {"teacher": "t.safetensors", "dropout": 0.0}, False),
    ("ktb", 0.0, {}, True),  # masked-modality self-teaching
    ("ktb", 0.0, {"mask_prob": 0.0}, False),
])
def test_drops_sensors(name, dropout, options, expected):
    method = METHODS.get(name)(MethodConfig(name=name, modality_dropout=dropout, options=options))
    assert method.drops_sensors() is expected


def test_omni_pretraining_drops_all_but_two_sensors():
    method = METHODS.get("omni_pretrain")(MethodConfig(name="omni_pretrain"))
    for modalities, expected in ((["rgb", "depth"], False), (["rgb", "depth", "thermal"], True)):
        model = rgbx.create_model(backbone="mit_nano", fusion="mean", modalities=modalities, num_classes=3,
                                  head_channels=16)
        method.prepare(model, "cpu")
        assert method.drops_sensors() is expected  # RGB + one supplementary modality per step
