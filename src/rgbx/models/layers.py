"""Small building blocks shared by backbones, fusions and heads.

Nothing here imports timm: ``import timm`` imports torchvision and, through it, ``torch._dynamo`` (about 4 s, nearly
half the start-up of every ``rgbx`` command on a 2-core machine), so only the ``timm:`` backbones import it, when one
is built. What is here: timm's truncated-normal init and channels-first LayerNorm (the same values and parameters),
token ↔ map reshaping, the Mix-FFN depth-wise conv, a conv-BN-ReLU unit, the SegFormer weight init, a
:class:`FeatureInfo` list, per-sample presence masking, a stochastic-depth layer whose rate does not specialise
compiled code, the 1×1 convolution of resized, concatenated maps computed at each map's own resolution (what a decode
head's fusion does, in fewer operations), and LayerNorms that can run in autocast's low precision.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from rgbx.errors import ConfigError

__all__ = [
    "ATTN_IMPLS",
    "adaptive_avg_pool",
    "adaptive_avg_pool_by_matmul",
    "adaptive_pool_matrix",
    "ConvBNReLU",
    "DWConv",
    "DropPath",
    "FeatureInfo",
    "LayerNorm",
    "LayerNorm2d",
    "check_attn_impl",
    "conv1x1_resized_concat",
    "drop_path_layer",
    "fused_linear_params",
    "init_weights",
    "interpolation_matrix",
    "map_to_tokens",
    "mask_absent",
    "pooling_matrix",
    "resize",
    "resize_by_matmul",
    "separable_by_matmul",
    "stacked_linear_params",
    "stochastic_depth_rates",
    "tokens_to_map",
    "trunc_normal_",
]


ATTN_IMPLS = ("sdpa", "eager")


# the only autocast dtype the low-precision LayerNorms run in (not fp16: its 5-bit exponent would put the residual
# stream at risk of overflow)
LOWP_NORM_DTYPE = torch.bfloat16


def _layer_norm(norm: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    device = x.device.type
    if norm.lowp and torch.is_autocast_enabled(device) and torch.get_autocast_dtype(device) == LOWP_NORM_DTYPE:
        # input, weight and bias cast to bf16 (CUDA's kernel wants one dtype for all three), normalised with autocast
        # off; the statistics still accumulate in fp32 inside the kernel. timm's fast_layer_norm does the cast too,
        # but what it does varies with the timm version (some take CUDA's autocast dtype on every device) and with
        # whether apex is installed
        dtype = LOWP_NORM_DTYPE
        weight = None if norm.weight is None else norm.weight.to(dtype)
        bias = None if norm.bias is None else norm.bias.to(dtype)
        with torch.autocast(device, enabled=False):
            return F.layer_norm(x.to(dtype), norm.normalized_shape, weight, bias, norm.eps)
    return F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)


class LayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` (same arguments, parameters and state-dict keys) with a low-precision mode, ``lowp``
    (:meth:`rgbx.models.Segmentor.set_lowp_norms`; ``SpeedOptions.lowp_norms``).

    CUDA's autocast runs every LayerNorm in fp32: its output is fp32, so the residual stream of a transformer stays
    fp32 and each LayerNorm output is cast again for the next matmul, both ways through forward and backward. With
    ``lowp`` on and bf16 autocast enabled, the norm takes and returns bf16, so MiT's residual stream stays in
    bf16 (DFormer's stays fp32: its fp32 layer scales promote each update, unless ``SpeedOptions.fuse_projections``
    folds them into the weights for inference) and no norm output is cast again. This is
    what the CPU's autocast already does (it leaves LayerNorm in its input's dtype), so rgbx's fast path computes the
    same way on both devices. Off, or outside autocast: exactly ``nn.LayerNorm``."""

    lowp = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _layer_norm(self, x)


