"""CMNeXt: an RGB branch plus one weight-shared branch for any number of supplementary modalities.

Paper: Zhang, Liu, Wang, Peng, Peng, Stiefelhagen, Xie, "Delivering Arbitrary-Modal Semantic Segmentation", CVPR
2023 (arXiv:2303.16450). Original code: https://github.com/jamycheung/DELIVER (Apache-2.0),
``semseg/models/backbones/cmnext.py``, ``semseg/models/modules/mspa.py`` and ``semseg/models/modules/ffm.py``; this
file is an independent implementation that reproduces the original's outputs (``benchmarks/parity.md``).

Structure. The *primary* modality (``"rgb"`` if configured, else the first one) runs through a MiT backbone
(:class:`rgbx.models.backbones.mit.MixTransformer`). Every other configured modality is *supplementary*; all of them
share one second branch. In stage ``i`` (of 4):

1. **Embedding.** Each supplementary modality ``m`` is embedded by the stage's *shared* strided conv (the MiT patch
   embedding shapes: 7×7/4 then 3×3/2) followed by its *own* channel-first LayerNorm (eps 1e-6): ``e_m``.
2. **Self-Query Hub** (only when two or more supplementary modalities are configured): a per-modality score
   ``s_m = sigmoid(Conv1×1_m(DWConv3×3_m(e_m)))`` (one channel), the gated map ``g_m = s_m · e_m + e_m`` and the
   hub map ``h = max_m g_m`` (element-wise). With one supplementary modality ``h = e_m`` (no hub modules exist).
3. **Parallel Pooling Mixer** blocks on ``h`` (``depths[i]`` of them), then a channel-first LayerNorm (eps 1e-6).
   A block is ``x ← x + γ₁ · PPA(BN(x))`` with ``PPA(u) = sigmoid(Conv1×1(a + Σ_k AvgPool_k(a))) · u + u``,
   ``a = DWConv7×7(u)``, average pools k = 3, 7, 11 (stride 1, padding k // 2, ``count_include_pad=False``); then
   ``x ← σ(Conv1d_3(GAP(x))) · x + γ₂ · FFN(BN(x))`` (a channel gate from a 3-tap 1-D conv across the pooled
   channels; FFN = Conv1×1 → DWConv3×3 → GELU → Conv1×1, hidden ratio 8, 8, 4, 4 per stage; γ init 1e-2).
4. **Rectify and fuse** the RGB stage map ``r`` with ``h``: CMX's FRM and FFM for two slots
   (:class:`rgbx.models.fusions.cmx.FeatureRectifyModule` / :class:`~rgbx.models.fusions.cmx.FeatureFusionModule`,
   which for two slots are exactly the original ``FeatureRectifyModule`` / ``FeatureFusionModule`` used by CMNeXt:
   λc = λs = 0.5, reduction 1, FFM heads = the MiT stage's heads). The FFM output is the fused map of stage ``i``.
5. **Next stage inputs.** The RGB branch continues with the rectified ``r``. With one supplementary modality, its
   next input is the rectified ``h``. With several, modality ``m``'s next input is ``relayout(g_m) + h_rect``, where
   ``relayout`` is what the original does to ``g_m`` before the addition: ``g.reshape(B, H, W, C).permute(0, 3, 1,
   2)`` applied to the (B, C, H, W) map, i.e. a fixed re-interpretation of each sample's C·H·W values (the original
   treats the channel-first map as if it were channel-last). It is kept on purpose: trained CMNeXt weights expect it.
   The last stage has no next inputs.

Input channels. The original feeds every modality as a 3-channel image (1-channel depth / LiDAR repeated 3 times)
into one shared 3-input-channel stem conv. rgbx keeps that single shared stem, stored with ``S = max(3, C_m)`` input
channels, and applies it to a C-channel modality with its kernel *folded* onto C channels (``W'_c = Σ_{k ≡ c mod C}
W_k``): exactly the original's result on the input repeated cyclically to S channels (depth/LiDAR: the 3 copies of
DELIVER's loader; 2-channel events: channels (e₀, e₁, e₀)), at the cost of one conv on C channels. The parameter count
therefore equals the original's (CMNeXt-B2 RGB-D-E-L with the 512-channel SegFormer head: 58,732,125).

RGB branch details that follow the original rather than SegFormer: every LayerNorm of the RGB MiT uses eps 1e-5 (the
original's ``nn.LayerNorm`` default; SegFormer uses 1e-6 in the blocks and after each stage).

Absent modalities (a modality not passed, absent for the whole batch, or absent for some samples per ``present``).
The two fusion slots are "primary" and "supplementary"; the supplementary slot is present for a sample when at least
one supplementary modality is.

* A modality absent for the whole batch is not computed: no embedding / score net for a supplementary modality, no
  RGB branch for the primary one; with no supplementary modality present anywhere the whole supplementary branch
  (embeddings, hub, mixer blocks) and the supplementary FFM path are skipped.
* Inputs of absent samples are replaced by zeros before any layer, and every per-modality map is zeroed for them
  (``torch.where``), so nothing an absent sample holds (even NaN) reaches an output or a gradient.
* Hub: ``h`` is the maximum over the supplementary modalities *present for that sample* (an absent modality is not
  a candidate of the max; it is not a zero that would compete). The gating ``s_m`` is per modality and does not
  depend on the others, so a sample's hub map is exactly what running that sample alone with only its present
  modalities gives. A configured-multi-modality model keeps its hub path (score gating, relayout) even when a
  sample has only one supplementary modality present.
* No supplementary modality present for a sample: its supplementary slot is zero and absent; the RGB map is not
  rectified (passes unchanged into the next stage) and its FFM cross-attention term is zero (CMX's rule), so the
  fused map comes from RGB alone through the FFM.
* Primary (RGB) absent for a sample: the primary slot is zero and absent; ``h`` is not rectified, the FFM sees a
  zero RGB slot, the RGB branch's stage maps are zero for that sample (and its next-stage RGB input is zero).
* A sample with no present modality at all gets all-zero fused maps.

In eval mode a sample's outputs therefore equal those of that sample run alone with its absent modalities not
passed. (In training, BatchNorm in the mixer blocks and the FFM mixes batch statistics, as always; absent samples
contribute zeros there, never their inputs.)

Outputs: ``fused`` = the 4 FFM maps. ``features[primary]`` = the RGB branch's stage outputs before rectification;
``features[m]`` for a supplementary modality = its per-modality embedding ``e_m`` of each stage (after the shared conv
and its own LayerNorm, before the hub). The hub / mixer output is not a modality and is not in ``features``.

Checkpoints: :func:`cmnext_key_map` renames an original DELIVER CMNeXt state dict to this module's names.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from rgbx.errors import ConfigError
from rgbx.models.backbones.mit import MixTransformer, original_key_to_rgbx
from rgbx.models.fusions.base import EncoderOutput, FusionEncoder, others_weights
from rgbx.models.fusions.cmx import FeatureFusionModule, FeatureRectifyModule
from rgbx.models.layers import LayerNorm2d, drop_path_layer, init_weights, mask_absent, stochastic_depth_rates
from rgbx.models.registries import FUSIONS, build_backbone

__all__ = [
    "CMNeXtFusion",
    "ParallelPoolingAttention",
    "PoolingMixerBlock",
    "SelfQueryHub",
    "SharedEmbed",
    "SupplementaryStage",
    "cmnext_key_map",
    "fold_conv_weight",
    "reference_relayout",
]

SUPPLEMENTARY_SLOT = "x"
"""Name of the supplementary slot in the FFM's per-slot modules (``fuse.i.cross.channel_proj.x``, ...)."""

