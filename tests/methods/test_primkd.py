"""PrimKD distillation (method "primkd"): the prediction and feature losses, stage selection, the frozen
primary-modality teacher and the aligners, config errors, and a short end-to-end training run with resume."""

from __future__ import annotations

import csv
import math

import pytest
import torch

from rgbx.engine.checkpoint import load_state, save_model
from rgbx.engine.config import MethodConfig, load_config
from rgbx.engine.report import Reporter
from rgbx.engine.trainer import RunPaths, Trainer
from rgbx.errors import ConfigError
from rgbx.methods.primkd import (
    PrimKD,
    feature_distillation,
    prediction_distillation,
    select_stages,
    stage_losses,
)
from tests.conftest import make_dataset
from tests.methods import helpers

MODS = ["rgb", "depth"]


def tiny_model(seed: int = 0, modalities=MODS, fusion: str = "cmx", num_classes: int = 3):
    return helpers.tiny_model(seed, modalities, fusion, num_classes)


def tiny_batch(modalities=MODS, seed: int = 0, label_fill: int | None = None):
    return helpers.tiny_batch(modalities, seed, label_fill)


def distiller(tmp_path, teacher, student, **options):
    return helpers.method_with_teacher("primkd", tmp_path, teacher, student, **options)

def tiny_teacher(seed: int = 0, **kwargs):
    return tiny_model(seed, modalities=kwargs.pop("modalities", ["rgb"]), fusion="mean", **kwargs)


# -- prediction-level KD (Eq. 5) ---------------------------------------------------------------------------------
def test_pred_is_zero_for_equal_logits_and_positive_otherwise():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g)
    label = torch.zeros(2, 4, 4, dtype=torch.long)
    assert abs(float(prediction_distillation(s, s.clone(), label, 255))) < 1e-7
    assert float(prediction_distillation(s, t, label, 255)) > 1e-4


def test_pred_direction_matches_a_hand_computation():
    # one pixel, two classes: student p_S = (0.5, 0.5), teacher p_T = (0.8, 0.2)
    s = torch.zeros(1, 2, 1, 1)
    t = torch.tensor([math.log(0.8), math.log(0.2)]).view(1, 2, 1, 1)
    label = torch.zeros(1, 1, 1, dtype=torch.long)
    teacher_student = 0.8 * math.log(0.8 / 0.5) + 0.2 * math.log(0.2 / 0.5)  # KL(T ‖ S), the default
    student_teacher = 0.5 * math.log(0.5 / 0.8) + 0.5 * math.log(0.5 / 0.2)  # KL(S ‖ T)
    assert abs(teacher_student - student_teacher) > 1e-2  # the example tells the two apart
    assert float(prediction_distillation(s, t, label, 255)) == pytest.approx(teacher_student, abs=1e-6)
    assert float(prediction_distillation(s, t, label, 255, direction="student_teacher")) == \
        pytest.approx(student_teacher, abs=1e-6)
    # temperature: softmax(·/T) on both sides, × T²
    t2 = 2.0
    ps = torch.tensor([0.5, 0.5])
    pt = torch.softmax(t.flatten() / t2, 0)
    expected = float((pt * (pt.log() - ps.log())).sum()) * t2 * t2
    assert float(prediction_distillation(s, t, label, 255, temperature=t2)) == pytest.approx(expected, abs=1e-6)


def test_pred_excludes_ignored_pixels_and_samples_without_the_primary():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g)
    label = torch.randint(0, 3, (2, 4, 4), generator=g)
    label[0, 0] = 255
    loss = prediction_distillation(s, t, label, 255)
    pt, ps = t.softmax(1), s.softmax(1)
    kl = (pt * (pt.log() - ps.log())).sum(1)
    torch.testing.assert_close(loss, kl[label != 255].mean())
    s2 = s.clone()
    s2[0, :, 0] = torch.tensor([100.0, -100.0, 0.0]).view(3, 1)  # whatever the ignored row holds
    torch.testing.assert_close(prediction_distillation(s2, t, label, 255), loss)
    only_second = prediction_distillation(s, t, label, 255, sample_mask=torch.tensor([False, True]))
    torch.testing.assert_close(only_second, kl[1].mean())
    assert float(prediction_distillation(s, t, torch.full_like(label, 255), 255)) == 0.0


# -- feature-level KD (Eq. 6, 7) ---------------------------------------------------------------------------------
def constructed_features():
    """Two samples, three stages; the teacher is zero and each student stage a constant, so the per-(sample, stage)
    MSE is that constant squared: sample 0 → (1, 4, 9), sample 1 → (16, 1, 4)."""
    values = [(1.0, 4.0), (2.0, 1.0), (3.0, 2.0)]  # stage → (sample 0, sample 1)
    sizes = [8, 4, 2]
    student = [torch.stack([torch.full((2, s, s), v) for v in pair]) for pair, s in zip(values, sizes)]
    teacher = [torch.zeros(2, 2, s, s) for s in sizes]
    return student, teacher


