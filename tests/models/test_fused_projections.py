"""``SpeedOptions.fuse_projections``: DFormer-style blocks with their projections fused and layer scales folded,
for inference. The same function (up to rounding), fewer operations, the state dict untouched."""

from __future__ import annotations

import collections

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from rgbx.engine.fastpath import (
    SpeedOptions,
    apply_speed_options,
    autocast,
    cast_inference_weights,
    prepare_inference,
)
from rgbx.errors import ConfigError
from rgbx.modalities import get_modality
from rgbx.models import create_model
from rgbx.models.backbones.dformer import DFormerBlock

FUSE = SpeedOptions(fuse_projections=True)  # everything else off, attention as the model has it


def _model(backbone="dformer_nano", fusion="dformer", modalities=("rgb", "depth"), seed=0):
    torch.manual_seed(seed)
    model = create_model(backbone=backbone, fusion=fusion, head="ham", modalities=list(modalities), num_classes=5,
                         head_channels=32).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # layer scales start at 1e-6; make each one differ per channel so folding matters
        for name, p in model.named_parameters():
            if "layer_scale" in name:
                p.copy_(torch.rand(p.shape, generator=gen) + 0.25)
    return model


def _inputs(modalities, batch=2, size=(64, 96)):
    gen = torch.Generator().manual_seed(1)
    return {m: torch.randn(batch, get_modality(m).channels, *size, generator=gen) for m in modalities}


class _Ops(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.counts = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def _count(model, x):
    with torch.no_grad(), _Ops() as ops:
        logits = model(x).logits
    return logits, ops.counts


def test_dformer_fused_is_the_same_function_with_fewer_operations():
    x = _inputs(("rgb", "depth"))
    plain, fused = _model(), prepare_inference(_model(), FUSE)
    before = {k: v.clone() for k, v in fused.state_dict().items()}
    a, ops_a = _count(plain, x)
    b, ops_b = _count(fused, x)
    torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5 * a.abs().max().item())
    blocks = [m for m in fused.modules() if isinstance(m, DFormerBlock)]
    with_depth = sum(m.depth_out for m in blocks)
    assert len(blocks) == 4 and with_depth == 3
    # per block: q, q_cut, l → one product (2 fewer), proj + proj_e → one (1 fewer where there is a depth output);
    # the 4 products with γ (2 in the last block) are gone
    linear = ops_a["addmm"] - ops_b["addmm"]
    assert linear == 2 * len(blocks) + with_depth, (ops_a["addmm"], ops_b["addmm"])
    assert ops_a["mul"] - ops_b["mul"] == 4 * with_depth + 2 * (len(blocks) - with_depth)
    # the state dict still holds the trained tensors, nothing added
    after = fused.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    assert "fused-proj" in FUSE.describe()


@pytest.mark.parametrize("present_case", ["all", "masked", "rgb only"])
def test_omni_fused_matches_with_missing_modalities(present_case):
    mods = ("rgb", "depth", "thermal")
    x = _inputs(mods)
    present = None
    if present_case == "masked":
        present = {"depth": torch.tensor([True, False]), "thermal": torch.tensor([False, False])}
    elif present_case == "rgb only":
        x = {"rgb": x["rgb"]}
    plain, fused = _model("omni_nano", "omni", mods), prepare_inference(_model("omni_nano", "omni", mods), FUSE)
    with torch.no_grad():
        a, b = plain(x, present).logits, fused(x, present).logits
    torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5 * a.abs().max().item())


