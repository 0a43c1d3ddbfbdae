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
