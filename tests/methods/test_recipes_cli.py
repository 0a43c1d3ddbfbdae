"""Every robust-training recipe from its built-in preset, through the CLI, on a user dataset folder: stage 1 (the
teacher, where the recipe has one), stage 2 killed mid-run and resumed to the same weights as an uninterrupted run,
and the checkpoint scored with `rgbx eval --robustness`."""

from __future__ import annotations

import json

import pytest
import torch

from rgbx.cli.main import main
from rgbx.engine.checkpoint import load_state
from rgbx.models.weights import read_state_dict
from tests.conftest import make_dataset, run_killed_at

TINY = ["model.backbone=mit_nano", "model.head_channels=16", "data.crop_size=[16,16]", "data.scale_range=[1,1]",
        "data.num_workers=0", "train.batch_size=2", "train.eval_batch_size=2", "train.log_every=1",
        "train.eval_every=0", f"train.threads={torch.get_num_threads()}", "optim.warmup_iters=1"]

# recipe → (teacher preset + overrides or None, student preset + overrides); {teacher} = the teacher's weights.
RECIPES = {
    "anyseg": (["synth_anyseg_teacher", "model.modalities=[rgb,depth,thermal]"],
               ["synth_anyseg_student", "model.modalities=[rgb,depth,thermal]", "method.options.teacher={teacher}"]),
    "ktb": (None, ["synth_ktb", "model.modalities=[rgb,depth]"]),
    "primkd": (["synth_primkd_teacher", "model.modalities=[rgb]"],
               ["synth_primkd_student", "model.modalities=[rgb,depth,thermal]", "method.options.teacher={teacher}"]),
}


def _train(root, out, preset_and_overrides, *extra, resume=False):
    preset, *overrides = preset_and_overrides
    args = ["train", preset, f"data.root={root}", *TINY, *overrides, f"output_dir={out}", *extra, "--quiet"]
    return main([*args, "--resume"] if resume else args)


@pytest.mark.slow
@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_recipe_trains_resumes_and_evaluates_robustness(recipe, tmp_path, monkeypatch, capsys):
    root = make_dataset(tmp_path / "folder", n=8)
    teacher_stage, student_stage = RECIPES[recipe]
    teacher = tmp_path / "teacher" / "model.safetensors"
    if teacher_stage:
        assert _train(root, tmp_path / "teacher", teacher_stage, "train.iters=2") == 0
        assert teacher.is_file()
    student = [s.format(teacher=teacher) for s in student_stage]
    extra = ("train.iters=6", "train.checkpoint_every=2")

    assert _train(root, tmp_path / "full", student, *extra) == 0

    run_killed_at(monkeypatch, 5, lambda: _train(root, tmp_path / "killed", student, *extra))
    assert load_state(tmp_path / "killed" / "checkpoints" / "last.state.pt")["iteration"] == 4
    assert not (tmp_path / "killed" / "model.safetensors").exists()
    assert _train(root, tmp_path / "killed", student, *extra, resume=True) == 0

    full = read_state_dict(tmp_path / "full" / "model.safetensors")
    resumed = read_state_dict(tmp_path / "killed" / "model.safetensors")
    assert full.keys() == resumed.keys()
    for k in full:
        assert torch.equal(full[k], resumed[k]), k

    capsys.readouterr()
    report = tmp_path / "robust.json"
    assert main(["eval", str(tmp_path / "killed" / "model.safetensors"), "--data", str(root), "--split", "val",
                 "--robustness", "--workers", "0", "--batch-size", "2", "--json", str(report)]) == 0
    assert "entire-missing" in capsys.readouterr().out
    rob = json.loads(report.read_text())["robustness"]
    modalities = rob["modalities"]
    assert len(rob["entire_missing"]["subsets"]) == 2 ** len(modalities) - 1
    assert all(0.0 <= s["miou"] <= 1.0 for s in rob["entire_missing"]["subsets"].values())
    assert set(rob["corruptions"]) == {"dropout", "gaussian", "salt_pepper", "misalignment"}
