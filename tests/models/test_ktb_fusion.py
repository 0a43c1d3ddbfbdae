"""KTB fusion (fusion "ktb"): shapes with either modality missing, the frozen shared backbone, parameter counts and
per-sample absent modalities."""

from __future__ import annotations

import pytest
import torch

import rgbx
from rgbx.errors import ConfigError
from rgbx.models.fusions.ktb import KTBFusion

CH = {"rgb": 3, "depth": 1}


def encoder(seed: int = 0, **kwargs) -> KTBFusion:
    torch.manual_seed(seed)
    return KTBFusion("mit_nano", ("rgb", "depth"), drop_path_rate=0.0, **kwargs).eval()


def inputs(seed: int = 0, batch: int = 2, size: int = 32):
    g = torch.Generator().manual_seed(seed)
    return {m: torch.randn(batch, c, size, size, generator=g) for m, c in CH.items()}


@pytest.mark.parametrize("names", [("rgb", "depth"), ("rgb",), ("depth",)])
def test_shapes_for_rgb_x_rgb_only_and_x_only(names):
    enc = encoder()
    x = inputs()
    out = enc({m: x[m] for m in names})
    assert [tuple(f.shape) for f in out.fused] == [(2, 16, 8, 8), (2, 32, 4, 4), (2, 64, 2, 2), (2, 128, 1, 1)]
    assert set(out.features) == set(names)
    for m in names:
        assert [f.shape for f in out.features[m]] == [f.shape for f in out.fused]
    assert all(torch.isfinite(f).all() for f in out.fused)


def test_single_modality_fused_map_is_that_modality():
    enc = encoder()
    out = enc({"depth": inputs()["depth"]})
    # one present modality: the DSCF mixture weight is 1 and the cross term 0
    for fused, own in zip(out.fused, out.features["depth"]):
        torch.testing.assert_close(fused, own)


def test_backbone_frozen_adapters_stems_fusion_trainable():
    enc = encoder().train()
    out = enc(inputs())
    (sum(f.square().mean() for f in out.fused) + sum(f.mean() for f in out.features["depth"])).backward()
    assert all(not p.requires_grad and p.grad is None for p in enc.backbone.parameters())

    def has_grad(module):
        return any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in module.parameters())

    assert has_grad(enc.stems["depth"])
    assert "rgb" not in enc.stems  # RGB uses the backbone's own (frozen) patch embedding
    for i in range(4):
        assert has_grad(enc.prompts[i]), i
        assert has_grad(enc.adapters[i]), i
        assert has_grad(enc.fusions[i]), i


def test_trainable_fewer_than_frozen_for_mit_b0():
    torch.manual_seed(0)
    counts = KTBFusion("mit_b0", ("rgb", "depth")).parameter_counts()
    assert counts == {"trainable": 739_784, "frozen": 3_319_392}
    assert counts["trainable"] < counts["frozen"]


def test_per_sample_absent_modality_ignores_the_absent_values():
    enc = encoder()
    x = inputs()
    present = {"rgb": torch.tensor([True, False]), "depth": torch.tensor([False, True])}
    a = enc(x, present)
    y = {m: v.clone() for m, v in x.items()}
    y["rgb"][1] = float("nan")
    y["depth"][0] = 1e6
    b = enc(y, present)
    for fa, fb in zip(a.fused, b.fused):
        torch.testing.assert_close(fa, fb)
    for m in CH:
        for fa, fb in zip(a.features[m], b.features[m]):
            torch.testing.assert_close(fa, fb)
    assert float(b.features["rgb"][0][1].detach().abs().sum()) == 0.0  # absent samples hold zeros
    # a sample with only depth equals depth alone (batch of one)
    alone = enc({"depth": x["depth"][1:]})
    for fa, fs in zip(a.fused, alone.fused):
        torch.testing.assert_close(fa[1:], fs, atol=1e-5, rtol=1e-4)


def test_absent_values_get_no_gradient_and_no_nan():
    enc = encoder().train()
    x = inputs()
    x["rgb"][1] = float("nan")
    present = {"rgb": torch.tensor([True, False])}
    sum(f.sum() for f in enc(x, present).fused).backward()
    assert all(torch.isfinite(p.grad).all() for p in enc.parameters() if p.grad is not None)


def test_in_a_segmentor_and_config_errors():
    torch.manual_seed(0)
    model = rgbx.create_model(backbone="mit_nano", fusion="ktb", modalities=["rgb", "depth"], num_classes=3,
                              head_channels=16)
    assert model(inputs()).logits.shape == (2, 3, 32, 32)
    with pytest.raises(ConfigError, match="two modalities"):
        KTBFusion("mit_nano", ("rgb", "depth", "thermal"))
    with pytest.raises(ConfigError, match="adapter_ranks"):
        KTBFusion("mit_nano", ("rgb", "depth"), adapter_ranks=(8, 16))
