"""Shared layers: timm's init and channels-first LayerNorm without importing timm, stochastic depth (statistics, eval identity, one compiled graph for any rate), presence
masking, the 1×1 convolution of resized, concatenated maps computed per map, and LayerNorms in low precision."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rgbx.models.layers import (
    DropPath,
    LayerNorm,
    LayerNorm2d,
    conv1x1_resized_concat,
    drop_path_layer,
    mask_absent,
    resize,
    stochastic_depth_rates,
    trunc_normal_,
)


def test_drop_path_drops_whole_samples_at_its_rate_and_keeps_the_mean():
    torch.manual_seed(0)
    layer = DropPath(0.3).train()
    x = torch.ones(20000, 4, 3)
    y = layer(x)
    per_sample = y.flatten(1)
    kept = per_sample[:, 0] > 0
    assert torch.all(per_sample == per_sample[:, :1])  # a sample is dropped or kept as a whole
    assert torch.allclose(per_sample[kept], torch.full_like(per_sample[kept], 1 / 0.7))
    assert abs((~kept).float().mean().item() - 0.3) < 0.015
    assert abs(y.mean().item() - 1.0) < 0.03  # 1 / keep scaling keeps the expectation
    assert torch.equal(layer.eval()(x), x)
    assert "drop_prob=0.300" in repr(layer)
    assert "keep_prob" not in layer.state_dict()  # nothing new in saved weights
    with pytest.raises(ValueError, match="drop_prob"):
        DropPath(1.0)


def test_drop_path_in_bf16_keeps_the_rate_in_float32():
    torch.manual_seed(0)
    y = DropPath(0.1).train()(torch.ones(4000, 2, dtype=torch.bfloat16))
    assert y.dtype == torch.bfloat16
    values = torch.unique(y.float()).tolist()
    assert len(values) == 2 and values[0] == 0.0 and values[1] == pytest.approx(1 / 0.9, rel=1e-2)


def test_blocks_of_different_rates_share_one_compiled_graph():
    """torch.compile specialises on a module's Python numbers; the rate lives in a buffer, so blocks of a
    stochastic-depth schedule compile once (timm's DropPath gave one graph per rate), the first block's rate 0
    included (an identity there was one more graph)."""
    from torch._dynamo.utils import counters

    class Block(torch.nn.Module):
        def __init__(self, rate):
            super().__init__()
            self.fc = torch.nn.Linear(8, 8)
            self.drop = drop_path_layer(rate)

        def forward(self, x):
            return x + self.drop(self.fc(x))

    rates = stochastic_depth_rates(0.2, 4)
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.2) and stochastic_depth_rates(0.0, 4) == [None] * 4
    assert isinstance(drop_path_layer(None), torch.nn.Identity)
    blocks = [Block(r) for r in rates]
    torch._dynamo.reset()
    counters.clear()
    for b in blocks:
        b.compile(backend="aot_eager", dynamic=False)
    x = torch.randn(4, 8, requires_grad=True)
    for b in blocks:
        b(x).sum().backward()
    assert counters["stats"]["unique_graphs"] == 1


def test_mask_absent_zeroes_absent_samples_even_if_they_hold_nan():
    x = torch.tensor([[1.0, 2.0], [float("nan"), float("inf")]], dtype=torch.bfloat16)
    out = mask_absent(x, torch.tensor([True, False]))
    assert out.dtype == torch.bfloat16 and torch.equal(out, torch.tensor([[1.0, 2.0], [0.0, 0.0]], dtype=torch.bfloat16))
    assert mask_absent(x, None) is x  # known present on the host: nothing computed


def test_conv1x1_of_resized_concat_is_computed_per_map_with_the_same_result():
    """Bilinear resizing and a 1×1 conv commute: per map at its own size, then resized and summed, equals the conv of
    the concatenation of the resized maps (float64: only the summation order differs)."""
    g = torch.Generator().manual_seed(0)
    maps = [torch.randn(2, c, h, w, generator=g, dtype=torch.float64)
            for c, h, w in ((3, 12, 16), (5, 6, 8), (4, 3, 4), (2, 5, 7))]
    weight = torch.randn(6, 14, 1, 1, generator=g, dtype=torch.float64)
    bias = torch.randn(6, generator=g, dtype=torch.float64)
    size = (12, 16)
    ref = F.conv2d(torch.cat([resize(m, size) for m in maps], 1), weight, bias)
    got = conv1x1_resized_concat(maps, weight, size, bias)
    assert got.shape == ref.shape and torch.allclose(got, ref, atol=1e-12)
    assert torch.allclose(conv1x1_resized_concat(maps, weight[:, :, 0, 0], size), ref - bias[:, None, None],
                          atol=1e-12)
    with pytest.raises(ValueError, match="15 input channels.*14"):
        conv1x1_resized_concat(maps, torch.randn(6, 15), size)


@pytest.mark.parametrize("channels_first", [False, True])
def test_layer_norm_is_nn_layer_norm_until_lowp_runs_it_in_autocasts_dtype(channels_first):
    """rgbx's LayerNorm (and LayerNorm2d): the same parameters and function as torch's; with ``lowp`` on under
    autocast it takes and returns bf16 (stock autocast keeps an fp32 input fp32, and CUDA's casts a bf16 one up to
    fp32), within bf16 rounding of the fp32 norm, and the gradients reach the fp32 parameters as fp32."""
    torch.manual_seed(0)
    norm = LayerNorm2d(8, eps=1e-6) if channels_first else LayerNorm(8, eps=1e-6)
    ref = nn.LayerNorm(8, eps=1e-6)
    with torch.no_grad():
        norm.weight.normal_(1.0, 0.3), norm.bias.normal_(0.0, 0.3)
    ref.load_state_dict(norm.state_dict())
    assert list(norm.state_dict()) == ["weight", "bias"]
    x = torch.randn(2, 8, 5, 6) if channels_first else torch.randn(2, 5, 8)

    def reference(t):
        return ref(t.permute(0, 2, 3, 1)).permute(0, 3, 1, 2) if channels_first else ref(t)

    cpu_bf16 = torch.autocast("cpu", dtype=torch.bfloat16)
    assert torch.equal(norm(x), reference(x))
    with cpu_bf16:
        assert norm(x).dtype == torch.float32 and torch.equal(norm(x), reference(x))  # off: torch's behaviour
    norm.lowp = True
    assert torch.equal(norm(x), reference(x))  # outside autocast nothing changes
    with torch.autocast("cpu", dtype=torch.float16):  # nor under fp16 autocast (overflow risk): bf16 only
        assert norm(x).dtype == torch.float32 and torch.equal(norm(x), reference(x))
    xg = x.clone().requires_grad_(True)
    with cpu_bf16:
        out = norm(xg)
    assert out.dtype == torch.bfloat16
    expected = reference(x)
    assert (out.float() - expected).abs().max().item() <= 2e-2 * expected.abs().max().item()
    out.float().square().sum().backward()
    reference(x).square().sum().backward()
    assert xg.grad.dtype == torch.float32 and norm.weight.grad.dtype == torch.float32
    for got, want in ((norm.weight.grad, ref.weight.grad), (norm.bias.grad, ref.bias.grad)):
        assert (got - want).abs().max().item() <= 3e-2 * want.abs().max().item()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_lowp_layer_norm_stays_bf16_where_cuda_autocast_would_run_fp32():
    norm = LayerNorm(64).cuda()
    x = torch.randn(4, 10, 64, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        assert norm(x.bfloat16()).dtype == torch.float32  # CUDA's autocast policy: LayerNorm in fp32
        norm.lowp = True
        out = norm(x)
    assert out.dtype == torch.bfloat16
    assert (out.float() - F.layer_norm(x, (64,))).abs().max().item() < 5e-2


@pytest.mark.parametrize("channels_last", [False, True])
def test_resize_by_matmul_is_bilinear_interpolation(channels_last):
    """Two matrix products give F.interpolate's bilinear resize (align_corners=False): enlarging and shrinking,
    integer and other ratios, and its gradient; the memory layout and dtype are kept."""
    import torch.nn.functional as F

    from rgbx.models.layers import resize, resize_by_matmul

    torch.manual_seed(0)
    for (h, w), size in [((15, 20), (120, 160)), ((7, 7), (30, 41)), ((40, 50), (17, 23)), ((6, 8), (6, 24))]:
        x = torch.randn(2, 5, h, w, dtype=torch.float64, requires_grad=True)
        xin = x.contiguous(memory_format=torch.channels_last) if channels_last else x
        want = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        got = resize_by_matmul(xin, size)
        assert got.shape == want.shape and (got - want).abs().max() < 1e-12, (h, w, size)
        assert got.is_contiguous(memory_format=torch.channels_last) == channels_last or got.is_contiguous()
        g = torch.randn_like(want)
        (ga,) = torch.autograd.grad((want * g).sum(), x)
        (gb,) = torch.autograd.grad((resize_by_matmul(xin, size) * g).sum(), x)
        assert (ga - gb).abs().max() < 1e-12
        assert torch.equal(resize(xin, size, matmul=True), got)
    xb = torch.randn(1, 4, 15, 20).to(torch.bfloat16)
    out = resize_by_matmul(xb, (60, 80))
    ref = F.interpolate(xb.float(), size=(60, 80), mode="bilinear", align_corners=False)
    assert out.dtype == torch.bfloat16 and (out.float() - ref).abs().max() <= 2 * 2**-7 * ref.abs().max()


def test_resampling_matrices_made_in_inference_mode_serve_training():
    """The matrices are cached; one first made under torch.inference_mode must still serve a training step."""
    from rgbx.models.layers import _RESAMPLING_MATRICES, adaptive_avg_pool, resize_by_matmul

    _RESAMPLING_MATRICES.clear()
    with torch.inference_mode():
        resize_by_matmul(torch.randn(1, 2, 9, 11), (27, 33))
        adaptive_avg_pool(torch.randn(1, 2, 9, 11), (7, 7), matmul=True)
    x = torch.randn(1, 2, 9, 11, requires_grad=True)
    (resize_by_matmul(x, (27, 33)).sum() + adaptive_avg_pool(x, (7, 7), matmul=True).sum()).backward()
    assert x.grad is not None and len(_RESAMPLING_MATRICES) == 4


@pytest.mark.parametrize("channels_last", [False, True])
def test_adaptive_avg_pool_by_matrix_products_is_adaptive_pooling(channels_last):
    """adaptive_avg_pool(matmul=True): PyTorch's adaptive average pooling (its overlapping windows, and repeated
    inputs when enlarging) and its gradient, from two matrix products; the memory layout and dtype are kept."""
    import torch.nn.functional as F

    from rgbx.models.layers import adaptive_avg_pool

    torch.manual_seed(0)
    for (h, w), size in [((120, 160), (7, 7)), ((15, 20), (7, 7)), ((5, 6), (7, 7)), ((30, 40), (16, 16))]:
        x = torch.randn(2, 6, h, w, dtype=torch.float64, requires_grad=True)
        xin = x.contiguous(memory_format=torch.channels_last) if channels_last else x
        want = F.adaptive_avg_pool2d(x, size)
        got = adaptive_avg_pool(xin, size, matmul=True)
        assert got.shape == want.shape and (got - want).abs().max() < 1e-12, (h, w, size)
        assert got.is_contiguous(memory_format=torch.channels_last) == channels_last or got.is_contiguous()
        g = torch.randn_like(want)
        (ga,) = torch.autograd.grad((want * g).sum(), x)
        (gb,) = torch.autograd.grad((adaptive_avg_pool(xin, size, matmul=True) * g).sum(), x)
        assert (ga - gb).abs().max() < 1e-12
        assert torch.equal(adaptive_avg_pool(xin, size), F.adaptive_avg_pool2d(xin, size))  # the switch off
    xb = torch.randn(1, 4, 120, 160).to(torch.bfloat16)
    out = adaptive_avg_pool(xb, (7, 7), matmul=True)
    ref = F.adaptive_avg_pool2d(xb.float(), (7, 7))
    assert out.dtype == torch.bfloat16 and (out.float() - ref).abs().max() <= 2 * 2**-7 * ref.abs().max()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("kwargs", [{"std": 0.02}, {}, {"mean": 0.3, "std": 2.0, "a": -1.0, "b": 4.0},
                                    {"std": 0.02, "a": -0.04, "b": 0.04}])
def test_trunc_normal_draws_timms_values_from_the_same_seed(dtype, kwargs):
    timm_layers = pytest.importorskip("timm.layers")
    torch.manual_seed(3)
    expected = timm_layers.trunc_normal_(torch.empty(40, 33, dtype=dtype), **kwargs)
    torch.manual_seed(3)
    drawn = trunc_normal_(torch.empty(40, 33, dtype=dtype), **kwargs)
    assert torch.equal(drawn, expected)
    low, high = kwargs.get("a", -2.0), kwargs.get("b", 2.0)
    assert drawn.min() >= low and drawn.max() <= high and drawn.std() > 0


def test_layer_norm_2d_is_timms_with_the_same_defaults_and_keys():
    timm_layers = pytest.importorskip("timm.layers")
    ours, theirs = LayerNorm2d(6), timm_layers.LayerNorm2d(6)
    assert ours.eps == theirs.eps == 1e-6 and ours.state_dict().keys() == theirs.state_dict().keys()
    with torch.no_grad():
        theirs.weight.uniform_(0.5, 1.5), theirs.bias.uniform_(-1, 1)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(2, 6, 5, 7)
    torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=1e-6)
    assert not LayerNorm2d(6, affine=False).elementwise_affine


def test_building_a_model_does_not_import_timm():
    """``import timm`` costs every rgbx command seconds (torchvision, torch._dynamo); only ``timm:`` backbones need it."""
    script = ("import sys; import rgbx.data, rgbx.engine.evaluate; from rgbx.models import create_model; "
              "create_model(backbone='mit_nano', fusion='cmx', modalities=['rgb', 'depth'], num_classes=3); "
              "print(sorted(m for m in ('timm', 'torchvision') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"
