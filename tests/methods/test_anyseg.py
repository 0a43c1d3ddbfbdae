"""AnySeg distillation (method "anyseg"): the three distillation losses, the frozen teacher, config errors, and a
short end-to-end training run."""

from __future__ import annotations

import csv

import pytest
import torch

from rgbx.data.sample import Batch
from rgbx.engine.checkpoint import save_model
from rgbx.engine.config import MethodConfig, load_config
from rgbx.engine.report import Reporter
from rgbx.engine.trainer import Trainer
from rgbx.errors import ConfigError
from rgbx.methods.anyseg import (
    AnysegDistiller,
    cross_modal_distillation,
    prediction_distillation,
    unimodal_distillation,
)
from tests.conftest import make_dataset
from tests.methods import helpers

MODS = ["rgb", "depth", "thermal"]


def tiny_model(seed: int = 0, modalities=MODS, fusion: str = "mean", num_classes: int = 3):
    return helpers.tiny_model(seed, modalities, fusion, num_classes)


def tiny_batch(modalities=MODS, seed: int = 0, label_fill: int | None = None):
    return helpers.tiny_batch(modalities, seed, label_fill)


def distiller(tmp_path, teacher, student, **options):
    return helpers.method_with_teacher("anyseg", tmp_path, teacher, student, **options)

def copy_of(model):
    twin = tiny_model(seed=123, modalities=model.modalities, num_classes=model.num_classes)
    twin.load_state_dict(model.state_dict())
    return twin


# -- the losses --------------------------------------------------------------------------------------------------
def test_distillation_losses_are_zero_when_student_is_the_teacher(tmp_path):
    teacher = tiny_model(0)
    student = copy_of(teacher).eval()  # eval: no drop path, so the two forwards are the same function
    method = distiller(tmp_path, teacher, student, dropout=0.0)
    losses = method.step(student, tiny_batch(), torch.Generator().manual_seed(0))
    assert set(losses) == {"sup", "mad", "umd", "cmd"}
    for name in ("mad", "umd", "cmd"):
        assert abs(float(losses[name].detach())) < 1e-5, (name, float(losses[name].detach()))
    assert float(losses["sup"].detach()) > 0


def test_distillation_losses_are_positive_when_student_differs(tmp_path):
    teacher, student = tiny_model(0), tiny_model(1).eval()
    method = distiller(tmp_path, teacher, student, dropout=0.0)
    losses = method.step(student, tiny_batch(), torch.Generator().manual_seed(0))
    for name in ("sup", "mad", "umd", "cmd"):
        assert float(losses[name].detach()) > 1e-4, (name, float(losses[name].detach()))


def test_weights_scale_the_terms(tmp_path):
    teacher, student = tiny_model(0), tiny_model(1).eval()
    base = distiller(tmp_path, teacher, student, dropout=0.0, lambda_mad=1.0, alpha_umd=1.0, beta_cmd=1.0)
    scaled = distiller(tmp_path, teacher, student, dropout=0.0, lambda_mad=50.0, alpha_umd=3.0, beta_cmd=10.0)
    a = base.step(student, tiny_batch(), torch.Generator().manual_seed(0))
    b = scaled.step(student, tiny_batch(), torch.Generator().manual_seed(0))
    for name, w in (("sup", 1.0), ("mad", 50.0), ("umd", 3.0), ("cmd", 10.0)):
        torch.testing.assert_close(b[name], w * a[name])


def test_gradients_reach_the_student_only(tmp_path):
    teacher, student = tiny_model(0), tiny_model(1).train()
    method = distiller(tmp_path, teacher, student, dropout=0.5)
    frozen = {k: v.clone() for k, v in method.teacher.state_dict().items()}
    assert not method.teacher.training
    assert all(not p.requires_grad for p in method.teacher.parameters())
    optimizer = torch.optim.SGD(student.parameters(), lr=0.1)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    losses = method.step(student, tiny_batch(), torch.Generator().manual_seed(0))
    sum(losses.values()).backward()
    grads = [p.grad for p in student.encoder.backbone.parameters() if p.grad is not None]
    assert grads and any(float(g.abs().sum()) > 0 for g in grads)
    assert all(p.grad is None for p in method.teacher.parameters())
    optimizer.step()
    assert any(not torch.equal(before[k], v) for k, v in student.state_dict().items())
    for k, v in method.teacher.state_dict().items():
        assert torch.equal(frozen[k], v), k
    assert method.trainable_modules() == []


