"""The ``cmnext`` fusion: structure, the absent-modality rules, attention implementations, gradients, key map."""

import pytest
import torch
import torch.nn.functional as F

from rgbx.errors import ConfigError
from rgbx.models import FUSIONS
from rgbx.models.fusions.cmnext import (
    SUPPLEMENTARY_SLOT,
    CMNeXtFusion,
    SelfQueryHub,
    cmnext_key_map,
    fold_conv_weight,
    reference_relayout,
)

DELIVER = ("rgb", "depth", "event", "lidar")
SETS = [("rgb", "depth"), ("rgb", "depth", "event"), DELIVER]


def _model(tiny_model, modalities=DELIVER, **kwargs):
    return tiny_model("cmnext", modalities=modalities, drop_path_rate=0.0, **kwargs)


@pytest.mark.parametrize("mods", SETS, ids="+".join)
def test_shapes_for_one_to_three_supplementary_modalities(mods, tiny_model, make_inputs):
    model = _model(tiny_model, mods)
    out = model(make_inputs(mods, height=48, width=64))
    assert out.logits.shape == (2, 5, 48, 64)
    channels = model.encoder.feature_info.channels()
    assert [f.shape for f in out.fused] == [(2, c, -(-48 // r), -(-64 // r)) for c, r in zip(channels, (4, 8, 16, 32))]
    assert set(out.features) == set(mods)
    for m in mods:
        assert [f.shape[1] for f in out.features[m]] == channels
    assert torch.isfinite(out.logits).all()
    out.logits.mean().backward()


def test_structure():
    one = CMNeXtFusion(backbone="mit_nano", modalities=["rgb", "depth"])
    assert all(stage.hub is None for stage in one.supplementary)
    enc = CMNeXtFusion(backbone="mit_nano", modalities=["depth", "rgb", "event", "lidar"])
    assert enc.primary == "rgb" and enc.supplementary_modalities == ("depth", "event", "lidar")
    stem = enc.supplementary[0].embed
    assert stem.proj.weight.shape == (16, 3, 7, 7)  # one stem shared by 1- and 2-channel modalities
    assert set(stem.norms) == {"depth", "event", "lidar"}
    assert set(enc.supplementary[2].hub.score) == {"depth", "event", "lidar"}
    assert [len(s.blocks) for s in enc.supplementary] == [1, 1, 1, 1]
    assert [s.blocks[0].mlp.fc1.out_channels for s in enc.supplementary] == [128, 256, 256, 512]  # ratios 8 8 4 4
    assert [f.cross.cross_attn.num_heads for f in enc.fuse] == [1, 2, 4, 8]
    assert set(enc.fuse[0].cross.channel_proj) == {"rgb", SUPPLEMENTARY_SLOT}
    assert {m.eps for m in enc.backbone.modules() if isinstance(m, torch.nn.LayerNorm)} == {1e-5}
    assert CMNeXtFusion(backbone="mit_nano", modalities=["depth", "thermal"]).primary == "depth"
    assert CMNeXtFusion(backbone="mit_nano", modalities=["rgb", "depth"], primary="depth").primary == "depth"


def test_bad_configs():
    with pytest.raises(ConfigError, match="at least two"):
        FUSIONS.get("cmnext")(backbone="mit_nano", modalities=["rgb"])
    with pytest.raises(ConfigError, match="MiT backbone"):
        FUSIONS.get("cmnext")(backbone="efficientnet_lite0", modalities=["rgb", "depth"])
    with pytest.raises(ConfigError, match="primary 'lidar'"):
        FUSIONS.get("cmnext")(backbone="mit_nano", modalities=["rgb", "depth"], primary="lidar")
    with pytest.raises(ConfigError, match="mixer_mlp_ratios"):
        FUSIONS.get("cmnext")(backbone="mit_nano", modalities=["rgb", "depth"], mixer_mlp_ratios=[4, 4])


def test_folded_stem_equals_cyclic_repeat():
    torch.manual_seed(0)
    w, b = torch.randn(8, 3, 7, 7), torch.randn(8)
    for c in (1, 2, 3):
        x = torch.randn(2, c, 20, 24)
        repeated = x[:, [k % c for k in range(3)]]
        torch.testing.assert_close(
            F.conv2d(x, fold_conv_weight(w, c), b, 4, 3), F.conv2d(repeated, w, b, 4, 3), atol=1e-5, rtol=1e-5
        )


def test_reference_relayout():
    x = torch.arange(2 * 3 * 4 * 5.0).view(2, 3, 4, 5)
    y = reference_relayout(x)
    assert y.shape == x.shape
    flat = x.flatten(1)
    for c, h, w in ((0, 0, 1), (2, 3, 4), (1, 2, 0)):
        assert y[1, c, h, w] == flat[1, (h * 5 + w) * 3 + c]


def test_hub_is_max_over_present_modalities():
    torch.manual_seed(0)
    hub = SelfQueryHub(4, ["a", "b"])
    x = {"a": torch.randn(3, 4, 5, 5), "b": torch.randn(3, 4, 5, 5)}
    present = {"a": torch.tensor([True, True, False]), "b": torch.tensor([True, False, False])}
    out, gated = hub(x, present)
    for m in "ab":
        torch.testing.assert_close(gated[m], hub.score[m](x[m]) * x[m] + x[m])
    torch.testing.assert_close(out[0], torch.maximum(gated["a"][0], gated["b"][0]))
    torch.testing.assert_close(out[1], gated["a"][1])  # b absent: not a candidate, even where g_a < 0
    assert (out[2] == 0).all()


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_absent_values_do_not_matter(train, tiny_model, make_inputs):
    """Whatever an absent sample holds (even NaN) changes no output and no gradient."""
    model = _model(tiny_model).train(train)
    inputs = make_inputs(DELIVER, batch=3, height=32, width=32)
    present = {
        "rgb": torch.tensor([True, True, False]),
        "depth": torch.tensor([False, True, True]),
        "event": torch.tensor([True, False, False]),
        "lidar": torch.tensor([True, False, True]),
    }

    def run(fill):
        x = {m: t.clone() for m, t in inputs.items()}
        for m, mask in present.items():
            x[m][~mask] = fill
        torch.manual_seed(1)
        model.zero_grad()
        out = model(x, present)
        out.logits.square().mean().backward()
        return out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    (a, ga), (b, gb) = run(0.0), run(float("nan"))
    torch.testing.assert_close(a.logits, b.logits)
    for fa, fb in zip(a.fused, b.fused, strict=True):
        torch.testing.assert_close(fa, fb)
    for m in DELIVER:
        for fa, fb in zip(a.features[m], b.features[m], strict=True):
            torch.testing.assert_close(fa, fb)
            assert (fa[~present[m]] == 0).all()
    assert ga.keys() == gb.keys()
    for n in ga:
        torch.testing.assert_close(ga[n], gb[n], msg=n)


@pytest.mark.parametrize(
    "pattern",
    [
        {"depth": [True, False, True], "event": [False, True, True], "lidar": [True, True, False]},
        {"depth": [False, True, False], "event": [False, False, True], "lidar": [False, False, False]},
        {"rgb": [False, True, True], "depth": [True, False, False], "event": [True, False, False]},
    ],
    ids=["mixed", "one-supplementary-each", "rgb-absent"],
)
def test_per_sample_mask_equals_running_alone(pattern, tiny_model, make_inputs):
    model = _model(tiny_model).eval()
    inputs = make_inputs(DELIVER, batch=3, height=32, width=32)
    present = {m: torch.tensor(v) for m, v in pattern.items()}
    with torch.no_grad():
        batched = model(inputs, present)
        for i in range(3):
            mods = [m for m in DELIVER if m not in present or bool(present[m][i])]
            alone = model({m: inputs[m][i : i + 1] for m in mods})
            torch.testing.assert_close(batched.logits[i : i + 1], alone.logits, atol=1e-5, rtol=1e-5)
            for fa, fb in zip(batched.fused, alone.fused, strict=True):
                torch.testing.assert_close(fa[i : i + 1], fb, atol=1e-5, rtol=1e-5)
            for m in mods:
                for fa, fb in zip(batched.features[m], alone.features[m], strict=True):
                    torch.testing.assert_close(fa[i : i + 1], fb, atol=1e-5, rtol=1e-5)


def _record_calls(encoder):
    """Forward hooks on every module that belongs to one modality (or to the supplementary branch / slot)."""
    calls = set()
    owners = {"rgb": [encoder.backbone]}
    for m in encoder.supplementary_modalities:
        owners[m] = [s.embed.norms[m] for s in encoder.supplementary]
        owners[m] += [s.hub.score[m] for s in encoder.supplementary if s.hub is not None]
    owners["supplementary"] = [s.blocks for s in encoder.supplementary] + [s.norm for s in encoder.supplementary]
    owners["supplementary"] += [f.cross.channel_proj[SUPPLEMENTARY_SLOT] for f in encoder.fuse]
    owners["rgb"] += [f.cross.channel_proj["rgb"] for f in encoder.fuse]
    for name, modules in owners.items():
        for module in modules:
            module.register_forward_hook(lambda *_, name=name: calls.add(name))
    return calls


@pytest.mark.parametrize(
    "absent",
    [("event",), ("depth", "lidar"), ("depth", "event", "lidar"), ("rgb",)],
    ids="+".join,
)
def test_modality_absent_for_whole_batch_is_not_computed(absent, tiny_model, make_inputs):
    model = _model(tiny_model).eval()
    calls = _record_calls(model.encoder)
    inputs = make_inputs(DELIVER, height=32, width=32)
    for m in absent:
        inputs[m] = torch.full_like(inputs[m], float("nan"))
    with torch.no_grad():
        masked = model(inputs, {m: torch.tensor([False, False]) for m in absent})
    kept = [m for m in DELIVER if m not in absent]
    expected = set(kept) | ({"supplementary"} if set(kept) - {"rgb"} else set())
    assert calls == expected
    assert set(masked.features) == set(kept)
    calls.clear()
    with torch.no_grad():
        without = model({m: inputs[m] for m in kept})
    assert calls == expected
    torch.testing.assert_close(masked.logits, without.logits)
    assert torch.isfinite(masked.logits).all()


def test_rgb_alone_passes_unrectified(tiny_model, make_inputs):
    """Without supplementary modalities the RGB branch is the plain MiT (nothing rectifies it)."""
    model = _model(tiny_model).eval()
    rgb = make_inputs(["rgb"])["rgb"]
    with torch.no_grad():
        out = model({"rgb": rgb})
        plain = model.encoder.backbone(rgb)
    for a, b in zip(out.features["rgb"], plain, strict=True):
        torch.testing.assert_close(a, b)


def test_sample_without_any_modality_gets_zero_fused(tiny_model, make_inputs):
    model = _model(tiny_model).eval()
    present = {m: torch.tensor([True, False]) for m in DELIVER}
    with torch.no_grad():
        out = model(make_inputs(DELIVER), present)
    assert all((f[1] == 0).all() for f in out.fused)
    assert torch.isfinite(out.logits).all()


def test_sdpa_and_eager_agree(tiny_model, make_inputs):
    model = _model(tiny_model).eval()
    inputs = make_inputs(DELIVER, height=64, width=48)
    with torch.no_grad():
        sdpa = model(inputs).logits
        model.set_attn_impl("eager")
        eager = model(inputs).logits
    torch.testing.assert_close(sdpa, eager, atol=1e-5, rtol=1e-5)


def test_every_parameter_gets_a_gradient(tiny_model, make_inputs):
    model = _model(tiny_model).train()
    model(make_inputs(DELIVER, height=32, width=32)).logits.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, missing
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    stage = model.encoder.supplementary[1]
    for module in (stage.hub.score["event"], stage.blocks[0].attn, stage.blocks[0].c_nets):
        assert any(p.grad.abs().sum() > 0 for p in module.parameters())
    assert stage.blocks[0].layer_scale_1.grad.abs().sum() > 0


def test_key_map_covers_every_original_layout_rule(tiny_model):
    """Representative keys of an original DELIVER CMNeXt (RGB-D-E-L) state dict map to existing rgbx keys."""
    own = _model(tiny_model).state_dict()
    original = [
        "backbone.patch_embed1.proj.weight", "backbone.patch_embed2.norm.bias", "backbone.block1.0.attn.sr.weight",
        "backbone.block4.0.mlp.dwconv.dwconv.weight", "backbone.norm3.weight",
        "backbone.extra_downsample_layers.0.proj.module.weight",
        "backbone.extra_downsample_layers.3.norm.ln_2.bias",
        "backbone.extra_score_predictor.1.score_nets.1.0.weight",
        "backbone.extra_score_predictor.2.score_nets.0.1.bias",
        "backbone.extra_block2.0.layer_scale_1", "backbone.extra_block1.0.attn.conv0.weight",
        "backbone.extra_block3.0.mlp.dwconv.dwconv.weight", "backbone.extra_block4.0.c_nets.0.weight",
        "backbone.extra_block1.0.norm1.running_var", "backbone.extra_norm2.weight",
        "backbone.FRMs.0.channel_weights.mlp.2.weight", "backbone.FRMs.3.spatial_weights.mlp.0.bias",
        "backbone.FFMs.1.cross.channel_proj1.weight", "backbone.FFMs.1.cross.channel_proj2.bias",
        "backbone.FFMs.2.cross.cross_attn.kv1.weight", "backbone.FFMs.2.cross.cross_attn.kv2.weight",
        "backbone.FFMs.0.cross.end_proj2.weight", "backbone.FFMs.3.cross.norm1.bias",
        "backbone.FFMs.0.channel_emb.channel_embed.4.running_mean", "backbone.FFMs.0.channel_emb.norm.weight",
        "decode_head.linear_c1.proj.weight", "decode_head.linear_c4.proj.bias",
        "decode_head.linear_fuse.conv.weight", "decode_head.linear_fuse.bn.running_var",
        "decode_head.linear_pred.weight",
    ]
    mapped = cmnext_key_map({k: torch.zeros(()) for k in original})
    assert len(mapped) == len(original)
    assert not set(mapped) - set(own), sorted(set(mapped) - set(own))
    assert "encoder.supplementary.3.embed.norms.lidar.bias" in mapped
    assert "encoder.supplementary.1.hub.score.event.0.weight" in mapped
    assert "encoder.fuse.2.cross.cross_attn.kv.x.weight" in mapped
    assert cmnext_key_map({"extra_norm1.bias": torch.zeros(())}) == {"supplementary.0.norm.bias": torch.zeros(())}
    assert "something.else" in cmnext_key_map({"something.else": torch.zeros(())})