def test_stage_losses_are_per_sample_mse():
    student, teacher = constructed_features()
    torch.testing.assert_close(stage_losses(student, teacher), torch.tensor([[1.0, 4.0, 9.0], [16.0, 1.0, 4.0]]))
    # a student map of another size is resized to the teacher's (a constant stays the same constant)
    student[0] = torch.nn.functional.interpolate(student[0], size=(4, 4))
    torch.testing.assert_close(stage_losses(student, teacher)[:, 0], torch.tensor([1.0, 16.0]))


@pytest.mark.parametrize("rule, fixed, per_sample", [
    ("max", None, [9.0, 16.0]), ("min", None, [1.0, 1.0]), ("mean", None, [14 / 3, 7.0]), ("fixed", 1, [4.0, 1.0]),
])
def test_stage_selection_is_per_sample(rule, fixed, per_sample):
    student, teacher = constructed_features()
    losses = stage_losses(student, teacher)
    torch.testing.assert_close(select_stages(losses, rule, fixed), torch.tensor(per_sample))
    expected = sum(per_sample) / 2
    assert float(feature_distillation(student, teacher, rule, fixed)) == pytest.approx(expected)
    assert float(feature_distillation(student, teacher, rule, fixed, torch.tensor([True, False]))) == \
        pytest.approx(per_sample[0])


def test_max_selection_sends_gradient_to_the_selected_stage_only():
    student, teacher = constructed_features()
    for x in student:
        x.requires_grad_(True)
    feature_distillation(student, teacher, "max").backward()
    # sample 0 selected stage 2, sample 1 stage 0
    assert float(student[2].grad[0].abs().sum()) > 0 and float(student[0].grad[1].abs().sum()) > 0
    assert float(student[0].grad[0].abs().sum()) == 0 and float(student[1].grad.abs().sum()) == 0
    assert float(student[2].grad[1].abs().sum()) == 0


# -- the method end to end in one step ---------------------------------------------------------------------------
def test_step_returns_the_weighted_terms(tmp_path):
    teacher, student = tiny_teacher(0), tiny_model(1).eval()
    base = distiller(tmp_path, teacher, student, alpha=1.0, beta=1.0)
    losses = base.step(student, tiny_batch(), torch.Generator().manual_seed(0))
    assert set(losses) == {"seg", "pred", "feat"}
    for name in ("seg", "pred", "feat"):
        assert float(losses[name].detach()) > 1e-5, name
    scaled = distiller(tmp_path, teacher, student, alpha=2.0, beta=0.05)
    scaled.aligners.load_state_dict(base.aligners.state_dict())
    b = scaled.step(student, tiny_batch(), torch.Generator().manual_seed(0))
    for name, w in (("seg", 1.0), ("pred", 2.0), ("feat", 0.05)):
        torch.testing.assert_close(b[name], w * losses[name])


def test_teacher_sees_only_the_primary_modality(tmp_path):
    teacher, student = tiny_teacher(0), tiny_model(1).eval()
    method = distiller(tmp_path, teacher, student)
    a = method.step(student, tiny_batch(), torch.Generator().manual_seed(0))
    seen = []
    forward = method.teacher.forward

    def spy(inputs, present=None):
        seen.append(sorted(inputs))
        return forward(inputs, present)

    method.teacher.forward = spy
    other = tiny_batch()
    other.inputs["depth"] = other.inputs["depth"] + 5.0  # changes the student, not the teacher
    b = method.step(student, other, torch.Generator().manual_seed(0))
    assert seen == [["rgb"]]
    assert not torch.allclose(a["pred"], b["pred"])


def test_gradients_reach_the_student_and_aligners_not_the_teacher(tmp_path):
    teacher, student = tiny_teacher(0), tiny_model(1).train()
    method = distiller(tmp_path, teacher, student)
    frozen = {k: v.clone() for k, v in method.teacher.state_dict().items()}
    assert not method.teacher.training
    assert all(not p.requires_grad for p in method.teacher.parameters())
    modules = method.trainable_modules()
    assert len(modules) == 1 and isinstance(modules[0], torch.nn.ModuleList) and len(modules[0]) == 4
    losses = method.step(student, tiny_batch(), torch.Generator().manual_seed(0))
    sum(losses.values()).backward()
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in student.encoder.parameters())
    assert all(p.grad is None for p in method.teacher.parameters())
    # feat alone reaches the aligner of each selected stage (max: at least one) and the student encoder
    student.zero_grad()
    modules[0].zero_grad()
    method.step(student, tiny_batch(), torch.Generator().manual_seed(0))["feat"].backward()
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in modules[0].parameters())
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in student.encoder.parameters())
    optimizer = torch.optim.SGD(list(student.parameters()) + list(modules[0].parameters()), lr=0.1)
    optimizer.step()
    for k, v in method.teacher.state_dict().items():
        assert torch.equal(frozen[k], v), k


