"""DFormerv2 encoder (``dformerv2_*`` backbones), the ``dformerv2`` fusion and the ``dformerv2`` checkpoint layout."""

import pytest
import torch

from rgbx.errors import CheckpointError, ConfigError
from rgbx.models import BACKBONES, create_model
from rgbx.models.backbones.dformerv2 import DFORMERV2_VARIANTS, DFormerv2, load_dformerv2_weights
from rgbx.models.convert import (
    convert_checkpoint,
    detect_layout,
    infer_model_options,
    reference_input_encoding,
)

# Parameters of the original DFormerv2_{S,B,L} encoder alone and with its LightHamHead (NYU configs:
# channels 512 / 512 / 1024, ham_channels 512, 40 classes), counted on the reference code by
# benchmarks/parity_dformerv2.py (torch 2.14, CPU); rgbx's counts must be equal.
REFERENCE_ENCODER_PARAMS = {"dformerv2_s": 25_416_730, "dformerv2_b": 52_604_610, "dformerv2_l": 93_784_146}
REFERENCE_TOTAL_PARAMS = {"dformerv2_s": 26_686_018, "dformerv2_b": 53_923_050, "dformerv2_l": 95_550_074}
HEAD_CHANNELS = {"dformerv2_s": 512, "dformerv2_b": 512, "dformerv2_l": 1024}

# Names and shapes of a few tensors of the original DFormerv2_S encoder (models/encoders/DFormerv2.py, state_dict()).
REFERENCE_S_KEYS = {
    "patch_embed.proj.0.weight": (32, 3, 3, 3),
    "patch_embed.proj.4.running_var": (32,),
    "patch_embed.proj.9.weight": (64, 64, 3, 3),
    "patch_embed.proj.10.weight": (64,),
    "layers.0.blocks.0.cnn_pos_encode.dwconv.weight": (64, 1, 3, 3),
    "layers.0.blocks.0.Attention.q_proj.weight": (64, 64),
    "layers.0.blocks.0.Attention.lepe.dwconv.weight": (64, 1, 5, 5),
    "layers.0.blocks.0.Geo.weight": (2, 1, 1, 1),
    "layers.0.blocks.0.Geo.angle": (16,),
    "layers.0.blocks.0.Geo.decay": (4,),
    "layers.0.blocks.0.ffn.fc1.weight": (256, 64),
    "layers.0.blocks.0.ffn.dwconv.dwconv.weight": (256, 1, 3, 3),
    "layers.0.downsample.reduction.weight": (128, 64, 3, 3),
    "layers.0.downsample.norm.running_mean": (128,),
    "layers.2.blocks.17.ffn.fc2.weight": (256, 768),
    "layers.3.blocks.3.Attention.out_proj.weight": (512, 512),
    "layers.3.blocks.3.Geo.decay": (16,),
    "extra_norms.0.weight": (128,),
    "extra_norms.2.bias": (512,),
}


def _model(seed=0, **kwargs):
    torch.manual_seed(seed)
    return create_model(backbone="dformerv2_nano", fusion="dformerv2", head="ham", modalities=["rgb", "depth"],
                        num_classes=5, head_channels=32, **kwargs)


def _inputs(batch=2, size=(32, 48), seed=0):
    gen = torch.Generator().manual_seed(seed)
    return {"rgb": torch.randn(batch, 3, *size, generator=gen), "depth": torch.randn(batch, 1, *size, generator=gen)}


