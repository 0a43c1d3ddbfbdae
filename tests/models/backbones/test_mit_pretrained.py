"""`model.pretrained` for MiT backbones: the SegFormer ImageNet layout, bare rgbx MiT weights and rgbx model files,
first-conv adaptation, stems of stem-less encoders, and the errors."""

from __future__ import annotations

import re

import pytest
import torch
from safetensors.torch import save_file

from rgbx.errors import CheckpointError
from rgbx.models import create_model
from rgbx.models.backbones.mit import mit_b0, mit_nano

torch.manual_seed(0)


def _original_names(state):
    """rgbx MiT names → the SegFormer release's (``stages.0.blocks`` → ``block1`` ...), plus its ImageNet head."""
    out = {}
    for k, v in state.items():
        m = re.match(r"stages\.(\d)\.(patch_embed|blocks|norm)\.(.+)", k)
        part = {"patch_embed": "patch_embed", "blocks": "block", "norm": "norm"}[m.group(2)]
        out[f"{part}{int(m.group(1)) + 1}.{m.group(3)}"] = v.clone()
    out["head.weight"], out["head.bias"] = torch.randn(1000, 128), torch.randn(1000)
    return out


@pytest.fixture
def source(tmp_path):
    model = mit_nano().eval()
    path = tmp_path / "mit_nano.pth"
    torch.save(_original_names(model.state_dict()), path)
    return model, path


def test_segformer_release_layout_loads_exactly(source):
    model, path = source
    loaded = mit_nano(pretrained=str(path)).eval()
    x = torch.randn(1, 3, 64, 64)
    for a, b in zip(model(x), loaded(x)):
        assert torch.equal(a, b)


def test_one_channel_stem_is_the_summed_rgb_kernel(source):
    model, path = source
    depth_model = mit_nano(in_channels=1, pretrained=str(path)).eval()
    x = torch.randn(1, 1, 64, 64)
    # Summing the kernels over RGB = the RGB model on the 1-channel input repeated three times.
    for a, b in zip(model(x.repeat(1, 3, 1, 1)), depth_model(x)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_stemless_encoder_gives_each_stem_the_pretrained_one(source):
    model, path = source
    stemless = mit_nano(in_channels=None, pretrained=str(path))
    rgb, depth = stemless.make_stem(3), stemless.make_stem(1)
    assert torch.equal(rgb.proj.weight, model.stages[0].patch_embed.proj.weight)
    assert torch.equal(depth.proj.weight, model.stages[0].patch_embed.proj.weight.sum(1, keepdim=True))
    assert torch.equal(stemless.stages[3].norm.weight, model.stages[3].norm.weight)
    assert mit_nano(in_channels=None).pretrained_stem is None


@pytest.mark.parametrize("fusion", ["mean", "cmx", "ktb"])
def test_model_pretrained_reaches_every_branch(source, fusion):
    model, path = source
    seg = create_model(backbone="mit_nano", fusion=fusion, modalities=["rgb", "depth"], num_classes=3,
                       head_channels=16, pretrained=str(path))
    want = model.stages[2].blocks[0].attn.q.weight
    q = [p for n, p in seg.named_parameters() if n.endswith("stages.2.blocks.0.attn.q.weight")]
    q += [b for n, b in seg.state_dict().items() if n.endswith("stages.2.blocks.0.attn.q.weight")]
    assert q and all(torch.equal(t, want) for t in q)


def test_an_rgbx_model_file_starts_another_run(tmp_path):
    """An RGB model trained with rgbx (mean fusion: encoder.backbone + encoder.stems.rgb) as the backbone of a cmx
    model; then that cmx model's file (two branches) gives its RGB branch."""
    rgb_model = create_model(backbone="mit_nano", fusion="mean", modalities=["rgb"], num_classes=3, head_channels=16)
    save_file(rgb_model.state_dict(), tmp_path / "rgb.safetensors")
    cmx = create_model(backbone="mit_nano", fusion="cmx", modalities=["rgb", "depth"], num_classes=3,
                       head_channels=16, pretrained=str(tmp_path / "rgb.safetensors"))
    enc = rgb_model.encoder
    assert torch.equal(cmx.encoder.branches["rgb"].stages[0].patch_embed.proj.weight, enc.stems["rgb"].proj.weight)
    assert torch.equal(cmx.encoder.branches["depth"].stages[1].blocks[0].mlp.fc1.weight,
                       enc.backbone.stages[1].blocks[0].mlp.fc1.weight)
    save_file(cmx.state_dict(), tmp_path / "cmx.safetensors")
    again = mit_nano(pretrained=str(tmp_path / "cmx.safetensors"))
    assert torch.equal(again.stages[0].patch_embed.proj.weight, enc.stems["rgb"].proj.weight)


def test_wrong_variant_lists_the_mismatched_tensors(source):
    _, path = source
    with pytest.raises(CheckpointError, match=r"mit_nano\.pth: weights do not fit(.|\n)*missing: stages\.0\.blocks\.1(.|\n)*shape mismatch: stages\.0"):
        mit_b0(pretrained=str(path))


def test_a_file_without_a_mit_encoder_is_named(tmp_path):
    save_file({"conv.weight": torch.zeros(2, 2)}, tmp_path / "other.safetensors")
    with pytest.raises(CheckpointError, match="other.safetensors: no MiT encoder found"):
        mit_nano(pretrained=str(tmp_path / "other.safetensors"))
    save_file({"backbone.layers.0.0.projection.weight": torch.zeros(2, 2)}, tmp_path / "mmseg.safetensors")
    with pytest.raises(CheckpointError, match="rgbx convert"):
        mit_nano(pretrained=str(tmp_path / "mmseg.safetensors"))
    with pytest.raises(CheckpointError, match="not found"):
        mit_nano(pretrained=str(tmp_path / "missing.pth"))