class LayerNorm2d(nn.LayerNorm):
    """timm's channels-first ``LayerNorm2d`` (over C of a (B, C, H, W) map; same arguments, default eps and
    parameters) with :class:`LayerNorm`'s low-precision mode."""

    lowp = False

    def __init__(self, num_channels: int, eps: float = 1e-6, affine: bool = True):
        super().__init__(num_channels, eps=eps, elementwise_affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _layer_norm(self, x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


LOWP_NORMS = (LayerNorm, LayerNorm2d)


def trunc_normal_(tensor: torch.Tensor, mean: float = 0.0, std: float = 1.0, a: float = -2.0,
                  b: float = 2.0) -> torch.Tensor:
    """Fill ``tensor`` in place from N(mean, std²) truncated to [a, b] (absolute bounds, as in timm), by inverse-CDF
    sampling: a uniform draw between the bounds' CDF values, mapped through the normal's inverse CDF. These are the
    values timm's ``trunc_normal_`` draws from the same seed; recent torch versions' ``nn.init.trunc_normal_``
    samples by rejection instead and draws others, so a seeded model would start from other weights on another
    torch."""

    def cdf(bound: float) -> float:  # the standard normal's CDF at the standardised bound
        return (1.0 + math.erf((bound - mean) / std / math.sqrt(2.0))) / 2.0

    with torch.no_grad():
        tensor.uniform_(2 * cdf(a) - 1, 2 * cdf(b) - 1)
        tensor.erfinv_().mul_(std * math.sqrt(2.0)).add_(mean)
        return tensor.clamp_(min=a, max=b)


class DropPath(nn.Module):
    """Stochastic depth per sample (timm's ``DropPath``: each sample's residual branch is zeroed with probability
    ``drop_prob`` in training, the kept ones scaled by 1 / keep), with the keep probability held in a (non-saved)
    buffer rather than a Python number: ``torch.compile`` specialises compiled code on a module's Python numbers, so
    every block of a stochastic-depth schedule (a different rate each) was a graph of its own; with the buffer the
    blocks of a stage share one (CMX MiT-B2's training step: 25 → 14 graphs to compile, 1541 → 910 traced nodes)."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        if not 0.0 <= drop_prob < 1.0:
            raise ValueError(f"drop_prob must be in [0, 1), got {drop_prob}")
        self.register_buffer("keep_prob", torch.tensor(1.0 - drop_prob), persistent=False)
        self._rate = drop_prob  # read in forward, a Python number would specialise compiled code

    @property
    def drop_prob(self) -> float:
        return self._rate

    def extra_repr(self) -> str:
        return f"drop_prob={self._rate:.3f}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        keep = self.keep_prob.float()
        mask = torch.empty((x.shape[0],) + (1,) * (x.dim() - 1), device=x.device).bernoulli_(keep)
        return x * (mask / keep).to(x.dtype)


def stochastic_depth_rates(drop_path_rate: float, total: int) -> list[float | None]:
    """Drop-path rate of each of ``total`` blocks: linear from 0 (first block) to ``drop_path_rate`` (last), or None
    for every block when ``drop_path_rate`` is 0 (no stochastic depth: :func:`drop_path_layer` gives identities)."""
    if drop_path_rate == 0:
        return [None] * total
    return [drop_path_rate * k / max(total - 1, 1) for k in range(total)]


def drop_path_layer(rate: float | None) -> nn.Module:
    """:class:`DropPath` for a block of a model with stochastic depth, also at rate 0 (the first block of the linear
    schedule), so that every block of a stage is the same module type and compiled code is shared (an
    ``nn.Identity`` in one block is another graph for ``torch.compile``: CMX MiT-B2, 14 → 13 graphs for each of
    training and inference); ``nn.Identity`` for ``None``."""
    return nn.Identity() if rate is None else DropPath(rate)


def check_attn_impl(attn_impl: str) -> str:
    """``"sdpa"`` (fused ``scaled_dot_product_attention``) or ``"eager"`` (explicit softmax, for FLOP counting).

    On the CPU the two train at the same speed (``benchmarks/attention_cpu.md``)."""
    if attn_impl not in ATTN_IMPLS:
        raise ConfigError(f"unknown attn_impl {attn_impl!r}; choose one of: {', '.join(ATTN_IMPLS)}")
    return attn_impl


class FeatureInfo(list):
    """Per-stage feature description, timm style: a list of ``{"num_chs", "reduction", "module", ...}`` dicts."""

    def channels(self) -> list[int]:
        return [int(f["num_chs"]) for f in self]

    def reductions(self) -> list[int]:
        return [int(f["reduction"]) for f in self]


def map_to_tokens(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) → (B, H·W, C)."""
    return x.flatten(2).transpose(1, 2)


def tokens_to_map(x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """(B, H·W, C) → (B, C, H, W)."""
    b, _, c = x.shape
    return x.transpose(1, 2).reshape(b, c, hw[0], hw[1])


def resize(x: torch.Tensor, size: Sequence[int], matmul: bool = False) -> torch.Tensor:
    """Bilinear resize of a (B, C, H, W) map (``align_corners=False``); a no-op when the size already matches.

    ``matmul=True`` computes the same resize as two matrix products (:func:`resize_by_matmul`), for GPUs."""
    size = (int(size[0]), int(size[1]))
    if tuple(x.shape[-2:]) == size:
        return x
    if matmul and not torch.compiler.is_compiling():  # compiled code fuses the interpolation itself
        return resize_by_matmul(x, size)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def adaptive_avg_pool(x: torch.Tensor, size: Sequence[int], matmul: bool = False) -> torch.Tensor:
    """``F.adaptive_avg_pool2d`` of a (B, C, H, W) map to ``size``. A function bound by name in the model modules, so
    that ONNX export can swap in :func:`adaptive_avg_pool_by_matmul` (:func:`rgbx.engine.export.traceable`).

    ``matmul=True`` computes the same pooling as two matrix products with cached pooling matrices, in ``x``'s memory
    layout (:func:`separable_by_matmul`), for GPUs: on the H100, CUDA's adaptive pooling of DFormer's channels-last
    maps took 26 % of DFormer-L's batch-1 kernel time (135 µs a call, ``benchmarks/gpu.md``)."""
    if matmul and not torch.compiler.is_compiling():  # compiled code fuses the pooling itself
        h, w = x.shape[-2:]
        return separable_by_matmul(x, pooling_matrix(h, int(size[0]), x.device, x.dtype),
                                   pooling_matrix(w, int(size[1]), x.device, x.dtype))
    return F.adaptive_avg_pool2d(x, tuple(size))


def adaptive_pool_matrix(n_in: int | torch.SymInt, n_out: int | torch.SymInt, device: torch.device,
                         dtype: torch.dtype) -> torch.Tensor:
    """The (n_out, n_in) matrix of 1-D adaptive average pooling: row ``i`` averages the inputs
    ``[floor(i·n_in / n_out), ceil((i + 1)·n_in / n_out))``, PyTorch's windows (overlapping, and repeating inputs
    when ``n_in < n_out``). Built from tensor arithmetic on both sizes, so a traced graph keeps them symbolic (KTB
    pools to ``min(H, 16)``)."""
    i = torch.arange(n_out, device=device)
    start = torch.div(i * n_in, n_out, rounding_mode="floor")
    end = torch.div((i + 1) * n_in + n_out - 1, n_out, rounding_mode="floor")
    j = torch.arange(n_in, device=device)
    inside = (j[None, :] >= start[:, None]) & (j[None, :] < end[:, None])
    return inside.to(dtype) / (end - start)[:, None].to(dtype)


def adaptive_avg_pool_by_matmul(x: torch.Tensor, size: Sequence[int], matmul: bool = True) -> torch.Tensor:
    """:func:`adaptive_avg_pool` as two matrix products, ``P_h · X · P_wᵀ`` (:func:`adaptive_pool_matrix`): the same
    values up to rounding. For ONNX export with dynamic sizes, where the exporters' adaptive pooling is wrong at
    sizes other than the traced one (torch 2.14's dynamo exporter: off by up to 0.97 for a unit-variance map, or a
    failed Gather); two MatMuls with matrices computed from the input's size are exact at every size. ``matmul`` is
    accepted and ignored, so that this function can stand in for :func:`adaptive_avg_pool`; unlike its
    ``matmul=True`` path, the matrices are built from the traced sizes at every call rather than cached."""
    h, w = x.shape[-2:]
    return separable_by_matmul(x, adaptive_pool_matrix(h, size[0], x.device, x.dtype),
                               adaptive_pool_matrix(w, size[1], x.device, x.dtype))


_RESAMPLING_MATRICES: dict[tuple, torch.Tensor] = {}


def _cached_matrix(kind: str, n_in: int, n_out: int, device: torch.device, dtype: torch.dtype,
                   make: Callable[[], torch.Tensor]) -> torch.Tensor:
    """``make()`` (a float64 CPU matrix) on ``device`` in ``dtype``, made once per kind, size, device and dtype,
    outside inference mode (the same matrix serves training)."""
    key = (kind, n_in, n_out, torch.device(device), dtype)
    m = _RESAMPLING_MATRICES.get(key)
    if m is None:
        with torch.inference_mode(False), torch.no_grad():
            m = make().to(device=device, dtype=dtype)
        if len(_RESAMPLING_MATRICES) >= 256:  # inference at many sizes: start again rather than grow
            _RESAMPLING_MATRICES.clear()
        _RESAMPLING_MATRICES[key] = m
    return m


def interpolation_matrix(n_in: int, n_out: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The (n_out, n_in) matrix of 1-D linear interpolation n_in → n_out (``align_corners=False``, no antialiasing):
    ``F.interpolate`` applied to the identity, so its source coordinates are PyTorch's own. Cached."""
    def make() -> torch.Tensor:
        eye = torch.eye(n_in, dtype=torch.float64)[None]  # n_in signals of length n_in
        return F.interpolate(eye, size=n_out, mode="linear", align_corners=False)[0].t().contiguous()

    return _cached_matrix("linear", n_in, n_out, device, dtype, make)


def pooling_matrix(n_in: int, n_out: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """:func:`adaptive_pool_matrix`, computed in float64 and cached."""
    return _cached_matrix("pool", n_in, n_out, device, dtype,
                          lambda: adaptive_pool_matrix(n_in, n_out, torch.device("cpu"), torch.float64))


def resize_by_matmul(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """:func:`resize`'s bilinear interpolation as two matrix products, rows then columns: ``A_h · X · A_wᵀ`` with
    the 1-D interpolation matrices (:func:`interpolation_matrix`). In ``x``'s dtype and memory layout; a
    channels-last map stays channels-last without a transpose: (B, H, W, C) memory is ``A_h`` times (B, H, W·C) after
    ``A_w`` times (B·H, W, C).

    Why: a GPU runs these products at memory speed, and their backward pass is two more products, where
    ``upsample_bilinear2d``'s backward kernel adds into its output with atomics. On an H100, CMX-B2's bf16 training
    step spent 9.5 % of its kernel time in bilinear upsampling, about 1 ms per full-size call (``benchmarks/gpu.md``).
    On the 2-core CPU it changes little (CMX-B0's fast set: latency 1.05×, training step 1.02×); the switch is
    ``SpeedOptions.matmul_resize``. Same values as ``F.interpolate`` up to rounding: in fp32 within a few ulp; in
    bf16 each product is rounded, so up to one bf16 step more."""
    h, w = x.shape[-2:]
    return separable_by_matmul(x, interpolation_matrix(h, int(size[0]), x.device, x.dtype),
                               interpolation_matrix(w, int(size[1]), x.device, x.dtype))


def separable_by_matmul(x: torch.Tensor, a_h: torch.Tensor, a_w: torch.Tensor) -> torch.Tensor:
    """``A_h · X · A_wᵀ`` for a (B, C, H, W) map ``x`` and matrices (H', H), (W', W): a separable resampling
    (:func:`resize_by_matmul`, :func:`adaptive_avg_pool`), in ``x``'s dtype and memory layout. A channels-last map
    stays channels-last without a transpose: (B, H, W, C) memory is ``A_h`` times (B, H, W'·C) after ``A_w`` times
    (B·H, W, C)."""
    b, c, h, w = x.shape
    out_h, out_w = a_h.shape[0], a_w.shape[0]
    with torch.autocast(x.device.type, enabled=False):  # in x's own dtype, as the resampling kernels would be
        if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
            rows = x.permute(0, 2, 3, 1)  # (B, H, W, C), contiguous
            y = torch.matmul(a_w, rows.reshape(b * h, w, c))  # (B·H, W', C)
            y = torch.matmul(a_h, y.reshape(b, h, out_w * c))  # (B, H', W'·C)
            return y.reshape(b, out_h, out_w, c).permute(0, 3, 1, 2)  # NCHW view of NHWC memory
        y = torch.matmul(x, a_w.t())  # (B, C, H, W')
        return torch.matmul(a_h, y)  # (B, C, H', W')


def conv1x1_resized_concat(
    maps: Sequence[torch.Tensor], weight: torch.Tensor, size: Sequence[int], bias: torch.Tensor | None = None,
    matmul_resize: bool = False,
) -> torch.Tensor:
    """``conv2d(cat([resize(m, size) for m in maps], 1), weight, bias)`` for a 1×1 ``weight`` (C_out, ΣC_i[, 1, 1]),
    computed as ``Σ_i resize(conv2d(m_i, W_i), size) + bias`` with W_i the input-channel slice of ``m_i``.

    The same function: bilinear resizing mixes pixels of one channel with weights that sum to one, a 1×1
    convolution mixes channels of one pixel, so the two commute. But each map is convolved at its own (smaller)
    resolution and the concatenation at full size is never built: for the SegFormer head of a 480×640 input (four
    512-channel maps at 120×160) the fusion convolution drops from 20 to 1.3 GMAC per image and a 2048-channel
    map is no longer written, cast and read. The rounding differs (sums in another order), as between two
    convolution algorithms; under autocast the resized maps and their sum stay in the low precision.
    ``matmul_resize``: resize by :func:`resize_by_matmul`."""
    weight = weight.reshape(weight.shape[0], -1)  # (size goes to resize as given: traced sizes stay symbolic)
    expected = sum(m.shape[1] for m in maps)
    if weight.shape[1] != expected:
        raise ValueError(f"conv1x1_resized_concat: weight has {weight.shape[1]} input channels, the maps "
                         f"{[m.shape[1] for m in maps]} have {expected}")
    out = None
    start = 0
    for m in maps:
        w = weight[:, start:start + m.shape[1], None, None]
        start += m.shape[1]
        z = F.conv2d(m, w, bias if out is None else None)  # the bias once, with the first map
        # resized in the convolution's output dtype: CUDA autocast would run the interpolation in fp32 and so write,
        # sum and normalise full-size fp32 maps (the CPU's autocast already keeps bf16 here)
        with torch.autocast(z.device.type, enabled=False):
            z = resize(z, size, matmul=matmul_resize)
        # summed in place: no new full-size map per stage (on the CPU each fresh one costs its page faults)
        out = z if out is None else out.add_(z)
    return out


def stacked_linear_params(
    layers: Sequence[nn.Linear], scales: Sequence[torch.Tensor | None] | None = None,
    dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The weight and bias of one Linear layer that computes ``layers`` (same input) side by side, each output
    multiplied by its ``scales`` entry (a per-channel layer scale γ, or None):
    ``cat_i(γ_i ⊙ (W_i x + b_i)) = (cat_i γ_i W_i) x + cat_i γ_i b_i``, in ``dtype`` (default: the weights').
    Differentiable: formed at every training step, the gradients reach each ``W_i``, ``b_i`` and ``γ_i`` through
    the concatenation, and ``γ_i`` multiplies a weight-sized matrix instead of the full-size output."""
    scales = scales if scales is not None else [None] * len(layers)
    weights, biases = [], []
    for layer, scale in zip(layers, scales, strict=True):
        w, b = layer.weight.to(dtype or layer.weight.dtype), layer.bias.to(dtype or layer.bias.dtype)
        if scale is not None:
            w, b = w * scale.to(w.dtype)[:, None], b * scale.to(b.dtype)
        weights.append(w)
        biases.append(b)
    if len(layers) == 1:
        return weights[0], biases[0]
    return torch.cat(weights), torch.cat(biases)


def fused_linear_params(
    layers: Sequence[nn.Linear], scales: Sequence[torch.Tensor | None] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`stacked_linear_params` for inference: formed once, in float32, and rounded once to the layers' dtype
    (bf16 after :func:`rgbx.engine.fastpath.cast_inference_weights`); new tensors, not views of the weights."""
    with torch.no_grad():
        w, b = stacked_linear_params(layers, scales, dtype=torch.float32)
        dtype = layers[0].weight.dtype
        return w.to(dtype, copy=True), b.to(dtype, copy=True)


def mask_absent(x: torch.Tensor, present: torch.Tensor | None) -> torch.Tensor:
    """Zero the samples of ``x`` (B, ...) whose ``present`` (B,) flag is False; ``None`` = every sample present (known
    on the host: nothing to compute, no kernel launched).

    ``torch.where`` rather than a product, so that whatever an absent sample holds (even inf/NaN) cannot leak; the
    zero is a Python scalar (no tensor to fill on the device).
    """
    if present is None:
        return x
    return torch.where(present.view(-1, *([1] * (x.dim() - 1))), x, 0.0)


class DWConv(nn.Module):
    """Depth-wise 3×3 conv applied to a token sequence (the positional part of SegFormer's Mix-FFN)."""

    def __init__(self, dim: int):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=3, stride=1, padding=1, groups=dim, bias=True)

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        """(B, N, C) tokens of an H×W grid → (B, N, C)."""
        return map_to_tokens(self.dwconv(tokens_to_map(x, hw)))


class ConvBNReLU(nn.Sequential):
    """Conv (no bias) → BatchNorm → ReLU."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int = 1, stride: int = 1, groups: int = 1
    ):
        super().__init__(
            nn.Conv2d(
                in_channels, out_channels, kernel_size, stride, kernel_size // 2, groups=groups, bias=False
            ),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


def init_weights(module: nn.Module) -> None:
    """SegFormer / CMX initialisation, for ``model.apply``.

    Linear: truncated normal (std 0.02), zero bias. LayerNorm: weight 1, bias 0. Conv2d: normal with std
    ``sqrt(2 / fan_out)`` where ``fan_out = k_h·k_w·out_channels / groups``, zero bias. BatchNorm keeps PyTorch's
    defaults (weight 1, bias 0).
    """
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        if module.weight is not None:
            nn.init.ones_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Conv2d):
        fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels // module.groups
        nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
        if module.bias is not None:
            nn.init.zeros_(module.bias)