def _randomized(model, seed=1):
    """Random values for every float tensor except the priors' computed buffers, with layer scales and prior
    weights away from their initial values, so that every path contributes."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point() and not name.endswith((".angle", ".decay", "running_var")):
                t.copy_(torch.randn(t.shape, generator=gen) * (0.2 if t.dim() <= 1 else 1 / t[0].numel() ** 0.5))
    return model


def test_forward_backward_and_shapes():
    model = _model().train()
    out = model(_inputs())
    assert out.logits.shape == (2, 5, 32, 48)
    assert [tuple(f.shape[1:]) for f in out.fused] == [(16, 8, 12), (32, 4, 6), (64, 2, 3), (128, 1, 2)]
    assert set(out.features) == {"rgb"}
    out.logits.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_depth_shapes_the_attention():
    model = _randomized(_model()).eval()
    with torch.no_grad():  # every prior weighs depth distance 4× the positional one
        for name, p in model.named_parameters():
            if name.endswith("Geo.weight"):
                p.copy_(torch.tensor([1.0, 4.0]).view(2, 1, 1, 1))
    x = _inputs(batch=1)
    with torch.no_grad():
        a = model.encoder(x).fused
        b = model.encoder({"rgb": x["rgb"], "depth": x["depth"].flip(-1)}).fused
    for fa, fb in zip(a, b, strict=True):
        assert (fa - fb).abs().max() > 1e-3 * fa.abs().max()  # float noise: ~1e-7


def test_per_sample_absent_depth_equals_running_without_depth():
    model = _randomized(_model()).eval()
    x = _inputs()
    x["depth"][1] = float("nan")  # what an absent sample holds must not reach anything
    with torch.no_grad():
        mixed = model(x, present={"depth": torch.tensor([True, False])})
        alone = model({"rgb": x["rgb"][1:]})
        with_depth = model({"rgb": x["rgb"][:1], "depth": x["depth"][:1]})
        # a constant depth map, whatever its value, leaves only the positional decay: the same as no depth
        constant = model({"rgb": x["rgb"][1:], "depth": torch.full_like(x["depth"][1:], 3.7)})
    assert torch.isfinite(mixed.logits).all()
    torch.testing.assert_close(mixed.logits[1:], alone.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mixed.logits[:1], with_depth.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(constant.logits, alone.logits, atol=1e-5, rtol=1e-5)


def test_hha_feeds_channel_zero():
    torch.manual_seed(0)
    model = create_model(backbone="dformerv2_nano", fusion="dformerv2", head="ham", modalities=["hha", "rgb"],
                         num_classes=5, head_channels=32).eval()
    x = _inputs(batch=1)
    hha = torch.cat([x["depth"], torch.randn(1, 2, 32, 48)], dim=1)
    depth_model = _model().eval()
    depth_model.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(model({"rgb": x["rgb"], "hha": hha}).logits, depth_model(x).logits)


def test_geometry_prior_matches_its_definition():
    """The priors against the module docstring's formulas, written out element by element."""
    from rgbx.models.backbones.dformerv2 import GeometryPrior

    prior = GeometryPrior(dim=16, num_heads=2, decay_init=2, heads_range=4)
    with torch.no_grad():
        prior.weight.copy_(torch.tensor([0.7, -1.3]).view(2, 1, 1, 1))
    w0, w1 = 0.7, -1.3
    z = torch.randn(1, 3, 4, generator=torch.Generator().manual_seed(0))
    lam = [torch.log(torch.tensor(1 - 2 ** (-2 - 4 * n / 2))).item() for n in range(2)]
    full, row, col = prior.full_bias(z), prior.row_bias(z), prior.column_bias(z)
    assert full.shape == (1, 2, 12, 12) and row.shape == (1, 3, 2, 4, 4) and col.shape == (1, 4, 2, 3, 3)
    for n in range(2):
        for p in range(12):
            for q in range(12):
                (h, w), (h2, w2) = divmod(p, 4), divmod(q, 4)
                want = lam[n] * (w0 * (abs(h - h2) + abs(w - w2)) + w1 * abs(z[0, h, w] - z[0, h2, w2]).item())
                assert abs(full[0, n, p, q].item() - want) < 1e-5
        for h in range(3):
            for w in range(4):
                for w2 in range(4):
                    want = lam[n] * (w0 * abs(w - w2) + w1 * abs(z[0, h, w] - z[0, h, w2]).item())
                    assert abs(row[0, h, n, w, w2].item() - want) < 1e-5
                for h2 in range(3):
                    want = lam[n] * (w0 * abs(h - h2) + w1 * abs(z[0, h, w] - z[0, h2, w]).item())
                    assert abs(col[0, w, n, h, h2].item() - want) < 1e-5
    sin, cos = prior.rotary(3, 4)  # angle of (i, j) = (4i + j) · 10000^(-t), t over the 4 frequencies, pairwise
    freqs = 10000 ** -torch.linspace(0, 1, 4)
    torch.testing.assert_close(sin[2, 1], torch.sin(9 * freqs).repeat_interleave(2))
    torch.testing.assert_close(cos[1, 3], torch.cos(7 * freqs).repeat_interleave(2))


