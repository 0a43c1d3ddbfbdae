"""AnySeg (Zheng et al., "Learning Robust Anymodal Segmentor with Unimodal and Cross-modal Distillation"), stage 2.

Stage 1 trains the teacher: plain ``supervised`` training of a ``mean``-fusion model (parallel multimodal learning,
:mod:`rgbx.models.fusions.mean`) on all modalities. Stage 2 (this method) trains an *anymodal* student of the same
architecture from the frozen teacher:

* the teacher sees the full batch (under ``torch.no_grad``), the student the batch after anymodal dropout (each
  modality of each sample dropped with probability ``dropout``, at least one kept);
* losses, each a KL(student ‖ teacher) as written in the paper (``g`` / ``P_am`` = student, ``f`` / ``P_mm`` =
  teacher)::

    L_sup   = CE(P_am, y)                                                     (Eq. 7)
    L_mad   = 1/N Σ_pixels Σ_k P_am log(P_am / P_mm)                          (Eq. 6)
    L_umd   = Σ_stages mean_(sample, m retained) mean_pos Σ_c g log(g / f)     (Eq. 4, softmax over channels)
    L_cmd   = Σ_stages mean_(sample, m<n retained) Σ_c s_g log(s_g / s_f)     (Eq. 5, s = softmax_c of the
              per-channel cosine similarity between the two modalities' maps)
    L_total = L_sup + λ L_mad + α L_umd + β L_cmd                              (Eq. 8)

``step`` returns ``{"sup", "mad", "umd", "cmd"}`` already weighted; the engine sums and logs them. See
``docs/methods/anyseg.md`` for how each term maps to the paper and where it had to be made precise.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from rgbx.errors import ConfigError
from rgbx.methods.base import METHODS, Method, check_teacher_classes, drop_modalities, load_frozen_teacher
from rgbx.models.model_file import describe_model

__all__ = ["AnysegDistiller", "cross_modal_distillation", "prediction_distillation", "unimodal_distillation"]

Features = dict[str, list[torch.Tensor]]  # modality → per-stage (B, C_i, H_i, W_i)
Masks = dict[str, torch.Tensor]  # modality → (B,) bool


@METHODS.register("anyseg")
class AnysegDistiller(Method):
    """Anymodal student distilled from a frozen parallel-multimodal teacher (AnySeg stage 2)."""

    @dataclass
    class Options:
        teacher: str = ""  # the stage-1 teacher's rgbx weights (required)
        lambda_mad: float = 50.0  # λ, prediction distillation (Eq. 6)
        # α, unimodal feature distillation (Eq. 4). 5 = the paper's reported model: §5.2's text says the best α is 2
        # (40.22), but Tab. 5 has no α = 2 row (it tests 1, 3, 5, 7, 10); Tab. 3's "+ α L_umd" row equals Tab. 5's
        # α = 5 row, and Tab. 6's "w/o" baseline (under the final β = 10 result) is that same row
        alpha_umd: float = 5.0
        beta_cmd: float = 10.0  # β, cross-modal correspondence distillation (Eq. 5); Tab. 6's best (= Tab. 1)
        temperature: float = 1.0  # softens every distribution (logits, features, similarities); 1 = the paper
        dropout: float = 0.5  # anymodal dropout: per modality and sample; at least one modality is kept
        stages: list[int] = field(default_factory=lambda: [0, 1, 2, 3])  # encoder stages for Eq. 4 / Eq. 5

        def __post_init__(self):
            if not self.teacher:
                raise ValueError("method.options.teacher is required: the path of the stage-1 teacher's weights "
                                 "(e.g. runs/synth_anyseg_teacher/model.safetensors)")
            for name in ("lambda_mad", "alpha_umd", "beta_cmd"):
                if getattr(self, name) < 0:
                    raise ValueError(f"method.options.{name} must be >= 0, got {getattr(self, name)}")
            if self.temperature <= 0:
                raise ValueError(f"method.options.temperature must be > 0, got {self.temperature}")
            if not 0.0 <= self.dropout < 1.0:
                raise ValueError(f"method.options.dropout must be in [0, 1), got {self.dropout}")
            self.stages = list(self.stages)
            if not self.stages or any(not isinstance(s, int) or s < 0 for s in self.stages) \
                    or len(set(self.stages)) != len(self.stages):
                raise ValueError(f"method.options.stages must be distinct stage indices >= 0, got {self.stages}")

    def __init__(self, config, **kwargs):
        super().__init__(config, **kwargs)
        if getattr(config, "modality_dropout", 0.0):
            raise ConfigError("method anyseg does its own anymodal dropout: set method.options.dropout instead of "
                              f"method.modality_dropout (got {config.modality_dropout})")
        self.teacher: torch.nn.Module | None = None

    def graph_refusal(self) -> str | None:
        # nothing decided on the host: the anymodal dropout follows the batch's presence masks (drawn on the device
        # in a captured step) and every loss term masks absent samples with torch.where
        return None

    def drops_sensors(self) -> bool:
        return self.options.dropout > 0  # the student's anymodal dropout

    @classmethod
    def complete_config(cls, cfg, train_set=None) -> None:
        check_teacher_classes(cfg, train_set)  # a teacher for other class names: refused before training

    def prepare(self, model: torch.nn.Module, device: torch.device) -> None:
        """Load the teacher, check it fits the student, freeze it."""

        path = Path(self.options.teacher)
        teacher = load_frozen_teacher(self.options.teacher, device, "synth_anyseg_teacher")
        theirs, ours = teacher.config.to_dict(), model.config.to_dict()
        problems = []
        if set(teacher.modalities) != set(model.modalities):
            problems.append(f"modalities {list(teacher.modalities)} vs the student's {list(model.modalities)}")
        if teacher.num_classes != model.num_classes:
            problems.append(f"num_classes {teacher.num_classes} vs the student's {model.num_classes}")
        t_channels = teacher.encoder.feature_info.channels()
        s_channels = model.encoder.feature_info.channels()
        if t_channels != s_channels:
            problems.append(f"encoder channels {t_channels} vs the student's {s_channels} (feature distillation "
                            f"needs the same backbone)")
        if problems:
            raise ConfigError(f"method.options.teacher={str(path)!r} does not fit the student: the teacher is "
                              f"{describe_model(theirs)}, the student {describe_model(ours)}; "
                              + "; ".join(problems))
        bad = [s for s in self.options.stages if s >= len(s_channels)]
        if bad:
            raise ConfigError(f"method.options.stages {bad}: the encoder has stages 0-{len(s_channels) - 1}")
        self.teacher = teacher

    def step(self, model, batch, generator: torch.Generator) -> dict[str, torch.Tensor]:
        if self.teacher is None:
            raise RuntimeError("AnysegDistiller.prepare(model, device) must be called before step()")
        o = self.options
        with torch.no_grad():
            self.teacher.eval()  # frozen: never in training mode (drop path off)
            teach = self.teacher(batch.inputs, batch.present)  # the full multimodal batch
        anymodal = drop_modalities(batch, o.dropout, generator)
        out = model(anymodal.inputs, anymodal.present)

        if batch.label is not None:
            sup = self.segmentation_loss(out.logits, batch.label)  # Eq. 7
        else:
            sup = out.logits.sum() * 0.0
        # the student's presence ∧ the teacher's (the teacher saw the undropped batch, so this is the student's)
        present = {m: out.present[m] & teach.present[m] for m in out.present if m in teach.present}
        mad = prediction_distillation(out.logits, teach.logits, batch.label, self.ignore_index, o.temperature)
        umd = unimodal_distillation(out.features, teach.features, present, o.stages, o.temperature)
        cmd = cross_modal_distillation(out.features, teach.features, present, o.stages, o.temperature)
        return {"sup": sup, "mad": o.lambda_mad * mad, "umd": o.alpha_umd * umd, "cmd": o.beta_cmd * cmd}  # Eq. 8


def _kl(student_logp: torch.Tensor, teacher_logp: torch.Tensor, dim: int) -> torch.Tensor:
    """KL(student ‖ teacher) = Σ p_s (log p_s − log p_t) along ``dim`` (exactly 0 for identical inputs)."""
    return (student_logp.exp() * (student_logp - teacher_logp)).sum(dim)


def prediction_distillation(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                            label: torch.Tensor | None, ignore_index: int, temperature: float = 1.0) -> torch.Tensor:
    """Eq. 6, modality-agnostic semantic distillation: per-pixel KL(P_am ‖ P_mm) over the K classes, averaged over
    the labelled pixels (all pixels when ``label`` is None); × T² so the gradient scale does not depend on T."""
    t = temperature
    s = F.log_softmax(student_logits.float() / t, dim=1)
    p = F.log_softmax(teacher_logits.float() / t, dim=1)
    kl = _kl(s, p, dim=1)  # (B, H, W)
    if label is None:
        return kl.mean() * t * t
    valid = label != ignore_index
    kl = torch.where(valid, kl, torch.zeros((), dtype=kl.dtype, device=kl.device))
    return kl.sum() / valid.sum().clamp(min=1) * t * t


def unimodal_distillation(student: Features, teacher: Features, present: Masks, stages, temperature: float = 1.0,
                          ) -> torch.Tensor:
    """Eq. 4, unimodal distillation: for every stage i and every (sample, modality m) with m present in ``present``,
    KL(softmax_c g_m ‖ softmax_c f_m) over the C_i channels at each position, averaged over positions; the mean over
    the (sample, modality) pairs, summed over the stages. Absent pairs are replaced by zeros (``torch.where``) before
    any arithmetic, so whatever their features hold cannot reach the loss or its gradient; no mask is read back to
    the host."""
    t = temperature
    total = None
    names = [m for m in present if m in student and m in teacher]
    for i in stages:
        values, count = [], None
        for m in names:
            mask = present[m]
            g = _only(student[m][i], mask).float().flatten(2)  # (B, C, HW)
            f = _only(teacher[m][i], mask).float().flatten(2)
            kl = _kl(F.log_softmax(g / t, dim=1), F.log_softmax(f / t, dim=1), dim=1).mean(1)  # (B,)
            values.append(torch.where(mask, kl, torch.zeros((), dtype=kl.dtype, device=kl.device)).sum())
            count = mask.sum() if count is None else count + mask.sum()
        if values:
            stage = torch.stack(values).sum() / count.clamp(min=1) * t * t
            total = stage if total is None else total + stage
    return total if total is not None else _zero(student)


def _only(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``x`` (B, ...) with the samples outside ``mask`` replaced by zeros (no gradient reaches them)."""
    return torch.where(mask.view(-1, *([1] * (x.dim() - 1))), x, torch.zeros((), dtype=x.dtype, device=x.device))


