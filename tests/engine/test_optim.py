"""Optimizer groups built from named_parameters (nothing dropped) and the warm-up + poly schedule."""

from __future__ import annotations

import math

import pytest
import torch

import rgbx
from rgbx.engine.config import load_config
from rgbx.engine.optim import check_param_groups, param_groups, warmup_poly
from rgbx.errors import ConfigError


@pytest.mark.parametrize("fusion,backbone,head", [("cmx", "mit_nano", "mlp"), ("mean", "mit_nano", "ham")])
def test_every_trainable_parameter_in_exactly_one_group(fusion, backbone, head):
    model = rgbx.create_model(backbone=backbone, fusion=fusion, head=head, modalities=["rgb", "depth"],
                              num_classes=3, head_channels=16)
    groups = param_groups(model, weight_decay=0.05, lr=1e-3, head_lr_mult=10.0)
    names = [n for g in groups for n in g["names"]]
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert sorted(names) == sorted(trainable) and len(names) == len(set(names))
    by_name = {n: g for g in groups for n in g["names"]}
    for name, p in model.named_parameters():
        g = by_name[name]
        if p.ndim <= 1 or name.endswith(".bias"):  # norms, biases, bare 1-d parameters
            assert g["weight_decay"] == 0.0, name
        else:
            assert g["weight_decay"] == 0.05, name
        assert g["lr"] == pytest.approx(1e-2 if name.startswith("head.") else 1e-3), name


def test_a_missing_parameter_is_caught():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.LayerNorm(2))
    groups = [{"params": [model[0].weight, model[0].bias]}]
    with pytest.raises(RuntimeError, match="missing"):
        check_param_groups(model, groups)


def test_warmup_then_poly():
    f = warmup_poly(total_iters=100, warmup_iters=10, warmup_ratio=0.1, power=1.0)
    assert f(0) == pytest.approx(0.1) and f(10) == pytest.approx(1.0)
    assert f(55) == pytest.approx(0.5) and f(100) == 0.0
    assert all(f(i) >= f(i + 1) for i in range(10, 100))
    assert math.isclose(warmup_poly(100, 0, 0.1, 2.0)(50), 0.25)


def test_poly_counted_from_the_start_as_cmx_and_dformer_schedule():
    """CMX / DFormer: lr · it / warmup, then lr · (1 - it / total)^power (their WarmUpPolyLR), at every iteration."""
    total, warmup, power = 1000, 100, 0.9
    f = warmup_poly(total, warmup, 0.0, power, poly_from="start")
    for it in range(total):
        expected = it / warmup if it < warmup else (1 - it / total) ** power
        assert f(it) == pytest.approx(expected, abs=1e-12), it
    assert f(warmup) < 1.0  # the drop at the end of the warm-up that the shifted form does not have
    assert warmup_poly(total, warmup, 0.0, power)(warmup) == 1.0
    with pytest.raises(ConfigError, match="optim.poly_from"):
        load_config(None, ["optim.poly_from=end"])


def test_freeze_takes_parameter_name_patterns():
    from rgbx.engine.optim import freeze_parameters

    model = rgbx.create_model(backbone="mit_nano", fusion="cmx", modalities=["rgb", "depth"], num_classes=3,
                              head_channels=16)
    names = [n for n, _ in model.named_parameters()]
    want = [n for n in names if n.endswith(".bias") and ".attn." in n]
    assert want and freeze_parameters(model, ["*.attn.*.bias"]) > 0
    assert [n for n, p in model.named_parameters() if not p.requires_grad] == want
    with pytest.raises(ConfigError, match=r"train.freeze: '\*.nothing_like_this' names no parameter"):
        freeze_parameters(model, ["*.nothing_like_this"])
    top = sorted({n.split(".")[0] for n in names})  # every parameter: nothing would train (AdamW's empty-list error)
    with pytest.raises(ConfigError, match=r"train.freeze=\[.*\] freezes every parameter of the model"):
        freeze_parameters(model, top)