def test_attn_impls_agree():
    ref = _randomized(_model()).eval()
    other = _model(attn_impl="eager").eval()
    other.load_state_dict(ref.state_dict())
    x = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(ref(x).logits, other(x).logits, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("modalities", [["rgb"], ["rgb", "depth", "hha"], ["depth", "hha"]])
def test_wrong_modalities(modalities):
    with pytest.raises(ConfigError, match="dformerv2 fusion"):
        create_model(backbone="dformerv2_nano", fusion="dformerv2", head="ham", modalities=modalities, num_classes=5)


def test_other_backbones_are_refused():
    with pytest.raises(ConfigError, match="DFormerv2 backbone"):
        create_model(backbone="dformer_nano", fusion="dformerv2", head="ham", modalities=["rgb", "depth"],
                     num_classes=5)
    with pytest.raises(ConfigError, match="only fusion 'dformerv2'"):
        BACKBONES.get("dformerv2_nano")(in_channels=4)


@pytest.mark.parametrize("name", list(REFERENCE_TOTAL_PARAMS))
def test_parameter_counts_equal_the_reference(name):
    with torch.device("meta"):
        model = create_model(backbone=name, fusion="dformerv2", head="ham", modalities=["rgb", "depth"],
                             num_classes=40, head_channels=HEAD_CHANNELS[name], head_options={"ham_channels": 512})
    assert sum(p.numel() for p in model.encoder.parameters()) == REFERENCE_ENCODER_PARAMS[name]
    assert sum(p.numel() for p in model.parameters()) == REFERENCE_TOTAL_PARAMS[name]


def test_reference_key_layout():
    with torch.device("meta"):
        encoder = BACKBONES.get("dformerv2_s")()
    assert isinstance(encoder, DFormerv2)
    shapes = {k: tuple(v.shape) for k, v in encoder.state_dict().items()}
    for key, shape in REFERENCE_S_KEYS.items():
        assert shapes.get(key) == shape, key
    assert not any("gamma" in k for k in shapes)  # S has no layer scale; B and L in stages 3-4
    with torch.device("meta"):
        base = {k for k in BACKBONES.get("dformerv2_b")().state_dict() if "gamma_1" in k}
    assert base and all(k.startswith(("layers.2.", "layers.3.")) for k in base)


def _reference_layout(model) -> dict[str, torch.Tensor]:
    """A released segmentation checkpoint's layout, made from an rgbx model by the inverse of the conversion
    (``encoder.encoder.`` → ``backbone.``, ``head.`` → ``decode_head.``)."""
    state = {}
    for key, value in model.state_dict().items():
        if key.startswith("encoder.encoder."):
            state["backbone." + key.removeprefix("encoder.encoder.")] = value.clone()
        elif key.startswith("head."):
            state["decode_head." + key.removeprefix("head.")] = value.clone()
    return state


def test_reference_layout_converts_to_identical_logits():
    source = _randomized(_model(head_options={"bn_eps": 1e-3})).eval()
    state = _reference_layout(source)
    assert detect_layout(state) == "dformerv2"
    options = infer_model_options(state, "dformerv2")
    assert options == {"fusion": "dformerv2", "head": "ham", "backbone": "dformerv2_nano", "num_classes": 5,
                       "head_channels": 32, "head_options": {"bn_eps": 1e-3}}
    target = _model(seed=5, head_options={"bn_eps": 1e-3}).eval()
    report = convert_checkpoint({"model": state}, target)
    assert report.layout == "dformerv2" and set(report.mapping) == set(target.state_dict())
    assert not report.notes or not any("eps" in n for n in report.notes)
    x = _inputs()
    with torch.no_grad():
        assert torch.equal(source(x).logits, target(x).logits)
    with pytest.raises(CheckpointError, match="fusion 'dformerv2'"):
        convert_checkpoint(state, create_model(backbone="dformer_nano", fusion="dformer", head="ham",
                                               modalities=["rgb", "depth"], num_classes=5, head_channels=32))


def test_layouts_of_v1_and_v2_are_told_apart_and_share_the_input_encoding():
    with torch.device("meta"):
        v1 = {f"backbone.{k}": v for k, v in BACKBONES.get("dformer_nano")().state_dict().items()}
    assert detect_layout(v1) == "dformer"
    assert reference_input_encoding("dformerv2", ["rgb", "depth"]) == reference_input_encoding(
        "dformer", ["rgb", "depth"])
    assert reference_input_encoding("dformerv2", ["rgb", "depth"], 40)[0]["rgb"]["source"] == [2, 1, 0]
    # except on SUN RGB-D (37 classes), where DFormer's loader reads the image red first for DFormerv2
    # (RGBXDataset: rgb_mode "RGB"; checked on its ValPre output: 7.2e-7 from rgbx's normalised RGB)
    encoding, notes = reference_input_encoding("dformerv2", ["rgb", "depth"], 37)
    assert "rgb" not in encoding and encoding["depth"] == reference_input_encoding("dformer", ["depth"])[0]["depth"]
    assert any("red first" in n for n in notes)
    assert reference_input_encoding("dformer", ["rgb", "depth"], 37)[0]["rgb"]["source"] == [2, 1, 0]  # v1: blue


def test_ham_channels_read_off_a_1024_channel_head():
    state = {"backbone.layers.0.blocks.0.Geo.weight": torch.ones(2, 1, 1, 1),
             "decode_head.conv_seg.weight": torch.zeros(40, 1024, 1, 1),
             "decode_head.squeeze.conv.weight": torch.zeros(512, 1312, 1, 1)}
    options = infer_model_options(state, detect_layout(state))
    assert options["head_channels"] == 1024 and options["head_options"] == {"bn_eps": 1e-3, "ham_channels": 512}


def test_released_files_load_strictly(tmp_path):
    source = _randomized(_model()).encoder.encoder
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in source.state_dict().items()}}, tmp_path / "nyu.pth")
    model = _model(seed=3, pretrained=str(tmp_path / "nyu.pth"))
    for k, v in source.state_dict().items():
        assert torch.equal(model.encoder.encoder.state_dict()[k], v), k
    torch.save(BACKBONES.get("dformerv2_nano")().state_dict(), tmp_path / "nano.pth")
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_dformerv2_weights(DFormerv2(DFORMERV2_VARIANTS["dformerv2_s"]), tmp_path / "nano.pth")
