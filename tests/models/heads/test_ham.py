import pytest
import torch

from rgbx.models import HEADS, create_model
from rgbx.models.heads.ham import NMF2D, LightHamHead, nmf_update_bases, nmf_update_coef

CHANNELS = [16, 32, 64, 128]
REDUCTIONS = [4, 8, 16, 32]


def stage_maps(height, width, batch=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [
        torch.randn(batch, c, -(-height // r), -(-width // r), generator=gen)
        for c, r in zip(CHANNELS, REDUCTIONS, strict=True)
    ]


def tiny_head(**kwargs):
    torch.manual_seed(0)
    return HEADS.get("ham")(in_channels=CHANNELS, num_classes=5, channels=24, **kwargs)


def test_registered_and_parameter_names_match_the_references():
    head = tiny_head()
    assert isinstance(head, LightHamHead) and head.ham_channels == 24
    assert set(head.state_dict()) == {
        "squeeze.conv.weight",
        *(
            f"squeeze.bn.{k}"
            for k in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
        ),
        "hamburger.ham_in.conv.weight",
        "hamburger.ham_in.conv.bias",
        "hamburger.ham_out.conv.weight",
        *(
            f"hamburger.ham_out.bn.{k}"
            for k in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
        ),
        "align.conv.weight",
        *(f"align.bn.{k}" for k in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")),
        "conv_seg.weight",
        "conv_seg.bias",
    }
    assert head.squeeze.conv.in_channels == 32 + 64 + 128  # stages 1-3
    assert head.squeeze.conv.bias is None and head.hamburger.ham_in.conv.bias is not None
    assert head.dropout.p == 0.1 and head.classifier is head.conv_seg
    nmf = head.hamburger.ham
    assert (nmf.S, nmf.D, nmf.R, nmf.train_steps, nmf.eval_steps, nmf.inv_t) == (1, 24, 64, 6, 7, 1.0)
    wide = HEADS.get("ham")(in_channels=CHANNELS, num_classes=3, channels=16, ham_channels=32, md_r=8)
    assert wide.squeeze.conv.out_channels == 32 and wide.align.conv.out_channels == 16


@pytest.mark.parametrize("size", [(64, 64), (50, 70), (33, 97), (96, 32)])
def test_output_shape_at_stage_1_and_finite(size):
    head = tiny_head()
    feats = stage_maps(*size)
    for training in (True, False):
        head.train(training)
        out = head(feats)
        assert out.shape == (2, 5, *feats[1].shape[-2:])
        assert torch.isfinite(out).all()


def test_backward_reaches_every_parameter():
    for one_step in (True, False):
        head = tiny_head(one_step_grad=one_step).train()
        head(stage_maps(48, 80)).square().mean().backward()
        missing = [n for n, p in head.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
        assert not missing, (one_step, missing)


def test_eval_is_deterministic_by_design():
    head = tiny_head().eval()
    feats = stage_maps(64, 96)
    rng = torch.random.get_rng_state()
    a = head(feats)
    assert torch.equal(rng, torch.random.get_rng_state())  # evaluation leaves the global RNG alone
    torch.manual_seed(123)
    b = head(feats)
    assert torch.equal(a, b)
    alone = head([f[1:] for f in feats])  # independent of the other images in the batch
    torch.testing.assert_close(alone, a[1:], rtol=1e-4, atol=1e-5)
    # the fixed bases do not depend on the weights' initialisation or the global seed
    torch.manual_seed(7)
    other = LightHamHead(CHANNELS, 5, channels=24)
    assert torch.equal(other.hamburger.ham.eval_bases, head.hamburger.ham.eval_bases)
    assert "eval_bases" not in head.state_dict()


def test_training_bases_are_random_but_seeded():
    head = tiny_head().train()
    feats = stage_maps(40, 40)
    torch.manual_seed(1)
    a = head(feats)
    torch.manual_seed(1)
    b = head(feats)
    c = head(feats)
    assert torch.equal(a, b) and not torch.equal(b, c)


def test_random_eval_init_reproduces_the_reference_behaviour():
    head = tiny_head(eval_init="random").eval()
    feats = stage_maps(40, 40)
    assert not torch.equal(head(feats), head(feats))
    with pytest.raises(ValueError, match="eval_init"):
        tiny_head(eval_init="sometimes")


def reconstruction_error(x, bases, coef):
    return (x - bases @ coef.transpose(1, 2)).square().sum().item()


def test_nmf_updates_decrease_the_reconstruction_error():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(1, 8, 20, generator=gen, dtype=torch.float64)  # D=8, N=20, non-negative
    bases = torch.nn.functional.normalize(torch.rand(1, 8, 3, generator=gen, dtype=torch.float64), dim=1)
    coef = torch.softmax(x.transpose(1, 2) @ bases, dim=-1)
    errors = [reconstruction_error(x, bases, coef)]
    for _ in range(20):
        coef = nmf_update_coef(x, bases, coef)
        errors.append(reconstruction_error(x, bases, coef))
        bases = nmf_update_bases(x, bases, coef)
        errors.append(reconstruction_error(x, bases, coef))
        assert (coef >= 0).all() and (bases >= 0).all()
    assert all(b <= a + 1e-9 for a, b in zip(errors, errors[1:]))
    assert errors[-1] < 0.5 * errors[0]


def test_nmf_module_reconstructs_and_keeps_dtype():
    nmf = NMF2D(channels=8, md_r=4, eval_steps=30).eval()
    x = torch.rand(2, 8, 5, 6)
    out = nmf(x)
    assert out.shape == x.shape and out.dtype == x.dtype and (out >= 0).all()
    assert (out - x).square().sum() < x.square().sum()
    assert nmf(x.double()).dtype == torch.float64
    with pytest.raises(ValueError, match="divisible"):
        NMF2D(channels=10, md_s=3)
    nmf2 = NMF2D(channels=8, md_s=2, md_r=2).eval()
    assert nmf2(x).shape == x.shape


def test_one_step_gradient_does_not_change_the_forward():
    x = torch.rand(1, 8, 4, 4)
    a = NMF2D(8, md_r=4, one_step_grad=True).eval()(x)
    b = NMF2D(8, md_r=4, one_step_grad=False).eval()(x)
    torch.testing.assert_close(a, b)


def test_bf16_autocast_runs_the_decomposition_in_float32():
    head = tiny_head().eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = head(stage_maps(32, 32))
    assert torch.isfinite(out.float()).all()


def test_in_segmentor_logits_at_input_size():
    torch.manual_seed(0)
    model = create_model(
        backbone="mit_nano", fusion="mean", modalities=["rgb"], num_classes=4, head="ham", head_channels=16
    )
    out = model({"rgb": torch.randn(1, 3, 40, 56)})
    assert out.logits.shape == (1, 4, 40, 56)


def test_bad_inputs():
    head = tiny_head()
    with pytest.raises(ValueError, match="4 stage maps"):
        head(stage_maps(32, 32)[:3])
    with pytest.raises(ValueError, match="out of range"):
        LightHamHead(CHANNELS, 3, channels=8, in_index=(1, 4))


def test_folded_squeeze_is_the_same_function():
    """set_fold: squeeze's conv per stage at its own resolution, then resized and summed: the same logits and
    gradients as the conv of the concatenation (float64, train and eval mode)."""
    from tests.models.heads.test_mlp_head import _fold_matches_reference_order

    head = tiny_head().double()
    feats = [f.double() for f in stage_maps(40, 56)]
    _fold_matches_reference_order(head, feats)
