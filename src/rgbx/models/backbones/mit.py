"""Mix Transformer (MiT), the SegFormer encoder.

Paper: Xie et al., "SegFormer: Simple and Efficient Design for Semantic Segmentation with Transformers",
NeurIPS 2021 (arXiv:2105.15203). Original code: https://github.com/NVlabs/SegFormer (NVIDIA Source Code License,
non-commercial); this file is an independent implementation of the published architecture.

Four stages; each is an overlapping patch embedding (strided conv + LayerNorm), a stack of transformer blocks with
*efficient self-attention* (keys/values spatially reduced by a strided conv of ratio ``sr``) and *Mix-FFN* (MLP with a
depth-wise 3×3 conv instead of positional encodings), and a final LayerNorm. Stages are a ``ModuleList`` so that a
fusion can run them one at a time (``backbone.stages[i](x)`` / ``backbone.forward_stage(i, x)``).

Parameter names inside a block follow the original code (``attn.q``, ``attn.kv``, ``attn.sr``, ``mlp.fc1``,
``mlp.dwconv.dwconv``, ...); only the stage prefix differs (``stages.0.blocks`` for ``block1``);
:func:`checkpoint_filter_fn` converts original SegFormer / CMX encoder checkpoints.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from rgbx.errors import CheckpointError, ConfigError
from rgbx.models.layers import (
    DWConv,
    FeatureInfo,
    LayerNorm,
    check_attn_impl,
    drop_path_layer,
    init_weights,
    map_to_tokens,
    stochastic_depth_rates,
    tokens_to_map,
)
from rgbx.models.registries import BACKBONES
from rgbx.models.weights import adapt_conv_weight, load_strict, read_state_dict

__all__ = [
    "EfficientSelfAttention",
    "MiTArch",
    "MiTBlock",
    "MiTStage",
    "MixFFN",
    "MixTransformer",
    "OverlapPatchEmbed",
    "checkpoint_filter_fn",
    "load_mit_weights",
    "original_key_to_rgbx",
]


@dataclass(frozen=True)
class MiTArch:
    """Architecture of one MiT variant (per-stage tuples of length 4)."""

    embed_dims: tuple[int, ...]
    depths: tuple[int, ...]
    num_heads: tuple[int, ...] = (1, 2, 5, 8)
    sr_ratios: tuple[int, ...] = (8, 4, 2, 1)
    mlp_ratio: float = 4.0
    patch_sizes: tuple[int, ...] = (7, 3, 3, 3)
    strides: tuple[int, ...] = (4, 2, 2, 2)
    qkv_bias: bool = True

    def __post_init__(self):
        fields = ("embed_dims", "depths", "num_heads", "sr_ratios", "patch_sizes", "strides")
        if len({len(getattr(self, f)) for f in fields}) != 1:
            raise ValueError(f"MiTArch: {', '.join(fields)} must all have one entry per stage")
        for dim, heads in zip(self.embed_dims, self.num_heads):
            if dim % heads:
                raise ValueError(f"MiTArch: embed dim {dim} is not divisible by {heads} heads")


class OverlapPatchEmbed(nn.Module):
    """Strided conv with overlapping windows (``padding = patch_size // 2``) + LayerNorm → tokens."""

    def __init__(self, in_channels: int, dim: int, patch_size: int, stride: int):
        super().__init__()
        self.in_channels = in_channels
        self.proj = nn.Conv2d(
            in_channels, dim, kernel_size=patch_size, stride=stride, padding=patch_size // 2
        )
        self.norm = LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """(B, C_in, H, W) → tokens (B, H'·W', C) and (H', W') with H' = ceil(H / stride)."""
        x = self.proj(x)
        hw = (x.shape[2], x.shape[3])
        return self.norm(map_to_tokens(x)), hw


class EfficientSelfAttention(nn.Module):
    """Multi-head self-attention whose keys/values come from a map reduced by a conv of stride ``sr_ratio``.

    ``attn_impl="sdpa"`` uses :func:`torch.nn.functional.scaled_dot_product_attention`; ``"eager"`` writes out
    ``softmax(q kᵀ / sqrt(d)) v`` (same result, visible to FLOP counters).
    """

    def __init__(
        self, dim: int, num_heads: int, sr_ratio: int = 1, qkv_bias: bool = True, attn_impl: str = "sdpa"
    ):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.sr_ratio = sr_ratio
        self.attn_impl = check_attn_impl(attn_impl)
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, dim * 2, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, kernel_size=sr_ratio, stride=sr_ratio)
            self.norm = LayerNorm(dim)
        else:
            self.sr = None
            self.norm = None

    def reduce(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        """Tokens (B, N, C) → reduced key/value tokens (B, N / sr², C).

        Maps smaller than ``sr`` in a dimension are zero-padded up to ``sr`` (so tiny inputs still work); otherwise
        trailing rows/columns that do not fill a window are dropped, as in the original.
        """
        if self.sr is None:
            return x
        m = tokens_to_map(x, hw)
        pad_h, pad_w = max(self.sr_ratio - hw[0], 0), max(self.sr_ratio - hw[1], 0)
        if pad_h or pad_w:
            m = F.pad(m, (0, pad_w, 0, pad_h))
        return self.norm(map_to_tokens(self.sr(m)))

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        """(B, N, C) tokens of an H×W grid → (B, N, C)."""
        b, n, c = x.shape
        q = self.q(x).reshape(b, n, self.num_heads, self.head_dim).transpose(1, 2)
        kv = (
            self.kv(self.reduce(x, hw))
            .reshape(b, -1, 2, self.num_heads, self.head_dim)
            .permute(2, 0, 3, 1, 4)
        )
        k, v = kv.unbind(0)
        if self.attn_impl == "sdpa":
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            attn = (q @ k.transpose(-2, -1)) * self.scale
            out = attn.softmax(dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class MixFFN(nn.Module):
    """Linear → depth-wise 3×3 conv → GELU → Linear."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.dwconv = DWConv(hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        return self.fc2(self.act(self.dwconv(self.fc1(x), hw)))


class MiTBlock(nn.Module):
    """Pre-norm transformer block: ``x + DropPath(Attn(LN(x)))``, then ``x + DropPath(MixFFN(LN(x)))``."""

    compile_region = True  # compiled on its own under SpeedOptions(compile=True, compile_scope="blocks")

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        sr_ratio: int = 1,
        qkv_bias: bool = True,
        drop_path: float | None = None,
        attn_impl: str = "sdpa",
    ):
        super().__init__()
        self.norm1 = LayerNorm(dim, eps=1e-6)
        self.attn = EfficientSelfAttention(dim, num_heads, sr_ratio, qkv_bias, attn_impl)
        self.drop_path = drop_path_layer(drop_path)
        self.norm2 = LayerNorm(dim, eps=1e-6)
        self.mlp = MixFFN(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), hw))
        return x + self.drop_path(self.mlp(self.norm2(x), hw))


class MiTStage(nn.Module):
    """Patch embedding → blocks → LayerNorm; input and output are (B, C, H, W) maps.

    ``patch_embed`` is None for a first stage built without a stem (``MixTransformer(in_channels=None)``); then the
    caller embeds the input itself (one stem per modality) and calls :meth:`run` on the tokens.
    """

    def __init__(
        self,
        patch_embed: OverlapPatchEmbed | None,
        dim: int,
        depth: int,
        num_heads: int,
        mlp_ratio: float,
        sr_ratio: int,
        qkv_bias: bool,
        drop_path: list[float | None],
        attn_impl: str,
    ):
        super().__init__()
        self.patch_embed = patch_embed
        self.blocks = nn.ModuleList(
            MiTBlock(dim, num_heads, mlp_ratio, sr_ratio, qkv_bias, drop_path[j], attn_impl)
            for j in range(depth)
        )
        self.norm = LayerNorm(dim, eps=1e-6)

    def run(self, tokens: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        """Embedded tokens (B, H·W, C) → output map (B, C, H, W)."""
        for block in self.blocks:
            tokens = block(tokens, hw)
        return tokens_to_map(self.norm(tokens), hw)

    def forward(self, x: torch.Tensor, patch_embed: nn.Module | None = None) -> torch.Tensor:
        """(B, C_in, H, W) → (B, C, ceil(H / stride), ceil(W / stride)).

        ``patch_embed`` replaces the stage's own embedding (e.g. a per-modality stem for the first stage).
        """
        embed = patch_embed if patch_embed is not None else self.patch_embed
        if embed is None:
            raise RuntimeError("this stage was built without a patch embedding; pass patch_embed (a stem)")
        return self.run(*embed(x))


class MixTransformer(nn.Module):
    """The MiT encoder.

    Args:
        arch: the variant's architecture (see the registered ``mit_*`` factories).
        in_channels: input channels of the first patch embedding (the stem). ``None`` builds the encoder without a
            stem, for callers that embed each modality with its own stem (:meth:`make_stem`).
        drop_path_rate: stochastic depth rate of the last block, increasing linearly from 0 over all blocks.
        attn_impl: ``"sdpa"`` (fused kernel) or ``"eager"`` (explicit softmax, for FLOP counting).

    Attributes:
        stages: ``ModuleList`` of 4 :class:`MiTStage`.
        feature_info: channels / reduction / module / heads per stage.
    """

    def __init__(
        self,
        arch: MiTArch,
        in_channels: int | None = 3,
        drop_path_rate: float = 0.1,
        attn_impl: str = "sdpa",
    ):
        super().__init__()
        check_attn_impl(attn_impl)
        if not 0.0 <= drop_path_rate < 1.0:
            raise ConfigError(f"drop_path_rate must be in [0, 1), got {drop_path_rate}")
        self.arch = arch
        self.in_channels = in_channels
        depths = arch.depths
        total = sum(depths)
        rates = stochastic_depth_rates(drop_path_rate, total)
        stages, reduction = [], 1
        prev_dim = in_channels
        for i, dim in enumerate(arch.embed_dims):
            embed = None
            if prev_dim is not None:
                embed = OverlapPatchEmbed(prev_dim, dim, arch.patch_sizes[i], arch.strides[i])
            first = sum(depths[:i])
            stages.append(
                MiTStage(
                    embed,
                    dim,
                    depths[i],
                    arch.num_heads[i],
                    arch.mlp_ratio,
                    arch.sr_ratios[i],
                    arch.qkv_bias,
                    rates[first : first + depths[i]],
                    attn_impl,
                )
            )
            prev_dim = dim
        self.stages = nn.ModuleList(stages)
        self.feature_info = FeatureInfo()
        for i, dim in enumerate(arch.embed_dims):
            reduction *= arch.strides[i]
            self.feature_info.append(
                {
                    "num_chs": dim,
                    "reduction": reduction,
                    "module": f"stages.{i}",
                    "num_heads": arch.num_heads[i],
                }
            )
        self.apply(init_weights)
        # The first patch embedding of loaded weights, kept for make_stem (a stem-less encoder has none of its own).
        self.pretrained_stem: dict[str, torch.Tensor] | None = None

    @property
    def num_stages(self) -> int:
        return len(self.stages)

    def channels(self) -> list[int]:
        return self.feature_info.channels()

    def make_stem(self, in_channels: int) -> OverlapPatchEmbed:
        """A new first-stage patch embedding for ``in_channels`` input channels: a copy of the pretrained stem when
        weights were loaded (:func:`load_mit_weights`; the kernel adapted to the channel count), else initialised."""
        stem = OverlapPatchEmbed(
            in_channels, self.arch.embed_dims[0], self.arch.patch_sizes[0], self.arch.strides[0]
        )
        stem.apply(init_weights)
        if self.pretrained_stem is not None:
            state = dict(self.pretrained_stem)
            state["proj.weight"] = adapt_conv_weight(state["proj.weight"], in_channels)
            load_strict(stem, state, "pretrained MiT stem")
        return stem

    def set_attn_impl(self, attn_impl: str) -> None:
        """Switch every attention layer to ``"sdpa"`` or ``"eager"`` (weights unchanged)."""
        check_attn_impl(attn_impl)
        for m in self.modules():
            if isinstance(m, EfficientSelfAttention):
                m.attn_impl = attn_impl

    def forward_stage(self, index: int, x: torch.Tensor, stem: nn.Module | None = None) -> torch.Tensor:
        """Stage ``index`` alone: (B, C_in, H, W) → (B, C_index, H', W').

        ``stem`` (first stage only) replaces the built-in first patch embedding, e.g. by one from :meth:`make_stem`.
        """
        if stem is not None and index != 0:
            raise ValueError("a stem can only replace the first stage's patch embedding")
        return self.stages[index](x, stem)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, in_channels, H, W) → 4 maps (B, C_i, ceil(H / r_i), ceil(W / r_i)), r = 4, 8, 16, 32."""
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features


_ORIGINAL_KEY = re.compile(r"^(patch_embed|block|norm)([1-9])\.(.+)$")
_ORIGINAL_PART = {"patch_embed": "patch_embed", "block": "blocks", "norm": "norm"}


def original_key_to_rgbx(key: str) -> str | None:
    """One key of the original SegFormer / MiT encoder, without prefix (``patch_embed1.proj.weight``,
    ``block1.0.attn.q.weight``, ``norm1.weight``) → this module's name (``stages.0.patch_embed.proj.weight``,
    ``stages.0.blocks.0.attn.q.weight``, ``stages.0.norm.weight``); None for any other key. Block internals already
    have the original's names. Shared by :func:`checkpoint_filter_fn` and the CMX / CMNeXt / SegFormer conversions
    (:mod:`rgbx.models.convert`, :func:`rgbx.models.fusions.cmnext.cmnext_key_map`)."""
    match = _ORIGINAL_KEY.match(key)
    if match is None:
        return None
    part, stage, rest = match.groups()
    return f"stages.{int(stage) - 1}.{_ORIGINAL_PART[part]}.{rest}"


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an original SegFormer/MiT encoder state dict (``patch_embed1.*``, ``block1.0.*``, ``norm1.*``, optionally
    under ``backbone.``) to this module's names (``stages.0.patch_embed.*``, ``stages.0.blocks.0.*``,
    ``stages.0.norm.*``).

    The ImageNet classification ``head.*`` is dropped; keys already in rgbx form pass through; any other key is kept
    as is so that a strict load reports it.
    """
    out = {}
    for key, value in state_dict.items():
        if key.startswith("head."):
            continue
        out[original_key_to_rgbx(key.removeprefix("backbone.")) or key] = value
    return out


_STEM = "stages.0.patch_embed."
_PROBE = "stages.1.blocks.0.attn.q.weight"  # a key every MiT encoder has, whatever its prefix


def _mit_state_in(state: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """The MiT encoder inside a weights file, in this module's names: an original SegFormer / CMX file
    (``patch_embed1.*``, ``block1.0.*``, optionally under ``backbone.``), a bare rgbx MiT, or an rgbx model file, whose
    encoder is found by its key prefix (``encoder.backbone.`` of a ``mean`` model, ``encoder.branches.rgb.`` of a
    ``cmx`` model: the RGB branch when there are several). A stem kept outside the encoder (``encoder.stems.rgb.``) is
    taken as the first patch embedding."""
    renamed = checkpoint_filter_fn(state)
    prefixes = sorted({k[: -len(_PROBE)] for k in renamed if k.endswith(_PROBE)})
    if not prefixes:
        hint = ""
        if any(k.startswith(("layers.", "backbone.layers.", "segformer.", "encoder.block.")) for k in state):
            hint = ("; it looks like an mmsegmentation or Hugging Face SegFormer file: convert it with `rgbx convert` "
                    "and pass the converted model file")
        raise CheckpointError(f"{source}: no MiT encoder found (expected keys like 'block1.0.attn.q.weight' or "
                              f"'stages.0.blocks.0.attn.q.weight'){hint}")
    if len(prefixes) > 1:
        rgb = [p for p in prefixes if p.rstrip(".").endswith("rgb")]
        if len(rgb) != 1:
            raise CheckpointError(f"{source}: several MiT encoders ({', '.join(repr(p) for p in prefixes)}) and no "
                                  f"single RGB one to choose")
        prefixes = rgb
    prefix = prefixes[0]
    out = {k[len(prefix):]: v for k, v in renamed.items() if k.startswith(prefix)}
    if not any(k.startswith(_STEM) for k in out):
        parent = prefix[: -len("backbone.")] if prefix.endswith("backbone.") else prefix
        stems = sorted({k[len(parent) + len("stems."):].split(".")[0] for k in renamed
                        if k.startswith(parent + "stems.")})
        if stems:
            name = "rgb" if "rgb" in stems else stems[0]
            stem_prefix = f"{parent}stems.{name}."
            out.update({_STEM + k[len(stem_prefix):]: v for k, v in renamed.items() if k.startswith(stem_prefix)})
    return out


def load_mit_weights(model: MixTransformer, path: str) -> None:
    """Load pretrained MiT weights into ``model`` strictly (every missing, unexpected or mis-shaped tensor is listed).

    ``path`` is a local ``.safetensors`` or torch file (read with ``weights_only=True``) in any layout
    :func:`_mit_state_in` knows: the SegFormer ImageNet files (``mit_b2.pth``, as CMX and DFormer's MiT baselines use),
    a bare rgbx MiT, or an rgbx model file (e.g. an RGB model trained with rgbx, to start another run from). The
    first patch embedding is adapted to the model's input channels (summed RGB kernels for 1 channel); for a model
    built without a stem it is kept for :meth:`MixTransformer.make_stem`, so every modality's stem starts from it.
    """
    source = f"pretrained MiT weights {path}"
    state = _mit_state_in(read_state_dict(path), source)
    stem = {k[len(_STEM):]: v for k, v in state.items() if k.startswith(_STEM)}
    if "proj.weight" not in stem:
        raise CheckpointError(f"{source}: no first patch embedding ({_STEM}proj.weight) in the file")
    body = {k: v for k, v in state.items() if not k.startswith(_STEM)}
    if model.in_channels is not None:
        body.update({_STEM + k: v for k, v in stem.items()})
        body[_STEM + "proj.weight"] = adapt_conv_weight(stem["proj.weight"], model.in_channels)
    load_strict(model, body, source)
    model.pretrained_stem = {k: v.clone() for k, v in stem.items()}


def _create(arch: MiTArch, in_channels: int | None, drop_path_rate: float, attn_impl: str,
            pretrained: str = "") -> MixTransformer:
    model = MixTransformer(arch, in_channels=in_channels, drop_path_rate=drop_path_rate, attn_impl=attn_impl)
    if pretrained:
        load_mit_weights(model, pretrained)
    return model


@BACKBONES.register("mit_nano")
def mit_nano(
    in_channels: int | None = 3, drop_path_rate: float = 0.1, attn_impl: str = "sdpa", pretrained: str = ""
) -> MixTransformer:
    """Tiny MiT for tests and CPU demos (dims 16-128, one block per stage, heads 1/2/4/8).

    Not a published SegFormer variant and has no pretrained weights.
    """
    arch = MiTArch(embed_dims=(16, 32, 64, 128), depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8))
    return _create(arch, in_channels, drop_path_rate, attn_impl, pretrained)


@BACKBONES.register("mit_b0")
def mit_b0(
    in_channels: int | None = 3, drop_path_rate: float = 0.1, attn_impl: str = "sdpa", pretrained: str = ""
) -> MixTransformer:
    """MiT-B0 (≈3.3M parameters)."""
    arch = MiTArch(embed_dims=(32, 64, 160, 256), depths=(2, 2, 2, 2))
    return _create(arch, in_channels, drop_path_rate, attn_impl, pretrained)


@BACKBONES.register("mit_b1")
def mit_b1(
    in_channels: int | None = 3, drop_path_rate: float = 0.1, attn_impl: str = "sdpa", pretrained: str = ""
) -> MixTransformer:
    """MiT-B1 (≈13.1M parameters)."""
    arch = MiTArch(embed_dims=(64, 128, 320, 512), depths=(2, 2, 2, 2))
    return _create(arch, in_channels, drop_path_rate, attn_impl, pretrained)


@BACKBONES.register("mit_b2")
def mit_b2(
    in_channels: int | None = 3, drop_path_rate: float = 0.1, attn_impl: str = "sdpa", pretrained: str = ""
) -> MixTransformer:
    """MiT-B2 (≈24.2M parameters)."""
    arch = MiTArch(embed_dims=(64, 128, 320, 512), depths=(3, 4, 6, 3))
    return _create(arch, in_channels, drop_path_rate, attn_impl, pretrained)


@BACKBONES.register("mit_b3")
def mit_b3(
    in_channels: int | None = 3, drop_path_rate: float = 0.1, attn_impl: str = "sdpa", pretrained: str = ""
) -> MixTransformer:
    """MiT-B3 (≈44.0M parameters)."""
    arch = MiTArch(embed_dims=(64, 128, 320, 512), depths=(3, 4, 18, 3))
    return _create(arch, in_channels, drop_path_rate, attn_impl, pretrained)


@BACKBONES.register("mit_b4")
def mit_b4(
    in_channels: int | None = 3, drop_path_rate: float = 0.1, attn_impl: str = "sdpa", pretrained: str = ""
) -> MixTransformer:
    """MiT-B4 (≈60.8M parameters)."""
    arch = MiTArch(embed_dims=(64, 128, 320, 512), depths=(3, 8, 27, 3))
    return _create(arch, in_channels, drop_path_rate, attn_impl, pretrained)


@BACKBONES.register("mit_b5")
def mit_b5(
    in_channels: int | None = 3, drop_path_rate: float = 0.1, attn_impl: str = "sdpa", pretrained: str = ""
) -> MixTransformer:
    """MiT-B5 (≈81.4M parameters)."""
    arch = MiTArch(embed_dims=(64, 128, 320, 512), depths=(3, 6, 40, 3))
    return _create(arch, in_channels, drop_path_rate, attn_impl, pretrained)
