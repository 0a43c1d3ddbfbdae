"""DFormerv2: an RGB encoder whose self-attention is biased by a geometry prior computed from the depth map.

Paper: Yin et al., "DFormerv2: Geometry Self-Attention for RGBD Semantic Segmentation", CVPR 2025. Original code:
https://github.com/VCIP-RGBD/DFormer (MIT licence), ``models/encoders/DFormerv2.py``; this file is an independent
implementation whose tensor names follow that file (``patch_embed``, ``layers.i.blocks.j``, ``extra_norms``), so a
released checkpoint's ``backbone.*`` tensors load with :func:`rgbx.models.weights.load_strict` once the prefix is
stripped.

Unlike DFormer (v1) there is no depth branch: depth is never convolved. Only RGB goes through layers; the depth map
(one channel, at the input resolution) is bilinearly resized to each stage's grid and turned into an additive
attention bias. Structure (``d_i`` = stage width)::

    patch_embed   [Conv3×3 s2 → BN → GELU → Conv3×3 → BN → GELU] (3 → d0/2), the same pair (d0/2 → d0, stride 2
                  first), the last GELU left out                                                     (1/4)
    stage i       ``depths[i]`` geometry blocks on a channels-last map (B, H, W, d_i)
    downsample    layers.i.downsample = Conv3×3 s2 (d_i → d_{i+1}) → BN                              (after stage i < 3)
    outputs       stage 0 as is; stages 1-3 through ``extra_norms.{0,1,2}`` (LayerNorm, eps 1e-5)

Geometry block (``layers.i.blocks.j``), LayerNorms eps 1e-6::

    x ← x + DWConv3×3(x)                                      (cnn_pos_encode)
    x ← x + γ1 · GSA(LN1(x), prior)                            (γ: layer scale, only where the variant has it)
    x ← x + γ2 · fc2(u + DWConv3×3(u)),  u = GELU(fc1(LN2(x)))  (ffn; ratios 4, 4, 3, 3)

Geometry self-attention (``Attention``): q, k, v linear projections, ``k`` scaled by ``1/√head_dim``, both rotated
by a rotary embedding whose angle is the *flattened* position index ``h·W + w`` (not a 2-D index) times
``10000^(−t)`` frequencies, t ∈ linspace(0, 1, head_dim / 2), applied to adjacent channel pairs. The attention
logits get the geometry prior added, and the output gets ``lepe = DWConv5×5(v)`` added before ``out_proj``.

Geometry prior (``Geo``, one per block, each with its own 2 mixing weights ``w``): with the per-head decay
``λ_n = log(1 − 2^(−init − range · n / heads))`` (negative, so a larger distance lowers the logit) and ``z`` the depth
resized to the stage grid,

* full attention (last stage): ``bias[n, p, p'] = λ_n · (w0 · (|h − h'| + |w − w'|) + w1 · |z_p − z_p'|)``,
  every position attends to every other one;
* decomposed attention (stages 1-3): attention along each row, then along each column of the row result, with
  the 1-D versions ``λ_n · (w0 · |w − w'| + w1 · |z_{h,w} − z_{h,w'}|)`` (row) and the same along columns.

A constant depth map (an absent depth, see :mod:`rgbx.models.fusions.dformerv2`) makes every depth term zero, so
the prior reduces to the positional decay alone.

Variants (dims / depths / heads / heads_ranges; layer scale, initialised to 1e-6, in stages 3-4 of B and L only):

============  ====================  ============  =============  ==========
DFormerv2-S   64, 128, 256, 512     3, 4, 18, 4   4, 4, 8, 16    4, 4, 6, 6
DFormerv2-B   80, 160, 320, 512     4, 8, 25, 8   5, 5, 10, 16   5, 5, 6, 6
DFormerv2-L   112, 224, 448, 640    4, 8, 25, 8   7, 7, 14, 20   6, 6, 6, 6
============  ====================  ============  =============  ==========

Every variant: decay ``init`` 2, FFN ratios 4, 4, 3, 3, decomposed attention in stages 1-3, full in stage 4.

Normalisation is BatchNorm (the original hard-codes SyncBatchNorm; same tensor names). The original's ``forward``
takes a 3-channel depth and uses channel 0; here the encoder takes the 1-channel map directly. The original also
asks, with ``norm_eval``, that BatchNorm stay in eval mode while training, but its check (``isinstance(m,
nn.BatchNorm2d)``) never matches its ``SyncBatchNorm`` layers, so its BatchNorms do train; rgbx's train too.

Like DFormer (v1), these encoders take two inputs and are registered in ``BACKBONES`` (``dformerv2_s/b/l``) only so
that configs name them; the ``dformerv2`` fusion is what uses them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from rgbx.errors import ConfigError
from rgbx.models.backbones.dformer import joint_rgbd_factory, read_dformer_state_dict
from rgbx.models.layers import (
    FeatureInfo,
    LayerNorm,
    check_attn_impl,
    drop_path_layer,
    stochastic_depth_rates,
)
from rgbx.models.registries import BACKBONES
from rgbx.models.weights import load_strict

__all__ = [
    "DFORMERV2_VARIANTS",
    "DFormerv2",
    "DFormerv2Arch",
    "GeometryBlock",
    "GeometryPrior",
    "GeometrySelfAttention",
    "load_dformerv2_weights",
    "read_dformerv2_state_dict",
]


@dataclass(frozen=True)
class DFormerv2Arch:
    """Architecture of a DFormerv2 variant (see the module docstring)."""

    dims: tuple[int, ...] = (64, 128, 256, 512)
    depths: tuple[int, ...] = (3, 4, 18, 4)
    num_heads: tuple[int, ...] = (4, 4, 8, 16)
    heads_ranges: tuple[float, ...] = (4, 4, 6, 6)
    layer_scales: tuple[bool, ...] = (False, False, False, False)
    decay_inits: tuple[float, ...] = (2, 2, 2, 2)
    mlp_ratios: tuple[float, ...] = (4, 4, 3, 3)
    # stages whose attention is full (every position with every other); the others use the row/column version
    full_attention: tuple[bool, ...] = (False, False, False, True)


_LATE_SCALES = (False, False, True, True)

DFORMERV2_VARIANTS: dict[str, DFormerv2Arch] = {
    "dformerv2_s": DFormerv2Arch((64, 128, 256, 512), (3, 4, 18, 4), (4, 4, 8, 16), (4, 4, 6, 6)),
    "dformerv2_b": DFormerv2Arch((80, 160, 320, 512), (4, 8, 25, 8), (5, 5, 10, 16), (5, 5, 6, 6), _LATE_SCALES),
    "dformerv2_l": DFormerv2Arch((112, 224, 448, 640), (4, 8, 25, 8), (7, 7, 14, 20), (6, 6, 6, 6), _LATE_SCALES),
    # Not published: one block per stage, layer scales in the last two stages (as B / L), for tests and CPU demos.
    "dformerv2_nano": DFormerv2Arch((16, 32, 64, 128), (1, 1, 1, 1), (2, 2, 4, 8), (4, 4, 6, 6), _LATE_SCALES),
}


class ChannelsLastDWConv(nn.Module):
    """Depthwise conv (stride 1, "same" padding) on a channels-last (B, H, W, C) map; the conv is ``dwconv``, as
    in the original's tensor names."""

    def __init__(self, dim: int, kernel_size: int):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dwconv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


