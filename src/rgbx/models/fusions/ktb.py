"""KTB: a symmetric, parameter-efficient RGB+X encoder ("Keep the Balance", Cai et al., CVPR 2025).

Paper: Cai, Su, Li, Yang, Wang, Zhao, He, Liu, "Keep the Balance: A Parameter-Efficient Symmetrical Framework for
RGB+X Semantic Segmentation", CVPR 2025. Only the abstract and the supplementary material were available; this file
is an independent implementation of what they describe, with the gaps filled by the decisions listed below.

What the sources say:

* one powerful pre-trained model is adapted *symmetrically* to both RGB and X (X is not a mere prompt to RGB);
  fine-tuning is parameter-efficient (the pre-trained weights stay fixed);
* **MAPA** (Modality-Aware Prompting and Adaptation): low-rank projections ``X̃_i`` (i = RGB or X) generate
  *unifying dual-modality features* (rank per stage, best [16, 32, 64, 128]), plus adapters (rank per stage, best
  [8, 16, 32, 64]);
* **DSCF** (Dynamic Sparse Cross-modality Fusion): cross-modality fusion in a low-rank latent space (rank per stage,
  best [16, 32, 64, 128]) that avoids the *global* cross-modality correlations of attention, which carry noise;
* MMST (masked modality self-teaching, auxiliary heads S2 / S3) is training-only: see :mod:`rgbx.methods.ktb`.

What this implementation decides (the paper body with the exact equations was not available):

* **Shared frozen backbone.** One backbone, all of its weights frozen (``requires_grad=False``), runs RGB and X
  alike. The primary modality (``"rgb"`` if configured, else the first) uses the backbone's own first patch
  embedding (frozen, pre-trained); the other modality gets a **trainable stem** of its own whose convolution is
  initialised from the backbone's stem averaged over its input channels and repeated for X's channel count (scaled
  by 3 / C_x for a 3-channel stem), so X starts in the same feature space as RGB.
* **MAPA, prompting** (before the blocks of stage i, on the embedded tokens t_m): ``X̃_m = D_m(LN_m(t_m))``
  (C → r_p, per modality), the unifying feature ``U = GELU(Σ_{m present} X̃_m)`` and the modality-aware prompt
  ``t_m ← t_m + P_m(U)`` (r_p → C, per modality, zero-initialised so training starts from the frozen model).
* **MAPA, adaptation**: in every block, a per-modality low-rank adapter runs parallel to the frozen MLP:
  ``x ← x + MLP(LN2(x)) + A_m(LN2(x))``, ``A_m = Up(GELU(Down(·)))`` (rank r_a, ``Up`` zero-initialised).
* **DSCF** (after stage i, on the two maps f_m): low-rank queries ``q_m = W^q_m f_m`` and keys / values from the
  other modality's map average-pooled to at most ``kv_grid × kv_grid`` positions (C → r_d). Each query keeps only
  its ``ceil(topk_ratio · N_kv)`` highest scores (*dynamic sparsity*: the kept set depends on the input), softmax
  over those, and ``e_m = f_m + W^o_m(attn)`` (r_d → C, zero-initialised). The fused map is a per-pixel dynamic
  mixture ``F = Σ_m w_m e_m``, ``w = softmax_m(g_m(q_m))`` over the present modalities.
* The enhanced maps ``e_m`` are *not* fed back into the branches (the branches stay symmetric and independent up to
  the MAPA unifying prompt); ``features[m]`` are the branch outputs f_m of each stage.
* Exactly two modalities (RGB + X). Ranks larger than a stage's width are clipped to the width.

Absent modalities (not passed, absent for the whole batch, or absent for some samples per ``present``):

* inputs of absent samples are replaced by zeros before the stem, and every branch output is zeroed for absent
  samples (``torch.where``), so nothing an absent sample holds reaches any output or gradient;
* an absent modality is left out of the unifying sum U, its DSCF cross term for the other modality is zero, and its
  mixture weight is 0 — a sample with one present modality gets exactly that modality's (prompted, adapted) map;
* a modality absent for the whole batch is not computed.

Parameter counts (``parameter_counts()``), mit_b0, RGB + depth, default ranks: trainable 739,784 (the depth stem,
MAPA, DSCF) vs frozen 3,319,392 (the MiT-B0 backbone), i.e. ≈ 18 % of the encoder (the head is extra and trainable).
mit_nano, RGB + depth: trainable 310,520 vs frozen 423,648.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from rgbx.errors import ConfigError
from rgbx.models.fusions.base import EncoderOutput, FusionEncoder
from rgbx.models.layers import LayerNorm, adaptive_avg_pool, init_weights, mask_absent, tokens_to_map
from rgbx.models.registries import FUSIONS, build_backbone

__all__ = ["DSCF", "KTBFusion", "LowRankAdapter", "MAPAPrompt"]


def _ranks(ranks: Sequence[int], dims: Sequence[int], name: str) -> list[int]:
    ranks = list(ranks)
    if len(ranks) != len(dims) or any(not isinstance(r, int) or r <= 0 for r in ranks):
        raise ConfigError(f"ktb fusion: {name} must be {len(dims)} positive integers (one per stage), got {ranks}")
    return [min(r, d) for r, d in zip(ranks, dims)]


class LowRankAdapter(nn.Module):
    """``Up(GELU(Down(x)))`` with rank ``rank``; ``Up`` starts at zero (the adapter starts as a no-op)."""

    def __init__(self, dim: int, rank: int):
        super().__init__()
        self.down = nn.Linear(dim, rank)
        self.up = nn.Linear(rank, dim)
        init_weights(self.down)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(F.gelu(self.down(x)))


class MAPAPrompt(nn.Module):
    """MAPA prompting: per-modality low-rank ``X̃_m``, unifying ``U = GELU(Σ present X̃_m)``, prompts ``P_m(U)``."""

    def __init__(self, dim: int, rank: int, modalities: Sequence[str]):
        super().__init__()
        self.norm = nn.ModuleDict({m: LayerNorm(dim) for m in modalities})
        self.down = nn.ModuleDict({m: nn.Linear(dim, rank) for m in modalities})
        self.up = nn.ModuleDict({m: nn.Linear(rank, dim) for m in modalities})
        self.norm.apply(init_weights)
        self.down.apply(init_weights)
        for layer in self.up.values():
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, tokens: dict[str, torch.Tensor], present: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """modality → (B, L, C) tokens → prompted tokens (absent samples left out of U)."""
        unify = None
        for m, t in tokens.items():
            low = mask_absent(self.down[m](self.norm[m](t)), present[m])
            unify = low if unify is None else unify + low
        unify = F.gelu(unify)
        return {m: t + self.up[m](unify) for m, t in tokens.items()}


class DSCF(nn.Module):
    """Dynamic sparse cross-modality fusion of one stage (see the module docstring)."""

    compile_region = True  # compiled on its own under SpeedOptions(compile=True, compile_scope="blocks")

    def __init__(self, dim: int, rank: int, modalities: Sequence[str], kv_grid: int = 16, topk_ratio: float = 0.5):
        super().__init__()
        self.modalities = tuple(modalities)
        self.kv_grid = kv_grid
        self.topk_ratio = topk_ratio
        self.scale = rank**-0.5
        self.q = nn.ModuleDict({m: nn.Conv2d(dim, rank, 1) for m in modalities})
        self.kv = nn.ModuleDict({m: nn.Conv2d(dim, 2 * rank, 1) for m in modalities})
        self.out = nn.ModuleDict({m: nn.Conv2d(rank, dim, 1) for m in modalities})
        self.gate = nn.ModuleDict({m: nn.Conv2d(rank, 1, 1) for m in modalities})
        for d in (self.q, self.kv, self.gate):
            d.apply(init_weights)
        for layer in self.out.values():
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def _cross(self, q: torch.Tensor, source: torch.Tensor, m_other: str) -> torch.Tensor:
        b, r, h, w = q.shape
        pooled = adaptive_avg_pool(source, (min(h, self.kv_grid), min(w, self.kv_grid)))
        k, v = self.kv[m_other](pooled).flatten(2).chunk(2, dim=1)  # (B, r, N)
        scores = (q.flatten(2).transpose(1, 2) @ k) * self.scale  # (B, HW, N)
        n = scores.shape[-1]
        keep = max(1, math.ceil(self.topk_ratio * n))
        if keep < n:
            threshold = scores.topk(keep, dim=-1).values[..., -1:]
            scores = scores.masked_fill(scores < threshold, float("-inf"))
        attn = scores.softmax(dim=-1) @ v.transpose(1, 2)  # (B, HW, r)
        return attn.transpose(1, 2).reshape(b, r, h, w)

    def forward(self, f: dict[str, torch.Tensor], present: dict[str, torch.Tensor]) -> torch.Tensor:
        """modality → (B, C, H, W) (zeros where absent) → fused (B, C, H, W)."""
        names = list(f)
        enhanced, logits = [], []
        for m in names:
            q = self.q[m](f[m])
            e = f[m]
            for o in names:
                if o != m:
                    both = present[m] & present[o]
                    e = e + mask_absent(self.out[m](self._cross(q, f[o], o)), both)
            enhanced.append(e)
            logit = self.gate[m](q)
            logits.append(logit.masked_fill(~present[m].view(-1, 1, 1, 1), float("-inf")))
        logits = torch.stack(logits)  # (M, B, 1, H, W)
        anyone = torch.stack([present[m] for m in names]).any(0).view(1, -1, 1, 1, 1)
        safe = torch.where(anyone, logits, torch.zeros((), dtype=logits.dtype, device=logits.device))
        weights = torch.where(anyone, safe.softmax(dim=0), torch.zeros((), dtype=logits.dtype, device=logits.device))
        return (weights * torch.stack(enhanced)).sum(0)


@FUSIONS.register("ktb")
class KTBFusion(FusionEncoder):
    """Frozen shared backbone + trainable X stem, MAPA (prompts, adapters) and DSCF per stage (module docstring).

    Args:
        backbone: a registered backbone with the MiT stage layout (``stages[i].patch_embed / blocks / norm``).
        modalities: exactly two modality names (RGB + X).
        drop_path_rate, attn_impl, pretrained: passed to the backbone.
        prompt_ranks: MAPA ``X̃_i`` ranks per stage. adapter_ranks: MAPA adapter ranks. fusion_ranks: DSCF ranks.
        kv_grid: DSCF keys / values are pooled to at most ``kv_grid × kv_grid`` positions.
        topk_ratio: fraction of the keys each DSCF query keeps (dynamic sparsity).
        input_encoding: the network's own input encoding per modality, where it differs from rgbx's normalisation
            (:mod:`rgbx.models.input_encoding`; set by ``model.input_encoding``).
    """

    def __init__(
        self,
        backbone: str = "mit_b0",
        modalities: Sequence[str] = ("rgb", "depth"),
        drop_path_rate: float = 0.1,
        attn_impl: str = "sdpa",
        pretrained: str = "",
        prompt_ranks: Sequence[int] = (16, 32, 64, 128),
        adapter_ranks: Sequence[int] = (8, 16, 32, 64),
        fusion_ranks: Sequence[int] = (16, 32, 64, 128),
        kv_grid: int = 16,
        topk_ratio: float = 0.5,
        input_encoding: Mapping | None = None,
    ):
        super().__init__(modalities, input_encoding)
        if len(self.modalities) != 2:
            raise ConfigError(f"the ktb fusion is for RGB + X: it needs exactly two modalities, got "
                              f"{list(self.modalities)}")
        if not 0.0 < topk_ratio <= 1.0:
            raise ConfigError(f"ktb fusion: topk_ratio must be in (0, 1], got {topk_ratio}")
        self.primary = "rgb" if "rgb" in self.modalities else self.modalities[0]
        self.backbone = build_backbone(backbone, in_channels=self.in_channels[self.primary],
                                       drop_path_rate=drop_path_rate, attn_impl=attn_impl, pretrained=pretrained)
        stages = getattr(self.backbone, "stages", None)
        if (not hasattr(self.backbone, "make_stem") or stages is None
                or not all(hasattr(s, "patch_embed") and hasattr(s, "blocks") for s in stages)):
            raise ConfigError(f"the ktb fusion needs a MiT-style backbone (stages of a patch embedding and "
                              f"transformer blocks, make_stem: mit_*), got {backbone!r}")
        self.backbone.requires_grad_(False)
        self.feature_info = self.backbone.feature_info
        dims = self.feature_info.channels()
        self.stems = nn.ModuleDict({m: self._adapted_stem(self.in_channels[m])
                                    for m in self.modalities if m != self.primary})
        prompt_ranks = _ranks(prompt_ranks, dims, "prompt_ranks")
        adapter_ranks = _ranks(adapter_ranks, dims, "adapter_ranks")
        fusion_ranks = _ranks(fusion_ranks, dims, "fusion_ranks")
        self.prompts = nn.ModuleList(MAPAPrompt(d, r, self.modalities) for d, r in zip(dims, prompt_ranks))
        self.adapters = nn.ModuleList(
            nn.ModuleList(
                nn.ModuleDict({m: LowRankAdapter(d, r) for m in self.modalities})
                for _ in self.backbone.stages[i].blocks
            )
            for i, (d, r) in enumerate(zip(dims, adapter_ranks))
        )
        self.fusions = nn.ModuleList(
            DSCF(d, r, self.modalities, kv_grid, topk_ratio) for d, r in zip(dims, fusion_ranks)
        )

    def _adapted_stem(self, channels: int) -> nn.Module:
        stem = self.backbone.make_stem(channels)
        source = self.backbone.stages[0].patch_embed
        with torch.no_grad():
            mean = source.proj.weight.mean(dim=1, keepdim=True)  # (C0, 1, k, k)
            stem.proj.weight.copy_(mean.repeat(1, channels, 1, 1) * (source.proj.in_channels / channels))
            stem.proj.bias.copy_(source.proj.bias)
            stem.norm.load_state_dict(source.norm.state_dict())
        return stem

    def parameter_counts(self) -> dict[str, int]:
        """``{"trainable": n, "frozen": n}`` over this encoder's parameters."""
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        frozen = sum(p.numel() for p in self.parameters() if not p.requires_grad)
        return {"trainable": trainable, "frozen": frozen}

    def _stage(self, index: int, x: dict[str, torch.Tensor], present: dict[str, torch.Tensor]) -> dict:
        stage = self.backbone.stages[index]
        tokens, hw = {}, None
        for m, v in x.items():
            embed = self.stems[m] if index == 0 and m in self.stems else stage.patch_embed
            tokens[m], hw = embed(v)
        tokens = self.prompts[index](tokens, present)
        for block, adapters in zip(stage.blocks, self.adapters[index]):
            for m in tokens:
                t = tokens[m]
                t = t + block.drop_path(block.attn(block.norm1(t), hw))
                h = block.norm2(t)
                tokens[m] = t + block.drop_path(block.mlp(h, hw)) + adapters[m](h)
        return {m: mask_absent(tokens_to_map(stage.norm(t), hw), present[m]) for m, t in tokens.items()}

    def forward(
        self, inputs: Mapping[str, torch.Tensor], present: Mapping[str, torch.Tensor] | None = None
    ) -> EncoderOutput:
        """Encode and fuse.

        Args:
            inputs: modality → (B, C_m, H, W); any non-empty subset of :attr:`modalities`.
            present: modality → (B,) bool; missing entries (or ``None``) mean present for every sample.

        Returns:
            :class:`EncoderOutput`: 4 fused maps (DSCF) and ``features[m]``, the branch output of each stage.
        """
        inputs, present = self.prepare(inputs, present)
        names = self.computed(present)
        masks = {m: present[m] for m in names}
        x = {m: mask_absent(inputs[m], present[m]) for m in names}
        features: dict[str, list[torch.Tensor]] = {m: [] for m in names}
        fused = []
        for index in range(len(self.backbone.stages)):
            x = self._stage(index, x, masks)
            for m in names:
                features[m].append(x[m])
            fused.append(self.fusions[index](x, masks))
        return EncoderOutput(fused=fused, features=features, present=present)

