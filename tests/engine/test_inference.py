"""Multi-scale + flip test-time inference."""

from __future__ import annotations

import torch

import rgbx
from rgbx.engine.inference import predict_logits


def _model():
    torch.manual_seed(0)
    return rgbx.create_model(backbone="mit_nano", fusion="cmx", modalities=["rgb", "lidar"], num_classes=3,
                             head_channels=16).eval()


def _inputs():
    lidar = torch.zeros(2, 1, 32, 48)
    lidar[:, :, ::4, ::3] = 1.5
    return {"rgb": torch.randn(2, 3, 32, 48), "lidar": lidar}


@torch.no_grad()
def test_single_scale_is_the_plain_forward():
    model, x = _model(), _inputs()
    torch.testing.assert_close(predict_logits(model, x), model(x).logits)


@torch.no_grad()
def test_flip_averages_the_flipped_pass():
    model, x = _model(), _inputs()
    plain = model(x).logits.softmax(1)
    flipped = model({m: v.flip(-1) for m, v in x.items()}).logits.flip(-1).softmax(1)
    torch.testing.assert_close(predict_logits(model, x, flip=True), (plain + flipped) / 2)


@torch.no_grad()
def test_multiscale_output_at_input_size_and_a_distribution():
    model, x = _model(), _inputs()
    probs = predict_logits(model, x, scales=(0.5, 1.0, 1.5), flip=True)
    assert probs.shape == (2, 3, 32, 48)
    torch.testing.assert_close(probs.sum(1), torch.ones(2, 32, 48))
