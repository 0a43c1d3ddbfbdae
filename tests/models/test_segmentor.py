import pytest
import torch

from rgbx.errors import ConfigError
from rgbx.models import ModelConfig, Segmentor, SegOutput, create_model, list_models


def test_list_models():
    names = list_models()
    assert set(names) == {"backbones", "fusions", "heads"}
    assert {"mit_b0", "mit_b1", "mit_b2", "mit_b3", "mit_b4", "mit_b5", "mit_nano"} <= set(names["backbones"])
    assert {"cmx", "mean"} <= set(names["fusions"])
    assert "mlp" in names["heads"]


def test_create_model_overrides_and_attributes(make_inputs):
    model = create_model(backbone="mit_nano", fusion="mean", modalities=["rgb", "depth"], num_classes=10)
    assert isinstance(model, Segmentor)
    assert model.config == ModelConfig(
        backbone="mit_nano", fusion="mean", modalities=["rgb", "depth"], num_classes=10
    )
    assert model.modalities == ("rgb", "depth")
    assert model.num_classes == 10
    base = ModelConfig(backbone="mit_nano", num_classes=3)
    model = create_model(base, modalities=["rgb", "thermal"])
    assert model.config.fusion == "cmx" and model.config.modalities == ["rgb", "thermal"]
    out = model(make_inputs(["rgb", "thermal"], height=48, width=80))
    assert isinstance(out, SegOutput)
    assert out.logits.shape == (2, 3, 48, 80)


def test_unknown_names_list_registered():
    with pytest.raises(ConfigError, match="unknown backbone 'mit_b9'.*mit_b0.*mit_nano"):
        create_model(backbone="mit_b9", num_classes=2)
    with pytest.raises(ConfigError, match="unknown fusion 'concat'.*cmx.*mean"):
        create_model(backbone="mit_nano", fusion="concat", num_classes=2)
    with pytest.raises(ConfigError, match="unknown head 'upernet'.*mlp"):
        create_model(backbone="mit_nano", head="upernet", num_classes=2)
    with pytest.raises(ConfigError, match="unknown modality 'sonar'"):
        create_model(backbone="mit_nano", modalities=["rgb", "sonar"], num_classes=2)
    with pytest.raises(ConfigError, match="'num_class'.*valid keys: backbone"):
        create_model(backbone="mit_nano", num_class=2)


def test_num_classes_required():
    with pytest.raises(ConfigError, match="num_classes"):
        create_model(backbone="mit_nano")


def test_forward_subset_and_unknown_key(tiny_model, make_inputs):
    model = tiny_model("cmx", modalities=["rgb", "depth"])
    out = model(make_inputs(["depth"], height=40, width=56))
    assert out.logits.shape == (2, 5, 40, 56)
    assert set(out.features) == {"depth"} and set(out.present) == {"depth"}
    with pytest.raises(ConfigError, match="'event'.*rgb, depth"):
        model(make_inputs(["rgb", "event"]))


def test_present_none_means_all_present(tiny_model, make_inputs):
    model = tiny_model("cmx", modalities=["rgb", "depth"]).eval()
    inputs = make_inputs(["rgb", "depth"])
    ones = {m: torch.ones(2, dtype=torch.bool) for m in inputs}
    with torch.no_grad():
        torch.testing.assert_close(model(inputs).logits, model(inputs, ones).logits)
        torch.testing.assert_close(model(inputs).logits, model(inputs, {"rgb": ones["rgb"]}).logits)


@pytest.mark.parametrize("fusion", ["mean", "cmx"])
def test_sdpa_and_eager_models_agree(fusion, tiny_model, make_inputs):
    model = tiny_model(fusion).eval()
    inputs = make_inputs(["rgb", "depth", "thermal"], height=48, width=80)
    with torch.no_grad():
        sdpa = model(inputs).logits
        model.set_attn_impl("eager")
        eager = model(inputs).logits
    assert model.config.attn_impl == "eager"
    torch.testing.assert_close(sdpa, eager, atol=1e-5, rtol=1e-5)
    with pytest.raises(ConfigError, match="attn_impl"):
        model.set_attn_impl("flash")


def test_cmx_b0_parameter_count():
    with torch.device("meta"):
        model = create_model(backbone="mit_b0", fusion="cmx", modalities=["rgb", "depth"], num_classes=40)
    params = sum(p.numel() for p in model.parameters())
    assert 11.0e6 < params < 11.4e6, params
