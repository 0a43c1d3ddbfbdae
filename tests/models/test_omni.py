"""OmniSegmentor encoder (``omni_*`` backbones) and the ``omni`` fusion."""

import pytest
import torch

from rgbx.errors import CheckpointError, ConfigError
from rgbx.modalities import get_modality
from rgbx.models import BACKBONES, FUSIONS, create_model
from rgbx.models.backbones.omni import (
    OMNI_VARIANTS,
    OmniEncoder,
    dformer_to_omni_state_dict,
    extend_state_dict,
    load_omni_weights,
    modality_of_key,
    state_dict_modalities,
)
from rgbx.models.weights import load_strict

NANO_DIMS = (16, 32, 64, 128)
REDUCTIONS = (4, 8, 16, 32)
# create_model(backbone=dformer_*, fusion="dformer", head="ham", num_classes=40, head_channels=512), as in
# test_dformer.py: an omni model for {rgb, depth} has exactly DFormer's parameters.
DFORMER_PARAMS = {"t": 6_003_912, "s": 18_747_144, "b": 29_524_840, "l": 39_030_392}
# Parameters one more supplementary modality adds (its stem + one MLP and layer scale per block but the last).
PER_MODALITY = {"t": 489_616, "s": 1_659_808, "b": 2_848_288, "l": 3_894_720}


def _boost(model):
    """Layer scales start at 1e-6 (blocks ≈ identity); raise them so every path matters in comparisons."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layer_scale" in name:
                p.fill_(0.3)
    return model


def _model(modalities=("rgb", "depth", "thermal"), backbone="omni_nano", head="ham", **kwargs):
    torch.manual_seed(0)
    model = create_model(backbone=backbone, fusion="omni", head=head, modalities=list(modalities), num_classes=5,
                         head_channels=32, **kwargs)
    return _boost(model)


def _inputs(modalities, batch=2, size=(64, 64), seed=0):
    gen = torch.Generator().manual_seed(seed)
    return {m: torch.randn(batch, get_modality(m).channels, *size, generator=gen) for m in modalities}


def _encoder_state(model):
    return {k.removeprefix("encoder.encoder."): v for k, v in model.state_dict().items()
            if k.startswith("encoder.encoder.")}


@pytest.mark.parametrize(
    "modalities",
    [("rgb", "depth"), ("rgb", "depth", "thermal"), ("rgb", "depth", "thermal", "lidar", "event")],
    ids=lambda ms: f"{len(ms) - 1}supp",
)
def test_shapes(modalities):
    model = _model(modalities).eval()
    with torch.no_grad():
        out = model(_inputs(modalities, size=(64, 96)))
    assert out.logits.shape == (2, 5, 64, 96)
    assert torch.isfinite(out.logits).all()
    assert [tuple(f.shape) for f in out.fused] == [(2, c, 64 // r, 96 // r) for c, r in zip(NANO_DIMS, REDUCTIONS)]
    assert list(out.features) == list(modalities)
    for m in modalities:
        channels = NANO_DIMS if m == "rgb" else tuple(c // 2 for c in NANO_DIMS)
        assert [tuple(f.shape) for f in out.features[m]] == [
            (2, c, 64 // r, 96 // r) for c, r in zip(channels, REDUCTIONS)
        ]
    assert all(torch.equal(a, b) for a, b in zip(out.features["rgb"], out.fused))


def test_tiny_published_variant_runs():
    model = _model(("rgb", "depth", "event"), backbone="omni_t").eval()
    with torch.no_grad():
        out = model(_inputs(("rgb", "depth", "event"), batch=1))
    assert [f.shape[1] for f in out.fused] == [32, 64, 128, 256]
    assert out.logits.shape == (1, 5, 64, 64)


def test_one_supplementary_modality_is_dformer(tmp_path):
    """With {rgb, depth}, a DFormer checkpoint loads (renamed) and the outputs are the dformer fusion's."""
    torch.manual_seed(0)
    dformer = _boost(create_model(backbone="dformer_nano", fusion="dformer", head="ham", modalities=["rgb", "depth"],
                                  num_classes=5, head_channels=32)).eval()
    path = tmp_path / "dformer.pth"
    torch.save({"model": {f"backbone.{k}": v for k, v in dformer.encoder.encoder.state_dict().items()}}, path)
    omni = _model(("rgb", "depth"), pretrained=str(path)).eval()
    omni.head.load_state_dict(dformer.head.state_dict())
    x = _inputs(("rgb", "depth"))
    with torch.no_grad():
        a, b = dformer(x), omni(x)
    torch.testing.assert_close(a.logits, b.logits, atol=1e-6, rtol=1e-5)
    for fa, fb in zip(a.features["depth"], b.features["depth"]):
        torch.testing.assert_close(fa, fb, atol=1e-6, rtol=1e-5)
    renamed = dformer_to_omni_state_dict(dformer.encoder.encoder.state_dict())
    assert set(renamed) == set(omni.encoder.encoder.state_dict())


