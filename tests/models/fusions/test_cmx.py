import pytest
import torch

from rgbx.errors import ConfigError
from rgbx.models import FUSIONS
from rgbx.models.fusions.base import others_weights
from rgbx.models.fusions.cmx import FeatureRectifyModule


def test_two_modalities_have_cmx_shapes():
    """For N = 2 every FRM/FFM layer has the shape of the original CMX module."""
    encoder = FUSIONS.get("cmx")(backbone="mit_nano", modalities=["rgb", "depth"])
    assert set(encoder.branches) == {"rgb", "depth"}
    assert encoder.branches["depth"].stages[0].patch_embed.proj.in_channels == 1
    for c, frm, ffm in zip(encoder.feature_info.channels(), encoder.rectify, encoder.fuse, strict=True):
        cw = frm.channel_weights.mlp
        assert (cw[0].in_features, cw[0].out_features, cw[2].out_features) == (4 * c, 4 * c, 2 * c)
        sw = frm.spatial_weights.mlp
        assert (sw[0].in_channels, sw[0].out_channels, sw[2].out_channels) == (2 * c, c, 2)
        for m in ("rgb", "depth"):
            assert ffm.cross.channel_proj[m].weight.shape == (2 * c, c)
            assert ffm.cross.cross_attn.kv[m].weight.shape == (2 * c, c)
            assert ffm.cross.cross_attn.kv[m].bias is None
            assert ffm.cross.end_proj[m].weight.shape == (c, 2 * c)
        assert ffm.channel_emb.residual.weight.shape == (c, 2 * c, 1, 1)
    assert [f.cross.cross_attn.num_heads for f in encoder.fuse] == [1, 2, 4, 8]


def test_rectification_for_two_modalities_is_cmx_formula():
    torch.manual_seed(0)
    frm = FeatureRectifyModule(dim=8, num_modalities=2)
    x1, x2 = torch.randn(2, 8, 5, 6), torch.randn(2, 8, 5, 6)
    present = torch.ones(2, 2, dtype=torch.bool)
    out = frm(torch.stack([x1, x2], dim=1), present, others_weights(present))
    cw = frm.channel_weights(torch.stack([x1, x2], dim=1))
    sw = frm.spatial_weights(torch.stack([x1, x2], dim=1))
    expected1 = x1 + 0.5 * cw[:, 1] * x2 + 0.5 * sw[:, 1] * x2
    expected2 = x2 + 0.5 * cw[:, 0] * x1 + 0.5 * sw[:, 0] * x1
    torch.testing.assert_close(out[:, 0], expected1)
    torch.testing.assert_close(out[:, 1], expected2)
    # without the other modality, a modality is not rectified
    alone = torch.tensor([[True, False], [True, False]])
    out = frm(torch.stack([x1, torch.zeros_like(x2)], dim=1), alone, others_weights(alone))
    torch.testing.assert_close(out[:, 0], x1)
    assert (out[:, 1] == 0).all()


def test_others_weights():
    present = torch.tensor([[True, True, True], [True, False, True], [False, True, False]])
    w = others_weights(present)
    torch.testing.assert_close(w[0], torch.tensor([[0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]]))
    torch.testing.assert_close(w[1], torch.tensor([[0, 0, 1.0], [0.5, 0, 0.5], [1.0, 0, 0]]))
    torch.testing.assert_close(w[2], torch.tensor([[0, 1.0, 0], [0, 0, 0], [0, 1.0, 0]]))


def test_needs_two_modalities():
    with pytest.raises(ConfigError, match="at least two.*'mean'"):
        FUSIONS.get("cmx")(backbone="mit_nano", modalities=["rgb"])


def test_rectified_features_continue_in_branches(tiny_model, make_inputs):
    """Stage 2 of a branch sees the rectified stage-1 map, so another modality changes it."""
    model = tiny_model("cmx", modalities=["rgb", "depth"]).eval()
    inputs = make_inputs(["rgb", "depth"])
    other = dict(inputs, depth=torch.randn_like(inputs["depth"]))
    with torch.no_grad():
        a, b = model(inputs), model(other)
    torch.testing.assert_close(a.features["rgb"][0], b.features["rgb"][0])  # stage 1: rgb branch alone
    assert not torch.allclose(a.features["rgb"][1], b.features["rgb"][1])
