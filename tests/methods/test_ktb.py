"""KTB's Masked Modality Self-Teaching (method "ktb"): masking, auxiliary heads, λ2, and a short training run."""

from __future__ import annotations

import csv

import pytest
import torch

from rgbx.engine.config import MethodConfig, load_config
from rgbx.engine.report import Reporter
from rgbx.engine.trainer import Trainer
from rgbx.errors import ConfigError
from rgbx.methods import METHODS
from rgbx.methods.ktb import MaskedModalitySelfTeaching, mask_one_modality
from rgbx.models import create_model
from tests.conftest import make_dataset
from tests.methods import helpers

MODS = ("rgb", "depth")


def model(seed: int = 0):
    return helpers.tiny_model(seed, MODS, fusion="ktb")


def method(net, **options):
    m = METHODS.get("ktb")(MethodConfig(name="ktb", options=options), ignore_index=255)
    m.prepare(net, torch.device("cpu"))
    return m


def test_registered_and_terms():
    net = model().eval()
    mmst = method(net, mask_prob=0.0)
    assert isinstance(mmst, MaskedModalitySelfTeaching) and mmst.options.lambda2 == 0.01
    losses = mmst.step(net, helpers.tiny_batch(MODS), torch.Generator().manual_seed(0))
    assert set(losses) == {"s1", "s2", "s3"}
    assert all(float(v.detach()) > 0 for v in losses.values())
    assert mmst.trainable_modules() == [mmst.heads]
    assert not any(name.startswith("heads") for name, _ in net.named_parameters())  # not part of the model


def test_aux_heads_and_model_get_gradients():
    net = model().train()
    mmst = method(net, mask_prob=0.0)
    sum(mmst.step(net, helpers.tiny_batch(MODS), torch.Generator().manual_seed(0)).values()).backward()
    for m in MODS:
        assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in mmst.heads[m].parameters()), m
    assert all(p.grad is None for p in net.encoder.backbone.parameters())
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in net.encoder.prompts.parameters())


@pytest.mark.parametrize("teacher", ["label", "fused"])
def test_lambda2_scales_the_aux_terms(teacher):
    net = model().eval()
    a = method(net, mask_prob=0.0, lambda2=1.0, teacher=teacher)
    b = method(net, mask_prob=0.0, lambda2=0.01, teacher=teacher)
    b.heads.load_state_dict(a.heads.state_dict())
    la = a.step(net, helpers.tiny_batch(MODS), torch.Generator().manual_seed(0))
    lb = b.step(net, helpers.tiny_batch(MODS), torch.Generator().manual_seed(0))
    torch.testing.assert_close(lb["s1"], la["s1"])
    for k in ("s2", "s3"):
        torch.testing.assert_close(lb[k], 0.01 * la[k])
    zero = method(net, mask_prob=0.0, lambda2=0.0, teacher=teacher)
    assert float(zero.step(net, helpers.tiny_batch(MODS), torch.Generator().manual_seed(0))["s2"].detach()) == 0.0


def test_masking_masks_at_most_one_and_never_both():
    g = torch.Generator().manual_seed(0)
    batch = helpers.tiny_batch(MODS)
    batch = type(batch)({m: v.repeat(32, 1, 1, 1) for m, v in batch.inputs.items()},
                        {m: v.repeat(32) for m, v in batch.present.items()}, batch.label.repeat(32, 1, 1))
    counts = []
    for _ in range(5):
        masked = mask_one_modality(batch, 0.7, g)
        missing = torch.stack([~masked.present[m] for m in MODS], 1).sum(1)
        counts.append(missing)
    missing = torch.cat(counts)
    assert int(missing.max()) == 1 and int(missing.min()) == 0
    assert (missing == 1).any() and (missing == 0).any()
    # a sample already missing a modality is never masked further
    batch.present["depth"] = torch.zeros(64, dtype=torch.bool)
    masked = mask_one_modality(batch, 1.0, g)
    assert bool(masked.present["rgb"].all())
    # p = 1: every full sample loses exactly one
    full = helpers.tiny_batch(MODS)
    masked = mask_one_modality(full, 1.0, g)
    assert (torch.stack([~masked.present[m] for m in MODS], 1).sum(1) == 1).all()


def test_masked_modality_gives_no_aux_loss_for_it():
    net = model().eval()
    mmst = method(net, mask_prob=0.0)
    batch = helpers.tiny_batch(MODS)
    batch.present["depth"] = torch.zeros(2, dtype=torch.bool)
    losses = mmst.step(net, batch, torch.Generator().manual_seed(0))
    assert float(losses["s3"].detach()) == 0.0 and float(losses["s2"].detach()) > 0


def test_bad_options_are_config_errors():
    for options in ({"lambda2": -1.0}, {"mask_prob": 1.5}, {"teacher": "x"}, {"alpha": 1}):
        with pytest.raises(ConfigError):
            MaskedModalitySelfTeaching(MethodConfig(name="ktb", options=options))
    with pytest.raises(ConfigError, match="mask_prob"):
        MaskedModalitySelfTeaching(MethodConfig(name="ktb", modality_dropout=0.3))
    with pytest.raises(ConfigError, match="two modalities"):
        method(helpers.tiny_model(0, ("rgb", "depth", "thermal")))


def test_trainer_runs_ktb_and_logs_each_term(tmp_path):
    root = make_dataset(tmp_path / "d", n=6, size=(16, 20))
    cfg = load_config(None, [
        f"data.root={root}", f"output_dir={tmp_path / 'run'}", "model.backbone=mit_nano", "model.fusion=ktb",
        "model.head_channels=16", "model.modalities=[rgb,depth]", "data.crop_size=[16,16]",
        "data.num_workers=0", "train.batch_size=2", "train.eval_batch_size=2", "train.log_every=1",
        "train.iters=3", "train.eval_every=0", "train.device=cpu", "optim.warmup_iters=1", "method.name=ktb"])
    Trainer(cfg, reporter=Reporter(quiet=True)).fit()
    with (tmp_path / "run" / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3
    assert {"loss", "s1", "s2", "s3"} <= set(rows[0])
    for row in rows:
        parts = sum(float(row[k]) for k in ("s1", "s2", "s3"))
        assert abs(parts - float(row["loss"])) < 1e-3 * max(1.0, abs(parts))
    assert (tmp_path / "run" / "model.safetensors").is_file()


def test_trainer_reports_trainable_and_frozen_parameters():
    from rgbx.engine.trainer import parameter_summary

    model = create_model(backbone="mit_nano", fusion="ktb", modalities=["rgb", "depth"], num_classes=3,
                         head_channels=16)
    frozen = sum(p.numel() for p in model.encoder.backbone.parameters())
    assert frozen == 423_648  # docs/methods/ktb.md
    total = sum(p.numel() for p in model.parameters())
    method = MaskedModalitySelfTeaching(MethodConfig(name="ktb"), ignore_index=255)
    method.prepare(model, torch.device("cpu"))
    heads = sum(p.numel() for p in method.heads.parameters())
    line = parameter_summary(model, method.trainable_modules())
    assert line == (f"model: {total / 1e6:.3f} M parameters ({(total - frozen) / 1e6:.3f} M trainable, "
                    f"{frozen / 1e6:.3f} M frozen); the method trains {heads / 1e6:.3f} M more (in the training state, "
                    f"not in the model file; a method that needs them later writes its own file)")