def test_parameter_names_are_shared_across_modality_sets():
    small = _model(("rgb", "depth"))
    big = _model(("rgb", "depth", "thermal"))
    s, b = small.state_dict(), big.state_dict()
    assert set(s) <= set(b)
    assert all(s[k].shape == b[k].shape for k in s)
    extra = set(b) - set(s)
    assert extra and all(modality_of_key(k.removeprefix("encoder.encoder.")) == "thermal" for k in extra)
    assert any(".stems.thermal." in k for k in extra) and any(".mlp_e.thermal." in k for k in extra)
    result = big.load_state_dict(s, strict=False)
    assert not result.unexpected_keys
    assert set(result.missing_keys) == {k for k in extra if not k.endswith("num_batches_tracked")}
    # Strictly: the small model's encoder state, extended, fits the big encoder; its shared part is the big one's.
    small_state = _encoder_state(small)
    load_strict(big.encoder.encoder, extend_state_dict(small_state, {"depth": 1, "thermal": 1})[0], "small")
    shared = {k for k in _encoder_state(big) if modality_of_key(k) is None}
    assert shared == {k for k in small_state if modality_of_key(k) is None}


def test_extend_state_dict_initialises_new_modalities_from_a_source():
    pre = _model(("rgb", "depth"))
    state = _encoder_state(pre)
    target = _model(("rgb", "depth", "thermal", "event"))
    new_state, sources = extend_state_dict(state, target.encoder.encoder.supplementary, init_from="depth")
    assert sources == {"thermal": "depth", "event": "depth"}
    load_strict(target.encoder.encoder, new_state, "extended")
    enc = target.encoder.encoder
    for key, value in state.items():
        if modality_of_key(key) == "depth":
            for m in ("depth", "thermal"):
                assert torch.equal(enc.state_dict()[key.replace("depth", m)], value), key
    # The 2-channel event stem: depth's kernels split over the channels, so a constant input gives the same map.
    conv_d, conv_e = enc.stems["depth"][0][0], enc.stems["event"][0][0]
    assert conv_e.weight.shape[1] == 2
    with torch.no_grad():
        torch.testing.assert_close(conv_e(torch.full((1, 2, 8, 8), 0.7)), conv_d(torch.full((1, 1, 8, 8), 0.7)))
    # Modalities the weights have but the target lacks are dropped; unknown sources are refused.
    narrow, sources = extend_state_dict(new_state, {"lidar": 1}, init_from={"lidar": "thermal"})
    assert sources == {"lidar": "thermal"} and state_dict_modalities(narrow) == ["lidar"]
    with pytest.raises(CheckpointError, match="cannot initialise"):
        extend_state_dict(state, {"thermal": 1}, init_from="event")


def test_fine_tuning_from_a_pretrained_file(tmp_path):
    """Pretraining model (rgb + depth + thermal) saved; fine-tuning model (rgb + thermal + event) built from it."""
    from safetensors.torch import save_file

    pre = _model(("rgb", "depth", "thermal"))
    path = tmp_path / "pre.safetensors"
    save_file({k: v.contiguous() for k, v in pre.state_dict().items()}, str(path))
    fine = _model(("rgb", "thermal", "event"), pretrained=str(path), fusion_options={"init_from": "depth"})
    own, src = fine.encoder.encoder.state_dict(), pre.encoder.encoder.state_dict()
    for key, value in own.items():
        m = modality_of_key(key)
        if m is None or m == "thermal":
            assert torch.equal(value, src[key]), key
        elif not key.startswith("stems.event.0.0.weight"):
            assert torch.equal(value, src[key.replace("event", "depth")]), key
    # load_omni_weights on a built model returns what it initialised.
    assert load_omni_weights(fine, path, init_from="thermal") == {"event": "thermal"}


