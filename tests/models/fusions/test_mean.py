import torch

from rgbx.models import FUSIONS

ALL = ("rgb", "depth", "thermal")


def test_shared_weights_and_own_stems():
    encoder = FUSIONS.get("mean")(backbone="mit_nano", modalities=ALL)
    assert set(encoder.stems) == set(ALL)
    assert encoder.stems["rgb"].proj.in_channels == 3 and encoder.stems["depth"].proj.in_channels == 1
    assert encoder.backbone.stages[0].patch_embed is None  # no unused stem in the shared encoder


def test_single_modality_sample_equals_running_it_alone(tiny_model, make_inputs):
    model = tiny_model("mean").eval()
    inputs = make_inputs(ALL)
    present = {"rgb": torch.tensor([True, False]), "thermal": torch.tensor([True, False])}
    with torch.no_grad():
        mixed = model(inputs, present)
        alone = model({"depth": inputs["depth"][1:]})
        both = model({m: inputs[m][:1] for m in ALL})
    torch.testing.assert_close(mixed.logits[1:], alone.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mixed.logits[:1], both.logits, atol=1e-5, rtol=1e-5)


def test_fused_is_per_sample_mean(make_inputs):
    encoder = FUSIONS.get("mean")(backbone="mit_nano", modalities=ALL).eval()
    inputs = make_inputs(ALL)
    present = {"rgb": torch.tensor([True, False]), "depth": torch.tensor([True, True])}
    with torch.no_grad():
        out = encoder(inputs, present)
    for i, fused in enumerate(out.fused):
        rgb, depth, thermal = (out.features[m][i] for m in ALL)
        torch.testing.assert_close(fused[0], (rgb[0] + depth[0] + thermal[0]) / 3)
        torch.testing.assert_close(fused[1], (depth[1] + thermal[1]) / 2)
        assert (rgb[1] == 0).all()
