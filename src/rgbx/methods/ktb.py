"""KTB's Masked Modality Self-Teaching (MMST), the training recipe of "Keep the Balance" (Cai et al., CVPR 2025).

Meant for the ``ktb`` fusion (:mod:`rgbx.models.fusions.ktb`) but works with any two-modality fusion that returns
per-modality features. The supplementary material says: MMST masks modalities during training only; auxiliary heads
S2 and S3 segment from a single modality (RGB, X) and are discarded at inference, where clean, unmasked data is used;
their losses ``L_S2`` and ``L_S3`` are weighted by the balance weight λ2 (best 0.01, Table 4). It gives no equation
numbers for the loss (it calls it "the overall loss"), so the terms are written here without numbers::

    x̃          = mask(x):  per sample, with probability p, ONE of its modalities is marked absent (chosen uniformly;
                            only samples with both modalities present are masked, so both are never masked)
    S1          = head(DSCF(x̃))                 the fused (dual-modality) prediction of the model
    S2, S3      = aux_rgb(f_rgb), aux_x(f_x)     small conv heads on each modality's last-stage features
    L_S1        = CE(S1, y)
    L_S2        = CE(S2, t) over the samples where RGB is present      (t: see below)
    L_S3        = CE(S3, t) over the samples where X is present
    L           = L_S1 + λ2 (L_S2 + L_S3)

The supplementary calls λ2 a weight "in overall loss" (Table 4); the subscript implies a λ1-weighted term in the main
paper's overall loss that the supplementary does not define (the main paper text was not available), so this ``L``
may lack a term.

Decision on the target ``t`` ("leverages accurately predicted dual-modality results to self-teach the single-modality
outcomes", abstract): ``teacher: label`` (default) uses the ground truth ``y``; ``teacher: fused`` uses the soft
prediction ``softmax(S1)`` (detached) of the samples where both modalities are present (self-teaching), as a soft-
target cross-entropy over the labelled pixels. The default is therefore not self-teaching (it is deep supervision of
the auxiliary heads); ``teacher: fused`` is the self-teaching reading.

``step`` returns ``{"s1": L_S1, "s2": λ2 L_S2, "s3": λ2 L_S3}``; the engine sums and logs them. The auxiliary heads
are built in :meth:`prepare` and trained through :meth:`trainable_modules`; they are not part of the model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from rgbx.data.sample import device_masks, host_masks
from rgbx.errors import ConfigError
from rgbx.methods.base import METHODS, Method
from rgbx.models.layers import resize

__all__ = ["MaskedModalitySelfTeaching", "auxiliary_head", "mask_one_modality"]


def auxiliary_head(channels: int, num_classes: int, hidden: int = 64) -> nn.Module:
    """A single-modality head: Conv3×3(C → hidden) → ReLU → Conv1×1(hidden → K) (no batch norm: masked samples are
    selected out, so batch statistics would vary with the masking)."""
    return nn.Sequential(
        nn.Conv2d(channels, hidden, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(hidden, num_classes, kernel_size=1),
    )


def mask_one_modality(batch, p: float, generator: torch.Generator):
    """MMST masking: each sample that has every modality present gets, with probability ``p``, exactly one modality
    (chosen uniformly) marked absent. Samples already missing a modality are left as they are, so no sample ever
    loses its last modality. Returns the masked batch (fill values written in). With presence decided on the device
    (``PresenceMasks.on_device``) the draw is made there, with the device's generator."""
    names = list(batch.modalities)
    if p <= 0 or len(names) < 2:
        return batch
    present = device_masks(batch.present, names)
    if present is not None:  # drawn on the device (a captured step)
        b, device = present.shape[0], present.device
        eligible = present.all(1) & (torch.rand(b, device=device) < p)
        drop = F.one_hot(torch.randint(len(names), (b,), device=device), len(names)).bool() & eligible[:, None]
        return batch.drop({n: drop[:, j] for j, n in enumerate(names)})
    present = host_masks(batch.present, names)  # (B, M) on the CPU, no device read-back
    b = present.shape[0]
    chosen = torch.rand(b, generator=generator) < p
    which = torch.randint(len(names), (b,), generator=generator)
    eligible = present.all(1) & chosen
    drop = torch.zeros_like(present)
    drop[torch.arange(b), which] = True
    drop &= eligible.unsqueeze(1)
    return batch.drop({n: drop[:, j] for j, n in enumerate(names)})  # CPU masks: Batch.drop moves them


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor, label: torch.Tensor | None,
                       ignore_index: int) -> torch.Tensor:
    """−Σ_k t_k log softmax(logits)_k, averaged over labelled pixels (all pixels when ``label`` is None)."""
    loss = -(target * F.log_softmax(logits.float(), dim=1)).sum(1)  # (n, H, W)
    if label is None:
        return loss.mean()
    valid = label != ignore_index
    return torch.where(valid, loss, torch.zeros((), dtype=loss.dtype, device=loss.device)).sum() / valid.sum().clamp(
        min=1)