def test_all_ignored_pixels_give_zero_seg_and_pred(tmp_path):
    teacher, student = tiny_teacher(0), tiny_model(1).eval()
    method = distiller(tmp_path, teacher, student)
    losses = method.step(student, tiny_batch(label_fill=255), torch.Generator().manual_seed(0))
    assert float(losses["seg"].detach()) == 0.0 and float(losses["pred"].detach()) == 0.0
    assert float(losses["feat"].detach()) > 0


# -- configuration errors ----------------------------------------------------------------------------------------
def test_missing_teacher_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="teacher"):
        PrimKD(MethodConfig(name="primkd", options={}))
    missing = tmp_path / "nope.safetensors"
    method = PrimKD(MethodConfig(name="primkd", options={"teacher": str(missing)}))
    with pytest.raises(ConfigError, match="nope.safetensors"):
        method.prepare(tiny_model(0), torch.device("cpu"))
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file")
    method = PrimKD(MethodConfig(name="primkd", options={"teacher": str(garbage)}))
    with pytest.raises(ConfigError, match="garbage.safetensors"):
        method.prepare(tiny_model(0), torch.device("cpu"))


def test_teacher_student_mismatch_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="only the primary modality"):
        distiller(tmp_path, tiny_teacher(0, modalities=["rgb", "depth"]), tiny_model(1))
    with pytest.raises(ConfigError, match="only the primary modality"):
        distiller(tmp_path, tiny_teacher(0, modalities=["depth"]), tiny_model(1))
    with pytest.raises(ConfigError, match="lacks the primary"):
        distiller(tmp_path, tiny_teacher(0), tiny_model(1, modalities=["depth", "thermal"]))
    with pytest.raises(ConfigError, match="num_classes"):
        distiller(tmp_path, tiny_teacher(0, num_classes=4), tiny_model(1))
    with pytest.raises(ConfigError, match="stages"):
        distiller(tmp_path, tiny_teacher(0), tiny_model(1), stages=[4])


def test_bad_options_are_config_errors():
    for options in ({"teacher": "t", "stage_selection": "median"}, {"teacher": "t", "stages": []},
                    {"teacher": "t", "temperature": 0.0}, {"teacher": "t", "beta": -1.0},
                    {"teacher": "t", "kl_direction": "sideways"},
                    {"teacher": "t", "stage_selection": "fixed", "fixed_stage": 2, "stages": [0, 1]},
                    {"teacher": "t", "lambda_mad": 1.0}):
        with pytest.raises(ConfigError):
            PrimKD(MethodConfig(name="primkd", options=options))


# -- end to end ------------------------------------------------------------------------------------------------
def test_trainer_runs_primkd_logs_each_term_saves_aligners_and_resumes(tmp_path):
    root = make_dataset(tmp_path / "d", n=6, size=(16, 20))
    teacher = save_model(tmp_path / "teacher.safetensors", tiny_teacher(0))
    overrides = [
        f"data.root={root}", f"output_dir={tmp_path / 'run'}", "model.backbone=mit_nano", "model.fusion=cmx",
        "model.head_channels=16", "model.modalities=[rgb,depth,thermal]", "data.crop_size=[16,16]",
        "data.num_workers=0", "train.batch_size=2", "train.eval_batch_size=2", "train.log_every=1",
        "train.eval_every=0", "train.device=cpu", "optim.warmup_iters=1", "method.name=primkd",
        f"method.options.teacher={teacher}"]
    Trainer(load_config(None, [*overrides, "train.iters=3"]), reporter=Reporter(quiet=True)).fit()
    run = tmp_path / "run"
    with (run / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3
    assert {"loss", "seg", "pred", "feat"} <= set(rows[0])
    for row in rows:
        parts = sum(float(row[k]) for k in ("seg", "pred", "feat"))
        assert abs(parts - float(row["loss"])) < 1e-3 * max(1.0, abs(parts))
    assert (run / "model.safetensors").is_file()
    state = load_state(RunPaths(run).state)
    (aligners,) = state["method_modules"]
    assert any(k.startswith("0.") for k in aligners) and any(k.startswith("3.") for k in aligners)
    trainer = Trainer(load_config(None, [*overrides, "train.iters=4"]), resume=True, reporter=Reporter(quiet=True))
    assert trainer.iteration == 3
    (module,) = trainer.method.trainable_modules()
    for k, v in module.state_dict().items():
        torch.testing.assert_close(v, aligners[k])
    trainer.fit()
    with (run / "metrics.csv").open() as f:
        assert len(list(csv.DictReader(f))) == 4
