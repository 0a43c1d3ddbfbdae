"""PrimKD (Hao et al., "Primary Modality Guided Multimodal Fusion for RGB-D Semantic Segmentation"), stage 2.

Stage 1 trains the teacher: plain ``supervised`` training of a single-modality model on the *primary* modality
(RGB by default; ``model.modalities: [rgb]``). Stage 2 (this method) trains a multimodal student (any fusion,
typically ``cmx``) from the frozen teacher:

* the teacher sees only the primary modality (under ``torch.no_grad``), the student the whole batch;
* a per-stage aligner R_i = Conv1×1 → Conv3×3 → ReLU → Conv3×3 maps the student's fused stage-i features onto the
  teacher's (the paper's "multiple layers" design, Tab. 5), trained with the student;
* losses (``X_T`` / ``f_primary`` = teacher, ``X_S`` / ``f_rgbd`` = student)::

    L_pred   = 1/N Σ_labelled pixels KL(softmax(X_T/T) ‖ softmax(X_S/T)) · T²             (Eq. 5)
    L_feat,i = mean_(c,h,w) (R_i(f_rgbd,i) − f_primary,i)², per sample                      (Eq. 6)
    L_feat   = mean_samples select_rule_i(L_feat,i)  (max | min | mean | fixed)            (Eq. 7)
    L        = L_seg + α L_pred + β L_feat                                                   (Eq. 8)

``step`` returns ``{"seg", "pred", "feat"}`` already weighted; the engine sums and logs them. See
``docs/methods/primkd.md`` for how each term maps to the paper and where it had to be made precise.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from rgbx.errors import ConfigError
from rgbx.methods.base import METHODS, Method, check_teacher_classes, drop_modalities, load_frozen_teacher
from rgbx.models.model_file import describe_model

__all__ = ["PrimKD", "build_aligner", "feature_distillation", "prediction_distillation", "select_stages",
           "stage_losses"]

SELECTIONS = ("max", "min", "mean", "fixed")
DIRECTIONS = ("teacher_student", "student_teacher")


@METHODS.register("primkd")
class PrimKD(Method):
    """Multimodal student distilled from a frozen primary-modality teacher (PrimKD stage 2)."""

    @dataclass
    class Options:
        teacher: str = ""  # the stage-1 (primary-modality) teacher's rgbx weights (required)
        primary: str = "rgb"  # the teacher's only modality; the student must have it too
        alpha: float = 1.0  # α, prediction-level KD weight (Eq. 8); the paper's best, Tab. 6
        beta: float = 0.05  # β, feature-level KD weight (Eq. 8); the paper's best, Tab. 7
        temperature: float = 1.0  # softens both predictions in Eq. 5; 1 = the paper
        kl_direction: str = "teacher_student"  # Eq. 5 as written, KL(X_T ‖ X_S); or "student_teacher"
        stage_selection: str = "max"  # Eq. 7, per sample: max | min | mean | fixed
        # the stage used when stage_selection == "fixed" (must be in ``stages``); 0 = the paper's stage 1, its best
        # fixed stage (Tab. 4: 57.3; its stage 4, here 3, gives 56.7)
        fixed_stage: int = 0
        stages: list[int] = field(default_factory=lambda: [0, 1, 2, 3])  # encoder stages with an aligner

        def __post_init__(self):
            if not self.teacher:
                raise ValueError("method.options.teacher is required: the path of the stage-1 primary-modality "
                                 "teacher's weights (e.g. runs/synth_primkd_teacher/model.safetensors)")
            if not self.primary:
                raise ValueError("method.options.primary must name a modality (e.g. rgb)")
            for name in ("alpha", "beta"):
                if getattr(self, name) < 0:
                    raise ValueError(f"method.options.{name} must be >= 0, got {getattr(self, name)}")
            if self.temperature <= 0:
                raise ValueError(f"method.options.temperature must be > 0, got {self.temperature}")
            if self.kl_direction not in DIRECTIONS:
                raise ValueError(f"method.options.kl_direction must be one of {list(DIRECTIONS)}, "
                                 f"got {self.kl_direction!r}")
            if self.stage_selection not in SELECTIONS:
                raise ValueError(f"method.options.stage_selection must be one of {list(SELECTIONS)}, "
                                 f"got {self.stage_selection!r}")
            self.stages = list(self.stages)
            if not self.stages or any(not isinstance(s, int) or s < 0 for s in self.stages) \
                    or len(set(self.stages)) != len(self.stages):
                raise ValueError(f"method.options.stages must be distinct stage indices >= 0, got {self.stages}")
            if self.stage_selection == "fixed" and self.fixed_stage not in self.stages:
                raise ValueError(f"method.options.fixed_stage={self.fixed_stage} must be one of "
                                 f"method.options.stages {self.stages}")

    def __init__(self, config, **kwargs):
        super().__init__(config, **kwargs)
        self.teacher: torch.nn.Module | None = None
        self.aligners: nn.ModuleList | None = None

    def graph_refusal(self) -> str | None:
        # the student's modality dropout follows the batch's presence masks (drawn on the device in a captured step);
        # Eq. 5-7 mask samples with torch.where and select stages with max / min on the device: nothing read back
        return None

    @classmethod
    def complete_config(cls, cfg, train_set=None) -> None:
        check_teacher_classes(cfg, train_set)  # a teacher for other class names: refused before training

    def prepare(self, model: torch.nn.Module, device: torch.device) -> None:
        """Load the teacher, check it fits the student, freeze it; build one aligner per distilled stage."""

        o = self.options
        path = Path(o.teacher)
        teacher = load_frozen_teacher(o.teacher, device, "synth_primkd_teacher")
        problems = []
        if list(teacher.modalities) != [o.primary]:
            problems.append(f"the teacher must see only the primary modality {o.primary!r} "
                            f"(method.options.primary), it has {list(teacher.modalities)}")
        if o.primary not in model.modalities:
            problems.append(f"the student lacks the primary modality {o.primary!r} (it has "
                            f"{list(model.modalities)})")
        if teacher.num_classes != model.num_classes:
            problems.append(f"num_classes {teacher.num_classes} vs the student's {model.num_classes}")
        t_channels = teacher.encoder.feature_info.channels()
        s_channels = model.encoder.feature_info.channels()
        bad = [s for s in o.stages if s >= min(len(t_channels), len(s_channels))]
        if bad:
            problems.append(f"method.options.stages {bad}: the encoders have stages "
                            f"0-{min(len(t_channels), len(s_channels)) - 1}")
        if problems:
            raise ConfigError(f"method.options.teacher={str(path)!r} does not fit the student: the teacher is "
                              f"{describe_model(teacher.config.to_dict())}, the student "
                              f"{describe_model(model.config.to_dict())}; " + "; ".join(problems))
        self.teacher = teacher
        self.aligners = nn.ModuleList([build_aligner(s_channels[i], t_channels[i]) for i in o.stages]).to(device)

    def trainable_modules(self) -> list[torch.nn.Module]:
        return [] if self.aligners is None else [self.aligners]

    def step(self, model, batch, generator: torch.Generator) -> dict[str, torch.Tensor]:
        if self.teacher is None or self.aligners is None:
            raise RuntimeError("PrimKD.prepare(model, device) must be called before step()")
        o = self.options
        with torch.no_grad():
            self.teacher.eval()  # frozen: never in training mode (drop path off)
            teach = self.teacher({o.primary: batch.inputs[o.primary]})  # Eq. 4: the primary modality only
        # samples whose primary modality is missing have nothing to learn from the teacher
        has_primary = batch.present[o.primary] if o.primary in batch.present else None
        student_batch = drop_modalities(batch, self.config.modality_dropout, generator)
        out = model(student_batch.inputs, student_batch.present)

        if batch.label is not None:
            seg = self.segmentation_loss(out.logits, batch.label)
        else:
            seg = out.logits.sum() * 0.0
        pred = prediction_distillation(out.logits, teach.logits, batch.label, self.ignore_index, o.temperature,
                                       o.kl_direction, has_primary)
        aligned = [aligner(out.fused[i].float()) for aligner, i in zip(self.aligners, o.stages)]  # R_i, Eq. 6
        target = [teach.fused[i] for i in o.stages]
        fixed = o.stages.index(o.fixed_stage) if o.stage_selection == "fixed" else None
        feat = feature_distillation(aligned, target, o.stage_selection, fixed, has_primary)
        return {"seg": seg, "pred": o.alpha * pred, "feat": o.beta * feat}  # Eq. 8


def build_aligner(in_channels: int, out_channels: int) -> nn.Sequential:
    """R_i: Conv1×1 (C_student → C_teacher) → Conv3×3 → ReLU → Conv3×3, spatial size kept (Sec. 4.4.3, Tab. 5)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 1),
        nn.Conv2d(out_channels, out_channels, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_channels, out_channels, 3, padding=1),
    )


