"""DFormer encoder (``dformer_*`` backbones) and the ``dformer`` fusion."""

import pytest
import torch

from rgbx.errors import CheckpointError, ConfigError
from rgbx.models import BACKBONES, FUSIONS, create_model
from rgbx.models.backbones.dformer import DFORMER_VARIANTS, DFormer, load_dformer_weights

# Total parameters of create_model(backbone=dformer_*, fusion="dformer", head="ham", num_classes=40,
# head_channels=512) as measured (benchmarks/parity.md); published with the Ham head: 6.0 / 18.7 / 29.5 / 39.0 M.
MEASURED_PARAMS = {"dformer_t": 6_003_912, "dformer_s": 18_747_144, "dformer_b": 29_524_840, "dformer_l": 39_030_392}
PUBLISHED_PARAMS = {"dformer_t": 6.0e6, "dformer_s": 18.7e6, "dformer_b": 29.5e6, "dformer_l": 39.0e6}
# Encoder alone: equal to the original DFormer_{Tiny,Small,Base,Large} (counted on the reference code).
ENCODER_PARAMS = {"dformer_t": 4_964_000, "dformer_s": 17_477_856, "dformer_b": 28_255_552, "dformer_l": 37_679_184}
ENCODER_STATE_KEYS = {"dformer_t": 670, "dformer_s": 530, "dformer_b": 1006, "dformer_l": 1006}

# Names and shapes of a few tensors of the original DFormer-T encoder (models/encoders/DFormer.py, state_dict()).
REFERENCE_T_KEYS = {
    "downsample_layers.0.0.weight": (16, 3, 3, 3),
    "downsample_layers.0.1.running_var": (16,),
    "downsample_layers.0.3.weight": (32, 16, 3, 3),
    "downsample_layers_e.0.0.weight": (8, 1, 3, 3),
    "downsample_layers_e.0.3.weight": (16, 8, 3, 3),
    "downsample_layers.1.0.weight": (32,),
    "downsample_layers.1.1.weight": (64, 32, 3, 3),
    "downsample_layers_e.1.1.weight": (32, 16, 3, 3),
    "stages.0.0.attn.proj.weight": (32, 48),
    "stages.0.0.attn.proj_e.weight": (16, 48),
    "stages.1.0.attn.proj.weight": (64, 128),
    "stages.1.0.attn.kv.weight": (64, 64),
    "stages.1.0.attn.short_cut_linear.weight": (32, 96),
    "stages.1.0.attn.e_conv.weight": (32, 1, 7, 7),
    "stages.0.0.mlp.fc1.weight": (256, 32),
    "stages.0.0.mlp.pos.weight": (256, 1, 3, 3),
    "stages.0.0.mlp_e2.fc1.weight": (128, 16),
    "stages.0.0.layer_scale_1_e": (16,),
    "stages.3.1.attn.e_back.weight": (128, 128),
    "stages.3.1.layer_scale_2": (256,),
    "stages.3.0.mlp_e2.fc2.weight": (128, 512),
    "stages.2.4.attn.q_cut.weight": (64, 128),
    "stages.3.1.attn.norm_e.weight": (128,),
}


def _model(backbone="dformer_nano", modalities=("rgb", "depth"), **kwargs):
    torch.manual_seed(0)
    return create_model(backbone=backbone, fusion="dformer", head="ham", modalities=list(modalities),
                        num_classes=5, head_channels=32, **kwargs)