def test_absent_sample_input_reaches_nothing():
    modalities = ("rgb", "depth", "thermal")
    model = _model(modalities).eval()
    x = _inputs(modalities)
    present = {"depth": torch.tensor([True, False]), "rgb": torch.tensor([False, True])}
    y = {m: t.clone() for m, t in x.items()}
    y["depth"][1] = float("nan")
    y["rgb"][0] = 1e6
    with torch.no_grad():
        a, b = model(x, present), model(y, present)
    assert torch.isfinite(b.logits).all()
    assert torch.equal(a.logits, b.logits)
    assert all(torch.equal(p, q) for p, q in zip(a.fused, b.fused))
    for m in modalities:
        assert all(torch.equal(p, q) for p, q in zip(a.features[m], b.features[m]))
    assert all((f[1] == 0).all() for f in b.features["depth"]) and all((f[0] == 0).all() for f in b.features["rgb"])


def test_absent_sample_input_reaches_nothing_in_training_mode():
    modalities = ("rgb", "depth", "thermal")
    model = _model(modalities, head="mlp", drop_path_rate=0.0).train()
    x = _inputs(modalities, batch=3)
    present = {"thermal": torch.tensor([True, False, True])}
    y = {m: t.clone() for m, t in x.items()}
    y["thermal"][1] = 50.0
    a, b = model.encoder(x, present), model.encoder(y, present)
    assert all(torch.equal(p, q) for p, q in zip(a.fused, b.fused))
    b.fused[-1].sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_per_sample_mask_equals_running_the_sample_alone():
    modalities = ("rgb", "depth", "thermal", "event")
    model = _model(modalities).eval()
    x = _inputs(modalities, batch=3)
    present = {"thermal": torch.tensor([True, False, True]), "event": torch.tensor([False, False, True]),
               "depth": torch.tensor([True, False, True])}
    x["thermal"][1] = float("nan")
    with torch.no_grad():
        mixed = model(x, present)
        alone = [
            model({m: x[m][0:1] for m in ("rgb", "depth", "thermal")}),
            model({"rgb": x["rgb"][1:2]}),  # no supplementary modality: zero supplementary term
            model({m: x[m][2:3] for m in modalities}),
        ]
    for i, ref in enumerate(alone):
        torch.testing.assert_close(mixed.logits[i:i + 1], ref.logits, atol=1e-5, rtol=1e-5)
        for p, q in zip(mixed.fused, ref.fused):
            torch.testing.assert_close(p[i:i + 1], q, atol=1e-5, rtol=1e-5)
        for m, maps in ref.features.items():
            for p, q in zip(mixed.features[m], maps):
                torch.testing.assert_close(p[i:i + 1], q, atol=1e-5, rtol=1e-5)


def test_modality_absent_for_the_whole_batch_runs_none_of_its_modules():
    modalities = ("rgb", "depth", "thermal")
    model = _model(modalities).eval()
    calls = []
    for name, module in model.named_modules():
        if ".thermal" in name:
            module.register_forward_hook(lambda *_, n=name: calls.append(n))
    assert sum(1 for n, _ in model.named_modules() if ".thermal" in n) > 0
    x = _inputs(modalities)
    with torch.no_grad():
        passed_absent = model(x, {"thermal": torch.tensor([False, False])})
        not_passed = model({m: x[m] for m in ("rgb", "depth")})
        model({"thermal": x["thermal"]}, {"thermal": torch.tensor([False, False])})  # nothing present at all
    assert not calls
    assert set(passed_absent.features) == {"rgb", "depth"}
    torch.testing.assert_close(passed_absent.logits, not_passed.logits)
    with torch.no_grad():
        model(x)
    assert calls  # the hooks do fire when thermal is present


