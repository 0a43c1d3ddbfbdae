"""DFormer: a joint RGB-D encoder with an RGB branch and a half-width depth branch that interact in every block.

Paper: Yin et al., "DFormer: Rethinking RGBD Representation Learning for Semantic Segmentation", ICLR 2024
(arXiv:2309.09668). Original code: https://github.com/VCIP-RGBD/DFormer (MIT licence), ``models/encoders/DFormer.py``;
this file is an independent implementation whose parameter names follow that file, so a released checkpoint's
``backbone.*`` tensors load with :func:`rgbx.models.weights.load_strict` once the prefix is stripped.

Structure (``d_i`` = stage width of the RGB branch; the depth branch runs at ``d_i / 2`` everywhere)::

    RGB stem    downsample_layers.0   = Conv3×3(3 → d0/2, s2) → BN → GELU → Conv3×3(→ d0, s2) → BN     (1/4)
    depth stem  downsample_layers_e.0 = Conv3×3(1 → d0/4, s2) → BN → GELU → Conv3×3(→ d0/2, s2) → BN   (1/4)
    downsample  downsample_layers{,_e}.i (i = 1..3) = BN → Conv3×3(s2)  (d_{i-1} → d_i, halved for depth)
    stage i     ``depths[i]`` joint blocks on channels-last maps (x: B×H×W×d_i, e: B×H×W×d_i/2)

Joint block (``stages.i.j``), with ``C = d_i``, LayerNorms eps 1e-6, layer scale initialised to 1e-6::

    x̂ = norm(x), ê = norm_e(e)
    u = GELU(l(x̂))                                     (C)
    a = a(DWConv7×7(u))  ;  s = q(x̂) ⊙ a               (C)            "large-kernel conv attention"
    g = q_cut(x̂) ⊙ e_back(DWConv7×7(e_fore(ê)))        (C/2)          depth-gated RGB features
    window stages only (``window`` = 7, all stages but the first):
        queries = short_cut_linear(AvgPool→7×7(x̂ ‖ ê))  (C/2, 49 tokens), k, v = split(kv(u)) (C/2 each),
        t = bilinear-resize(MHA(queries, k, v)) to H×W  (C/2)          "global window attention"
    z = s ‖ t ‖ g   (2C; without t in the first stage: 3C/2)
    x ← x + γ1 · proj(z);      x ← x + γ2 · mlp(x)
    e ← e + γ1e · proj_e(z);   e ← e + γ2e · mlp_e2(e)
    mlp(y) = fc2(GELU(p + DWConv3×3(p))), p = fc1(norm(y))      (ratio 8, 8, 4, 4 per stage)

Drop path (rate linear in the block index from 0 to ``drop_path_rate``) wraps each of the four residual terms.
The very last block of the last stage has no depth output (``proj_e``, ``mlp_e2``, ``γ1e``, ``γ2e`` are absent:
its depth result would not be used), as in the original. Only the RGB branch's stage outputs go to a decoder.

Variants (dims / depths / heads; window stages 2-4; MLP ratios 8, 8, 4, 4):

=========  ==================  ============  =========
DFormer-T  32, 64, 128, 256    3, 3, 5, 2    1, 2, 4, 8
DFormer-S  64, 128, 256, 512   2, 2, 4, 2    1, 2, 4, 8
DFormer-B  64, 128, 256, 512   3, 3, 12, 2   1, 2, 4, 8
DFormer-L  96, 192, 288, 576   3, 3, 12, 2   1, 2, 4, 8
=========  ==================  ============  =========

Normalisation is BatchNorm (the original's ``norm_cfg`` BN / SyncBN, same tensor names). The original's
``forward`` takes a 3-channel depth and uses channel 0; here the encoder takes the 1-channel map directly (the
``dformer`` fusion passes channel 0 of a 3-channel depth-like input such as HHA).

These encoders take two inputs, so they are not :class:`~rgbx.models.backbones.base.StagedBackbone` s; they are
registered in ``BACKBONES`` (``dformer_t/s/b/l``) so that configs name them, but only the ``dformer`` fusion
(:mod:`rgbx.models.fusions.dformer`) can use them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from rgbx.errors import CheckpointError, ConfigError
from rgbx.models.layers import (
    FeatureInfo,
    LayerNorm,
    adaptive_avg_pool,
    check_attn_impl,
    drop_path_layer,
    fused_linear_params,
    resize,
    stacked_linear_params,
    stochastic_depth_rates,
)
from rgbx.models.registries import BACKBONES
from rgbx.models.weights import load_strict, read_state_dict, read_weights_file

__all__ = [
    "DFormer",
    "DFormerArch",
    "DFormerAttention",
    "DFormerBlock",
    "DFormerMLP",
    "DFORMER_VARIANTS",
    "InferenceFusion",
    "LayerScaledBlock",
    "load_dformer_weights",
    "read_dformer_state_dict",
]


@dataclass(frozen=True)
class DFormerArch:
    """Architecture of a DFormer variant (see the module docstring)."""

    dims: tuple[int, ...] = (32, 64, 128, 256)
    depths: tuple[int, ...] = (3, 3, 5, 2)
    num_heads: tuple[int, ...] = (1, 2, 4, 8)
    windows: tuple[int, ...] = (0, 7, 7, 7)
    mlp_ratios: tuple[int, ...] = (8, 8, 4, 4)


DFORMER_VARIANTS: dict[str, DFormerArch] = {
    "dformer_t": DFormerArch((32, 64, 128, 256), (3, 3, 5, 2)),
    "dformer_s": DFormerArch((64, 128, 256, 512), (2, 2, 4, 2)),
    "dformer_b": DFormerArch((64, 128, 256, 512), (3, 3, 12, 2)),
    "dformer_l": DFormerArch((96, 192, 288, 576), (3, 3, 12, 2)),
    # Not published: one block per stage, for tests and CPU demos.
    "dformer_nano": DFormerArch((16, 32, 64, 128), (1, 1, 1, 1)),
}


class InferenceFusion:
    """Mixin for a module whose projections can be fused (``SpeedOptions.fuse_projections``), in one of two ways.

    ``fused``: inference-only fused copies of its weights, held as non-persistent buffers, so the state dict keeps the
    trained tensors; loading a state dict clears it, since the copies would be stale
    (:func:`~rgbx.engine.fastpath.prepare_inference` fuses again). ``fuse_live``: the same fused weights formed from
    the weights at every forward pass (:func:`~rgbx.models.layers.stacked_linear_params`), so the module trains."""

    fused = False
    fuse_live = False

    def _hold_fused(self, **tensors: torch.Tensor) -> None:
        for name, tensor in tensors.items():
            self.register_buffer(name, tensor, persistent=False)
        self.fused = True

    def _load_from_state_dict(self, *args, **kwargs):
        self.fused = False
        super()._load_from_state_dict(*args, **kwargs)


class LayerScaledBlock(InferenceFusion):
    """Mixin for a block whose residual terms are ``DropPath(γ ⊙ t)``; ``fused`` or ``fuse_live``: every γ is folded
    into the layer that makes ``t``, so the term is ``DropPath(t)``."""

    @property
    def folded(self) -> bool:
        return self.fused or self.fuse_live

    @property
    def live(self) -> bool:
        """Whether this forward pass forms the fused weights itself (``fuse_live`` without cached copies)."""
        return self.fuse_live and not self.fused

    def set_live_fusion(self, on: bool) -> None:
        """``SpeedOptions.fuse_projections`` in training: this block and its token mixer and MLPs form their fused,
        layer-scaled weights at every forward pass."""
        for module in self.modules():
            if isinstance(module, InferenceFusion):
                module.fuse_live = on

    def _update(self, scale: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.dropout_layer(t if self.folded else scale * t)

    def _promoted(self, stream: torch.Tensor) -> torch.Tensor:
        """``stream`` in the dtype that ``stream + γ ⊙ t`` would have (float32 for a bf16 stream and fp32 γ)."""
        return stream.to(torch.promote_types(stream.dtype, self.layer_scale_1.dtype))


class DFormerMLP(InferenceFusion, nn.Module):
    """``fc2(GELU(p + DWConv3×3(p)))`` with ``p = fc1(LayerNorm(x))``, on channels-last (B, H, W, C) maps."""

    def __init__(self, dim: int, mlp_ratio: int):
        super().__init__()
        hidden = dim * mlp_ratio
        self.norm = LayerNorm(dim, eps=1e-6)
        self.fc1 = nn.Linear(dim, hidden)
        self.pos = nn.Conv2d(hidden, hidden, kernel_size=3, padding=1, groups=hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.act = nn.GELU()

    def fold_scale(self, scale: torch.Tensor) -> None:
        """Inference only: return ``scale ⊙ mlp(x)`` (a layer scale γ) from ``fc2`` itself, γ folded into copies of
        its weight and bias (non-persistent buffers: the state dict keeps the trained tensors)."""
        weight, bias = fused_linear_params([self.fc2], [scale])
        self._hold_fused(fused_fc2_weight=weight, fused_fc2_bias=bias)

    def forward(self, x: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
        """``scale``: the layer scale γ to fold into ``fc2`` at this pass (``fuse_live``); fused: already folded."""
        p = self.fc1(self.norm(x)).permute(0, 3, 1, 2)
        # p + pos(p), summed into the convolution's output (which its backward pass does not keep): the same values,
        # and no new hidden-width map (8 × C channels in stages 1-2); on the CPU each fresh one costs its page
        # faults (DFormer-L batch-1 latency 512 -> 451 ms)
        p = self.pos(p).add_(p).permute(0, 2, 3, 1)
        if self.fused:
            return F.linear(self.act(p), self.fused_fc2_weight, self.fused_fc2_bias)
        if scale is not None:
            return F.linear(self.act(p), *stacked_linear_params([self.fc2], [scale]))
        return self.fc2(self.act(p))


class DFormerAttention(InferenceFusion, nn.Module):
    """The joint RGB/depth token mixer of a DFormer block (module docstring); channels-last maps in and out.

    Args:
        dim: RGB width C (depth width C/2).
        num_heads: heads of the window attention (head width C / 2 / heads).
        window: 0 (no window attention) or the pooled query grid side (7).
        depth_out: compute the depth output (``proj_e``); False for the encoder's last block.
        attn_impl: ``"sdpa"`` or ``"eager"``.
    """

    def __init__(self, dim: int, num_heads: int, window: int = 7, depth_out: bool = True, attn_impl: str = "sdpa"):
        super().__init__()
        half = dim // 2
        if window and half % num_heads:
            raise ValueError(f"DFormer attention: {half} channels are not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.window = window
        self.depth_out = depth_out
        self.attn_impl = check_attn_impl(attn_impl)
        self.matmul_resize = False  # SpeedOptions.matmul_resize (Segmentor.set_matmul_resize)
        self.q = nn.Linear(dim, dim)
        self.q_cut = nn.Linear(dim, half)
        self.a = nn.Linear(dim, dim)
        self.l = nn.Linear(dim, dim)  # noqa: E741 — the original's name, kept so checkpoints load
        self.conv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.e_conv = nn.Conv2d(half, half, kernel_size=7, padding=3, groups=half)
        self.e_fore = nn.Linear(half, half)
        self.e_back = nn.Linear(half, half)
        mixed = 2 * dim if window else 3 * half
        self.proj = nn.Linear(mixed, dim)
        if depth_out:
            self.proj_e = nn.Linear(mixed, half)
        if window:
            self.short_cut_linear = nn.Linear(3 * half, half)
            self.kv = nn.Linear(dim, dim)
        self.act = nn.GELU()
        self.norm = LayerNorm(dim, eps=1e-6)
        self.norm_e = LayerNorm(half, eps=1e-6)

    def set_attn_impl(self, attn_impl: str) -> None:
        self.attn_impl = check_attn_impl(attn_impl)

    def fuse_projections(self, scale: torch.Tensor | None = None, scale_e: torch.Tensor | None = None) -> None:
        """Inference only (``SpeedOptions.fuse_projections``): the three projections of the normalised RGB map
        (``q``, ``q_cut``, ``l``) as one matrix product, and the two of the mixed map (``proj``, ``proj_e``) as
        another, with the block's layer scales ``scale`` (γ1) and ``scale_e`` (γ1e) folded into the latter; the
        block then adds the updates unscaled. The same function: only the rounding differs. The fused weights are
        non-persistent buffers, so the state dict keeps the trained tensors; loading a state dict undoes the fusion,
        and a fused module refuses to train."""
        in_weight, in_bias = fused_linear_params([self.q, self.q_cut, self.l])
        outs = [self.proj, self.proj_e] if self.depth_out else [self.proj]
        out_weight, out_bias = fused_linear_params(outs, [scale, scale_e][: len(outs)])
        self._hold_fused(fused_in_weight=in_weight, fused_in_bias=in_bias, fused_out_weight=out_weight,
                         fused_out_bias=out_bias)

    def _in_projections(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``q(x)``, ``q_cut(x)``, ``l(x)``."""
        c = x.shape[-1]
        if self.fused:
            if self.training:
                raise ConfigError("this DFormer block was fused for inference (SpeedOptions.fuse_projections) and "
                                  "cannot be trained; build the model again")
            return F.linear(x, self.fused_in_weight, self.fused_in_bias).split((c, c // 2, c), dim=-1)
        if self.fuse_live:
            return F.linear(x, *stacked_linear_params([self.q, self.q_cut, self.l])).split((c, c // 2, c), dim=-1)
        return self.q(x), self.q_cut(x), self.l(x)

    def _out_projections(self, z: torch.Tensor, depth_out: bool, scales: Sequence[torch.Tensor | None] | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``proj(z)`` and ``proj_e(z)`` (None unless ``depth_out``); fused: already multiplied by γ1 / γ1e;
        ``scales`` (γ1, γ1e) given (``fuse_live``): multiplied by them, folded into the weights at this pass."""
        c = self.proj.out_features
        if self.fused:
            if not depth_out:
                return F.linear(z, self.fused_out_weight[:c], self.fused_out_bias[:c]), None
            dx, de = F.linear(z, self.fused_out_weight, self.fused_out_bias).split((c, c // 2), dim=-1)
            return dx, de
        if scales is not None:
            outs = [self.proj, self.proj_e] if depth_out else [self.proj]
            y = F.linear(z, *stacked_linear_params(outs, list(scales)[: len(outs)]))
            return (y, None) if not depth_out else tuple(y.split((c, c // 2), dim=-1))
        return self.proj(z), (self.proj_e(z) if depth_out else None)

    def _window_attention(self, x: torch.Tensor, e: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Pooled (x ‖ e) queries attend to every position of ``u``; the w×w result is resized back to H×W."""
        b, h, w, c = x.shape
        heads, d, win = self.num_heads, c // 2 // self.num_heads, self.window
        xe = torch.cat((x, e), dim=3).permute(0, 3, 1, 2)  # NCHW view of NHWC memory
        pooled = adaptive_avg_pool(xe, (win, win), matmul=self.matmul_resize).permute(0, 2, 3, 1)
        query = self.short_cut_linear(pooled).reshape(b, win * win, heads, d).transpose(1, 2)
        k, v = self.kv(u).reshape(b, h * w, 2, heads, d).permute(2, 0, 3, 1, 4)
        if self.attn_impl == "sdpa":
            out = F.scaled_dot_product_attention(query, k, v)
        else:
            out = ((query * d**-0.5) @ k.transpose(-2, -1)).softmax(dim=-1) @ v
        out = out.transpose(2, 3).reshape(b, heads * d, win, win)  # channel = head · d + i
        out = resize(out, (h, w), matmul=self.matmul_resize)
        return out.permute(0, 2, 3, 1)

    def forward(self, x: torch.Tensor, e: torch.Tensor, scales: Sequence[torch.Tensor | None] | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x: (B, H, W, C), e: (B, H, W, C/2) → RGB update (B, H, W, C), depth update (B, H, W, C/2) or None.
        ``scales``: the block's (γ1, γ1e), to fold into the output projections at this pass (``fuse_live``)."""
        x = self.norm(x)
        e = self.norm_e(e)
        q, q_cut, l = self._in_projections(x)  # noqa: E741
        u = self.act(l)
        a = self.a(self.conv(u.permute(0, 3, 1, 2)).permute(0, 2, 3, 1))
        gate = self.e_back(self.e_conv(self.e_fore(e).permute(0, 3, 1, 2)).permute(0, 2, 3, 1))
        parts = [q * a]
        if self.window:
            parts.append(self._window_attention(x, e, u))
        parts.append(q_cut * gate)
        z = torch.cat(parts, dim=3)
        return self._out_projections(z, self.depth_out, scales)


class DFormerBlock(LayerScaledBlock, nn.Module):
    """Joint block: residual token mixing and MLP for both branches, layer-scaled, with drop path."""

    compile_region = True  # compiled on its own under SpeedOptions(compile=True, compile_scope="blocks")

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: int,
        window: int,
        drop_path: float | None = None,
        depth_out: bool = True,
        attn_impl: str = "sdpa",
        layer_scale_init: float = 1e-6,
    ):
        super().__init__()
        self.depth_out = depth_out
        self.attn = DFormerAttention(dim, num_heads, window, depth_out, attn_impl)
        self.mlp = DFormerMLP(dim, mlp_ratio)
        self.dropout_layer = drop_path_layer(drop_path)
        self.layer_scale_1 = nn.Parameter(torch.full((dim,), layer_scale_init))
        self.layer_scale_2 = nn.Parameter(torch.full((dim,), layer_scale_init))
        if depth_out:
            self.layer_scale_1_e = nn.Parameter(torch.full((dim // 2,), layer_scale_init))
            self.layer_scale_2_e = nn.Parameter(torch.full((dim // 2,), layer_scale_init))
            self.mlp_e2 = DFormerMLP(dim // 2, mlp_ratio)

    def fuse_for_inference(self) -> None:
        """``SpeedOptions.fuse_projections``: fused projections in the token mixer
        (:meth:`DFormerAttention.fuse_projections`) and every layer scale folded into the layer whose output it
        scales. Inference only."""
        self.attn.fuse_projections(self.layer_scale_1, self.layer_scale_1_e if self.depth_out else None)
        self.mlp.fold_scale(self.layer_scale_2)
        if self.depth_out:
            self.mlp_e2.fold_scale(self.layer_scale_2_e)
        self.fused = True

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Channels-last (x, e) → (x, e); without a depth output ``e`` is returned unchanged."""
        live = self.live
        if live:  # the residual streams in γ's dtype (float32 under autocast), as γ ⊙ t makes them unfused
            x, e = self._promoted(x), self._promoted(e)
        scales = (self.layer_scale_1, self.layer_scale_1_e if self.depth_out else None) if live else None
        dx, de = self.attn(x, e, scales)
        x = x + self._update(self.layer_scale_1, dx)
        x = x + self._update(self.layer_scale_2, self.mlp(x, self.layer_scale_2 if live else None))
        if self.depth_out:
            e = e + self._update(self.layer_scale_1_e, de)
            e = e + self._update(self.layer_scale_2_e, self.mlp_e2(e, self.layer_scale_2_e if live else None))
        return x, e


def _stem(in_channels: int, out_channels: int) -> nn.Sequential:
    mid = out_channels // 2
    return nn.Sequential(
        nn.Conv2d(in_channels, mid, kernel_size=3, stride=2, padding=1),
        nn.BatchNorm2d(mid),
        nn.GELU(),
        nn.Conv2d(mid, out_channels, kernel_size=3, stride=2, padding=1),
        nn.BatchNorm2d(out_channels),
    )


def _downsample(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.BatchNorm2d(in_channels), nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=2, padding=1)
    )


class DFormer(nn.Module):
    """The DFormer RGB-D encoder.

    Args:
        arch: the variant (see :data:`DFORMER_VARIANTS`).
        drop_path_rate: stochastic depth, linear over all blocks from 0.
        attn_impl: the window attention's implementation, ``"sdpa"`` or ``"eager"``.

    Attributes:
        feature_info: the RGB branch's stage maps (channels ``dims``, reductions 4, 8, 16, 32).
        depth_feature_info: the depth branch's stage maps (channels ``dims / 2``).
    """

    def __init__(self, arch: DFormerArch, drop_path_rate: float = 0.1, attn_impl: str = "sdpa"):
        super().__init__()
        check_attn_impl(attn_impl)
        dims = arch.dims
        n = len(dims)
        if not (len(arch.depths) == len(arch.num_heads) == len(arch.windows) == len(arch.mlp_ratios) == n):
            raise ValueError("DFormerArch: dims, depths, num_heads, windows and mlp_ratios need one entry per stage")
        self.arch = arch
        self.downsample_layers = nn.ModuleList([_stem(3, dims[0])])
        self.downsample_layers_e = nn.ModuleList([_stem(1, dims[0] // 2)])
        for i in range(1, n):
            self.downsample_layers.append(_downsample(dims[i - 1], dims[i]))
            self.downsample_layers_e.append(_downsample(dims[i - 1] // 2, dims[i] // 2))
        total = sum(arch.depths)
        rates = stochastic_depth_rates(drop_path_rate, total)
        self.stages = nn.ModuleList()
        cur = 0
        for i in range(n):
            self.stages.append(
                nn.Sequential(
                    *[
                        DFormerBlock(
                            dims[i],
                            arch.num_heads[i],
                            arch.mlp_ratios[i],
                            arch.windows[i],
                            drop_path=rates[cur + j],
                            depth_out=not (i == n - 1 and j == arch.depths[i] - 1),
                            attn_impl=attn_impl,
                        )
                        for j in range(arch.depths[i])
                    ]
                )
            )
            cur += arch.depths[i]
        self.feature_info = FeatureInfo(
            {"num_chs": d, "reduction": 4 * 2**i, "module": f"stages.{i}", "num_heads": h}
            for i, (d, h) in enumerate(zip(dims, arch.num_heads, strict=True))
        )
        self.depth_feature_info = FeatureInfo(
            {"num_chs": d // 2, "reduction": 4 * 2**i, "module": f"stages.{i}"} for i, d in enumerate(dims)
        )

    def forward_features(self, rgb: torch.Tensor, depth: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(B, 3, H, W) RGB and (B, 1, H, W) depth → (RGB stage maps, depth stage maps), both NCHW.

        The depth map of the last stage is the depth branch's state entering the last block (that block computes
        no depth output).
        """
        if rgb.dim() != 4 or rgb.shape[1] != 3 or depth.dim() != 4 or depth.shape[1] != 1:
            raise ConfigError(
                f"DFormer takes rgb (B, 3, H, W) and depth (B, 1, H, W), got {tuple(rgb.shape)} and "
                f"{tuple(depth.shape)}"
            )
        x, e = rgb, depth
        outs, outs_e = [], []
        for down, down_e, stage in zip(self.downsample_layers, self.downsample_layers_e, self.stages, strict=True):
            x = down(x).permute(0, 2, 3, 1)
            e = down_e(e).permute(0, 2, 3, 1)
            for block in stage:
                x, e = block(x, e)
            x = x.permute(0, 3, 1, 2)
            e = e.permute(0, 3, 1, 2)
            outs.append(x)
            outs_e.append(e)
        return outs, outs_e

    def forward(self, rgb: torch.Tensor, depth: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, H, W) RGB and (B, 1, H, W) depth → the 4 RGB-branch stage maps (B, d_i, H/r_i, W/r_i)."""
        return self.forward_features(rgb, depth)[0]

    def forward_stage(self, index: int, x: torch.Tensor, stem: nn.Module | None = None) -> torch.Tensor:
        raise ConfigError("DFormer encoders take RGB and depth jointly; only fusion 'dformer' can use them")

    def make_stem(self, in_channels: int) -> nn.Module:
        raise ConfigError("DFormer encoders take RGB and depth jointly; only fusion 'dformer' can use them")


# Prefixes of released checkpoints that are not encoder tensors: the segmentation heads of NYU / SUN RGB-D
# checkpoints (``decode_head.*``, ``aux_head.*``) and the classifier of ImageNet-pretrained encoders.
NON_ENCODER_PREFIXES = ("decode_head.", "aux_head.", "head.")


def read_dformer_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The encoder tensors of a released DFormer file: ``state_dict_ema`` / ``state_dict`` / ``model`` wrappers
    unwrapped, ``module.`` and ``backbone.`` prefixes stripped, decoder / classifier tensors dropped."""
    path = Path(path)
    if path.suffix != ".safetensors" and path.is_file():
        raw = read_weights_file(path)
        if isinstance(raw, dict) and isinstance(raw.get("state_dict_ema"), dict):
            raw = raw["state_dict_ema"]
        for key in ("state_dict", "model"):
            if isinstance(raw, dict) and isinstance(raw.get(key), dict):
                raw = raw[key]
        if not isinstance(raw, dict) or not all(isinstance(v, torch.Tensor) for v in raw.values()):
            raise CheckpointError(f"{path}: expected a dict of tensors (a state dict)")
        state = raw
    else:
        state = read_state_dict(path)
    out = {}
    for key, value in state.items():
        key = key.removeprefix("module.")
        if key.startswith(NON_ENCODER_PREFIXES):
            continue
        out[key.removeprefix("backbone.")] = value
    return out


def load_dformer_weights(model: DFormer, path: str | Path) -> None:
    """Load a released DFormer checkpoint (segmentation or ImageNet-pretrained) strictly into ``model``."""
    load_strict(model, read_dformer_state_dict(path), str(path))


def joint_rgbd_factory(name: str, arch, build, load, family: str, fusion: str):
    """The ``BACKBONES`` factory of a joint RGB-D encoder variant (DFormer's, DFormerv2's): ``build(arch,
    drop_path_rate=, attn_impl=)`` the encoder, ``load(model, path)`` a released checkpoint into it; ``in_channels``
    other than RGB's 3 is refused, since only the ``fusion`` of that name feeds it RGB and depth."""

    def create(
        in_channels: int | None = None, drop_path_rate: float = 0.1, attn_impl: str = "sdpa", pretrained: str = ""
    ):
        if in_channels not in (None, 3):
            raise ConfigError(
                f"backbone {name!r} is a joint RGB-D encoder (inputs RGB and depth); only fusion {fusion!r} can use it"
            )
        model = build(arch, drop_path_rate=drop_path_rate, attn_impl=attn_impl)
        if pretrained:
            load(model, pretrained)
        return model

    create.__name__ = name
    label = ("tiny test variant, not published, no pretrained weights" if name.endswith("_nano")
             else f"{family}-{name[-1].upper()}")
    create.__doc__ = (
        f"{label}: dims {arch.dims}, depths {arch.depths}, heads {arch.num_heads}. A joint RGB-D encoder "
        f"(``forward(rgb, depth)``); only the ``{fusion}`` fusion uses it. ``pretrained``: a local released "
        f"{family} checkpoint."
    )
    return create


for _name in DFORMER_VARIANTS:
    BACKBONES.register(_name)(joint_rgbd_factory(_name, DFORMER_VARIANTS[_name], DFormer, load_dformer_weights,
                                                 "DFormer", "dformer"))


def arch_of(name: str) -> DFormerArch:
    """The :class:`DFormerArch` of a registered variant name (``dformer_t`` …), or a ConfigError."""
    if name not in DFORMER_VARIANTS:
        raise ConfigError(f"unknown DFormer variant {name!r}; choose one of: {', '.join(DFORMER_VARIANTS)}")
    return DFORMER_VARIANTS[name]


def variant_names() -> Sequence[str]:
    return tuple(DFORMER_VARIANTS)