def _inputs(batch=2, size=(64, 64), depth_channels=1, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return {
        "rgb": torch.randn(batch, 3, *size, generator=gen),
        "depth": torch.randn(batch, depth_channels, *size, generator=gen),
    }


@pytest.mark.parametrize("subset", [("rgb", "depth"), ("rgb",), ("depth",)], ids="+".join)
def test_shapes_for_each_subset(subset):
    model = _model().eval()
    x = _inputs(size=(64, 96))
    with torch.no_grad():
        out = model({m: x[m] for m in subset})
    assert out.logits.shape == (2, 5, 64, 96)
    assert torch.isfinite(out.logits).all()
    assert [f.shape for f in out.fused] == [(2, c, 64 // r, 96 // r) for c, r in zip((16, 32, 64, 128), (4, 8, 16, 32))]
    assert set(out.features) == set(subset)
    if "depth" in subset:
        assert [f.shape[1] for f in out.features["depth"]] == [8, 16, 32, 64]
    if "rgb" in subset:
        assert all(torch.equal(a, b) for a, b in zip(out.features["rgb"], out.fused))


def test_tiny_published_variant_runs_at_64():
    model = _model("dformer_t").eval()
    with torch.no_grad():
        out = model(_inputs(batch=1))
    assert [f.shape[1] for f in out.fused] == [32, 64, 128, 256]
    assert out.logits.shape == (1, 5, 64, 64)


def test_per_sample_absent_depth_equals_running_without_depth():
    model = _model().eval()
    x = _inputs()
    x["depth"][1] = float("nan")  # what an absent sample holds must not reach anything
    with torch.no_grad():
        mixed = model(x, present={"depth": torch.tensor([True, False])})
        alone = model({"rgb": x["rgb"][1:]})
        with_depth = model({"rgb": x["rgb"][:1], "depth": x["depth"][:1]})
    assert torch.isfinite(mixed.logits).all()
    torch.testing.assert_close(mixed.logits[1:], alone.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mixed.logits[:1], with_depth.logits, atol=1e-5, rtol=1e-5)
    assert all((f[1] == 0).all() for f in mixed.features["depth"])


def test_absent_depth_is_the_fill_map_not_rgb():
    model = _model().eval()
    x = _inputs()
    with torch.no_grad():
        without = model({"rgb": x["rgb"]}).fused
        zeros = model({"rgb": x["rgb"], "depth": torch.zeros_like(x["depth"])}).fused
    assert all(torch.equal(a, b) for a, b in zip(without, zeros))


def test_hha_feeds_channel_zero():
    model = _model(modalities=("rgb", "hha")).eval()
    x = _inputs(depth_channels=3)
    x2 = {"rgb": x["rgb"], "hha": x["depth"].clone()}
    x2["hha"][:, 1:] = 7.0
    with torch.no_grad():
        a = model({"rgb": x["rgb"], "hha": x["depth"]}).logits
        b = model(x2).logits
    torch.testing.assert_close(a, b)


def test_sample_with_nothing_present_gets_zero_fused_maps():
    model = _model().eval()
    x = _inputs()
    with torch.no_grad():
        out = model(x, present={"rgb": torch.tensor([True, False]), "depth": torch.tensor([True, False])})
    assert all((f[1] == 0).all() for f in out.fused)
    assert all((f[0] != 0).any() for f in out.fused)


@pytest.mark.parametrize(
    "modalities", [("rgb",), ("rgb", "thermal"), ("depth", "hha"), ("rgb", "depth", "hha"), ("rgb", "depth", "thermal")]
)
def test_wrong_modalities(modalities):
    with pytest.raises(ConfigError, match="dformer fusion needs exactly"):
        FUSIONS.get("dformer")(backbone="dformer_nano", modalities=modalities)


def test_other_backbones_and_fusions_are_refused():
    with pytest.raises(ConfigError, match="DFormer backbone"):
        FUSIONS.get("dformer")(backbone="mit_nano", modalities=("rgb", "depth"))
    with pytest.raises(ConfigError, match="only fusion 'dformer'"):
        create_model(backbone="dformer_nano", fusion="mean", modalities=["rgb", "depth"], num_classes=3)
    with pytest.raises(ConfigError, match="only fusion 'dformer'"):
        create_model(backbone="dformer_nano", fusion="cmx", modalities=["rgb", "depth"], num_classes=3)


def test_depth_channel_order_is_free():
    model = _model(modalities=("depth", "rgb"))
    assert model.encoder.depth_name == "depth"


def test_backward_reaches_every_parameter():
    model = _model().train()
    out = model(_inputs())
    out.logits.mean().backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("attn_impl", ["sdpa", "eager"])
def test_attn_impls_agree(attn_impl):
    ref = _model(attn_impl="sdpa").eval()
    other = _model(attn_impl=attn_impl).eval()
    other.load_state_dict(ref.state_dict())
    x = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(ref(x).logits, other(x).logits, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", list(MEASURED_PARAMS))
def test_parameter_counts(name):
    with torch.device("meta"):
        model = create_model(backbone=name, fusion="dformer", head="ham", modalities=["rgb", "depth"],
                             num_classes=40, head_channels=512)
    total = sum(p.numel() for p in model.parameters())
    encoder = sum(p.numel() for p in model.encoder.parameters())
    assert abs(total - MEASURED_PARAMS[name]) <= 0.02 * MEASURED_PARAMS[name]
    assert abs(total - PUBLISHED_PARAMS[name]) <= 0.02 * PUBLISHED_PARAMS[name]
    assert encoder == ENCODER_PARAMS[name]
    assert len(model.encoder.encoder.state_dict()) == ENCODER_STATE_KEYS[name]


def test_reference_key_layout():
    with torch.device("meta"):
        encoder = BACKBONES.get("dformer_t")()
    assert isinstance(encoder, DFormer)
    shapes = {k: tuple(v.shape) for k, v in encoder.state_dict().items()}
    for key, shape in REFERENCE_T_KEYS.items():
        assert shapes.get(key) == shape, key
    # The encoder's last block has no depth output.
    assert not any(k.startswith(("stages.3.1.attn.proj_e", "stages.3.1.mlp_e2", "stages.3.1.layer_scale_1_e"))
                   for k in shapes)
    assert "stages.3.0.attn.proj_e.weight" in shapes


def test_released_checkpoint_layout_loads_strictly(tmp_path):
    source = BACKBONES.get("dformer_nano")()
    state = {f"backbone.{k}": v for k, v in source.state_dict().items()}
    state["decode_head.conv_seg.weight"] = torch.zeros(5, 8, 1, 1)
    path = tmp_path / "nyu.pth"
    torch.save({"model": state}, path)
    model = _model(pretrained=str(path))
    for k, v in source.state_dict().items():
        assert torch.equal(model.encoder.encoder.state_dict()[k], v), k
    # ImageNet-style file (state_dict_ema wrapper, no prefix).
    torch.save({"state_dict_ema": source.state_dict()}, tmp_path / "imagenet.pth")
    target = BACKBONES.get("dformer_nano")()
    load_dformer_weights(target, tmp_path / "imagenet.pth")
    # A file for another variant is refused with the mismatches listed.
    torch.save(BACKBONES.get("dformer_nano")().state_dict(), tmp_path / "nano.pth")
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_dformer_weights(DFormer(DFORMER_VARIANTS["dformer_t"]), tmp_path / "nano.pth")
