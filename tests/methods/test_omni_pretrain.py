"""OmniSegmentor pretraining (method "omni_pretrain"): RGB + one random supplementary modality per step, only that
modality's own modules trained in the step, and pretraining → fine-tuning on another modality set."""

from __future__ import annotations

import pytest
import torch

import rgbx
from rgbx.data.sample import Batch
from rgbx.engine.config import MethodConfig, load_config
from rgbx.engine.report import Reporter
from rgbx.engine.trainer import Trainer
from rgbx.errors import ConfigError
from rgbx.methods import METHODS
from rgbx.methods.omni_pretrain import OmniPretraining, draw_supplementary
from tests.conftest import make_dataset
from tests.methods import helpers

MODS = ("rgb", "depth", "thermal")


def omni(modalities=MODS, seed: int = 0):
    torch.manual_seed(seed)
    return rgbx.create_model(backbone="omni_nano", fusion="omni", head="mlp", modalities=list(modalities),
                             num_classes=3, head_channels=16)


def method(net=None, **options) -> OmniPretraining:
    m = METHODS.get("omni_pretrain")(MethodConfig(name="omni_pretrain", options=options), ignore_index=255)
    m.prepare(net if net is not None else omni(), torch.device("cpu"))
    return m


def test_each_step_trains_rgb_and_exactly_one_supplementary_modality():
    net = omni()
    pre = method(net)
    gen = torch.Generator().manual_seed(0)
    for _ in range(12):
        net.zero_grad(set_to_none=True)
        losses = pre.step(net, helpers.tiny_batch(MODS), gen)
        sum(losses.values()).backward()
        stems = {m: net.encoder.encoder.stems[m][0][0].weight.grad for m in ("depth", "thermal")}
        trained = [m for m, g in stems.items() if g is not None and g.abs().sum() > 0]
        assert len(trained) == 1, trained  # one supplementary stem per step, the other untouched
        rgb_grad = net.encoder.encoder.downsample_layers[0][0].weight.grad
        assert rgb_grad is not None and rgb_grad.abs().sum() > 0
    assert set(pre.selected) == {"depth", "thermal"} and sum(pre.selected.values()) == 12


def test_draws_are_uniform_over_what_the_batch_has():
    batch = helpers.tiny_batch(MODS)
    gen = torch.Generator().manual_seed(1)
    draws = [draw_supplementary(batch, "rgb", None, gen) for _ in range(400)]
    assert 160 < draws.count("depth") < 240 and draws.count("depth") + draws.count("thermal") == 400
    # a modality no sample of the batch has is never drawn; candidates narrow the choice
    present = dict(batch.present, thermal=torch.zeros(2, dtype=torch.bool))
    no_thermal = Batch(batch.inputs, present, batch.label)
    assert {draw_supplementary(no_thermal, "rgb", None, gen) for _ in range(50)} == {"depth"}
    assert {draw_supplementary(batch, "rgb", ["thermal"], gen) for _ in range(50)} == {"thermal"}
    rgb_only = Batch({"rgb": batch.inputs["rgb"]}, {"rgb": batch.present["rgb"]}, batch.label)
    assert draw_supplementary(rgb_only, "rgb", None, gen) is None


def test_a_batch_without_candidates_trains_on_rgb_alone():
    net = omni()
    pre = method(net)
    batch = helpers.tiny_batch(MODS)
    none = Batch(batch.inputs, {m: torch.tensor([m == "rgb"] * 2) for m in MODS}, batch.label)
    losses = pre.step(net, none, torch.Generator().manual_seed(0))
    assert torch.isfinite(losses["ce"]) and pre.selected["none"] == 1


def test_bad_options_are_clear_errors():
    with pytest.raises(ConfigError, match="not among the model's modalities"):
        method(candidates=["lidar"])
    with pytest.raises(ConfigError, match="supplementary modalities"):
        method(helpers.tiny_model(0, ("rgb",)))  # the recipe applies to any fusion
    with pytest.raises(ConfigError, match="modality_dropout"):
        METHODS.get("omni_pretrain")(MethodConfig(name="omni_pretrain", modality_dropout=0.5), ignore_index=255)
    with pytest.raises(ConfigError, match="unknown key"):
        method(modalities=["depth"])


def test_pretrain_then_fine_tune_on_another_modality_set(tmp_path):
    """`rgbx train` with the recipe writes weights that fine-tune a model for a set the pretraining never had
    (RGB + thermal + lidar: lidar gets a copy of depth's stem and MLPs)."""
    root = make_dataset(tmp_path / "d", n=6, size=(16, 20), modalities=("rgb", "depth", "thermal", "lidar"))
    common = [f"data.root={root}", "model.backbone=omni_nano", "model.fusion=omni", "model.head_channels=16",
              "data.crop_size=[16,16]", "data.num_workers=0", "train.batch_size=2", "train.eval_batch_size=2",
              "train.log_every=1", "train.eval_every=0", "train.device=cpu", "optim.warmup_iters=1"]
    pre_cfg = load_config("synth_omni_pretrain", [*common, f"output_dir={tmp_path / 'pre'}", "train.iters=4",
                                                  "model.modalities=[rgb,depth,thermal]"])
    pre = Trainer(pre_cfg, reporter=Reporter(quiet=True))
    pre.fit()
    assert sum(pre.method.selected.values()) == 4 and set(pre.method.selected) <= {"depth", "thermal"}
    weights = tmp_path / "pre" / "model.safetensors"
    assert weights.is_file()
    fine_cfg = load_config(None, [*common, f"output_dir={tmp_path / 'fine'}", "train.iters=2",
                                  "train.checkpoint_every=0", "model.modalities=[rgb,thermal,lidar]", f"model.pretrained={weights}",
                                  "model.fusion_options={init_from: depth}"])
    fine = Trainer(fine_cfg, reporter=Reporter(quiet=True))
    enc_pre = pre.model.encoder.encoder
    enc_fine = fine.model.encoder.encoder
    # before any fine-tuning step: thermal kept its own pretrained stem, lidar got depth's
    assert torch.equal(enc_fine.stems["thermal"][0][0].weight, enc_pre.stems["thermal"][0][0].weight)
    assert torch.equal(enc_fine.stems["lidar"][0][0].weight, enc_pre.stems["depth"][0][0].weight)
    assert torch.equal(enc_fine.downsample_layers[0][0].weight, enc_pre.downsample_layers[0][0].weight)
    metrics = fine.fit()
    assert 0.0 <= metrics["subsets"]["rgb+thermal+lidar"]["all"]["miou"] <= 1.0
