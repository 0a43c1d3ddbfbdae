"""Vector scaling per sensor set inside the model: the identity until set, each sample's own set's scale and bias
(per-sample presence included), and the model config that rebuilds it from a file."""

from __future__ import annotations

import pytest
import torch

import rgbx
from rgbx.errors import ConfigError
from rgbx.models.model_file import save_model
from rgbx.models.sensor_set_scaling import SensorSetScaling


def _model():
    torch.manual_seed(0)
    return rgbx.create_model(backbone="mit_nano", fusion="cmx", modalities=["rgb", "depth", "thermal"],
                             num_classes=3, head_channels=16).eval()


def _inputs():
    gen = torch.Generator().manual_seed(1)
    return {"rgb": torch.randn(2, 3, 32, 40, generator=gen), "depth": torch.randn(2, 1, 32, 40, generator=gen),
            "thermal": torch.randn(2, 1, 32, 40, generator=gen)}


def test_rows_follow_the_sensor_bits_and_bad_sets_are_named():
    scaling = SensorSetScaling(["rgb", "depth", "thermal"], 4)
    assert scaling.scale.shape == (8, 4) and scaling.bias.shape == (8, 4)
    assert scaling.row(["rgb"]) == 1 and scaling.row(["thermal", "rgb"]) == 5 and scaling.row(["depth"]) == 2
    present = {"rgb": torch.tensor([True, True, False]), "thermal": torch.tensor([True, False, True])}
    assert scaling.rows(present, 3, torch.device("cpu")).tolist() == [5, 1, 4]  # depth not passed: absent
    with pytest.raises(ConfigError, match=r"sensor set \['lidar'\]: expected a non-empty subset"):
        scaling.row(["lidar"])
    with pytest.raises(ConfigError, match=r"expected a scale and a bias of shape \(4,\), got \(3,\)"):
        scaling.set(["rgb"], torch.ones(3), torch.zeros(4))


def test_each_sample_gets_its_own_sensor_sets_scale_and_bias():
    model, x = _model(), _inputs()
    with torch.no_grad():
        plain = {s: model({m: x[m] for m in s}).logits for s in (("rgb", "depth", "thermal"), ("rgb",))}
        scaling = model.add_vector_scaling()
        assert model.config.vector_scaling and model.add_vector_scaling() is scaling  # added once
        assert torch.equal(model(x).logits, plain[("rgb", "depth", "thermal")])  # the identity until set
        full = (torch.tensor([2.0, 0.5, 1.0]), torch.tensor([0.0, 1.0, -1.0]))
        rgb = (torch.tensor([1.0, 3.0, 0.25]), torch.tensor([4.0, 0.0, 0.0]))
        scaling.set(["rgb", "depth", "thermal"], *full)
        scaling.set(["rgb"], *rgb)
        both = model(x).logits
        assert torch.allclose(both, plain[("rgb", "depth", "thermal")] * full[0].view(3, 1, 1)
                              + full[1].view(3, 1, 1), atol=1e-5)
        alone = model({"rgb": x["rgb"]}).logits
        assert torch.allclose(alone, plain[("rgb",)] * rgb[0].view(3, 1, 1) + rgb[1].view(3, 1, 1), atol=1e-5)
        # per-sample presence: sample 1 lost depth and thermal, so it gets the rgb set's pair
        mixed = model(x, {"depth": torch.tensor([True, False]), "thermal": torch.tensor([True, False])}).logits
    assert torch.allclose(mixed[0], both[0], atol=1e-5) and torch.allclose(mixed[1], alone[1], atol=1e-5)
    assert (both.argmax(1) != plain[("rgb", "depth", "thermal")].argmax(1)).any()  # unlike a temperature


def test_the_right_row_when_a_fusion_reports_no_presence_masks():
    """A fusion of one's own may leave its output's ``present`` empty: the rows then come from the call's masks."""
    import dataclasses

    model, x = _model(), _inputs()
    model.add_vector_scaling().set(["rgb"], torch.ones(3), torch.tensor([5.0, 0.0, 0.0]))
    masks = {"depth": torch.tensor([True, False]), "thermal": torch.tensor([True, False])}
    with torch.no_grad():
        expected = model(x, masks).logits
        reported = model.encoder.forward
        model.encoder.forward = lambda inputs, present=None: dataclasses.replace(reported(inputs, present), present={})
        assert torch.equal(model(x, masks).logits, expected)


def test_a_saved_model_rebuilds_its_vector_scaling(tmp_path):
    model = _model()
    model.add_vector_scaling().set(["depth"], torch.tensor([1.5, 1.0, 0.5]), torch.tensor([0.0, 2.0, 0.0]))
    path = save_model(tmp_path / "m.safetensors", model)
    loaded, info = rgbx.load_model(path)
    assert info["model"]["vector_scaling"] is True and loaded.set_scaling is not None
    assert torch.equal(loaded.set_scaling.scale, model.set_scaling.scale)
    assert torch.equal(loaded.set_scaling.bias, model.set_scaling.bias)
    with torch.no_grad():
        x = _inputs()
        assert torch.equal(loaded({"depth": x["depth"]}).logits, model({"depth": x["depth"]}).logits)
    assert rgbx.create_model(backbone="mit_nano", fusion="mean", modalities=["rgb"], num_classes=2).set_scaling is None
    with pytest.raises(ConfigError, match="vector_scaling must be true or false, got 'yes'"):
        rgbx.create_model(backbone="mit_nano", fusion="mean", modalities=["rgb"], num_classes=2, vector_scaling="yes")