def prediction_distillation(student_logits: torch.Tensor, teacher_logits: torch.Tensor, label: torch.Tensor | None,
                            ignore_index: int, temperature: float = 1.0, direction: str = "teacher_student",
                            sample_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. 5: per-pixel KL over the K classes of softmax(·/T), averaged over the labelled pixels (all pixels when
    ``label`` is None) of the samples in ``sample_mask`` (all when None); × T² so the gradient scale does not depend
    on T. ``direction="teacher_student"`` is KL(P_T ‖ P_S) = Σ_k p_T (log p_T − log p_S), the paper's H_KL(X_T, X_S);
    ``"student_teacher"`` swaps the two."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {list(DIRECTIONS)}, got {direction!r}")
    t = temperature
    s = F.log_softmax(student_logits.float() / t, dim=1)
    p = F.log_softmax(teacher_logits.float() / t, dim=1)
    first, second = (p, s) if direction == "teacher_student" else (s, p)
    kl = (first.exp() * (first - second)).sum(1)  # (B, H, W)
    valid = torch.ones_like(kl, dtype=torch.bool) if label is None else label != ignore_index
    if sample_mask is not None:
        valid = valid & sample_mask.to(valid.device).view(-1, 1, 1)
    kl = torch.where(valid, kl, torch.zeros((), dtype=kl.dtype, device=kl.device))
    return kl.sum() / valid.sum().clamp(min=1) * t * t


