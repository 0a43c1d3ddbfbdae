"""OmniSegmentor's encoder: DFormer blocks generalised from one depth branch to any set of supplementary modalities.

Paper: Yin et al., "OmniSegmentor: A Flexible Multi-Modal Learning Framework for Semantic Segmentation", NeurIPS
2025 (arXiv:2509.15096). No code for it was public when this was written (the project page,
https://github.com/VCIP-RGBD/DFormer, announces it); this file is an independent design from the paper and rgbx's
DFormer (:mod:`rgbx.models.backbones.dformer`, whose module docstring describes the block).

What the paper specifies, and what rgbx decides:

===========================================================  ============================================================
the paper                                                    rgbx
===========================================================  ============================================================
Built on DFormer's block design.                             DFormer's RGB branch, joint block and variants unchanged
                                                             (``omni_t/s/b/l`` = DFormer-T/S/B/L widths and depths).
The fusion module's weights are shared across modalities.    Every weight of DFormer's ``attn`` (the RGB/depth token
                                                             mixer, window attention included, and ``norm_e``) is one
                                                             set shared by all supplementary modalities, as are the
                                                             RGB stem, RGB MLPs and layer scales 1 / 2 / 1e.
Each modality has its own stem layer and its own MLP.        Supplementary modality ``m`` owns ``stems.m`` (its 1/4 stem
                                                             for its own channel count and the three stride-2
                                                             downsamplings, like DFormer's ``downsample_layers_e``),
                                                             and per block ``mlp_e.m`` (DFormer's ``mlp_e2``) with its
                                                             layer scale ``layer_scale_2_e.m``. Each keeps its own
                                                             half-width state ``e_m`` through the encoder.
Supplementary features are aggregated by addition +          In every block, ``ê = LN(Σ_{m present} e_m)`` with
LayerNorm before fusion with RGB.                            DFormer's ``attn.norm_e`` as the LayerNorm; ``ê`` takes the
                                                             place of DFormer's normalised depth in the token mixer.
Pretraining: RGB + one random supplementary modality per     Any subset of the built modalities may be passed per step;
step; fine-tuning: each modality's stem / MLP initialised    :func:`extend_state_dict` / :func:`load_omni_weights`
from pretrained supplementary-modality weights.              give new modalities copies of an existing one's entries.
===========================================================  ============================================================

Joint block (``stages.i.j``; ``C = d_i``, supplementary width ``C/2``; ``P`` = the supplementary modalities present
for the sample)::

    ê = LN_e(Σ_{m ∈ P} e_m)         if P is not empty, else ê = 0      (aggregation, shared LayerNorm)
    dx, de = attn(LN(x), ê)                                             (DFormer's token mixer, shared)
    x   ← x + γ1 · dx;          x   ← x + γ2 · mlp(x)                   (RGB path, shared)
    e_m ← e_m + γ1e · de;       e_m ← e_m + γ2e_m · mlp_e_m(e_m)        (every computed m: shared update, own MLP)

The encoder's last block computes no supplementary update (no ``proj_e``, ``γ1e``, ``mlp_e``, ``γ2e``), as in
DFormer. Only the RGB path's stage maps go to a decoder (the supplementary modalities reach it through ``ê`` in every
block); a modality's own stage maps are its state ``e_m`` after each stage (for the last stage: entering the last
block).

With exactly one supplementary modality the block *is* DFormer's: ``LN_e(e)`` is DFormer's ``norm_e(e)``, and the
parameters are DFormer's under other names (``downsample_layers_e`` → ``stems.<m>``, ``mlp_e2`` → ``mlp_e.<m>``,
``layer_scale_2_e`` → ``layer_scale_2_e.<m>``); :func:`dformer_to_omni_state_dict` renames a DFormer checkpoint, and
an ``omni_*`` model for ``{rgb, depth}`` then computes exactly what the ``dformer`` fusion computes for samples that
have depth (``tests/models/test_omni.py`` checks this). The parameter count for RGB-D is therefore DFormer's; each
further supplementary modality adds its stem and one MLP per block: 0.49 / 1.66 / 2.85 / 3.89 M for ``omni_t/s/b/l``
(of which MLPs 0.39 / 1.27 / 2.46 / 3.34 M; the paper reports +2.9 M for separate MLPs with DFormer-L on RGB-D-E, so
its per-modality MLPs may be somewhat smaller than DFormer's ``mlp_e2``, which is what is used here).

Parameter names. Shared weights have the same names whatever the modality set; per-modality entries are exactly the
keys with a modality-name component: ``stems.<m>.*``, ``stages.<i>.<j>.mlp_e.<m>.*`` and
``stages.<i>.<j>.layer_scale_2_e.<m>``. A model for ``{rgb, depth}`` and one for ``{rgb, depth, thermal, lidar,
event}`` share every name except the extra modalities' own entries (:func:`modality_of_key`).

Absent inputs (the encoder's part; the ``omni`` fusion, :mod:`rgbx.models.fusions.omni`, adds fill values and
output masking): a supplementary modality not passed is not computed at all (no stem, no MLP); one passed with a
per-sample ``present`` mask contributes to ``Σ`` only for the samples where it is present (``torch.where``, so
whatever the others hold cannot leak); a sample with no present supplementary modality gets ``ê = 0`` (the RGB path
runs with a zero supplementary term).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from rgbx.errors import CheckpointError, ConfigError
from rgbx.models.backbones.dformer import (
    DFORMER_VARIANTS,
    DFormerArch,
    DFormerAttention,
    DFormerMLP,
    LayerScaledBlock,
    read_dformer_state_dict,
)
from rgbx.models.layers import FeatureInfo, check_attn_impl, drop_path_layer, stochastic_depth_rates
from rgbx.models.registries import BACKBONES
from rgbx.models.weights import load_strict, read_state_dict

__all__ = [
    "OMNI_VARIANTS",
    "OmniAttention",
    "OmniBlock",
    "OmniEncoder",
    "dformer_to_omni_state_dict",
    "extend_state_dict",
    "load_omni_weights",
    "modality_of_key",
    "state_dict_modalities",
]

OMNI_VARIANTS: dict[str, DFormerArch] = {
    "omni_t": DFORMER_VARIANTS["dformer_t"],
    "omni_s": DFORMER_VARIANTS["dformer_s"],
    "omni_b": DFORMER_VARIANTS["dformer_b"],
    "omni_l": DFORMER_VARIANTS["dformer_l"],
    # Not published: one block per stage, for tests and CPU demos.
    "omni_nano": DFORMER_VARIANTS["dformer_nano"],
}


def _stem(in_channels: int, out_channels: int) -> nn.Sequential:
    """Stride-4 stem: Conv3×3 s2 → BN → GELU → Conv3×3 s2 → BN (DFormer's, for any input channel count)."""
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


def _view(mask: torch.Tensor) -> torch.Tensor:
    return mask.view(-1, 1, 1, 1)


class OmniAttention(DFormerAttention):
    """DFormer's token mixer fed with the aggregated supplementary map instead of one depth map.

    Same parameters (and names) as :class:`~rgbx.models.backbones.dformer.DFormerAttention`; ``norm_e`` is the
    LayerNorm of the aggregation "addition + LayerNorm". ``depth_out`` False: no supplementary update (last block).
    """

    def forward(
        self, x: torch.Tensor, agg: torch.Tensor | None, any_present: torch.Tensor | None = None,
        scales: Sequence[torch.Tensor | None] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Mix.

        Args:
            x: RGB state (B, H, W, C), channels last.
            agg: Σ of the present supplementary states (B, H, W, C/2), or None when no supplementary modality is
                computed (then ``ê = 0`` for every sample).
            any_present: (B,) bool, whether the sample has at least one supplementary modality present (``ê = 0``
                where not); None = every sample has one.
            scales: the block's (γ1, γ1e), to fold into the output projections at this pass (``fuse_live``).

        Returns:
            The RGB update (B, H, W, C) and the supplementary update (B, H, W, C/2), the latter None without a
            supplementary output or without ``agg``.
        """
        x = self.norm(x)
        if agg is None:
            e = x.new_zeros((*x.shape[:-1], x.shape[-1] // 2))
        else:
            e = self.norm_e(agg)
            if any_present is not None:
                e = torch.where(_view(any_present), e, torch.zeros((), dtype=e.dtype, device=e.device))
        q, q_cut, l = self._in_projections(x)  # noqa: E741
        u = self.act(l)
        a = self.a(self.conv(u.permute(0, 3, 1, 2)).permute(0, 2, 3, 1))
        gate = self.e_back(self.e_conv(self.e_fore(e).permute(0, 3, 1, 2)).permute(0, 2, 3, 1))
        parts = [q * a]
        if self.window:
            parts.append(self._window_attention(x, e, u))
        parts.append(q_cut * gate)
        z = torch.cat(parts, dim=3)
        return self._out_projections(z, self.depth_out and agg is not None, scales)


class OmniBlock(LayerScaledBlock, nn.Module):
    """One joint block (module docstring): shared token mixer, RGB MLP and layer scales; per-modality MLPs.

    Args:
        dim: RGB width C (supplementary width C/2).
        num_heads, mlp_ratio, window: as DFormer's block.
        modalities: the supplementary modality names (keys of ``mlp_e`` / ``layer_scale_2_e``).
        drop_path: stochastic depth of every residual term.
        supp_out: update the supplementary states (False for the encoder's last block).
        attn_impl: ``"sdpa"`` or ``"eager"``.
    """

    compile_region = True  # compiled on its own under SpeedOptions(compile=True, compile_scope="blocks")

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: int,
        window: int,
        modalities: Sequence[str],
        drop_path: float | None = None,
        supp_out: bool = True,
        attn_impl: str = "sdpa",
        layer_scale_init: float = 1e-6,
    ):
        super().__init__()
        half = dim // 2
        self.supp_out = supp_out
        self.attn = OmniAttention(dim, num_heads, window, supp_out, attn_impl)
        self.mlp = DFormerMLP(dim, mlp_ratio)
        self.dropout_layer = drop_path_layer(drop_path)
        self.layer_scale_1 = nn.Parameter(torch.full((dim,), layer_scale_init))
        self.layer_scale_2 = nn.Parameter(torch.full((dim,), layer_scale_init))
        if supp_out:
            self.layer_scale_1_e = nn.Parameter(torch.full((half,), layer_scale_init))
            self.mlp_e = nn.ModuleDict({m: DFormerMLP(half, mlp_ratio) for m in modalities})
            self.layer_scale_2_e = nn.ParameterDict(
                {m: nn.Parameter(torch.full((half,), layer_scale_init)) for m in modalities}
            )

    def fuse_for_inference(self) -> None:
        """``SpeedOptions.fuse_projections``: as :meth:`DFormerBlock.fuse_for_inference`, each supplementary
        modality's MLP with its own layer scale. Inference only."""
        self.attn.fuse_projections(self.layer_scale_1, self.layer_scale_1_e if self.supp_out else None)
        self.mlp.fold_scale(self.layer_scale_2)
        if self.supp_out:
            for m, mlp in self.mlp_e.items():
                mlp.fold_scale(self.layer_scale_2_e[m])
        self.fused = True

    def forward(
        self,
        x: torch.Tensor,
        states: dict[str, torch.Tensor],
        present: Mapping[str, torch.Tensor | None],
        any_present: torch.Tensor | None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Channels-last RGB state and supplementary states (only the computed modalities) → updated ones.

        ``present[m]``: (B,) bool, or None for "present in every sample"; ``any_present`` as in
        :meth:`OmniAttention.forward`.
        """
        live = self.live
        if live:  # the residual streams in γ's dtype (float32 under autocast), as γ ⊙ t makes them unfused
            x, states = self._promoted(x), {m: self._promoted(e) for m, e in states.items()}
        agg = None
        for m, e in states.items():
            mask = present.get(m)
            if mask is not None:
                e = torch.where(_view(mask), e, torch.zeros((), dtype=e.dtype, device=e.device))
            agg = e if agg is None else agg + e
        scales = (self.layer_scale_1, self.layer_scale_1_e if self.supp_out else None) if live else None
        dx, de = self.attn(x, agg, any_present, scales)
        x = x + self._update(self.layer_scale_1, dx)
        x = x + self._update(self.layer_scale_2, self.mlp(x, self.layer_scale_2 if live else None))
        if de is None:
            return x, states
        shared = de if self.folded else self.layer_scale_1_e * de
        out = {}
        for m, e in states.items():
            e = e + self.dropout_layer(shared)
            scale = self.layer_scale_2_e[m]
            out[m] = e + self._update(scale, self.mlp_e[m](e, scale if live else None))
        return x, out


class OmniEncoder(nn.Module):
    """The OmniSegmentor encoder: RGB path + any subset of the supplementary modalities it was built for.

    Args:
        arch: a DFormer architecture (see :data:`OMNI_VARIANTS`).
        supplementary: supplementary modality name → input channels (e.g. ``{"depth": 1, "event": 2}``); the
            order is the order of the per-modality entries.
        drop_path_rate: stochastic depth, linear over all blocks from 0.
        attn_impl: the window attention's implementation, ``"sdpa"`` or ``"eager"``.

    Attributes:
        supplementary: name → input channels.
        feature_info: the RGB path's stage maps (channels ``dims``, reductions 4, 8, 16, 32).
        supplementary_feature_info: each supplementary modality's stage maps (channels ``dims / 2``).
    """

    def __init__(
        self,
        arch: DFormerArch,
        supplementary: Mapping[str, int],
        drop_path_rate: float = 0.1,
        attn_impl: str = "sdpa",
    ):
        super().__init__()
        check_attn_impl(attn_impl)
        dims = arch.dims
        n = len(dims)
        if not (len(arch.depths) == len(arch.num_heads) == len(arch.windows) == len(arch.mlp_ratios) == n):
            raise ValueError("DFormerArch: dims, depths, num_heads, windows and mlp_ratios need one entry per stage")
        if not supplementary:
            raise ConfigError("the omni encoder needs at least one supplementary modality")
        bad = [m for m in supplementary if not m or "." in m]
        if bad or "rgb" in supplementary:
            raise ConfigError(f"omni encoder: invalid supplementary modality names {bad or ['rgb']}")
        self.arch = arch
        self.supplementary = {m: int(c) for m, c in supplementary.items()}
        self.downsample_layers = nn.ModuleList([_stem(3, dims[0])])
        for i in range(1, n):
            self.downsample_layers.append(_downsample(dims[i - 1], dims[i]))
        self.stems = nn.ModuleDict()
        for m, c in self.supplementary.items():
            layers = nn.ModuleList([_stem(c, dims[0] // 2)])
            for i in range(1, n):
                layers.append(_downsample(dims[i - 1] // 2, dims[i] // 2))
            self.stems[m] = layers
        total = sum(arch.depths)
        rates = stochastic_depth_rates(drop_path_rate, total)
        self.stages = nn.ModuleList()
        cur = 0
        for i in range(n):
            self.stages.append(
                nn.ModuleList(
                    OmniBlock(
                        dims[i],
                        arch.num_heads[i],
                        arch.mlp_ratios[i],
                        arch.windows[i],
                        tuple(self.supplementary),
                        drop_path=rates[cur + j],
                        supp_out=not (i == n - 1 and j == arch.depths[i] - 1),
                        attn_impl=attn_impl,
                    )
                    for j in range(arch.depths[i])
                )
            )
            cur += arch.depths[i]
        self.feature_info = FeatureInfo(
            {"num_chs": d, "reduction": 4 * 2**i, "module": f"stages.{i}", "num_heads": h}
            for i, (d, h) in enumerate(zip(dims, arch.num_heads, strict=True))
        )
        self.supplementary_feature_info = FeatureInfo(
            {"num_chs": d // 2, "reduction": 4 * 2**i, "module": f"stages.{i}"} for i, d in enumerate(dims)
        )

    def forward_features(
        self,
        rgb: torch.Tensor,
        supplementary: Mapping[str, torch.Tensor],
        present: Mapping[str, torch.Tensor | None] | None = None,
    ) -> tuple[list[torch.Tensor], dict[str, list[torch.Tensor]]]:
        """Encode.

        Args:
            rgb: (B, 3, H, W).
            supplementary: the supplementary modalities to compute, name → (B, C_m, H, W) (any subset of
                :attr:`supplementary`, possibly empty); modalities not passed run none of their modules.
            present: name → (B,) bool: the samples for which that modality enters the aggregation; a missing entry
                or None = every sample.

        Returns:
            The RGB path's 4 stage maps and, per passed supplementary modality, its 4 state maps (NCHW). The
            state maps are *not* masked: for a sample where the modality is absent they hold whatever its input
            produced (the fusion masks them).
        """
        if rgb.dim() != 4 or rgb.shape[1] != 3:
            raise ConfigError(f"the omni encoder takes rgb (B, 3, H, W), got {tuple(rgb.shape)}")
        for m, t in supplementary.items():
            if m not in self.supplementary:
                raise ConfigError(
                    f"the omni encoder was built for supplementary modalities {list(self.supplementary)}, got {m!r}"
                )
            if t.dim() != 4 or t.shape[1] != self.supplementary[m] or t.shape[0] != rgb.shape[0] \
                    or t.shape[2:] != rgb.shape[2:]:
                raise ConfigError(
                    f"omni encoder: {m!r} has shape {tuple(t.shape)}, expected ({rgb.shape[0]}, "
                    f"{self.supplementary[m]}, {rgb.shape[2]}, {rgb.shape[3]})"
                )
        names = [m for m in self.supplementary if m in supplementary]  # fixed (construction) order
        present = {m: (present or {}).get(m) for m in names}
        masks = [mask for mask in present.values() if mask is not None]
        any_present = None
        if len(masks) == len(names) and masks:  # every modality has a mask: some samples may have none
            any_present = torch.stack(masks, dim=1).any(dim=1)
        x = rgb
        states = {m: supplementary[m] for m in names}
        outs: list[torch.Tensor] = []
        outs_e: dict[str, list[torch.Tensor]] = {m: [] for m in names}
        for i, stage in enumerate(self.stages):
            x = self.downsample_layers[i](x).permute(0, 2, 3, 1)
            states = {m: self.stems[m][i](e).permute(0, 2, 3, 1) for m, e in states.items()}
            for block in stage:
                x, states = block(x, states, present, any_present)
            x = x.permute(0, 3, 1, 2)
            states = {m: e.permute(0, 3, 1, 2) for m, e in states.items()}
            outs.append(x)
            for m, e in states.items():
                outs_e[m].append(e)
        return outs, outs_e

    def forward(
        self,
        rgb: torch.Tensor,
        supplementary: Mapping[str, torch.Tensor],
        present: Mapping[str, torch.Tensor | None] | None = None,
    ) -> list[torch.Tensor]:
        """The 4 RGB-path stage maps (B, d_i, H/r_i, W/r_i) (see :meth:`forward_features`)."""
        return self.forward_features(rgb, supplementary, present)[0]

    def forward_stage(self, index: int, x: torch.Tensor, stem: nn.Module | None = None) -> torch.Tensor:
        raise ConfigError("omni encoders take RGB and supplementary modalities jointly; only fusion 'omni' can use them")

    def make_stem(self, in_channels: int) -> nn.Module:
        raise ConfigError("omni encoders take RGB and supplementary modalities jointly; only fusion 'omni' can use them")


# ---------------------------------------------------------------------------------------------------------------
# Parameter layout: per-modality entries, extension to new modalities, loading.
# ---------------------------------------------------------------------------------------------------------------

_STEM_FIRST_CONV = "0.0.weight"  # stems.<m>.0.0.weight: the only tensor whose shape depends on the input channels


def modality_of_key(key: str) -> str | None:
    """The supplementary modality an encoder state-dict key belongs to, or None for a shared entry.

    Per-modality keys: ``stems.<m>.*``, ``stages.<i>.<j>.mlp_e.<m>.*``, ``stages.<i>.<j>.layer_scale_2_e.<m>``.
    """
    parts = key.split(".")
    if len(parts) >= 2 and parts[0] == "stems":
        return parts[1]
    if len(parts) >= 5 and parts[0] == "stages" and parts[3] in ("mlp_e", "layer_scale_2_e"):
        return parts[4]
    return None


def _rename(key: str, source: str, target: str) -> str:
    """``key`` (an entry of modality ``source``) as the same entry of modality ``target``."""
    parts = key.split(".")
    parts[1 if parts[0] == "stems" else 4] = target
    return ".".join(parts)


def state_dict_modalities(state: Mapping[str, torch.Tensor]) -> list[str]:
    """The supplementary modalities an encoder state dict has entries for, in key order."""
    out: list[str] = []
    for key in state:
        m = modality_of_key(key)
        if m is not None and m not in out:
            out.append(m)
    return out


def _adapt_stem_conv(weight: torch.Tensor, channels: int) -> torch.Tensor:
    """A stem's first-conv weight (O, C_s, k, k) for ``channels`` inputs: the kernels summed over the source
    channels, divided by ``channels`` and repeated, so a constant input gives the same response."""
    if weight.shape[1] == channels:
        return weight.clone()
    return (weight.sum(dim=1, keepdim=True) / channels).repeat(1, channels, 1, 1)


def extend_state_dict(
    state: Mapping[str, torch.Tensor],
    supplementary: Mapping[str, int],
    init_from: str | Mapping[str, str] | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """An encoder state dict for another set of supplementary modalities (the fine-tuning step of OmniSegmentor).

    Shared entries are kept as they are. Modalities in both ``state`` and ``supplementary`` keep their own entries;
    modalities only in ``state`` are dropped; every modality only in ``supplementary`` gets a copy of a source
    modality's stem, MLPs and layer scales, the stem's first convolution adapted to its channel count (kernels
    summed over the source channels, divided by the new count, repeated).

    Args:
        state: an ``omni_*`` encoder state dict (keys as :meth:`OmniEncoder.state_dict`).
        supplementary: the target's supplementary modalities, name → input channels (``OmniEncoder.supplementary``).
        init_from: the source modality (one of ``state``'s) for every new modality, or new name → source name;
            default: ``state``'s first supplementary modality.

    Returns:
        The new state dict and ``{new modality: source modality}``.

    Raises:
        CheckpointError: a new modality is needed but ``state`` has no supplementary modality, or a source that
            ``state`` does not have.
    """
    have = state_dict_modalities(state)
    new = [m for m in supplementary if m not in have]
    sources: dict[str, str] = {}
    for m in new:
        if isinstance(init_from, Mapping):
            src = init_from.get(m, have[0] if have else None)
        else:
            src = init_from if init_from is not None else (have[0] if have else None)
        if src is None:
            raise CheckpointError(f"the weights have no supplementary modality to initialise {m!r} from")
        if src not in have:
            raise CheckpointError(
                f"cannot initialise {m!r} from {src!r}: the weights have supplementary modalities {have}"
            )
        sources[m] = src
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        m = modality_of_key(key)
        if m is None or m in supplementary:
            out[key] = value
    for m, src in sources.items():
        for key, value in state.items():
            if modality_of_key(key) != src:
                continue
            target = _rename(key, src, m)
            if target == f"stems.{m}.{_STEM_FIRST_CONV}":
                out[target] = _adapt_stem_conv(value, supplementary[m])
            else:
                out[target] = value.clone()
    return out, sources


def dformer_to_omni_state_dict(state: Mapping[str, torch.Tensor], modality: str = "depth") -> dict[str, torch.Tensor]:
    """A DFormer encoder state dict (:mod:`rgbx.models.backbones.dformer` names) as an ``omni`` one whose only
    supplementary modality is ``modality``: ``downsample_layers_e.*`` → ``stems.<m>.*``, ``mlp_e2`` → ``mlp_e.<m>``,
    ``layer_scale_2_e`` → ``layer_scale_2_e.<m>``; every other name is the same."""
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "downsample_layers_e":
            key = ".".join(["stems", modality, *parts[1:]])
        elif len(parts) >= 4 and parts[0] == "stages" and parts[3] == "mlp_e2":
            key = ".".join([*parts[:3], "mlp_e", modality, *parts[4:]])
        elif len(parts) == 4 and parts[0] == "stages" and parts[3] == "layer_scale_2_e":
            key = ".".join([*parts[:3], "layer_scale_2_e", modality])
        out[key] = value
    return out


def _find_encoder(module: nn.Module) -> OmniEncoder:
    if isinstance(module, OmniEncoder):
        return module
    found = [m for m in module.modules() if isinstance(m, OmniEncoder)]
    if len(found) != 1:
        raise ConfigError(f"expected one omni encoder in {type(module).__name__}, found {len(found)}")
    return found[0]


def _encoder_state(source: str | Path | Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Encoder-level keys from a file or state dict: wrappers / ``module.`` / ``backbone.`` handled as for DFormer
    files, an rgbx model's ``encoder.encoder.`` prefix stripped and its ``head.*`` dropped, DFormer names renamed
    (depth branch → ``depth``)."""
    if isinstance(source, Mapping):
        state = dict(source)
    elif Path(source).suffix == ".safetensors":
        state = read_state_dict(source)
    else:
        state = read_dformer_state_dict(source)
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if any(k.startswith("encoder.encoder.") for k in state):
        state = {k.removeprefix("encoder.encoder."): v for k, v in state.items() if k.startswith("encoder.encoder.")}
    else:
        state = {k.removeprefix("backbone."): v for k, v in state.items()
                 if not k.startswith(("head.", "decode_head.", "aux_head."))}
    if any(k.startswith("downsample_layers_e.") for k in state):
        state = dformer_to_omni_state_dict(state)
    return state


def load_omni_weights(
    module: nn.Module,
    source: str | Path | Mapping[str, torch.Tensor],
    init_from: str | Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Load encoder weights into the omni encoder of ``module``, extending them to its modality set.

    Args:
        module: an :class:`OmniEncoder`, or a module holding exactly one (the ``omni`` fusion, a Segmentor).
        source: a file (rgbx model ``.safetensors``, an omni encoder state dict, a DFormer checkpoint) or a state
            dict with encoder-level or rgbx-model keys.
        init_from: see :func:`extend_state_dict`.

    Returns:
        ``{new modality: source modality}`` for the modalities initialised from another one.

    Raises:
        CheckpointError: shared entries missing, unexpected or mis-shaped (listed), or no source modality.
    """
    encoder = _find_encoder(module)
    state, sources = extend_state_dict(_encoder_state(source), encoder.supplementary, init_from)
    load_strict(encoder, state, str(source) if not isinstance(source, Mapping) else "state dict")
    return sources


def _factory(name: str):
    arch = OMNI_VARIANTS[name]

    def create(
        in_channels: int | None = None,
        drop_path_rate: float = 0.1,
        attn_impl: str = "sdpa",
        pretrained: str = "",
        supplementary: Mapping[str, int] | None = None,
        init_from: str | Mapping[str, str] | None = None,
    ) -> OmniEncoder:
        if in_channels not in (None, 3):
            raise ConfigError(
                f"backbone {name!r} is a joint multi-modal encoder (RGB + supplementary modalities); only fusion "
                "'omni' can use it"
            )
        model = OmniEncoder(arch, supplementary or {"depth": 1}, drop_path_rate=drop_path_rate, attn_impl=attn_impl)
        if pretrained:
            load_omni_weights(model, pretrained, init_from)
        return model

    create.__name__ = name
    label = {"omni_nano": "tiny test variant, not published, no pretrained weights"}.get(
        name, f"OmniSegmentor encoder, DFormer-{name[-1].upper()} sizes"
    )
    create.__doc__ = (
        f"{label}: dims {arch.dims}, depths {arch.depths}, heads {arch.num_heads}. A joint RGB + supplementary "
        "modalities encoder; only the ``omni`` fusion uses it. ``supplementary``: name → channels (default "
        "depth); ``pretrained``: omni / DFormer encoder weights, extended to the modality set (``init_from``)."
    )
    return create


for _name in OMNI_VARIANTS:
    BACKBONES.register(_name)(_factory(_name))
