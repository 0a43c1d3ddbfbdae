"""Behaviour every fusion must have, parametrised over fusions and modality subsets."""

import pytest
import torch

from rgbx.errors import ConfigError
from rgbx.models import FUSIONS as FUSION_REGISTRY
from rgbx.models import EncoderOutput
from tests.models.conftest import TINY_BACKBONES

ALL = ("rgb", "depth", "thermal")
SUBSETS = [("rgb",), ("depth",), ("rgb", "depth"), ALL]
FUSIONS = ["mean", "cmx", "cmnext", "omni"]


@pytest.mark.parametrize("fusion", FUSIONS)
@pytest.mark.parametrize("mods", SUBSETS, ids="+".join)
@pytest.mark.parametrize("size", [(64, 64), (48, 80)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_any_subset(fusion, mods, size, tiny_model, make_inputs):
    model = tiny_model(fusion)
    out = model(make_inputs(mods, height=size[0], width=size[1]))
    assert out.logits.shape == (2, 5, *size)
    assert torch.isfinite(out.logits).all()
    assert len(out.fused) == 4
    assert set(out.features) == set(mods)
    widths = model.encoder.feature_info.channels()
    for m in mods:
        # omni carries a half-width state per supplementary modality (DFormer's geometry path): that is its features[m]
        expected = [c // 2 for c in widths] if fusion == "omni" and m != "rgb" else widths
        assert [f.shape[1] for f in out.features[m]] == expected
    out.logits.mean().backward()


@pytest.mark.parametrize("fusion", FUSIONS)
def test_every_parameter_gets_a_gradient(fusion, tiny_model, make_inputs):
    model = tiny_model(fusion).train()
    out = model(make_inputs(ALL))
    out.logits.mean().backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("fusion", FUSIONS)
def test_encoder_output_and_feature_info(fusion, make_inputs):
    encoder = FUSION_REGISTRY.get(fusion)(backbone=TINY_BACKBONES.get(fusion, "mit_nano"), modalities=["rgb", "depth"])
    out = encoder(make_inputs(["rgb", "depth"], height=48, width=80))
    assert isinstance(out, EncoderOutput)
    assert encoder.feature_info.channels() == [16, 32, 64, 128]
    for f, c, r in zip(
        out.fused, encoder.feature_info.channels(), encoder.feature_info.reductions(), strict=True
    ):
        assert f.shape == (2, c, -(-48 // r), -(-80 // r))
    assert set(out.present) == {"rgb", "depth"} and all(p.all() for p in out.present.values())


@pytest.mark.parametrize("fusion", FUSIONS)
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_absent_values_do_not_matter(fusion, train, tiny_model, make_inputs):
    """Sample 1 has no depth: whatever its depth tensor holds, the logits stay the same (BN batch stats too)."""
    model = tiny_model(fusion, drop_path_rate=0.0).train(train)
    inputs = make_inputs(ALL)
    present = {"depth": torch.tensor([True, False]), "thermal": torch.tensor([False, True])}

    def run(depth_fill, thermal_fill):
        x = dict(inputs)
        x["depth"] = x["depth"].clone()
        x["depth"][1] = depth_fill
        x["thermal"] = x["thermal"].clone()
        x["thermal"][0] = thermal_fill
        torch.manual_seed(1)  # same dropout draws in train mode
        with torch.no_grad():
            return model(x, present)

    a, b = run(0.0, 0.0), run(123.0, -7.5)
    torch.testing.assert_close(a.logits, b.logits)
    for fa, fb in zip(a.fused, b.fused, strict=True):
        torch.testing.assert_close(fa, fb)
    assert (a.features["depth"][0][1] == 0).all() and (a.features["thermal"][-1][0] == 0).all()


@pytest.mark.parametrize("fusion", FUSIONS)
def test_an_absent_samples_nan_reaches_no_gradient(fusion, tiny_model, make_inputs):
    """mean and CMX fed an absent sample's input to the sensor's stem in training: NaN there made NaN gradients in
    the stems (and, with a BatchNorm backbone, NaN statistics: next test)."""
    model = tiny_model(fusion, drop_path_rate=0.0).train()
    inputs = make_inputs(ALL)
    inputs["depth"] = inputs["depth"].clone()
    inputs["depth"][1] = float("nan")
    model(inputs, {"depth": torch.tensor([True, False])}).logits.pow(2).mean().backward()
    bad = [n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    assert bad == []


@pytest.mark.parametrize("fusion", ["mean", "cmx"])
def test_an_absent_samples_input_reaches_no_batchnorm_statistic(fusion):
    """A BatchNorm backbone (EfficientNet-Lite0) in training: NaN in an absent sample's input made every logit and
    the running statistics NaN, so the model stayed broken in eval mode."""
    from rgbx.models import create_model

    torch.manual_seed(0)
    model = create_model(backbone="efficientnet_lite0", fusion=fusion, modalities=["rgb", "depth"], num_classes=3,
                         head_channels=16).train()
    x = {"rgb": torch.randn(3, 3, 32, 32), "depth": torch.randn(3, 1, 32, 32)}
    x["depth"][1] = float("nan")
    assert torch.isfinite(model(x, {"depth": torch.tensor([True, False, True])}).logits).all()
    assert all(torch.isfinite(b).all() for b in model.buffers() if b.is_floating_point())


@pytest.mark.parametrize("fusion", FUSIONS)
def test_modality_absent_for_whole_batch_is_not_computed(fusion, tiny_model, make_inputs):
    model = tiny_model(fusion).eval()
    inputs = make_inputs(ALL)
    with torch.no_grad():
        masked = model(inputs, {"thermal": torch.tensor([False, False])})
        without = model({m: inputs[m] for m in ("rgb", "depth")})
    assert set(masked.features) == {"rgb", "depth"}
    torch.testing.assert_close(masked.logits, without.logits)


@pytest.mark.parametrize("fusion", FUSIONS)
def test_sample_without_any_modality_is_finite(fusion, tiny_model, make_inputs):
    model = tiny_model(fusion).eval()
    present = {m: torch.tensor([True, False]) for m in ALL}
    with torch.no_grad():
        out = model(make_inputs(ALL), present)
        nothing = model(make_inputs(ALL), {m: torch.tensor([False, False]) for m in ALL})
    assert torch.isfinite(out.logits).all() and torch.isfinite(nothing.logits).all()


@pytest.mark.parametrize("fusion", FUSIONS)
def test_wrong_channel_count(fusion, tiny_model, make_inputs):
    model = tiny_model(fusion)
    inputs = make_inputs(["rgb"])
    inputs["depth"] = torch.randn(2, 3, 64, 64)
    with pytest.raises(ConfigError, match=r"'depth'.*\(2, 3, 64, 64\).*\(B, 1, H, W\)"):
        model(inputs)


@pytest.mark.parametrize("fusion", FUSIONS)
def test_unknown_modality(fusion, tiny_model, make_inputs):
    model = tiny_model(fusion, modalities=["rgb", "depth"])
    inputs = make_inputs(["rgb", "thermal"])
    with pytest.raises(ConfigError, match="'thermal'.*rgb, depth"):
        model(inputs)
    with pytest.raises(ConfigError, match="'lidar'"):
        model(make_inputs(["rgb"]), {"lidar": torch.tensor([True, True])})


@pytest.mark.parametrize("fusion", FUSIONS)
def test_bad_inputs(fusion, tiny_model, make_inputs):
    model = tiny_model(fusion, modalities=["rgb", "depth"])
    with pytest.raises(ConfigError, match="at least one"):
        model({})
    with pytest.raises(ConfigError, match="'depth'.*same batch size"):
        model({"rgb": torch.randn(2, 3, 64, 64), "depth": torch.randn(2, 1, 32, 64)})
    with pytest.raises(ConfigError, match=r"present mask for modality 'rgb'.*\(2,\)"):
        model(make_inputs(["rgb"]), {"rgb": torch.tensor([True])})
    with pytest.raises(ConfigError, match=r"present mask for modality 'rgb': values \[0.3, 1.0\]; expected True"):
        model(make_inputs(["rgb"]), {"rgb": torch.tensor([0.3, 1.0], dtype=torch.float64)})  # was read as present
    model.eval()
    assert torch.equal(model(make_inputs(["rgb"]), {"rgb": torch.tensor([1, 0])}).logits,
                       model(make_inputs(["rgb"]), {"rgb": torch.tensor([True, False])}).logits)
    with pytest.raises(ConfigError, match="'rgb'.*expected"):
        model({"rgb": torch.randn(3, 64, 64)})
    # an image's bytes, not normalised; float64 into float32 weights (a raw torch dtype error otherwise)
    with pytest.raises(ConfigError, match=r"'rgb': input of dtype torch.uint8; the model takes floating-point"):
        model({"rgb": torch.zeros(2, 3, 64, 64, dtype=torch.uint8)})
    with pytest.raises(ConfigError, match=r"'depth': input of dtype torch.float64 for a model with torch.float32"):
        model({"rgb": torch.randn(2, 3, 64, 64), "depth": torch.randn(2, 1, 64, 64, dtype=torch.float64)})
    # half precision into float32 weights outside autocast (torch's "Input type (c10::Half) and bias type")
    with pytest.raises(ConfigError, match=r"'rgb': input of dtype torch.float16 for a model with torch.float32.*"
                                          r"torch.autocast"):
        model({"rgb": torch.randn(2, 3, 64, 64, dtype=torch.float16)})


def test_backbones_a_fusion_cannot_use_are_refused_at_build():
    """Were built and then failed with a raw error: KTB on a CNN (AttributeError 'patch_embed'), a timm ViT (timm's
    "Input height (33) doesn't match model (224)" at the first forward)."""
    from rgbx.models import create_model

    for backbone in ("efficientnet_lite0", "timm:resnet10t"):
        with pytest.raises(ConfigError, match=f"ktb fusion needs a MiT-style backbone.*got '{backbone}'"):
            create_model(backbone=backbone, fusion="ktb", modalities=["rgb", "depth"], num_classes=3)
    with pytest.raises(ConfigError, match=r"'vit_tiny_patch16_224'.*strides \[16, 16, 16, 16\]; rgbx takes CNNs"):
        create_model(backbone="timm:vit_tiny_patch16_224", fusion="mean", modalities=["rgb"], num_classes=3)


@pytest.mark.parametrize("fusion", FUSIONS)
def test_unknown_modality_at_build(fusion):
    with pytest.raises(ConfigError, match="'sonar'"):
        FUSION_REGISTRY.get(fusion)(backbone=TINY_BACKBONES.get(fusion, "mit_nano"), modalities=["rgb", "sonar"])
    # omni takes only its own backbone family, and its error names that family instead of the whole registry
    expected = (r"needs an omni backbone \(omni_t.*got 'resnet'" if fusion == "omni"
                else "unknown backbone 'resnet'.*mit_b0")
    with pytest.raises(ConfigError, match=expected):
        FUSION_REGISTRY.get(fusion)(backbone="resnet", modalities=["rgb", "depth"])


@pytest.mark.parametrize("fusion", FUSIONS)
def test_absent_per_sample_equals_not_passed(fusion, tiny_model, make_inputs):
    """A sample marked absent for depth gets what the model gives that sample without depth at all."""
    model = tiny_model(fusion).eval()
    inputs = make_inputs(ALL)
    present = {"depth": torch.tensor([True, False])}
    with torch.no_grad():
        mixed = model(inputs, present)
        without = model({m: inputs[m][1:] for m in ("rgb", "thermal")})
        full = model({m: inputs[m][:1] for m in ALL})
    torch.testing.assert_close(mixed.logits[1:], without.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mixed.logits[:1], full.logits, atol=1e-5, rtol=1e-5)
