"""GPU paths (autocast, pinned transfers, fused AdamW). Skipped cleanly on machines without CUDA."""

from __future__ import annotations

import pytest
import torch

from rgbx.engine.config import load_config
from rgbx.engine.report import Reporter
from rgbx.engine.trainer import Trainer
from tests.conftest import make_dataset

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_train_on_cuda(tmp_path, precision):
    root = make_dataset(tmp_path / "d", n=8)
    cfg = load_config(None, [f"data.root={root}", f"output_dir={tmp_path / 'run'}", "model.backbone=mit_nano",
                             "model.head_channels=16", "data.crop_size=[16,16]", "data.num_workers=0",
                             "train.batch_size=2", "train.iters=4", "train.eval_every=0", "train.device=cuda",
                             f"train.precision={precision}", "model.modalities=[rgb,depth,thermal]"])
    trainer = Trainer(cfg, reporter=Reporter(quiet=True))
    assert next(trainer.model.parameters()).is_cuda
    metrics = trainer.fit()
    assert 0.0 <= metrics["subsets"]["rgb+depth+thermal"]["all"]["miou"] <= 1.0


@pytest.mark.parametrize("fusion,method_name", [("cmx", "supervised"), ("mean", "supervised"), ("ktb", "ktb")])
def test_dropout_and_forward_need_no_device_sync(fusion, method_name):
    """Modality dropout (or KTB's masking) + the step's forward and losses on a batch prepared like the trainer's:
    any device → host read-back raises under sync debug mode "error"."""
    from rgbx.data.sample import Batch, PresenceMasks
    from rgbx.engine.config import MethodConfig
    from rgbx.methods import METHODS
    from rgbx.models import create_model

    device = torch.device("cuda")
    model = create_model(backbone="mit_nano", fusion=fusion, modalities=["rgb", "depth"], num_classes=3,
                         head_channels=16).to(device)
    host = {"rgb": torch.ones(4, dtype=torch.bool), "depth": torch.tensor([True, False, True, True])}
    batch = Batch({"rgb": torch.randn(4, 3, 32, 32), "depth": torch.randn(4, 1, 32, 32)}, host,
                  torch.randint(0, 3, (4, 32, 32))).to(device)
    batch.present = PresenceMasks(batch.present, ["rgb"], host)
    config = MethodConfig(modality_dropout=0.5) if method_name == "supervised" else MethodConfig(name=method_name)
    method = METHODS.get(method_name)(config, ignore_index=255)
    method.prepare(model, device)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        losses = method.step(model, batch, torch.Generator().manual_seed(0))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(sum(losses.values()))
