"""Bad method input gets a clear ConfigError: option values checked against each method's declared ``Options``
types, distillation teachers trained on other class names, omni_pretrain candidates that hold only the anchor, and
the MS3 zero-shot files (head of a model trained otherwise, missing or wrong class-embedding file)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import save_file

from rgbx.engine.config import MethodConfig
from rgbx.errors import CheckpointError, ConfigError
from rgbx.methods import METHODS
from rgbx.methods.ms3 import load_class_embeddings, load_ms3_head, save_class_embeddings
from rgbx.models.model_file import save_model
from tests.methods import helpers


def build(name, **options):
    return METHODS.get(name)(MethodConfig(name=name, options=options), ignore_index=255)


# -- option values against the declared types (P4, P16-P19) -------------------------------------------------------
@pytest.mark.parametrize("name, options, match", [
    ("ms3", {"class_embeddings": "e", "multi_label": "false"},
     r"method.options.multi_label='false' \(str\): expected true or false \(unquoted\)"),
    ("ms3", {"class_embeddings": "e", "bank_size": "big"}, r"method.options.bank_size='big'.*expected an integer"),
    ("ms3", {"class_embeddings": "e", "bank_size": 2.5}, r"method.options.bank_size=2.5.*expected an integer"),
    ("ms3", {"class_embeddings": "e", "visual": 1}, r"method.options.visual=1.*expected true or false"),
    ("primkd", {"teacher": "t", "alpha": "high"}, r"method.options.alpha='high'.*expected a number"),
    ("primkd", {"teacher": "t", "stages": 3}, r"method.options.stages=3 \(int\): expected a list of integers"),
    ("primkd", {"teacher": "t", "stages": [0, "1"]}, r"method.options.stages=.*expected a list of integers"),
    ("omni_pretrain", {"candidates": "depth"}, r"method.options.candidates='depth'.*expected a list of strings"),
    ("anyseg", {"teacher": "t", "dropout": "half"}, r"method.options.dropout='half'.*expected a number"),
    ("anyseg", {"teacher": "t", "temperature": [1]}, r"method.options.temperature=\[1\].*expected a number"),
])
def test_option_of_the_wrong_type_is_a_config_error_naming_key_value_and_type(name, options, match):
    with pytest.raises(ConfigError, match=match):
        build(name, **options)


def test_options_of_the_declared_types_are_accepted():
    assert build("primkd", teacher="t", alpha=2, stages=OmegaConf.create([0, 1]), fixed_stage=1).options.alpha == 2.0
    assert build("primkd", teacher="t", stages=OmegaConf.create([0, 1]), fixed_stage=1).options.stages == [0, 1]
    assert build("omni_pretrain", candidates=["depth"]).options.candidates == ["depth"]
    assert build("omni_pretrain", candidates=None).options.candidates is None
    o = build("ms3", class_embeddings="e", multi_label=False, classes=None).options
    assert o.multi_label is False and o.classes is None


def test_defaults_follow_the_papers_reported_configurations():
    anyseg = build("anyseg", teacher="t").options
    assert (anyseg.lambda_mad, anyseg.alpha_umd, anyseg.beta_cmd) == (50.0, 5.0, 10.0)  # AnySeg Tab. 3-6
    assert build("primkd", teacher="t").options.fixed_stage == 0  # PrimKD Tab. 4: stage 1 is the best fixed stage


# -- teachers trained on other class names (P3) -------------------------------------------------------------------
def teacher_file(tmp_path, name, classes):
    modalities = ["rgb"] if name == "primkd" else ["rgb", "depth", "thermal"]
    model = helpers.tiny_model(0, modalities, "mean", 3)
    return save_model(tmp_path / "teacher.safetensors", model, dataset={"classes": classes} if classes else None)


def complete(name, teacher, classes=("ground", "box", "person")):
    cfg = SimpleNamespace(method=SimpleNamespace(options={"teacher": str(teacher)}),
                          data=SimpleNamespace(root="data/toy"))
    train_set = SimpleNamespace(description=SimpleNamespace(classes=list(classes), name="toy"))
    METHODS.get(name).complete_config(cfg, train_set)


@pytest.mark.parametrize("name", ["primkd", "anyseg"])
def test_teacher_trained_on_other_class_names_is_refused(tmp_path, name):
    teacher = teacher_file(tmp_path, name, ["ground", "car", "person"])
    with pytest.raises(ConfigError, match=r"method.options.teacher=.*other classes.*data/toy.*1: 'car' vs 'box'"):
        complete(name, teacher)


@pytest.mark.parametrize("name", ["primkd", "anyseg"])
def test_teacher_with_the_same_names_or_none_recorded_is_accepted(tmp_path, name):
    complete(name, teacher_file(tmp_path, name, ["Ground", "box", "per_son"]))  # case and '_' do not count
    complete(name, teacher_file(tmp_path, name, None))  # no names recorded: nothing to compare
    complete(name, tmp_path / "missing.safetensors")  # prepare's error, not this check's


# -- omni_pretrain: candidates holding only the anchor (P7) -------------------------------------------------------
def test_omni_pretrain_candidates_of_only_the_anchor_are_refused():
    with pytest.raises(ConfigError, match=r"method.options.candidates=\['rgb'\] holds only the anchor 'rgb'"):
        build("omni_pretrain", candidates=["rgb"])
    with pytest.raises(ConfigError, match="holds only the anchor 'depth'"):
        build("omni_pretrain", anchor="depth", candidates=["depth"])
    assert build("omni_pretrain", candidates=["rgb", "depth"]).options.candidates == ["rgb", "depth"]


# -- MS3 zero-shot files (P25-P27) --------------------------------------------------------------------------------
def test_ms3_head_missing_next_to_a_model_trained_otherwise_names_the_method(tmp_path):
    save_model(tmp_path / "model.safetensors", helpers.tiny_model(0), training={"method": "supervised"})
    with pytest.raises(CheckpointError, match=r"trained with method 'supervised', not ms3.*method.name=ms3"):
        load_ms3_head(tmp_path)
    with pytest.raises(CheckpointError, match="MS3 head not found"):  # no model there: the plain message
        load_ms3_head(tmp_path / "empty")


def test_missing_class_embedding_file_names_the_file_not_a_config_key(tmp_path):
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(ConfigError, match="nope.safetensors: class-embedding file not found") as e:
        load_class_embeddings(missing, ["box"])
    assert "method.options" not in str(e.value)
    with pytest.raises(ConfigError, match=r"method.options.class_embeddings='.*nope.safetensors': .*not found"):
        load_class_embeddings(missing, ["box"], what="method.options.class_embeddings")


def test_a_model_file_or_matrices_as_class_embeddings_are_refused_with_how_to_make_one(tmp_path):
    model = save_model(tmp_path / "model.safetensors", helpers.tiny_model(0))
    with pytest.raises(ConfigError, match=r"an rgbx model file, not a class-embedding file.*rgbx embed-classes"):
        load_class_embeddings(model, ["box"])
    save_file({"box": torch.zeros(2, 4), "person": torch.zeros(4)}, str(tmp_path / "m.safetensors"))
    with pytest.raises(ConfigError, match=r"not a class-embedding file: 1 of its 2 tensors are not 1-D.*'box'"):
        load_class_embeddings(tmp_path / "m.safetensors", ["box"])
    good = save_class_embeddings(tmp_path / "names.safetensors", {"box": torch.ones(4)})
    assert load_class_embeddings(good, ["box"]).shape == (1, 4)