@METHODS.register("ktb")
class MaskedModalitySelfTeaching(Method):
    """MMST: random single-modality masking, fused CE + λ2 × auxiliary single-modality losses (module docstring)."""

    @dataclass
    class Options:
        lambda2: float = 0.01  # λ2, weight of L_S2 and L_S3 (the paper's best, Table 4 of the supplementary)
        mask_prob: float = 0.5  # probability that a sample with both modalities gets one of them masked
        teacher: str = "label"  # target of the auxiliary heads: "label" (ground truth) or "fused" (softmax S1)
        hidden: int = 64  # auxiliary heads' hidden channels

        def __post_init__(self):
            if self.lambda2 < 0:
                raise ValueError(f"method.options.lambda2 must be >= 0, got {self.lambda2}")
            if not 0.0 <= self.mask_prob <= 1.0:
                raise ValueError(f"method.options.mask_prob must be in [0, 1], got {self.mask_prob}")
            if self.teacher not in ("label", "fused"):
                raise ValueError(f"method.options.teacher must be 'label' or 'fused', got {self.teacher!r}")
            if not isinstance(self.hidden, int) or self.hidden <= 0:
                raise ValueError(f"method.options.hidden must be a positive integer, got {self.hidden}")

    def __init__(self, config, **kwargs):
        super().__init__(config, **kwargs)
        if getattr(config, "modality_dropout", 0.0):
            raise ConfigError("method ktb masks modalities itself: set method.options.mask_prob instead of "
                              f"method.modality_dropout (got {config.modality_dropout})")
        self.heads: nn.ModuleDict | None = None

    def graph_refusal(self) -> str | None:
        # the masking follows the batch's presence masks (drawn on the device in a captured step) and the auxiliary
        # losses mark other samples' pixels ignored instead of indexing them out: nothing read back
        return None

    def drops_sensors(self) -> bool:
        return self.options.mask_prob > 0  # MMST masks one modality of a sample

    def prepare(self, model: nn.Module, device: torch.device) -> None:
        """Build S2 (first / RGB modality) and S3 (X) on the last encoder stage's channels."""
        modalities = list(model.modalities)
        if len(modalities) != 2:
            raise ConfigError(f"method ktb is for RGB + X models: it needs exactly two modalities, got {modalities}")
        channels = model.encoder.feature_info.channels()[-1]
        self.heads = nn.ModuleDict(
            {m: auxiliary_head(channels, model.num_classes, self.options.hidden) for m in modalities}
        ).to(device)

    def trainable_modules(self) -> list[nn.Module]:
        return [] if self.heads is None else [self.heads]

    def step(self, model, batch, generator: torch.Generator) -> dict[str, torch.Tensor]:
        if self.heads is None:
            raise RuntimeError("MaskedModalitySelfTeaching.prepare(model, device) must be called before step()")
        o = self.options
        masked = mask_one_modality(batch, o.mask_prob, generator)
        out = model(masked.inputs, masked.present)
        label = batch.label
        if label is not None:
            s1 = self.segmentation_loss(out.logits, label)
        else:
            s1 = out.logits.sum() * 0.0
        ref = next(iter(out.present.values()))
        both = torch.ones_like(ref)
        for m in self.heads:
            both = both & out.present.get(m, torch.zeros_like(ref))
        aux = []
        for m in self.heads:  # S2 = RGB (first), S3 = X
            aux.append(self._aux_loss(m, out, label, both))
        return {"s1": s1, "s2": o.lambda2 * aux[0], "s3": o.lambda2 * aux[1]}

    def _aux_loss(self, m: str, out, label: torch.Tensor | None, both: torch.Tensor) -> torch.Tensor:
        """S2 / S3's loss over the samples that have ``m`` (and, for ``teacher: fused``, every modality): the other
        samples' pixels are marked ignored rather than indexed out, so no mask is read back to the host; with no
        such sample the loss is 0 (the head still sees a zero gradient)."""
        zero = out.logits.new_zeros((), dtype=torch.float32)
        head = self.heads[m]
        if m not in out.features or (label is None and self.options.teacher == "label"):
            return zero + 0.0 * sum(p.sum() for p in head.parameters())
        rows = out.present[m] if self.options.teacher == "label" else out.present[m] & both
        logits = resize(head(out.features[m][-1]), out.logits.shape[-2:])
        if label is None:
            label = torch.full(out.logits.shape[:1] + out.logits.shape[-2:], int(self.ignore_index == 0),
                               dtype=torch.long, device=out.logits.device)  # any non-ignored value
        sub_label = torch.where(rows.view(-1, 1, 1), label, torch.full_like(label, self.ignore_index))
        if self.options.teacher == "label":
            return self.segmentation_loss(logits, sub_label)
        target = out.logits.detach().float().softmax(dim=1)
        return soft_cross_entropy(logits, target, sub_label, self.ignore_index)