def test_rgb_absent_and_nothing_present():
    model = _model(("rgb", "depth")).eval()
    x = _inputs(("rgb", "depth"))
    with torch.no_grad():
        no_rgb = model({"depth": x["depth"]})
        zero_rgb = model({"rgb": torch.zeros_like(x["rgb"]), "depth": x["depth"]})
        none = model(x, {"rgb": torch.tensor([True, False]), "depth": torch.tensor([True, False])})
    assert set(no_rgb.features) == {"depth"}
    torch.testing.assert_close(no_rgb.logits, zero_rgb.logits)
    assert all((f[1] == 0).all() for f in none.fused) and all((f[0] != 0).any() for f in none.fused)


def test_attn_impls_agree():
    modalities = ("rgb", "depth", "thermal")
    ref = _model(modalities, attn_impl="sdpa").eval()
    other = _model(modalities, attn_impl="eager").eval()
    other.load_state_dict(ref.state_dict())
    x = _inputs(modalities)
    with torch.no_grad():
        a = ref(x)
        b = other(x)
        torch.testing.assert_close(a.logits, b.logits, atol=1e-5, rtol=1e-5)
        other.set_attn_impl("sdpa")
        torch.testing.assert_close(other(x).logits, a.logits, atol=1e-5, rtol=1e-5)
    assert all(m.attn_impl == "sdpa" for m in other.modules() if hasattr(m, "attn_impl"))


def test_gradients_reach_each_present_modality():
    modalities = ("rgb", "depth", "thermal", "event")
    model = _model(modalities, drop_path_rate=0.2).train()
    x = _inputs(modalities)
    x["event"][0] = float("nan")
    out = model({m: x[m] for m in ("rgb", "depth", "event")}, {"event": torch.tensor([False, True])})
    out.logits.mean().backward()
    enc = model.encoder.encoder
    for m in ("depth", "event"):
        assert enc.stems[m][0][0].weight.grad is not None and enc.stems[m][0][0].weight.grad.abs().sum() > 0, m
        assert enc.stages[0][0].mlp_e[m].fc1.weight.grad.abs().sum() > 0, m
    assert enc.downsample_layers[0][0].weight.grad.abs().sum() > 0
    assert all(p.grad is None for n, p in enc.named_parameters() if modality_of_key(n) == "thermal")
    missing = [n for n, p in model.named_parameters() if p.grad is None and modality_of_key(
        n.removeprefix("encoder.encoder.")) != "thermal"]
    assert not missing, missing
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("size", ["t", "s", "b", "l"])
def test_parameter_counts(size):
    from rgbx.engine.profile import count_parameters

    counts = []
    for modalities in (["rgb", "depth"], ["rgb", "depth", "event"], ["rgb", "depth", "thermal", "lidar", "event"]):
        with torch.device("meta"):
            model = create_model(backbone=f"omni_{size}", fusion="omni", head="ham", modalities=modalities,
                                 num_classes=40, head_channels=512)
        counts.append(count_parameters(model)["total"])
    event_extra = 9 * OMNI_VARIANTS[f"omni_{size}"].dims[0] // 4  # event's stem conv takes 2 channels, not 1
    base, per = DFORMER_PARAMS[size], PER_MODALITY[size]
    assert counts == [base, base + per + event_extra, base + 3 * per + event_extra]


@pytest.mark.parametrize("modalities", [("rgb",), ("depth", "thermal"), ("depth",)])
def test_wrong_modalities(modalities):
    with pytest.raises(ConfigError, match="omni fusion needs 'rgb'"):
        FUSIONS.get("omni")(backbone="omni_nano", modalities=modalities)


def test_other_backbones_and_fusions_are_refused():
    with pytest.raises(ConfigError, match="omni backbone"):
        FUSIONS.get("omni")(backbone="dformer_nano", modalities=("rgb", "depth"))
    with pytest.raises(ConfigError, match="only fusion 'omni'"):
        create_model(backbone="omni_nano", fusion="mean", modalities=["rgb", "depth"], num_classes=3)
    with pytest.raises(ConfigError, match="only fusion 'omni'"):
        create_model(backbone="omni_nano", fusion="cmx", modalities=["rgb", "depth"], num_classes=3)
    encoder = BACKBONES.get("omni_nano")(supplementary={"depth": 1, "hha": 3})
    assert isinstance(encoder, OmniEncoder) and encoder.stems["hha"][0][0].weight.shape[1] == 3