def test_bf16_fused_weights_are_rounded_once_and_agree():
    model = _model()
    cast = prepare_inference(_model(), FUSE.with_(precision="bf16", cast_weights=True))
    block = next(m for m in cast.modules() if isinstance(m, DFormerBlock))
    ref = next(m for m in model.modules() if isinstance(m, DFormerBlock))
    bf16 = cast_inference_weights(_model(), "bf16")  # the weights the fused ones are made from
    ref_bf16 = next(m for m in bf16.modules() if isinstance(m, DFormerBlock))
    expect = (ref_bf16.mlp.fc2.weight.float() * ref.layer_scale_2.float()[:, None]).to(torch.bfloat16)
    assert block.mlp.fused_fc2_weight.dtype == torch.bfloat16 and torch.equal(block.mlp.fused_fc2_weight, expect)
    x = _inputs(("rgb", "depth"))
    with torch.no_grad(), autocast(torch.device("cpu"), "bf16"):
        unfused = prepare_inference(_model(), FUSE.with_(precision="bf16", cast_weights=True,
                                                         fuse_projections=False))
        a, b = unfused(x).logits.float(), cast(x).logits.float()
    assert (a.argmax(1) == b.argmax(1)).float().mean() > 0.97
    assert (a - b).abs().max() < 0.05 * a.abs().max()


def test_a_fused_model_refuses_to_train():
    model = prepare_inference(_model(), FUSE).train()
    with pytest.raises(ConfigError, match="fuse_projections"):
        model(_inputs(("rgb", "depth")))


def test_fast_sets_fuse_and_the_sweep_times_it_only_where_it_changes_something():
    from types import SimpleNamespace

    from rgbx.cli.bench import option_sets

    assert SpeedOptions.fast("cpu").fuse_projections and SpeedOptions.fast("cuda").fuse_projections
    assert not SpeedOptions.exact().fuse_projections
    args = SimpleNamespace(options=["exact", "fast"], sweep=True, compile_scope="blocks", compile_mode=None)
    fast = SpeedOptions.fast("cpu")
    assert option_sets(args, torch.device("cpu"), fusable=True)["fast - fuse_projections"] == fast.with_(
        fuse_projections=False)
    assert "fast - fuse_projections" not in option_sets(args, torch.device("cpu"), fusable=False)


def test_cmx_models_are_left_alone():
    torch.manual_seed(0)
    model = create_model(backbone="mit_nano", fusion="cmx", modalities=["rgb", "depth"], num_classes=3,
                         head_channels=16).eval()
    x = _inputs(("rgb", "depth"), size=(32, 32))
    with torch.no_grad():
        a = model(x).logits
        b = prepare_inference(model, FUSE)(x).logits
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_dformer_mlp_sums_into_the_convolution_output_with_the_same_values_and_gradients():
    """DFormerMLP adds ``p`` into ``pos(p)`` in place (no new hidden-width map): forward values and every gradient
    equal the out-of-place ``p + pos(p)`` (float64)."""
    from rgbx.models.backbones.dformer import DFormerMLP

    torch.manual_seed(0)
    mlp = DFormerMLP(8, 4).double()
    x = torch.randn(2, 6, 7, 8, dtype=torch.float64, requires_grad=True)

    def reference(x):
        p = mlp.fc1(mlp.norm(x)).permute(0, 3, 1, 2)
        p = (p + mlp.pos(p)).permute(0, 2, 3, 1)
        return mlp.fc2(mlp.act(p))

    params = [x, *mlp.parameters()]
    out, ref = mlp(x), reference(x)
    assert torch.equal(out, ref)
    grads = torch.autograd.grad(out.square().sum(), params)
    ref_grads = torch.autograd.grad(ref.square().sum(), params)
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backbone, fusion, modalities", [("dformer_nano", "dformer", ("rgb", "depth")),
                                                          ("omni_nano", "omni", ("rgb", "depth", "thermal"))])
def test_loading_weights_into_a_fused_model_undoes_the_fusion(backbone, fusion, modalities):
    """The fused copies are made from the weights at prepare_inference; weights loaded afterwards must be the ones
    used (the fusion is undone), not the stale copies."""
    fused = prepare_inference(_model(backbone, fusion, modalities, seed=0), FUSE)
    other = _model(backbone, fusion, modalities, seed=1)
    fused.load_state_dict(other.state_dict())
    x = _inputs(modalities)
    with torch.no_grad():  # the weights loaded, fused at each pass (fuse_live) until prepared again: rounding only
        want = other(x).logits
        torch.testing.assert_close(fused(x).logits, want, rtol=1e-5, atol=1e-5 * want.abs().max().item())
    prepare_inference(fused, FUSE)  # and fusing again uses the new weights
    with torch.no_grad():
        a = other(x).logits
        torch.testing.assert_close(fused(x).logits, a, rtol=1e-5, atol=1e-5 * a.abs().max().item())