def stage_losses(aligned: list[torch.Tensor], teacher: list[torch.Tensor]) -> torch.Tensor:
    """Eq. 6 per sample and stage: the mean squared error between the aligned student map R_i(f_rgbd,i) (bilinearly
    resized to the teacher's stage size when they differ) and the teacher's map f_primary,i. Returns (B, S)."""
    columns = []
    for s, t in zip(aligned, teacher, strict=True):
        s = s.float()
        if s.shape[-2:] != t.shape[-2:]:
            s = F.interpolate(s, size=t.shape[-2:], mode="bilinear", align_corners=False)
        columns.append((s - t.detach().float()).pow(2).flatten(1).mean(1))
    return torch.stack(columns, 1)


def select_stages(losses: torch.Tensor, rule: str = "max", fixed: int | None = None) -> torch.Tensor:
    """Eq. 7: per sample (row of the (B, S) ``losses``), the largest / smallest / mean stage loss, or column
    ``fixed``. Returns (B,)."""
    if rule == "max":
        return losses.max(1).values
    if rule == "min":
        return losses.min(1).values
    if rule == "mean":
        return losses.mean(1)
    if rule == "fixed":
        if fixed is None or not 0 <= fixed < losses.shape[1]:
            raise ValueError(f"rule 'fixed' needs a column index in [0, {losses.shape[1]}), got {fixed}")
        return losses[:, fixed]
    raise ValueError(f"rule must be one of {list(SELECTIONS)}, got {rule!r}")


def feature_distillation(aligned: list[torch.Tensor], teacher: list[torch.Tensor], rule: str = "max",
                         fixed: int | None = None, sample_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. 6 + Eq. 7: the per-sample selected stage loss, averaged over the samples in ``sample_mask`` (all when
    None; 0 when none)."""
    per_sample = select_stages(stage_losses(aligned, teacher), rule, fixed)  # (B,)
    if sample_mask is None:
        return per_sample.mean()
    mask = sample_mask.to(per_sample.device)
    per_sample = torch.where(mask, per_sample, torch.zeros((), dtype=per_sample.dtype, device=per_sample.device))
    return per_sample.sum() / mask.sum().clamp(min=1)
