"""CMX: cross-modal feature rectification and fusion between per-modality encoder branches, for N modalities.

Paper: Zhang, Liu et al., "CMX: Cross-Modal Fusion for RGB-X Semantic Segmentation with Transformers", IEEE T-ITS
2023 (arXiv:2203.04838). Original code: https://github.com/huaaaliu/RGBX_Semantic_Segmentation (MIT licence),
``models/net_utils.py`` (FRM, FFM) and ``models/encoders/dual_segformer.py``; this file is an independent
implementation.

Structure: one backbone branch per modality (separate weights). After stage ``i`` of every branch:

1. **FRM** (feature rectification) — from the concatenation of all modality maps, channel weights
   (GAP ‖ GMP → Linear(2NC, 2NC) → ReLU → Linear(2NC, NC) → sigmoid, one C-vector per modality) and spatial weights
   (1×1 conv NC → C → ReLU → 1×1 conv C → N → sigmoid, one map per modality). Modality ``m`` is rectified as
   ``x_m + mean_{j ≠ m, present} (λc · cw_j · x_j + λs · sw_j · x_j)``, λc = λs = 0.5. The rectified maps continue
   into stage ``i + 1`` of their branches.
2. **FFM** (feature fusion), on the rectified maps. *Cross path*: per modality, Linear(C, 2C) → ReLU → split into
   ``y_m`` and ``u_m``; efficient cross attention — each modality's context ``ctx_j = softmax(k_jᵀ v_j · d^-½)``
   (the softmax over the key-feature axis, dim -2, as the original ``CrossAttention``; k, v = Linear(u_j) without
   bias, queries are ``u_m`` itself, heads = the backbone stage's heads) and ``v_m = u_m @ mean_{j ≠ m, present}
   ctx_j``; then ``LayerNorm(x_m + Linear(y_m ‖ v_m))``. *Channel embedding*: the N per-modality outputs are
   concatenated (NC channels) → ``BN(Conv1×1(·) + BN(Conv1×1 → DW3×3 → ReLU → Conv1×1))`` → the fused C-channel map.

N modalities: every "the other modality" of CMX becomes "the mean over the other present modalities", and every
concatenation of the two modalities becomes a concatenation of N modality slots in the configured order. For
exactly two modalities this is CMX: the same modules with the same shapes (FRM Linear(4C, 4C), Linear(4C, 2C),
Conv(2C, C), Conv(C, 2); FFM Linear(C, 2C) ×2, kv Linear(C, 2C) ×2, Linear(2C, C) ×2, ChannelEmbed(2C → C)) and
the same equations. At least two modalities must be configured (for one, use the ``mean`` fusion: a plain encoder).

Absent modalities (a modality not passed, absent for the whole batch, or absent for some samples per ``present``):

* a modality absent for the whole batch is not run through its branch;
* for a sample where modality ``j`` is absent, ``j``'s map is replaced by zeros wherever maps are concatenated
  (the FRM weight predictors, the FFM channel embedding) and ``j`` is left out of every "mean over the other present
  modalities" (rectification terms and cross-attention contexts);
* a present modality with no other present modality in its sample is not rectified (its map passes unchanged) and
  its cross-attention term is zero (``v_m = 0``), so its fused map comes from its own ``y_m`` path only;
* ``features[j]`` (the branch output of each stage, before rectification) and the rectified map that continues
  into ``j``'s next stage are zero for samples where ``j`` is absent.

So nothing that an absent sample holds in ``inputs`` reaches the fused maps or the logits.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from rgbx.errors import ConfigError
from rgbx.models.fusions.base import EncoderOutput, FusionEncoder, others_weights
from rgbx.models.layers import LayerNorm, init_weights, map_to_tokens, mask_absent, tokens_to_map
from rgbx.models.registries import FUSIONS, build_backbone

__all__ = [
    "ChannelEmbed",
    "ChannelWeights",
    "CMXFusion",
    "CrossAttention",
    "CrossPath",
    "FeatureFusionModule",
    "FeatureRectifyModule",
    "SpatialWeights",
]


def _fill_slots(tensors: dict[str, torch.Tensor], modalities: Sequence[str]) -> list[torch.Tensor]:
    """``tensors`` in the order of ``modalities``, zeros (of the first tensor's shape) for a modality not computed;
    the zeros are made only when one is missing (a fill kernel per stage saved for complete inputs)."""
    zeros = None
    slots = []
    for m in modalities:
        if m in tensors:
            slots.append(tensors[m])
        else:
            if zeros is None:
                zeros = torch.zeros_like(next(iter(tensors.values())))
            slots.append(zeros)
    return slots


class ChannelWeights(nn.Module):
    """GAP ‖ GMP of the N concatenated maps → MLP → sigmoid: one channel-weight vector per modality."""

    def __init__(self, dim: int, num_modalities: int, reduction: int = 1):
        super().__init__()
        width = 2 * num_modalities * dim
        self.mlp = nn.Sequential(
            nn.Linear(width, width // reduction),
            nn.ReLU(inplace=True),
            nn.Linear(width // reduction, num_modalities * dim),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, C, H, W) → (B, N, C, 1, 1)."""
        b, n, c = x.shape[:3]
        flat = x.flatten(1, 2)
        pooled = torch.cat((flat.mean(dim=(2, 3)), flat.amax(dim=(2, 3))), dim=1)  # (B, 2NC)
        return self.mlp(pooled).view(b, n, c, 1, 1)


class SpatialWeights(nn.Module):
    """1×1 conv (NC → C) → ReLU → 1×1 conv (C → N) → sigmoid: one spatial-weight map per modality."""

    def __init__(self, dim: int, num_modalities: int, reduction: int = 1):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Conv2d(num_modalities * dim, dim // reduction, kernel_size=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(dim // reduction, num_modalities, kernel_size=1),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, C, H, W) → (B, N, 1, H, W)."""
        return self.mlp(x.flatten(1, 2)).unsqueeze(2)


class FeatureRectifyModule(nn.Module):
    """FRM for N modality slots: each present modality gets the weighted maps of the other present ones added."""

    compile_region = True  # compiled on its own under SpeedOptions(compile=True, compile_scope="blocks")

    def __init__(
        self, dim: int, num_modalities: int, reduction: int = 1, lambda_c: float = 0.5, lambda_s: float = 0.5
    ):
        super().__init__()
        self.lambda_c = lambda_c
        self.lambda_s = lambda_s
        self.channel_weights = ChannelWeights(dim, num_modalities, reduction)
        self.spatial_weights = SpatialWeights(dim, num_modalities, reduction)

    def forward(self, x: torch.Tensor, present: torch.Tensor | None, others: torch.Tensor) -> torch.Tensor:
        """Rectify.

        Args:
            x: (B, N, C, H, W), zeros in the slots of absent modalities.
            present: (B, N) bool; None: every slot present in every sample.
            others: (B, N, N) from :func:`others_weights`.

        Returns:
            (B, N, C, H, W) rectified maps, zeros where absent.
        """
        cw = self.channel_weights(x)
        sw = self.spatial_weights(x)
        contribution = self.lambda_c * cw * x + self.lambda_s * sw * x
        out = x + torch.einsum("bmj,bjchw->bmchw", others.to(contribution.dtype), contribution)
        if present is None:  # every slot present in every sample
            return out
        return torch.where(present.view(*present.shape, 1, 1, 1), out, 0.0)


class CrossAttention(nn.Module):
    """Efficient cross attention: each modality's queries read the mean context of the other present modalities."""

    def __init__(self, dim: int, modalities: Sequence[str], num_heads: int = 1, qkv_bias: bool = False):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by {num_heads} heads")
        self.modalities = tuple(modalities)
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.kv = nn.ModuleDict({m: nn.Linear(dim, dim * 2, bias=qkv_bias) for m in self.modalities})

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        return x.reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def forward(
        self, u: dict[str, torch.Tensor], present: torch.Tensor | None, others: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Args: u: modality → (B, L, C) for the computed modalities; present (B, N) bool (None: all present) and
        others (B, N, N) over all configured slots. Returns modality → (B, L, C)."""
        b, length, c = next(iter(u.values())).shape
        d = c // self.num_heads
        contexts = {}
        for m, x in u.items():
            k, v = self.kv[m](x).reshape(b, length, 2, self.num_heads, d).permute(2, 0, 3, 1, 4)
            ctx = ((k.transpose(-2, -1) @ v) * self.scale).softmax(dim=-2)  # (B, heads, d, d)
            contexts[m] = mask_absent(ctx, None if present is None else present[:, self.modalities.index(m)])
        stacked = torch.stack(_fill_slots(contexts, self.modalities), dim=1)  # (B, N, heads, d, d)
        mixed = torch.einsum("bmj,bjhde->bmhde", others.to(stacked.dtype), stacked)
        return {
            m: (self._heads(x) @ mixed[:, self.modalities.index(m)]).transpose(1, 2).reshape(b, length, c)
            for m, x in u.items()
        }


class CrossPath(nn.Module):
    """Per modality: Linear → ReLU → (y, u); cross attention on u; ``LayerNorm(x + Linear(y ‖ attn(u)))``."""

    def __init__(self, dim: int, modalities: Sequence[str], num_heads: int = 1, reduction: int = 1):
        super().__init__()
        hidden = dim // reduction
        self.channel_proj = nn.ModuleDict({m: nn.Linear(dim, hidden * 2) for m in modalities})
        self.act = nn.ReLU(inplace=True)
        self.cross_attn = CrossAttention(hidden, modalities, num_heads)
        self.end_proj = nn.ModuleDict({m: nn.Linear(hidden * 2, dim) for m in modalities})
        self.norm = nn.ModuleDict({m: LayerNorm(dim) for m in modalities})

    def forward(
        self, x: dict[str, torch.Tensor], present: torch.Tensor | None, others: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """modality → (B, L, C) tokens → modality → (B, L, C)."""
        y, u = {}, {}
        for m, tokens in x.items():
            y[m], u[m] = self.act(self.channel_proj[m](tokens)).chunk(2, dim=-1)
        attended = self.cross_attn(u, present, others)
        return {m: self.norm[m](x[m] + self.end_proj[m](torch.cat((y[m], attended[m]), dim=-1))) for m in x}


class ChannelEmbed(nn.Module):
    """``BN(Conv1×1(x) + BN(Conv1×1 → DW3×3 → ReLU → Conv1×1)(x))``: concatenated modalities → fused map."""

    def __init__(self, in_channels: int, out_channels: int, reduction: int = 1):
        super().__init__()
        hidden = out_channels // reduction
        self.residual = nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False)
        self.channel_embed = nn.Sequential(
            nn.Conv2d(in_channels, hidden, kernel_size=1),
            nn.Conv2d(hidden, hidden, kernel_size=3, padding=1, groups=hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, out_channels, kernel_size=1),
            nn.BatchNorm2d(out_channels),
        )
        self.norm = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_channels, H, W) → (B, out_channels, H, W)."""
        return self.norm(self.residual(x) + self.channel_embed(x))


class FeatureFusionModule(nn.Module):
    """FFM: cross path over the modalities, then channel embedding of their concatenation (absent slots = 0)."""

    compile_region = True  # compiled on its own under SpeedOptions(compile=True, compile_scope="blocks")

    def __init__(self, dim: int, modalities: Sequence[str], num_heads: int = 1, reduction: int = 1):
        super().__init__()
        self.modalities = tuple(modalities)
        self.cross = CrossPath(dim, modalities, num_heads, reduction)
        self.channel_emb = ChannelEmbed(dim * len(self.modalities), dim, reduction)

    def forward(
        self, x: dict[str, torch.Tensor], present: torch.Tensor | None, others: torch.Tensor
    ) -> torch.Tensor:
        """Args: x: modality → (B, C, H, W) rectified maps of the computed modalities; present (B, N) bool (None: all
        present) and others (B, N, N) over all configured slots. Returns the fused (B, C, H, W) map."""
        ref = next(iter(x.values()))
        hw = (ref.shape[2], ref.shape[3])
        out = self.cross({m: map_to_tokens(v) for m, v in x.items()}, present, others)
        maps = {m: mask_absent(tokens_to_map(out[m], hw), None if present is None else present[:, i])
                for i, m in enumerate(self.modalities) if m in out}
        return self.channel_emb(torch.cat(_fill_slots(maps, self.modalities), dim=1))


@FUSIONS.register("cmx")
class CMXFusion(FusionEncoder):
    """One backbone branch per modality with FRM + FFM after every stage (see the module docstring).

    Args:
        backbone: a registered backbone name; every modality gets its own copy (``in_channels`` = its channels).
        modalities: at least two registered modality names; their order fixes the concatenation order.
        drop_path_rate: stochastic depth of each branch.
        attn_impl: the branches' self-attention implementation, ``"sdpa"`` or ``"eager"``.
        lambda_c, lambda_s: weights of the channel and spatial rectification terms.
        input_encoding: the network's own input encoding per modality, where it differs from rgbx's normalisation
            (:mod:`rgbx.models.input_encoding`; set by ``model.input_encoding``).
    """

    def __init__(
        self,
        backbone: str = "mit_b0",
        modalities: Sequence[str] = ("rgb", "depth"),
        drop_path_rate: float = 0.1,
        attn_impl: str = "sdpa",
        lambda_c: float = 0.5,
        lambda_s: float = 0.5,
        pretrained: str = "",
        input_encoding: Mapping | None = None,
    ):
        super().__init__(modalities, input_encoding)
        if len(self.modalities) < 2:
            raise ConfigError(
                f"the cmx fusion needs at least two modalities, got {list(self.modalities)}; "
                "for a single modality use fusion 'mean' (a plain encoder)"
            )
        self.branches = nn.ModuleDict(
            {
                m: build_backbone(backbone, in_channels=c, drop_path_rate=drop_path_rate, attn_impl=attn_impl,
                                  pretrained=pretrained)
                for m, c in self.in_channels.items()
            }
        )
        self.feature_info = next(iter(self.branches.values())).feature_info
        n = len(self.modalities)
        self.rectify = nn.ModuleList(
            FeatureRectifyModule(info["num_chs"], n, lambda_c=lambda_c, lambda_s=lambda_s)
            for info in self.feature_info
        )
        self.fuse = nn.ModuleList(
            FeatureFusionModule(info["num_chs"], self.modalities, info.get("num_heads", 1))
            for info in self.feature_info
        )
        self.rectify.apply(init_weights)
        self.fuse.apply(init_weights)

    def forward(
        self, inputs: Mapping[str, torch.Tensor], present: Mapping[str, torch.Tensor] | None = None
    ) -> EncoderOutput:
        """Encode and fuse.

        Args:
            inputs: modality → (B, C_m, H, W); any non-empty subset of :attr:`modalities`.
            present: modality → (B,) bool; missing entries (or ``None``) mean present for every sample.

        Returns:
            :class:`EncoderOutput`: 4 fused maps; ``features[m]`` = branch ``m``'s stage outputs before
            rectification, for the computed modalities.
        """
        inputs, present = self.prepare(inputs, present)
        names = self.computed(present)
        ref = inputs[names[0]]
        batch = ref.shape[0]
        absent = torch.zeros(batch, dtype=torch.bool, device=ref.device)
        slot_present = torch.stack(
            [present[m] if m in names else absent for m in self.modalities], dim=1
        )  # (B, N)
        others = others_weights(slot_present)
        slot = {m: self.modalities.index(m) for m in names}
        # masks known on the host to be all-true are left out (None): no masking kernels for complete batches
        masks = {m: None if m in present.certain else present[m] for m in names}
        every_slot = len(names) == len(self.modalities) and all(masks[m] is None for m in names)
        slot_mask = None if every_slot else slot_present

        x = {m: mask_absent(inputs[m], present[m]) for m in names}  # an absent sample's input reaches no stem
        features: dict[str, list[torch.Tensor]] = {m: [] for m in names}
        fused = []
        for index, (rectify, fuse) in enumerate(zip(self.rectify, self.fuse, strict=True)):
            x = {m: mask_absent(self.branches[m].forward_stage(index, x[m]), masks[m]) for m in names}
            for m in names:
                features[m].append(x[m])
            stacked = torch.stack(_fill_slots(x, self.modalities), dim=1)  # (B, N, C, H, W)
            rectified = rectify(stacked, slot_mask, others)
            x = {m: rectified[:, slot[m]] for m in names}
            fused.append(fuse(x, slot_mask, others))
        return EncoderOutput(fused=fused, features=features, present=present)