def rotate_pairs(x: torch.Tensor, sin: torch.Tensor, cos: torch.Tensor) -> torch.Tensor:
    """Rotary embedding on adjacent channel pairs: (x0, x1) → (x0·cos − x1·sin, x1·cos + x0·sin)."""
    even, odd = x[..., ::2], x[..., 1::2]
    return x * cos + torch.stack((-odd, even), dim=-1).flatten(-2) * sin


class GeometryPrior(nn.Module):
    """The per-block geometry prior: rotary tables and the additive attention bias (module docstring).

    ``angle`` and ``decay`` are persistent buffers (they are in the released checkpoints); ``weight`` holds the two
    learned mixing weights of the positional and the depth distance, shaped (2, 1, 1, 1) as in the original.
    """

    def __init__(self, dim: int, num_heads: int, decay_init: float, heads_range: float):
        super().__init__()
        head_dim = dim // num_heads
        freqs = 1.0 / (10000 ** torch.linspace(0, 1, head_dim // 2))
        self.register_buffer("angle", freqs.repeat_interleave(2))
        heads = torch.arange(num_heads, dtype=torch.float)
        self.register_buffer("decay", torch.log(1 - 2 ** (-decay_init - heads_range * heads / num_heads)))
        self.weight = nn.Parameter(torch.ones(2, 1, 1, 1))

    def rotary(self, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(sin, cos), each (H, W, head_dim): the angle of position (i, j) is its flat index i·W + j times the
        channel's frequency."""
        index = self._positions(h * w)
        phase = (index[:, None] * self.angle[None, :]).reshape(h, w, -1)
        return torch.sin(phase), torch.cos(phase)

    def _positions(self, n: int) -> torch.Tensor:
        """0 … n − 1 made where the buffers are: no host → device copy in the forward pass."""
        return torch.arange(n, device=self.decay.device, dtype=self.decay.dtype)

    def _line_distance(self, n: int) -> torch.Tensor:
        index = self._positions(n)
        return (index[:, None] - index[None, :]).abs()

    def full_bias(self, depth: torch.Tensor) -> torch.Tensor:
        """(B, heads, HW, HW) bias for full attention; ``depth`` (B, H, W) on the stage grid."""
        b, h, w = depth.shape
        grid = torch.stack(torch.meshgrid(self._positions(h), self._positions(w), indexing="ij"), dim=-1)
        grid = grid.reshape(h * w, 2)
        pos = (grid[:, None, :] - grid[None, :, :]).abs().sum(dim=-1)  # Manhattan distance
        flat = depth.reshape(b, h * w)
        dist = (flat[:, :, None] - flat[:, None, :]).abs()
        decay = self.decay[:, None, None]
        return self.weight[0] * (pos * decay) + self.weight[1] * (dist[:, None] * decay)

    def row_bias(self, depth: torch.Tensor) -> torch.Tensor:
        """(B, H, heads, W, W) bias for attention along each row; ``depth`` (B, H, W)."""
        decay = self.decay[:, None, None]
        pos = self._line_distance(depth.shape[2]) * decay  # (heads, W, W)
        dist = (depth[..., :, None] - depth[..., None, :]).abs()  # (B, H, W, W)
        return self.weight[0] * pos + self.weight[1] * (dist[:, :, None] * decay)

    def column_bias(self, depth: torch.Tensor) -> torch.Tensor:
        """(B, W, heads, H, H) bias for attention along each column; ``depth`` (B, H, W)."""
        return self.row_bias(depth.transpose(1, 2))


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, attn_impl: str) -> torch.Tensor:
    """softmax(q·kᵀ + bias)·v (``k`` already carries the 1/√d scale). The row / column attention's 5-D tensors go
    to ``scaled_dot_product_attention`` as 4-D ones (leading dimensions merged), the layout its fused kernels take."""
    if attn_impl == "sdpa":
        lead = q.shape[:-3]
        q, k, v, bias = (t.flatten(0, -4) if t.dim() > 4 else t for t in (q, k, v, bias.to(q.dtype)))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=1.0)
        return out.view(*lead, *out.shape[-3:])
    return torch.softmax(q @ k.transpose(-2, -1) + bias, dim=-1) @ v


class GeometrySelfAttention(nn.Module):
    """Geometry self-attention on a channels-last map, full or decomposed into rows then columns (module
    docstring)."""

    def __init__(self, dim: int, num_heads: int, full: bool, attn_impl: str = "sdpa"):
        super().__init__()
        if dim % num_heads or (dim // num_heads) % 2:
            raise ValueError(f"DFormerv2 attention: {dim} channels need an even width per head ({num_heads} heads)")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.full = full
        self.attn_impl = check_attn_impl(attn_impl)
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.lepe = ChannelsLastDWConv(dim, 5)
        self.out_proj = nn.Linear(dim, dim)

    def set_attn_impl(self, attn_impl: str) -> None:
        self.attn_impl = check_attn_impl(attn_impl)

    def forward(self, x: torch.Tensor, prior: GeometryPrior, depth: torch.Tensor) -> torch.Tensor:
        """(B, H, W, C) normalised map, the block's prior module and the (B, H, W) depth on the stage grid."""
        b, h, w, c = x.shape
        n, d = self.num_heads, self.head_dim
        sin, cos = prior.rotary(h, w)
        v = self.v_proj(x)
        lepe = self.lepe(v)
        q = rotate_pairs(self.q_proj(x).view(b, h, w, n, d).permute(0, 3, 1, 2, 4), sin, cos)  # (B, n, H, W, d)
        k = rotate_pairs((self.k_proj(x) * d**-0.5).view(b, h, w, n, d).permute(0, 3, 1, 2, 4), sin, cos)
        v = v.view(b, h, w, n, d)
        if self.full:
            out = _attend(q.flatten(2, 3), k.flatten(2, 3), v.flatten(1, 2).transpose(1, 2), prior.full_bias(depth),
                          self.attn_impl)  # (B, n, HW, d)
            out = out.transpose(1, 2).reshape(b, h, w, c)
        else:
            # along rows: (B, H, n, W, ·)
            rows = _attend(q.transpose(1, 2), k.transpose(1, 2), v.transpose(2, 3), prior.row_bias(depth),
                           self.attn_impl)
            # then along columns of the row result: (B, W, n, H, ·)
            out = _attend(q.permute(0, 3, 1, 2, 4), k.permute(0, 3, 1, 2, 4), rows.permute(0, 3, 2, 1, 4),
                          prior.column_bias(depth), self.attn_impl)
            out = out.permute(0, 3, 1, 2, 4).reshape(b, h, w, c)
        return self.out_proj(out + lepe)


class GeometryFFN(nn.Module):
    """``fc2(u + DWConv3×3(u))`` with ``u = GELU(fc1(x))``, channels-last."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = ChannelsLastDWConv(hidden, 3)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = F.gelu(self.fc1(x))
        return self.fc2(u + self.dwconv(u))


class GeometryBlock(nn.Module):
    """Conv positional encoding, geometry self-attention and FFN, each residual; layer-scaled where the variant
    says so. Tensor names follow the original (``Attention``, ``Geo``, ``layer_norm1``, ``gamma_1`` …)."""

    compile_region = True

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, full: bool, decay_init: float,
                 heads_range: float, layer_scale: bool, drop_path: float | None = None, attn_impl: str = "sdpa",
                 layer_scale_init: float = 1e-6):
        super().__init__()
        self.cnn_pos_encode = ChannelsLastDWConv(dim, 3)
        self.layer_norm1 = LayerNorm(dim, eps=1e-6)
        self.layer_norm2 = LayerNorm(dim, eps=1e-6)
        self.Attention = GeometrySelfAttention(dim, num_heads, full, attn_impl)
        self.ffn = GeometryFFN(dim, int(mlp_ratio * dim))
        self.Geo = GeometryPrior(dim, num_heads, decay_init, heads_range)
        self.drop_path = drop_path_layer(drop_path)
        self.layer_scale = layer_scale
        if layer_scale:
            self.gamma_1 = nn.Parameter(torch.full((1, 1, 1, dim), layer_scale_init))
            self.gamma_2 = nn.Parameter(torch.full((1, 1, 1, dim), layer_scale_init))

    def forward(self, x: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
        """(B, H, W, C) map and (B, H, W) depth on the same grid → (B, H, W, C)."""
        x = x + self.cnn_pos_encode(x)
        t = self.Attention(self.layer_norm1(x), self.Geo, depth)
        x = x + self.drop_path(self.gamma_1 * t if self.layer_scale else t)
        t = self.ffn(self.layer_norm2(x))
        return x + self.drop_path(self.gamma_2 * t if self.layer_scale else t)


class PatchMerging(nn.Module):
    """Conv3×3 stride 2 → BatchNorm, channels-last in and out (``reduction``, ``norm`` as in the original)."""

    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        self.reduction = nn.Conv2d(dim, out_dim, kernel_size=3, stride=2, padding=1)
        self.norm = nn.BatchNorm2d(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.reduction(x.permute(0, 3, 1, 2))).permute(0, 2, 3, 1)


class GeometryStage(nn.Module):
    """``blocks`` then, except in the last stage, ``downsample`` (applied by the encoder to the stage output)."""

    def __init__(self, blocks: Sequence[GeometryBlock], downsample: PatchMerging | None):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.downsample = downsample


def _patch_embed(dim: int) -> nn.Module:
    half = dim // 2
    stem = nn.Module()
    stem.proj = nn.Sequential(
        nn.Conv2d(3, half, 3, 2, 1), nn.BatchNorm2d(half), nn.GELU(),
        nn.Conv2d(half, half, 3, 1, 1), nn.BatchNorm2d(half), nn.GELU(),
        nn.Conv2d(half, dim, 3, 2, 1), nn.BatchNorm2d(dim), nn.GELU(),
        nn.Conv2d(dim, dim, 3, 1, 1), nn.BatchNorm2d(dim),
    )
    return stem


def _init_weights(module: nn.Module) -> None:
    """The original's initialisation (its ``dformerv2._init_weights``, applied last, so it also replaces the
    attention's own xavier initialisation): Linear weights truncated-normal (std 0.02) with zero biases, LayerNorms
    at identity; convolutions and BatchNorm keep PyTorch's defaults."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class DFormerv2(nn.Module):
    """The DFormerv2 RGB-D encoder.

    Args:
        arch: the variant (see :data:`DFORMERV2_VARIANTS`).
        drop_path_rate: stochastic depth, linear over all blocks from 0 (the original's configs: S 0.25, B 0.2,
            L 0.3 on NYU Depth V2; 0.1, 0.1, 0.27 on SUN RGB-D).
        attn_impl: ``"sdpa"`` or ``"eager"``.

    Attributes:
        feature_info: the stage maps (channels ``dims``, reductions 4, 8, 16, 32).
    """

    def __init__(self, arch: DFormerv2Arch, drop_path_rate: float = 0.1, attn_impl: str = "sdpa"):
        super().__init__()
        check_attn_impl(attn_impl)
        n = len(arch.dims)
        fields = (arch.depths, arch.num_heads, arch.heads_ranges, arch.layer_scales, arch.decay_inits,
                  arch.mlp_ratios, arch.full_attention)
        if any(len(f) != n for f in fields):
            raise ValueError("DFormerv2Arch: every per-stage field needs one entry per stage")
        self.arch = arch
        self.patch_embed = _patch_embed(arch.dims[0])
        rates = stochastic_depth_rates(drop_path_rate, sum(arch.depths))
        self.layers = nn.ModuleList()
        cur = 0
        for i, dim in enumerate(arch.dims):
            blocks = [
                GeometryBlock(dim, arch.num_heads[i], arch.mlp_ratios[i], arch.full_attention[i], arch.decay_inits[i],
                              arch.heads_ranges[i], arch.layer_scales[i], rates[cur + j], attn_impl)
                for j in range(arch.depths[i])
            ]
            cur += arch.depths[i]
            self.layers.append(GeometryStage(blocks, PatchMerging(dim, arch.dims[i + 1]) if i < n - 1 else None))
        # the original's stage outputs 2-4 pass through a LayerNorm with PyTorch's default eps (1e-5)
        self.extra_norms = nn.ModuleList(LayerNorm(d) for d in arch.dims[1:])
        self.feature_info = FeatureInfo(
            {"num_chs": d, "reduction": 4 * 2**i, "module": f"layers.{i}", "num_heads": h}
            for i, (d, h) in enumerate(zip(arch.dims, arch.num_heads, strict=True))
        )
        self.apply(_init_weights)

    def forward(self, rgb: torch.Tensor, depth: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, H, W) RGB and (B, 1, H, W) depth → the 4 stage maps (B, d_i, H/r_i, W/r_i), NCHW.

        The depth map is resized from the input resolution to each stage's grid (bilinear, ``align_corners``
        False, no antialiasing: the original's sampling, reproduced exactly), once per stage.
        """
        if rgb.dim() != 4 or rgb.shape[1] != 3 or depth.dim() != 4 or depth.shape[1] != 1:
            raise ConfigError(
                f"DFormerv2 takes rgb (B, 3, H, W) and depth (B, 1, H, W), got {tuple(rgb.shape)} and "
                f"{tuple(depth.shape)}"
            )
        x = self.patch_embed.proj(rgb).permute(0, 2, 3, 1)
        outs = []
        for i, stage in enumerate(self.layers):
            grid = F.interpolate(depth.to(x.dtype), size=x.shape[1:3], mode="bilinear", align_corners=False)[:, 0]
            for block in stage.blocks:
                x = block(x, grid)
            out = x if i == 0 else self.extra_norms[i - 1](x)
            outs.append(out.permute(0, 3, 1, 2).contiguous())
            if stage.downsample is not None:
                x = stage.downsample(x)
        return outs

    def forward_stage(self, index: int, x: torch.Tensor, stem: nn.Module | None = None) -> torch.Tensor:
        raise ConfigError("DFormerv2 encoders take RGB and depth jointly; only fusion 'dformerv2' can use them")

    def make_stem(self, in_channels: int) -> nn.Module:
        raise ConfigError("DFormerv2 encoders take RGB and depth jointly; only fusion 'dformerv2' can use them")


def read_dformerv2_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The encoder tensors of a released DFormerv2 file (ImageNet-pretrained or segmentation): read as DFormer v1's
    (:func:`~rgbx.models.backbones.dformer.read_dformer_state_dict`: ``torch.load(weights_only=True)`` or
    safetensors, wrappers unwrapped, ``module.`` / ``backbone.`` stripped, decode / aux / classifier heads
    dropped)."""
    return read_dformer_state_dict(path)


def load_dformerv2_weights(model: DFormerv2, path: str | Path) -> None:
    """Load a released DFormerv2 checkpoint strictly into ``model`` (every tensor, including the prior's ``angle``
    and ``decay`` buffers, which the original saves)."""
    load_strict(model, read_dformerv2_state_dict(path), str(path))


for _name in DFORMERV2_VARIANTS:
    BACKBONES.register(_name)(joint_rgbd_factory(_name, DFORMERV2_VARIANTS[_name], DFormerv2, load_dformerv2_weights,
                                                 "DFormerv2", "dformerv2"))

