import pytest

from rgbx.errors import ConfigError
from rgbx.models import ModelConfig


def test_defaults():
    config = ModelConfig()
    assert (config.backbone, config.fusion, config.head) == ("mit_b0", "cmx", "mlp")
    assert config.modalities == ["rgb", "depth"]
    assert (config.num_classes, config.head_channels, config.drop_path_rate, config.attn_impl) == (
        0,
        256,
        0.1,
        "sdpa",
    )
    with pytest.raises(ConfigError, match="num_classes must be a positive integer"):
        config.validate()


def test_round_trip():
    config = ModelConfig(backbone="mit_b2", fusion="mean", modalities=["rgb", "thermal"], num_classes=9)
    data = config.to_dict()
    assert data["modalities"] == ["rgb", "thermal"] and data["num_classes"] == 9
    assert ModelConfig.from_dict(data) == config
    assert ModelConfig.from_dict(data).validate() == config


def test_from_dict_rejects_unknown_keys():
    with pytest.raises(ConfigError) as info:
        ModelConfig.from_dict({"num_classes": 3, "decoder": "mlp"})
    message = str(info.value)
    assert "'decoder'" in message
    for key in ("backbone", "fusion", "head", "modalities", "num_classes", "head_channels", "drop_path_rate"):
        assert key in message


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"num_classes": -1}, "num_classes"),
        ({"num_classes": 2.5}, "num_classes"),
        ({"head_channels": 0}, "head_channels"),
        ({"drop_path_rate": 1.5}, "drop_path_rate"),
        ({"attn_impl": "flash"}, "attn_impl"),
        ({"modalities": []}, "modalities"),
        ({"modalities": ["rgb", "rgb"]}, "more than once: rgb"),
        ({"modalities": ["rgb", "radar"]}, "unknown modality 'radar'"),
        ({"backbone": "vit"}, "unknown backbone 'vit'"),
    ],
)
def test_validate(changes, match):
    with pytest.raises(ConfigError, match=match):
        ModelConfig.from_dict({"num_classes": 4, **changes}).validate()


def test_modalities_string_is_rejected():
    with pytest.raises(ConfigError, match="list of modality names"):
        ModelConfig(modalities="rgb", num_classes=2)


def test_fusion_and_head_options_reach_the_components():
    import rgbx

    model = rgbx.create_model(backbone="mit_nano", fusion="mean", head="ham", modalities=["rgb"], num_classes=3,
                              head_channels=16, head_options={"md_r": 4})
    assert model.config.head_options == {"md_r": 4}
    assert any(getattr(m, "R", None) == 4 or getattr(m, "md_r", None) == 4 for m in model.head.modules())
    with pytest.raises(ConfigError, match="not_an_option"):
        rgbx.create_model(backbone="mit_nano", fusion="mean", modalities=["rgb"], num_classes=3,
                          fusion_options={"not_an_option": 1})
    with pytest.raises(ConfigError, match="set by the model config"):
        rgbx.create_model(backbone="mit_nano", fusion="mean", modalities=["rgb"], num_classes=3,
                          fusion_options={"backbone": "mit_b0"})
