import pytest
import torch

from rgbx.models import HEADS, create_model
from rgbx.models.heads.fcn import FCNHead

CHANNELS = [16, 32, 64, 128]


def stage_maps(height, width, batch=2):
    return [
        torch.randn(batch, c, -(-height // r), -(-width // r))
        for c, r in zip(CHANNELS, [4, 8, 16, 32], strict=True)
    ]


def test_registered_structure_and_shapes():
    head = HEADS.get("fcn")(in_channels=CHANNELS, num_classes=7, channels=24)
    assert isinstance(head, FCNHead) and head.in_index == 2
    assert list(head.state_dict()) == [
        "convs.0.conv.weight",
        "convs.0.bn.weight",
        "convs.0.bn.bias",
        "convs.0.bn.running_mean",
        "convs.0.bn.running_var",
        "convs.0.bn.num_batches_tracked",
        "conv_seg.weight",
        "conv_seg.bias",
    ]
    conv = head.convs[0].conv
    assert (
        conv.in_channels == 64 and conv.kernel_size == (3, 3) and conv.padding == (1, 1) and conv.bias is None
    )
    assert head.dropout.p == 0.1 and head.classifier is head.conv_seg
    for size in [(64, 64), (50, 70), (33, 97)]:
        feats = stage_maps(*size)
        out = head(feats)
        assert out.shape == (2, 7, *feats[2].shape[-2:])
    out.mean().backward()
    assert all(p.grad is not None for p in head.parameters())


def test_options_and_auxiliary_use():
    head = FCNHead(64, num_classes=3, channels=16, num_convs=2, concat_input=True, dilation=2)
    x = torch.randn(2, 64, 5, 7)
    assert head(x).shape == (2, 3, 5, 7)
    assert head([x]).shape == (2, 3, 5, 7)
    assert len(head.convs) == 2 and head.convs[0].conv.dilation == (2, 2)
    assert head.conv_cat.conv.in_channels == 64 + 16
    assert FCNHead(CHANNELS, 3, channels=32, in_index=1)(stage_maps(32, 32)).shape == (2, 3, 4, 4)
    assert FCNHead(CHANNELS, 3, channels=64, num_convs=0)(stage_maps(32, 32)).shape == (2, 3, 2, 2)
    with pytest.raises(ValueError, match="num_convs=0"):
        FCNHead(CHANNELS, 3, channels=32, num_convs=0)
    with pytest.raises(ValueError, match="out of range"):
        FCNHead(CHANNELS, 3, in_index=4)
    with pytest.raises(ValueError, match="stage map"):
        FCNHead(CHANNELS, 3)(stage_maps(32, 32)[:2])


def test_as_main_head_of_a_segmentor():
    torch.manual_seed(0)
    model = create_model(
        backbone="mit_nano", fusion="mean", modalities=["rgb"], num_classes=4, head="fcn", head_channels=16
    )
    assert model({"rgb": torch.randn(1, 3, 48, 40)}).logits.shape == (1, 4, 48, 40)