RGB_LAYER_NORM_EPS = 1e-5
MIXER_MLP_RATIOS = (8.0, 8.0, 4.0, 4.0)


def fold_conv_weight(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Fold a conv kernel (O, S, kh, kw) onto ``in_channels`` ≤ S inputs: ``W'_c = Σ_{k ≡ c (mod in_channels)} W_k``.

    A conv with ``W'`` on a C-channel input equals the conv with ``W`` on that input repeated cyclically to S
    channels (channel k of the repeated input is channel k mod C)."""
    s = weight.shape[1]
    if in_channels == s:
        return weight
    if not 0 < in_channels <= s:
        raise ValueError(f"cannot fold a {s}-input-channel kernel onto {in_channels} channels")
    return torch.stack([weight[:, c::in_channels].sum(dim=1) for c in range(in_channels)], dim=1)


def reference_relayout(x: torch.Tensor) -> torch.Tensor:
    """The original's ``x.reshape(B, H, W, C).permute(0, 3, 1, 2)`` of a (B, C, H, W) map (see the module docstring):
    output ``[b, c, h, w]`` = the (h·W + w)·C + c-th value of sample b's C·H·W values in (C, H, W) order."""
    b, c, h, w = x.shape
    return x.reshape(b, h, w, c).permute(0, 3, 1, 2)


class SharedEmbed(nn.Module):
    """One strided conv shared by the supplementary modalities + a channel-first LayerNorm per modality.

    Args:
        in_channels: the conv's stored input channels (inputs with fewer channels use the folded kernel).
        dim: output channels.
        patch_size, stride: conv kernel and stride (padding ``patch_size // 2``).
        modalities: the supplementary modalities (one LayerNorm each).
    """

    def __init__(self, in_channels: int, dim: int, patch_size: int, stride: int, modalities: Sequence[str]):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=stride, padding=patch_size // 2)
        self.proj.keep_weight_dtype = True  # folded per input (fold_conv_weight) before use: the sum needs fp32
        self.norms = nn.ModuleDict({m: LayerNorm2d(dim, eps=1e-6) for m in modalities})

    def forward(self, x: torch.Tensor, modality: str) -> torch.Tensor:
        """(B, C, H, W) of ``modality`` → (B, dim, H', W')."""
        weight = fold_conv_weight(self.proj.weight, x.shape[1])
        y = F.conv2d(x, weight, self.proj.bias, self.proj.stride, self.proj.padding)
        return self.norms[modality](y)


class SelfQueryHub(nn.Module):
    """Self-Query Hub: per-modality sigmoid scores gate each map (``g = s·e + e``); the hub map is the element-wise
    maximum of the gated maps over the modalities present for each sample."""

    def __init__(self, dim: int, modalities: Sequence[str]):
        super().__init__()
        self.score = nn.ModuleDict(
            {
                m: nn.Sequential(
                    nn.Conv2d(dim, dim, kernel_size=3, padding=1, groups=dim),
                    nn.Conv2d(dim, 1, kernel_size=1),
                    nn.Sigmoid(),
                )
                for m in modalities
            }
        )

    def forward(
        self, x: Mapping[str, torch.Tensor], present: Mapping[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Args: x: modality → (B, C, H, W) for the computed modalities; present: modality → (B,) bool.

        Returns:
            the hub map (B, C, H, W), zero for samples with no present modality, and modality → gated map ``g_m``.
        """
        gated = {m: self.score[m](e) * e + e for m, e in x.items()}
        ref = next(iter(gated.values()))
        floor = torch.full((), float("-inf"), dtype=ref.dtype, device=ref.device)
        candidates = [torch.where(present[m].view(-1, 1, 1, 1), g, floor) for m, g in gated.items()]
        hub = functools.reduce(torch.maximum, candidates)
        any_present = torch.stack([present[m] for m in gated], dim=1).any(dim=1)
        return mask_absent(hub, any_present), gated


class ParallelPoolingAttention(nn.Module):
    """``sigmoid(Conv1×1(a + Σ_k AvgPool_k(a))) · u + u`` with ``a = DWConv7×7(u)``, k = 3, 7, 11."""

    def __init__(self, dim: int, pool_sizes: Sequence[int] = (3, 7, 11)):
        super().__init__()
        self.conv0 = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.pools = nn.ModuleList(
            nn.AvgPool2d(k, stride=1, padding=k // 2, count_include_pad=False) for k in pool_sizes
        )
        self.conv4 = nn.Conv2d(dim, dim, kernel_size=1)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        a = self.conv0(u)
        s = a
        for pool in self.pools:
            s = s + pool(a)
        return torch.sigmoid(self.conv4(s)) * u + u


class _ConvFFN(nn.Module):
    """Conv1×1 → DWConv3×3 → GELU → Conv1×1 on (B, C, H, W) maps."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden, kernel_size=1)
        self.dwconv = nn.Conv2d(hidden, hidden, kernel_size=3, padding=1, groups=hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden, dim, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.dwconv(self.fc1(x))))


class PoolingMixerBlock(nn.Module):
    """Parallel Pooling Mixer block (see the module docstring, step 3)."""

    compile_region = True  # compiled on its own under SpeedOptions(compile=True, compile_scope="blocks")

    def __init__(self, dim: int, mlp_ratio: float = 4.0, drop_path: float | None = None, layer_scale: float = 1e-2):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(dim)
        self.attn = ParallelPoolingAttention(dim)
        self.drop_path = drop_path_layer(drop_path)
        self.norm2 = nn.BatchNorm2d(dim)
        self.mlp = _ConvFFN(dim, int(dim * mlp_ratio))
        self.layer_scale_1 = nn.Parameter(torch.full((dim,), layer_scale))
        self.layer_scale_2 = nn.Parameter(torch.full((dim,), layer_scale))
        self.c_nets = nn.Sequential(nn.Conv1d(1, 1, kernel_size=3, padding=1, bias=False), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        x = x + self.drop_path(self.layer_scale_1.view(1, c, 1, 1) * self.attn(self.norm1(x)))
        gate = self.c_nets(x.mean(dim=(2, 3)).view(b, 1, c)).view(b, c, 1, 1)
        return gate * x + self.drop_path(self.layer_scale_2.view(1, c, 1, 1) * self.mlp(self.norm2(x)))


class SupplementaryStage(nn.Module):
    """One stage of the supplementary branch: shared embedding, hub (None for one modality), mixer blocks, norm."""

    def __init__(
        self,
        in_channels: int,
        dim: int,
        patch_size: int,
        stride: int,
        modalities: Sequence[str],
        depth: int,
        mlp_ratio: float,
        drop_path: Sequence[float | None],
    ):
        super().__init__()
        self.embed = SharedEmbed(in_channels, dim, patch_size, stride, modalities)
        self.hub = SelfQueryHub(dim, modalities) if len(modalities) > 1 else None
        self.blocks = nn.Sequential(*(PoolingMixerBlock(dim, mlp_ratio, drop_path[j]) for j in range(depth)))
        self.norm = LayerNorm2d(dim, eps=1e-6)


@FUSIONS.register("cmnext")
class CMNeXtFusion(FusionEncoder):
    """CMNeXt encoder (see the module docstring).

    Args:
        backbone: a MiT backbone (``mit_nano``, ``mit_b0`` … ``mit_b5``; the original ships B2, B4, B5) for the
            primary branch; the supplementary branch takes its widths, depths, patch sizes and strides.
        modalities: at least two registered modality names; the primary one and the supplementary ones (their
            configured order is the order of the original's per-modality modules, see :func:`cmnext_key_map`).
        drop_path_rate: stochastic depth of both branches (linear over the blocks of each branch).
        attn_impl: the RGB branch's self-attention, ``"sdpa"`` or ``"eager"``.
        primary: the modality of the MiT branch; default ``"rgb"`` if configured, else the first modality.
        mixer_mlp_ratios: FFN ratios of the mixer blocks per stage (the original's 8, 8, 4, 4).
        lambda_c, lambda_s: weights of the FRM channel and spatial terms.
        pretrained: MiT weights for the primary branch (as the original's ``init_pretrained``).
        input_encoding: the network's own input encoding per modality, where it differs from rgbx's normalisation
            (:mod:`rgbx.models.input_encoding`; set by ``model.input_encoding``).
    """

    def __init__(
        self,
        backbone: str = "mit_b2",
        modalities: Sequence[str] = ("rgb", "depth", "event", "lidar"),
        drop_path_rate: float = 0.1,
        attn_impl: str = "sdpa",
        primary: str | None = None,
        mixer_mlp_ratios: Sequence[float] = MIXER_MLP_RATIOS,
        lambda_c: float = 0.5,
        lambda_s: float = 0.5,
        pretrained: str = "",
        input_encoding: Mapping | None = None,
    ):
        super().__init__(modalities, input_encoding)
        if len(self.modalities) < 2:
            raise ConfigError(
                f"the cmnext fusion needs at least two modalities (a primary one and one or more supplementary), "
                f"got {list(self.modalities)}; for a single modality use fusion 'mean' (a plain encoder)"
            )
        if primary is None:
            primary = "rgb" if "rgb" in self.modalities else self.modalities[0]
        if primary not in self.modalities:
            raise ConfigError(f"cmnext fusion: primary {primary!r} is not one of {list(self.modalities)}")
        self.primary = primary
        self.supplementary_modalities = tuple(m for m in self.modalities if m != primary)
        self.backbone = build_backbone(
            backbone, in_channels=self.in_channels[primary], drop_path_rate=drop_path_rate, attn_impl=attn_impl,
            pretrained=pretrained,
        )
        if not isinstance(self.backbone, MixTransformer):
            raise ConfigError(f"the cmnext fusion needs a MiT backbone (mit_*), got {backbone!r}")
        for module in self.backbone.modules():
            if isinstance(module, nn.LayerNorm):
                module.eps = RGB_LAYER_NORM_EPS
        arch = self.backbone.arch
        ratios = tuple(float(r) for r in mixer_mlp_ratios)
        if len(ratios) != len(arch.embed_dims) or any(r <= 0 for r in ratios):
            raise ConfigError(
                f"cmnext fusion: mixer_mlp_ratios must be {len(arch.embed_dims)} positive numbers, got "
                f"{list(mixer_mlp_ratios)}"
            )
        total = sum(arch.depths)
        rates = stochastic_depth_rates(drop_path_rate, total)
        stem_channels = max(3, *(self.in_channels[m] for m in self.supplementary_modalities))
        stages = []
        for i, dim in enumerate(arch.embed_dims):
            first = sum(arch.depths[:i])
            stages.append(
                SupplementaryStage(
                    stem_channels if i == 0 else arch.embed_dims[i - 1],
                    dim,
                    arch.patch_sizes[i],
                    arch.strides[i],
                    self.supplementary_modalities,
                    arch.depths[i],
                    ratios[i],
                    rates[first : first + arch.depths[i]],
                )
            )
        self.supplementary = nn.ModuleList(stages)
        self.feature_info = self.backbone.feature_info
        slots = (primary, SUPPLEMENTARY_SLOT)
        self.rectify = nn.ModuleList(
            FeatureRectifyModule(info["num_chs"], 2, lambda_c=lambda_c, lambda_s=lambda_s)
            for info in self.feature_info
        )
        self.fuse = nn.ModuleList(
            FeatureFusionModule(info["num_chs"], slots, info.get("num_heads", 1)) for info in self.feature_info
        )
        self.supplementary.apply(init_weights)
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
            :class:`EncoderOutput`: 4 fused maps; ``features`` as described in the module docstring.
        """
        inputs, present = self.prepare(inputs, present)
        names = self.computed(present)
        p = self.primary
        supp = [m for m in self.supplementary_modalities if m in names]
        ref = inputs[names[0]]
        batch = ref.shape[0]
        nobody = torch.zeros(batch, dtype=torch.bool, device=ref.device)
        supp_present = torch.stack([present[m] for m in supp], dim=1).any(dim=1) if supp else nobody
        slot_present = torch.stack([present[p] if p in names else nobody, supp_present], dim=1)  # (B, 2)
        others = others_weights(slot_present)
        any_present = slot_present.any(dim=1)

        x_primary = mask_absent(inputs[p], present[p]) if p in names else None
        x_supp = {m: mask_absent(inputs[m], present[m]) for m in supp}
        features: dict[str, list[torch.Tensor]] = {m: [] for m in names}
        fused = []
        for i, (stage, rectify, fuse) in enumerate(zip(self.supplementary, self.rectify, self.fuse, strict=True)):
            slots: dict[str, torch.Tensor] = {}
            if x_primary is not None:
                slots[p] = mask_absent(self.backbone.forward_stage(i, x_primary), present[p])
                features[p].append(slots[p])
            gated: dict[str, torch.Tensor] = {}
            if supp:
                embedded = {m: mask_absent(stage.embed(x_supp[m], m), present[m]) for m in supp}
                for m in supp:
                    features[m].append(embedded[m])
                if stage.hub is not None:
                    hub, gated = stage.hub(embedded, present)
                else:
                    hub = embedded[supp[0]]
                slots[SUPPLEMENTARY_SLOT] = mask_absent(stage.norm(stage.blocks(hub)), supp_present)
            zeros = torch.zeros_like(next(iter(slots.values())))
            stacked = torch.stack([slots.get(s, zeros) for s in (p, SUPPLEMENTARY_SLOT)], dim=1)  # (B, 2, C, H, W)
            rectified = rectify(stacked, slot_present, others)
            slots = {s: rectified[:, j] for j, s in enumerate((p, SUPPLEMENTARY_SLOT)) if s in slots}
            fused.append(mask_absent(fuse(slots, slot_present, others), any_present))
            if x_primary is not None:
                x_primary = slots[p]
            if supp:
                h = slots[SUPPLEMENTARY_SLOT]
                if stage.hub is None:
                    x_supp = {m: h for m in supp}
                else:
                    x_supp = {m: mask_absent(reference_relayout(gated[m]) + h, present[m]) for m in supp}
        return EncoderOutput(fused=fused, features=features, present=present)


_EXTRA_STAGE_KEY = re.compile(r"^extra_(block|norm)([1-4])\.(.*)$")
_EMBED_KEY = re.compile(r"^extra_downsample_layers\.(\d+)\.(proj\.module|norm\.ln_(\d+))\.(.*)$")
_SCORE_KEY = re.compile(r"^extra_score_predictor\.(\d+)\.score_nets\.(\d+)\.(.*)$")
_FFM_PAIR_KEY = re.compile(r"^FFMs\.(\d+)\.cross\.(channel_proj|end_proj|norm|cross_attn\.kv)([12])\.(.*)$")
_HEAD_KEY = {
    "linear_fuse.conv.": "fuse.0.",
    "linear_fuse.bn.": "fuse.1.",
    "linear_pred.": "classifier.",
}


def _backbone_key(key: str, primary: str, supplementary: Sequence[str]) -> str | None:
    """One original ``CMNeXt`` backbone key → this fusion's key (None if not a CMNeXt backbone key)."""
    if (name := original_key_to_rgbx(key)) is not None:
        return f"backbone.{name}"
    if match := _EXTRA_STAGE_KEY.match(key):
        part, stage, rest = match.groups()
        rest = rest.replace("mlp.dwconv.dwconv.", "mlp.dwconv.")
        return f"supplementary.{int(stage) - 1}.{'blocks' if part == 'block' else 'norm'}.{rest}"
    if match := _EMBED_KEY.match(key):
        stage, what, index, rest = match.groups()
        if index is None:
            return f"supplementary.{stage}.embed.proj.{rest}"
        return f"supplementary.{stage}.embed.norms.{supplementary[int(index)]}.{rest}"
    if match := _SCORE_KEY.match(key):
        stage, index, rest = match.groups()
        return f"supplementary.{stage}.hub.score.{supplementary[int(index)]}.{rest}"
    if match := _FFM_PAIR_KEY.match(key):
        stage, part, which, rest = match.groups()
        slot = primary if which == "1" else SUPPLEMENTARY_SLOT
        return f"fuse.{stage}.cross.{part}.{slot}.{rest}"
    if key.startswith("FFMs."):
        return "fuse." + key[len("FFMs."):]
    if key.startswith("FRMs."):
        return "rectify." + key[len("FRMs."):]
    return None


def _head_key(key: str) -> str | None:
    """One original ``SegFormerHead`` key → rgbx ``mlp`` head key (None if not a head key)."""
    if match := re.match(r"^linear_c([1-4])\.proj\.(.*)$", key):
        return f"linear.{int(match.group(1)) - 1}.{match.group(2)}"
    for old, new in _HEAD_KEY.items():
        if key.startswith(old):
            return new + key[len(old):]
    return None


def cmnext_key_map(
    state_dict: Mapping[str, torch.Tensor], modalities: Sequence[str] = ("rgb", "depth", "event", "lidar")
) -> dict[str, torch.Tensor]:
    """Rename an original DELIVER CMNeXt state dict to rgbx names.

    ``backbone.*`` keys become ``encoder.*`` keys of a :class:`rgbx.models.Segmentor` with the ``cmnext`` fusion and
    ``decode_head.*`` (the SegFormer head) become ``head.*`` keys of the ``mlp`` head; a state dict of the backbone
    alone (no ``backbone.`` prefix) is renamed to :class:`CMNeXtFusion` keys. ``modalities`` are the rgbx modalities
    in the original's order (its ``MODALS``, with ``img`` → the primary modality first): the original's per-modality
    modules are indexed by position (``ln_0``, ``score_nets.0`` = the first supplementary modality). Tensors are not
    changed (the shared stem is stored at 3 input channels in both). Keys that are not recognised are kept unchanged,
    so that a strict load reports them.

    Rename table (``i`` = stage 0-3, ``n = i + 1``, ``k`` = supplementary index, ``m_k`` = its modality name):

    ====================================================== ==========================================================
    original (``backbone.`` prefix)                        rgbx (``encoder.`` prefix)
    ====================================================== ==========================================================
    ``patch_embed{n}.*`` / ``block{n}.*`` / ``norm{n}.*``  ``backbone.stages.{i}.patch_embed.*`` / ``.blocks.*`` /
                                                           ``.norm.*``
    ``extra_downsample_layers.{i}.proj.module.*``          ``supplementary.{i}.embed.proj.*``
    ``extra_downsample_layers.{i}.norm.ln_{k}.*``          ``supplementary.{i}.embed.norms.{m_k}.*``
    ``extra_score_predictor.{i}.score_nets.{k}.*``         ``supplementary.{i}.hub.score.{m_k}.*``
    ``extra_block{n}.{j}.*``                               ``supplementary.{i}.blocks.{j}.*`` (``mlp.dwconv.dwconv``
                                                           → ``mlp.dwconv``)
    ``extra_norm{n}.*``                                    ``supplementary.{i}.norm.*``
    ``FRMs.{i}.*``                                         ``rectify.{i}.*``
    ``FFMs.{i}.cross.{channel_proj,end_proj,norm}{1,2}.*`` ``fuse.{i}.cross.{channel_proj,end_proj,norm}.{rgb,x}.*``
    ``FFMs.{i}.cross.cross_attn.kv{1,2}.*``                ``fuse.{i}.cross.cross_attn.kv.{rgb,x}.*``
    ``FFMs.{i}.channel_emb.*``                             ``fuse.{i}.channel_emb.*``
    ``decode_head.linear_c{n}.proj.*``                     ``head.linear.{i}.*``
    ``decode_head.linear_fuse.conv.*`` / ``.bn.*``         ``head.fuse.0.*`` / ``head.fuse.1.*``
    ``decode_head.linear_pred.*``                          ``head.classifier.*``
    ====================================================== ==========================================================
    """
    modalities = tuple(modalities)
    primary, supplementary = modalities[0], modalities[1:]
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        new = None
        if key.startswith("backbone."):
            rest = _backbone_key(key[len("backbone."):], primary, supplementary)
            new = None if rest is None else "encoder." + rest
        elif key.startswith("decode_head."):
            rest = _head_key(key[len("decode_head."):])
            new = None if rest is None else "head." + rest
        else:
            new = _backbone_key(key, primary, supplementary)
        out[new if new is not None else key] = value
    return out
