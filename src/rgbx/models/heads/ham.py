"""The light Hamburger decode head (``LightHamHead``): multi-stage concat → matrix decomposition (NMF) → classifier.

Paper: Geng et al., "Is Attention Better Than Matrix Decomposition?", ICLR 2021 (arXiv:2109.04553). The light head
is the one used by SegNeXt (Guo et al., NeurIPS 2022) and by DFormer (Yin et al., ICLR 2024) on NYU Depth V2 /
SUN RGB-D. References read: Gsunshine/Enjoy-Hamburger (``seg/HamNet/hamburger/ham.py``, the authors' original,
and ``seg_light_ham/mmseg/models/decode_heads/ham_head.py``), VCIP-RGBD/DFormer
(``models/decoders/ham_head.py``) and open-mmlab/mmsegmentation (``mmseg/models/decode_heads/ham_head.py``).

Structure (parameter names as in those repositories, so released weights map by prefix)::

    stages in_index (default 1, 2, 3) ── bilinear resize to the first of them (1/8) ── concat
    squeeze    1×1 conv → BN → ReLU                        (sum of the stage channels → ham_channels)
    hamburger  x + ham_out(NMF(ReLU(ham_in(x)))) → ReLU
               ham_in  = 1×1 conv with bias (no norm); ham_out = 1×1 conv → BN (no activation)
    align      1×1 conv → BN → ReLU                        (ham_channels → channels)
    dropout    Dropout2d(0.1) → conv_seg (1×1 classifier)

With ``fold`` (:meth:`LightHamHead.set_fold`, the ``fold_head`` speed switch) ``squeeze``'s conv is applied to each
stage at its own resolution before the resize, and the results summed: the same function, without the concatenated
1/8 map (DFormer-L's squeeze at 480×640: 2.6 → 0.7 GMAC per image).

The output is at the resolution of the first *selected* map (stage 1 = 1/8 for the default ``in_index``), not of
the first map passed; the :class:`~rgbx.models.Segmentor` upsamples logits to the input size.

NMF (the "ham"). The map (B, C, H, W) is reshaped to ``S`` non-negative matrices X ∈ R^{D×N} per image (D = C/S,
N = H·W; X ≥ 0 because of the ReLU after ``ham_in``) and factorised X ≈ B Cᵀ with bases B ∈ R^{D×R} and
coefficients C ∈ R^{N×R} (R = ``md_r``) by Lee & Seung's multiplicative updates for ‖X − B Cᵀ‖²_F::

    init   B ~ U(0, 1), each column L2-normalised;   C = softmax_R(inv_t · Xᵀ B)
    step   C ← C ⊙ (Xᵀ B) ⊘ (C BᵀB + ε)
           B ← B ⊙ (X C)  ⊘ (B CᵀC + ε)           (ε = 1e-6)
    K steps (``train_steps`` = 6 in training, ``eval_steps`` = 7 in evaluation), then one more C update, and the
    output is the low-rank reconstruction X̂ = B Cᵀ reshaped back to (B, C, H, W).

Choices (where the references disagree, or where this implementation departs from them):

* Gradient. The paper and the authors' original HamNet code run the K steps under ``torch.no_grad`` and let the
  gradient flow only through the final C update and X̂ = B Cᵀ (the "one-step gradient", which the paper argues is
  more stable than back-propagating through the iterations). The light-head copies (Enjoy-Hamburger's
  ``seg_light_ham``, SegNeXt, mmsegmentation, DFormer) have that decorator commented out / removed, i.e. they
  back-propagate through all K steps. Default here: ``one_step_grad=True`` (the paper); ``False`` reproduces the
  light-head repositories. Inference is identical either way.
* ``inv_t``. Every reference config sets ``INV_T=100``, but ``NMF2D.__init__`` then overwrites it with 1, so the
  coefficient initialisation that actually runs is ``softmax(1 · Xᵀ B)``. The default here is that effective 1.
* Bases initialisation and determinism. The references draw fresh random bases (``torch.rand``) for every image at
  every forward pass, also in evaluation, so a trained model's predictions change slightly from run to run and
  evaluation consumes the global random stream. Here, in training the bases are drawn the same way (per image, from
  the global generator, so ``torch.manual_seed`` makes training reproducible); in evaluation
  (``eval_init="fixed"``, the default) every image uses one fixed set of bases drawn once at construction from a
  private generator seeded with ``eval_seed`` (a non-persistent buffer: not in the state dict, identical in every
  process). Evaluation is therefore deterministic, independent of the batch it is in, and leaves the global RNG
  alone. ``eval_init="random"`` restores the reference behaviour.
* Precision. The decomposition runs in float32 with autocast disabled (the updates divide by quantities that can
  underflow in fp16/bf16); its result is cast back to the input dtype.
* Normalisation is BatchNorm (DFormer: BN/SyncBN, ``channels = ham_channels = 512``, ``md_r = 64``). mmseg's
  SegNeXt configs use GroupNorm(32), ``md_r = 16`` and 256 channels instead; GroupNorm is not offered here.
* BatchNorm ``eps`` (``bn_eps``, default 1e-5, PyTorch's). DFormer's training code overwrites the decode head's
  BatchNorm eps with its config's ``bn_eps = 1e-3`` (``utils/init_func.init_weight``), and its released NYU / SUN
  RGB-D checkpoints were trained and evaluated that way: build the head with ``bn_eps=1e-3``
  (``ModelConfig.head_options={"bn_eps": 1e-3}``) when loading them (see :mod:`rgbx.models.convert`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from rgbx.models.heads.fcn import ConvModule
from rgbx.models.layers import conv1x1_resized_concat, init_weights, resize
from rgbx.models.registries import HEADS

__all__ = ["NMF2D", "Hamburger", "LightHamHead", "nmf_update_bases", "nmf_update_coef"]

EVAL_INITS = ("fixed", "random")


def nmf_update_coef(
    x: torch.Tensor, bases: torch.Tensor, coef: torch.Tensor, eps: float = 1e-6
) -> torch.Tensor:
    """One multiplicative update of the coefficients: C ← C ⊙ (Xᵀ B) ⊘ (C BᵀB + ε).

    Args:
        x: (M, D, N) non-negative data, bases: (M, D, R), coef: (M, N, R).
    """
    numerator = torch.bmm(x.transpose(1, 2), bases)
    denominator = coef.bmm(bases.transpose(1, 2).bmm(bases))
    return coef * numerator / (denominator + eps)


def nmf_update_bases(
    x: torch.Tensor, bases: torch.Tensor, coef: torch.Tensor, eps: float = 1e-6
) -> torch.Tensor:
    """One multiplicative update of the bases: B ← B ⊙ (X C) ⊘ (B CᵀC + ε). Shapes as in :func:`nmf_update_coef`."""
    numerator = torch.bmm(x, coef)
    denominator = bases.bmm(coef.transpose(1, 2).bmm(coef))
    return bases * numerator / (denominator + eps)


class NMF2D(nn.Module):
    """Non-negative matrix factorisation of a feature map (no parameters; see the module docstring).

    Args:
        channels: C of the input map; must be divisible by ``md_s``.
        md_s: number of matrices per image (reference ``MD_S``); D = C / S.
        md_r: rank R (``MD_R``).
        train_steps, eval_steps: update steps K in training / evaluation (``TRAIN_STEPS``, ``EVAL_STEPS``).
        inv_t: softmax temperature of the coefficient initialisation (effective reference value 1).
        one_step_grad: run the K steps without gradient (the paper); False back-propagates through them.
        eval_init: ``"fixed"`` (deterministic evaluation bases) or ``"random"`` (fresh bases, as the references).
        eval_seed: seed of the fixed evaluation bases.
        eps: added to the update denominators.
    """

    def __init__(
        self,
        channels: int,
        md_s: int = 1,
        md_r: int = 64,
        train_steps: int = 6,
        eval_steps: int = 7,
        inv_t: float = 1.0,
        one_step_grad: bool = True,
        eval_init: str = "fixed",
        eval_seed: int = 0,
        eps: float = 1e-6,
    ):
        super().__init__()
        if md_s < 1 or channels % md_s:
            raise ValueError(f"NMF2D: channels ({channels}) must be divisible by md_s ({md_s})")
        if md_r < 1 or train_steps < 0 or eval_steps < 0:
            raise ValueError("NMF2D: md_r must be >= 1 and the step counts >= 0")
        if eval_init not in EVAL_INITS:
            raise ValueError(f"NMF2D: eval_init must be one of {', '.join(EVAL_INITS)}, got {eval_init!r}")
        self.S, self.D, self.R = md_s, channels // md_s, md_r
        self.train_steps, self.eval_steps = train_steps, eval_steps
        self.inv_t = inv_t
        self.one_step_grad = one_step_grad
        self.eval_init = eval_init
        self.eps = eps
        generator = torch.Generator().manual_seed(eval_seed)
        self.register_buffer("eval_bases", self._random_bases(self.S, generator=generator), persistent=False)

    def extra_repr(self) -> str:
        return (
            f"S={self.S}, D={self.D}, R={self.R}, train_steps={self.train_steps}, eval_steps={self.eval_steps}, "
            f"inv_t={self.inv_t}, one_step_grad={self.one_step_grad}, eval_init={self.eval_init!r}"
        )

    def _random_bases(self, n: int, device=None, generator: torch.Generator | None = None) -> torch.Tensor:
        """(n, D, R) uniform [0, 1) bases with L2-normalised columns."""
        bases = torch.rand((n, self.D, self.R), generator=generator, device=device, dtype=torch.float32)
        return F.normalize(bases, dim=1)

    def init_bases(self, batch: int, device: torch.device) -> torch.Tensor:
        """The initial bases (batch·S, D, R) for a forward pass (see the module docstring)."""
        if not self.training and self.eval_init == "fixed":
            return self.eval_bases.to(device=device, dtype=torch.float32).repeat(batch, 1, 1)
        return self._random_bases(batch * self.S, device=device)

    def iterate(self, x: torch.Tensor, bases: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Initialise the coefficients and run K update steps: → (bases, coef)."""
        coef = F.softmax(self.inv_t * torch.bmm(x.transpose(1, 2), bases), dim=-1)
        for _ in range(self.train_steps if self.training else self.eval_steps):
            coef = nmf_update_coef(x, bases, coef, self.eps)
            bases = nmf_update_bases(x, bases, coef, self.eps)
        return bases, coef

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) non-negative map → its rank-R reconstruction, same shape and dtype."""
        b, c, h, w = x.shape
        if c != self.S * self.D:
            raise ValueError(f"NMF2D built for {self.S * self.D} channels, got {c}")
        with torch.autocast(device_type=x.device.type, enabled=False):
            data = x.float().reshape(b * self.S, self.D, h * w)
            bases = self.init_bases(b, x.device)
            if self.one_step_grad:
                with torch.no_grad():
                    bases, coef = self.iterate(data, bases)
            else:
                bases, coef = self.iterate(data, bases)
            coef = nmf_update_coef(data, bases, coef, self.eps)
            out = torch.bmm(bases, coef.transpose(1, 2))
        return out.reshape(b, c, h, w).to(x.dtype)


class Hamburger(nn.Module):
    """``x → ReLU(x + ham_out(NMF(ReLU(ham_in(x)))))``: two 1×1 "breads" around the decomposition."""

    def __init__(self, ham_channels: int, **nmf_kwargs):
        super().__init__()
        self.ham_in = ConvModule(ham_channels, ham_channels, 1, norm=False, act=False)
        self.ham = NMF2D(ham_channels, **nmf_kwargs)
        self.ham_out = ConvModule(ham_channels, ham_channels, 1, norm=True, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        enjoy = F.relu(self.ham_in(x), inplace=True)
        enjoy = self.ham_out(self.ham(enjoy))
        return F.relu(x + enjoy, inplace=True)


@HEADS.register("ham")
class LightHamHead(nn.Module):
    """Light Hamburger head (SegNeXt / DFormer's ``decoder="ham"``).

    Args:
        in_channels: channels of each stage map passed to :meth:`forward` (the ``HEADS`` contract:
            ``encoder.feature_info.channels()``, all four stages); the head uses those at ``in_index``.
        num_classes: number of output classes K.
        channels: width after ``align``, i.e. the classifier input (DFormer's ``decoder_embed_dim``, 512).
        ham_channels: width of ``squeeze`` and the Hamburger (default: ``channels``, as DFormer).
        in_index: the stages used (default stages 1-3, strides 8/16/32; the output is at the first one's size).
        dropout: ``Dropout2d`` before the classifier.
        md_s, md_r, train_steps, eval_steps, inv_t, one_step_grad, eval_init, eval_seed: passed to
            :class:`NMF2D` (reference keys ``MD_S``, ``MD_R``, ``TRAIN_STEPS``, ``EVAL_STEPS``, ``INV_T``).
        bn_eps: ``eps`` of the head's three BatchNorms (``squeeze``, ``hamburger.ham_out``, ``align``); 1e-3 for
            released DFormer checkpoints (see the module docstring).
    """

    compile_region = True  # compiled on its own under SpeedOptions(compile=True, compile_scope="blocks")

    def __init__(
        self,
        in_channels: Sequence[int],
        num_classes: int,
        channels: int = 512,
        ham_channels: int | None = None,
        in_index: Sequence[int] = (1, 2, 3),
        dropout: float = 0.1,
        *,
        md_s: int = 1,
        md_r: int = 64,
        train_steps: int = 6,
        eval_steps: int = 7,
        inv_t: float = 1.0,
        one_step_grad: bool = True,
        eval_init: str = "fixed",
        eval_seed: int = 0,
        bn_eps: float = 1e-5,
    ):
        super().__init__()
        if not isinstance(bn_eps, int | float) or isinstance(bn_eps, bool) or not bn_eps > 0:
            raise ValueError(f"LightHamHead: bn_eps must be a positive number, got {bn_eps!r}")
        self.in_channels = list(in_channels)
        self.in_index = [int(i) for i in in_index]
        if not self.in_index:
            raise ValueError("LightHamHead: in_index must name at least one stage")
        for i in self.in_index:
            if not -len(self.in_channels) <= i < len(self.in_channels):
                raise ValueError(
                    f"LightHamHead: in_index {i} is out of range for {len(self.in_channels)} stages"
                )
        self.num_classes = num_classes
        self.channels = channels
        self.ham_channels = channels if ham_channels is None else ham_channels
        used = sum(self.in_channels[i] for i in self.in_index)
        self.squeeze = ConvModule(used, self.ham_channels, 1)
        self.hamburger = Hamburger(
            self.ham_channels,
            md_s=md_s,
            md_r=md_r,
            train_steps=train_steps,
            eval_steps=eval_steps,
            inv_t=inv_t,
            one_step_grad=one_step_grad,
            eval_init=eval_init,
            eval_seed=eval_seed,
        )
        self.align = ConvModule(self.ham_channels, channels, 1)
        self.dropout = nn.Dropout2d(dropout)
        self.conv_seg = nn.Conv2d(channels, num_classes, kernel_size=1)
        for module in self.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.eps = float(bn_eps)
        self.apply(init_weights)
        nn.init.normal_(self.conv_seg.weight, std=0.01)
        nn.init.zeros_(self.conv_seg.bias)
        self.fold = False
        self.matmul_resize = False  # SpeedOptions.matmul_resize (Segmentor.set_matmul_resize)

    def set_fold(self, fold: bool) -> None:
        """Apply ``squeeze``'s 1×1 conv to each selected stage at its own resolution, then upsample and sum
        (:func:`~rgbx.models.layers.conv1x1_resized_concat`: the same function, without the concatenation at 1/8);
        ``False``: the reference order of operations."""
        self.fold = bool(fold)

    def _squeeze(self, selected: Sequence[torch.Tensor], size) -> torch.Tensor:
        if not self.fold:
            return self.squeeze(torch.cat([resize(f, size, matmul=self.matmul_resize) for f in selected], dim=1))
        sq = self.squeeze
        x = conv1x1_resized_concat(selected, sq.conv.weight, size, sq.conv.bias, self.matmul_resize)
        if sq.bn is not None:
            x = sq.bn(x)
        return sq.act(x) if sq.act is not None else x

    @property
    def classifier(self) -> nn.Conv2d:
        """The final 1×1 conv (``conv_seg`` in the references' naming)."""
        return self.conv_seg

    def forward(self, features: Sequence[torch.Tensor], return_decoder: bool = False):
        """Per-stage maps (B, C_i, H_i, W_i) → logits (B, K, H_j, W_j), j = ``in_index[0]``; with
        ``return_decoder``, ``(logits, decoder)``, the aligned map the classifier reads (before dropout)."""
        if len(features) != len(self.in_channels):
            raise ValueError(f"LightHamHead expects {len(self.in_channels)} stage maps, got {len(features)}")
        selected = [features[i] for i in self.in_index]
        size = selected[0].shape[-2:]
        x = self.align(self.hamburger(self._squeeze(selected, size)))
        logits = self.conv_seg(self.dropout(x))
        return (logits, x) if return_decoder else logits