@pytest.mark.parametrize("backbone, fusion, modalities, present_case", [
    ("dformer_nano", "dformer", ("rgb", "depth"), "all"),
    ("omni_nano", "omni", ("rgb", "depth", "thermal"), "all"),
    ("omni_nano", "omni", ("rgb", "depth", "thermal"), "masked"),
])
def test_training_with_live_fusion_gives_the_same_loss_and_gradients(backbone, fusion, modalities, present_case):
    """fuse_projections in training (``fuse_live``): the fused, layer-scaled weights are formed at every pass from the
    parameters, so the loss and the gradient of every parameter, the layer scales included, are those of the unfused
    blocks (float64, drop path on and drawing the same masks), with fewer full-size operations."""
    x = {k: v.double() for k, v in _inputs(modalities).items()}
    present = None
    if present_case == "masked":
        present = {"depth": torch.tensor([True, False]), "thermal": torch.tensor([False, False])}
    label = torch.randint(0, 5, (2, 64, 96), generator=torch.Generator().manual_seed(2))
    results = []
    for fuse in (False, True):
        torch.manual_seed(0)
        model = create_model(backbone=backbone, fusion=fusion, head="ham", modalities=list(modalities),
                             num_classes=5, head_channels=32, drop_path_rate=0.3).double()
        with torch.no_grad():  # distinct per-channel layer scales, so that folding them matters
            gen = torch.Generator().manual_seed(3)
            for name, p in model.named_parameters():
                if "layer_scale" in name:
                    p.copy_(torch.rand(p.shape, generator=gen, dtype=torch.float64) + 0.25)
        apply_speed_options(model, SpeedOptions(fuse_projections=fuse, attn_impl="eager"))
        model.train()
        torch.manual_seed(1)  # the drop-path draws
        with _Ops() as ops:
            loss = torch.nn.functional.cross_entropy(model(x, present).logits, label)
            loss.backward()
        grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
        results.append((loss.detach(), grads, ops))
    (loss_a, grads_a, ops_a), (loss_b, grads_b, ops_b) = results
    torch.testing.assert_close(loss_b, loss_a, rtol=1e-12, atol=0)
    assert grads_a.keys() == grads_b.keys() and any("layer_scale" in n for n in grads_a)
    for name, g in grads_a.items():
        torch.testing.assert_close(grads_b[name], g, rtol=1e-9, atol=1e-12, msg=name)  # (biases before a BN: 0)
    # fewer matrix products (at this tiny size the weights are as large as the maps: what the products with γ save
    # in full-size work is counted at real sizes in benchmarks/speed.md)
    a, b = ops_a.counts, ops_b.counts
    assert b["addmm"] + b["mm"] < a["addmm"] + a["mm"], (a["addmm"] + a["mm"], b["addmm"] + b["mm"])


def test_live_fusion_keeps_the_residual_streams_float32_under_autocast():
    """Under bf16 autocast the unfused block's fp32 γ ⊙ t makes the residual streams float32; with the layer scales
    folded into the bf16 products, the block casts its input streams once instead, so training adds its small
    updates (γ starts at 1e-6) in float32 as before."""
    torch.manual_seed(0)
    block = DFormerBlock(16, 1, 4, window=0, drop_path=None)
    block.set_live_fusion(True)
    x, e = torch.randn(2, 6, 8, 16).bfloat16(), torch.randn(2, 6, 8, 8).bfloat16()
    with autocast(torch.device("cpu"), "bf16"):
        x2, e2 = block(x, e)
        block.set_live_fusion(False)
        x3, e3 = block(x, e)
    assert x2.dtype == e2.dtype == x3.dtype == e3.dtype == torch.float32
    assert (x2 - x3).abs().max() < 1e-2 * 1e-6 * 100  # the updates are about 1e-6 × O(1); bf16 products round them