def test_each_feature_term_alone_reaches_the_student_encoder(tmp_path):
    teacher, student = tiny_model(0), tiny_model(1).eval()
    method = distiller(tmp_path, teacher, student, dropout=0.0)
    for name in ("umd", "cmd"):
        student.zero_grad()
        method.step(student, tiny_batch(), torch.Generator().manual_seed(0))[name].backward()
        assert any(p.grad is not None and float(p.grad.abs().sum()) > 0
                   for p in student.encoder.backbone.parameters()), name


def _features(seed, modalities=MODS, channels=(8, 16), sizes=(8, 4)):
    g = torch.Generator().manual_seed(seed)
    return {m: [torch.randn(2, c, s, s, generator=g) for c, s in zip(channels, sizes)] for m in modalities}


def test_absent_modalities_contribute_nothing_to_feature_losses():
    student, teacher = _features(0), _features(1)
    present = {"rgb": torch.tensor([True, True]), "depth": torch.tensor([True, False]),
               "thermal": torch.tensor([False, True])}
    umd = unimodal_distillation(student, teacher, present, [0, 1])
    cmd = cross_modal_distillation(student, teacher, present, [0, 1])
    assert float(umd) > 0 and float(cmd) > 0
    # whatever an absent (sample, modality) holds, for the student or the teacher, changes nothing
    for feats in (student, teacher):
        for stage in feats["depth"]:
            stage[1] = float("nan")
        for stage in feats["thermal"]:
            stage[0] = 1e6
    for s in student.values():
        for x in s:
            x.requires_grad_(True)
    umd2 = unimodal_distillation(student, teacher, present, [0, 1])
    cmd2 = cross_modal_distillation(student, teacher, present, [0, 1])
    torch.testing.assert_close(umd2, umd)
    torch.testing.assert_close(cmd2, cmd)
    (umd2 + cmd2).backward()
    assert torch.equal(student["depth"][0].grad[1], torch.zeros_like(student["depth"][0].grad[1]))
    assert torch.equal(student["thermal"][1].grad[0], torch.zeros_like(student["thermal"][1].grad[0]))
    assert torch.isfinite(student["rgb"][0].grad).all()


def test_feature_losses_average_over_present_pairs():
    student, teacher = _features(0), _features(1)
    present = {"rgb": torch.tensor([True, True]), "depth": torch.tensor([True, False])}
    umd = unimodal_distillation(student, teacher, present, [0])
    # the same as averaging the three present (sample, modality) pairs by hand
    parts = []
    for m, b in (("rgb", 0), ("rgb", 1), ("depth", 0)):
        g = torch.log_softmax(student[m][0][b].flatten(1), 0)
        f = torch.log_softmax(teacher[m][0][b].flatten(1), 0)
        parts.append((g.exp() * (g - f)).sum(0).mean())
    torch.testing.assert_close(umd, torch.stack(parts).mean())
    # cross-modal: only sample 0 has both modalities
    cmd = cross_modal_distillation(student, teacher, present, [0])
    sg = torch.cosine_similarity(student["rgb"][0][0].flatten(1), student["depth"][0][0].flatten(1), dim=1)
    sf = torch.cosine_similarity(teacher["rgb"][0][0].flatten(1), teacher["depth"][0][0].flatten(1), dim=1)
    lg, lf = torch.log_softmax(sg, 0), torch.log_softmax(sf, 0)
    torch.testing.assert_close(cmd, (lg.exp() * (lg - lf)).sum())
    # one modality per sample: no pair, no cross-modal loss
    alone = {"rgb": torch.tensor([True, False]), "depth": torch.tensor([False, True])}
    assert float(cross_modal_distillation(student, teacher, alone, [0, 1])) == 0.0


def test_absent_modality_in_the_batch_changes_nothing_end_to_end(tmp_path):
    teacher, student = tiny_model(0), tiny_model(1).eval()
    method = distiller(tmp_path, teacher, student, dropout=0.0)
    batch = tiny_batch()
    batch.present["thermal"] = torch.tensor([True, False])
    a = method.step(student, batch, torch.Generator().manual_seed(0))
    other = Batch(dict(batch.inputs), dict(batch.present), batch.label)
    other.inputs["thermal"] = batch.inputs["thermal"].clone()
    other.inputs["thermal"][1] = 1e4  # what the absent sample holds
    b = method.step(student, other, torch.Generator().manual_seed(0))
    for name in ("umd", "cmd"):
        torch.testing.assert_close(a[name], b[name])


def test_mad_direction_and_ignored_pixels():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g)
    label = torch.randint(0, 3, (2, 4, 4), generator=g)
    label[0, 0] = 255
    loss = prediction_distillation(s, t, label, 255)
    ps, pt = s.softmax(1), t.softmax(1)
    kl = (ps * (ps.log() - pt.log())).sum(1)  # KL(P_am ‖ P_mm), Eq. 6
    torch.testing.assert_close(loss, kl[label != 255].mean())
    s2 = s.clone()
    s2[0, :, 0] = torch.tensor([100.0, -100.0, 0.0]).view(3, 1)
    torch.testing.assert_close(prediction_distillation(s2, t, label, 255), loss)