def cross_modal_distillation(student: Features, teacher: Features, present: Masks, stages,
                             temperature: float = 1.0) -> torch.Tensor:
    """Eq. 5, cross-modal correspondence distillation: for every stage i, every pair of modalities (m, n) and every
    sample where both are present, S_j = cos(x_m^j, x_n^j), the cosine similarity of channel j's spatial maps, for
    the student (g) and the teacher (f); KL(softmax_j S(g) ‖ softmax_j S(f)) over the C_i channels; the mean over
    the (sample, pair) entries, summed over the stages. 0 when no sample has two modalities. Samples without the
    pair are zeroed before any arithmetic (as in :func:`unimodal_distillation`)."""
    t = temperature
    total = None
    names = [m for m in present if m in student and m in teacher]
    for i in stages:
        values, count = [], None
        for m, n in itertools.combinations(names, 2):
            both = present[m] & present[n]
            sg = F.cosine_similarity(_only(student[m][i], both).float().flatten(2),
                                     _only(student[n][i], both).float().flatten(2), dim=2)  # (B, C)
            sf = F.cosine_similarity(_only(teacher[m][i], both).float().flatten(2),
                                     _only(teacher[n][i], both).float().flatten(2), dim=2)
            kl = _kl(F.log_softmax(sg / t, dim=1), F.log_softmax(sf / t, dim=1), dim=1)  # (B,)
            values.append(torch.where(both, kl, torch.zeros((), dtype=kl.dtype, device=kl.device)).sum())
            count = both.sum() if count is None else count + both.sum()
        if values:
            stage = torch.stack(values).sum() / count.clamp(min=1) * t * t
            total = stage if total is None else total + stage
    return total if total is not None else _zero(student)


def _zero(features: Features) -> torch.Tensor:
    ref = next((stages[0] for stages in features.values() if stages), None)
    return torch.zeros(()) if ref is None else ref.new_zeros((), dtype=torch.float32)