def test_all_ignored_pixels_give_zero_sup_and_mad(tmp_path):
    teacher, student = tiny_model(0), tiny_model(1).eval()
    method = distiller(tmp_path, teacher, student, dropout=0.0)
    losses = method.step(student, tiny_batch(label_fill=255), torch.Generator().manual_seed(0))
    assert float(losses["sup"].detach()) == 0.0 and float(losses["mad"].detach()) == 0.0
    assert float(losses["umd"].detach()) > 0


def test_anymodal_dropout_keeps_at_least_one_modality(tmp_path):
    teacher, student = tiny_model(0), tiny_model(1).eval()
    method = distiller(tmp_path, teacher, student, dropout=0.9)
    seen = []
    forward = student.forward

    def spy(inputs, present=None):
        seen.append({m: p.clone() for m, p in present.items()})
        return forward(inputs, present)

    student.forward = spy
    for seed in range(8):
        method.step(student, tiny_batch(), torch.Generator().manual_seed(seed))
    masks = torch.stack([torch.stack([p[m] for m in MODS], 1) for p in seen])  # (calls, B, M)
    assert (masks.sum(-1) >= 1).all()
    assert not masks.all()  # something was dropped


# -- configuration errors ----------------------------------------------------------------------------------------
def test_missing_teacher_option_is_a_config_error():
    with pytest.raises(ConfigError, match="teacher"):
        AnysegDistiller(MethodConfig(name="anyseg", options={}))


def test_wrong_teacher_path_is_a_config_error(tmp_path):
    student = tiny_model(0)
    missing = tmp_path / "nope.safetensors"
    method = AnysegDistiller(MethodConfig(name="anyseg", options={"teacher": str(missing)}))
    with pytest.raises(ConfigError, match="nope.safetensors"):
        method.prepare(student, torch.device("cpu"))
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file")
    method = AnysegDistiller(MethodConfig(name="anyseg", options={"teacher": str(garbage)}))
    with pytest.raises(ConfigError, match="garbage.safetensors"):
        method.prepare(student, torch.device("cpu"))


def test_teacher_student_mismatch_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="modalities"):
        distiller(tmp_path, tiny_model(0, modalities=["rgb", "depth"]), tiny_model(1))
    with pytest.raises(ConfigError, match="num_classes"):
        distiller(tmp_path, tiny_model(0, num_classes=4), tiny_model(1))


def test_bad_options_are_config_errors(tmp_path):
    for options in ({"teacher": "t", "dropout": 1.0}, {"teacher": "t", "stages": []},
                    {"teacher": "t", "temperature": 0.0}, {"teacher": "t", "alpha": 1.0}):
        with pytest.raises(ConfigError):
            AnysegDistiller(MethodConfig(name="anyseg", options=options))
    with pytest.raises(ConfigError, match="options.dropout"):
        AnysegDistiller(MethodConfig(name="anyseg", modality_dropout=0.3, options={"teacher": "t"}))
    with pytest.raises(ConfigError, match="stages"):
        distiller(tmp_path, tiny_model(0), tiny_model(1), stages=[4])


# -- end to end ------------------------------------------------------------------------------------------------
def test_trainer_runs_anyseg_and_logs_each_term(tmp_path):
    root = make_dataset(tmp_path / "d", n=6, size=(16, 20))
    teacher = save_model(tmp_path / "teacher.safetensors", tiny_model(0))
    cfg = load_config(None, [
        f"data.root={root}", f"output_dir={tmp_path / 'run'}", "model.backbone=mit_nano", "model.fusion=mean",
        "model.head_channels=16", "model.modalities=[rgb,depth,thermal]", "data.crop_size=[16,16]",
        "data.num_workers=0", "train.batch_size=2", "train.eval_batch_size=2", "train.log_every=1",
        "train.iters=3", "train.eval_every=0", "train.device=cpu", "optim.warmup_iters=1", "method.name=anyseg",
        f"method.options.teacher={teacher}"])
    Trainer(cfg, reporter=Reporter(quiet=True)).fit()
    with (tmp_path / "run" / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3
    assert {"loss", "sup", "mad", "umd", "cmd"} <= set(rows[0])
    for row in rows:
        parts = sum(float(row[k]) for k in ("sup", "mad", "umd", "cmd"))
        assert abs(parts - float(row["loss"])) < 1e-3 * max(1.0, abs(parts))
    assert (tmp_path / "run" / "model.safetensors").is_file()
