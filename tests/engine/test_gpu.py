"""GPU paths (autocast, pinned transfers, fused AdamW, the captured training step). Skipped cleanly on machines
without CUDA."""

from __future__ import annotations

import csv

import pytest
import torch

from rgbx.engine.checkpoint import load_state
from rgbx.engine.config import load_config
from rgbx.engine.report import Reporter
from rgbx.engine.trainer import Trainer
from tests.conftest import make_dataset
from tests.engine.test_graphed_training import STABLE_CROP, STABLE_SIZE, assert_moved_alike, save_teacher

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def graphed_run_config(root, out, *extra):
    return load_config(None, [
        f"data.root={root}", f"output_dir={out}", "model.backbone=mit_nano", "model.head_channels=16",
        "model.drop_path_rate=0", STABLE_CROP, "data.num_workers=0", "train.batch_size=2",
        "train.log_every=1", "train.eval_every=0", "train.checkpoint_every=0", "train.device=cuda",
        "train.cudnn_benchmark=false", "optim.warmup_iters=4", "optim.grad_clip=1.0",
        "model.modalities=[rgb,depth,thermal]", *extra])


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_graphed_training_follows_the_eager_run(tmp_path, precision):
    """train.cuda_graph_train: three eager warm-up steps, the capture, then replays. Step by step the losses and the
    learning rates, and the weights after, agree with the eager trainer's, while the rate changes at every step
    (warm-up then poly decay: a rate frozen into the graph would show) and gradients are clipped inside the graph."""
    root = make_dataset(tmp_path / "d", n=10, size=STABLE_SIZE)
    runs = {}
    for graphed in (False, True):
        out = tmp_path / f"graphed_{graphed}"
        cfg = graphed_run_config(root, out, "train.iters=10", f"train.precision={precision}",
                                 f"train.cuda_graph_train={str(graphed).lower()}")
        trainer = Trainer(cfg, reporter=Reporter(quiet=True))
        start = {k: v.clone() for k, v in trainer.model.state_dict().items()}
        trainer.fit()
        assert (trainer._graph is not None) == graphed
        with (out / "metrics.csv").open() as f:
            runs[graphed] = list(csv.DictReader(f)), trainer.model.state_dict()
    (eager_rows, eager_state), (graphed_rows, graphed_state) = runs[False], runs[True]
    assert len(eager_rows) == len(graphed_rows) == 10
    assert len({row["lr"] for row in graphed_rows}) == 10
    # not bit for bit: the rate is a float32 tensor in the graph, and some CUDA kernels (bilinear upsampling's
    # backward) add in a varying order; at this size (STABLE_CROP) such differences do not grow from step to step
    tol = 2e-3 if precision == "fp32" else 3e-2
    for a, b in zip(eager_rows, graphed_rows, strict=True):
        assert float(a["lr"]) == pytest.approx(float(b["lr"]), rel=1e-6)
        assert abs(float(a["loss"]) - float(b["loss"])) <= tol * abs(float(a["loss"])), (a, b)
    assert_moved_alike(start, eager_state, graphed_state, 0.01 if precision == "fp32" else 0.1)


@pytest.mark.parametrize("method", ["supervised", "anyseg", "ktb", "primkd"])
def test_graphed_training_with_modality_dropout_and_a_missing_sensor(tmp_path, method):
    """A captured step whose presence changes at every step (supervised with modality dropout, AnySeg with its
    anymodal dropout and a frozen teacher, KTB's masked-modality self-teaching, PrimKD with an RGB teacher): modality dropout drawn on the device inside the graph
    (each replay draws anew) and samples without thermal (their masks copied into the graph's buffers). The eager
    trainer deciding presence the same way, from the same per-step seeds, gives the same losses; and the replays do
    not repeat one drop pattern (losses of a frozen pattern would follow the eager run only by chance)."""
    import yaml

    root = make_dataset(tmp_path / "d", n=10, size=STABLE_SIZE)
    desc = yaml.safe_load((root / "dataset.yaml").read_text())
    desc["modalities"]["thermal"]["optional"] = True
    (root / "dataset.yaml").write_text(yaml.safe_dump(desc))
    for f in sorted((root / "thermal").iterdir())[::2]:
        f.unlink()
    if method == "anyseg":  # a frozen teacher of the student's architecture; AnySeg's own anymodal dropout
        teacher = save_teacher(tmp_path / "teacher.safetensors", ["rgb", "depth", "thermal"])
        extra = ["model.fusion=mean", "method.name=anyseg", f"method.options.teacher={teacher}"]
    elif method == "primkd":  # a frozen RGB-only teacher
        teacher = save_teacher(tmp_path / "teacher.safetensors", ["rgb"])
        extra = ["method.name=primkd", f"method.options.teacher={teacher}", "method.modality_dropout=0.5"]
    elif method == "ktb":  # MMST's masking and auxiliary heads
        extra = ["model.fusion=ktb", "model.modalities=[rgb,thermal]", "method.name=ktb"]
    else:
        extra = ["method.modality_dropout=0.5"]
    rows = {}
    for graphed in (False, True):
        out = tmp_path / f"graphed_{graphed}"
        cfg = graphed_run_config(root, out, "train.iters=12", "train.precision=fp32", *extra,
                                 f"train.cuda_graph_train={str(graphed).lower()}")
        trainer = Trainer(cfg, reporter=Reporter(quiet=True))
        trainer.decide_on_device = True
        trainer.fit()
        assert (trainer._graph is not None and trainer._graph.graph is not None) == graphed
        with (out / "metrics.csv").open() as f:
            rows[graphed] = [float(r["loss"]) for r in csv.DictReader(f)]
    assert len(rows[True]) == 12 and all(loss == loss for loss in rows[True])
    for a, b in zip(rows[False], rows[True], strict=True):
        assert abs(a - b) <= 2e-3 * abs(a), (rows[False], rows[True])  # see the test above


def test_graphed_training_resumes_an_eager_run(tmp_path):
    """A run checkpointed by the eager step goes on with the captured one (the optimizer made capturable, its step
    counts moved to the device, the learning rates made tensors after the schedule was rebuilt for more iterations),
    and the state it saves holds plain numbers for the rates."""
    root = make_dataset(tmp_path / "d", n=10, size=STABLE_SIZE)
    out = tmp_path / "run"
    Trainer(graphed_run_config(root, out, "train.iters=4"), reporter=Reporter(quiet=True)).fit()
    resumed = Trainer(graphed_run_config(root, out, "train.iters=10", "train.cuda_graph_train=true"), resume=True,
                      reporter=Reporter(quiet=True))
    assert resumed.iteration == 4
    metrics = resumed.fit()
    assert resumed._graph is not None and resumed._graph.graph is not None  # 3 warm-up steps, then captured
    assert 0.0 <= metrics["subsets"]["rgb+depth+thermal"]["all"]["miou"] <= 1.0
    state = load_state(out / "checkpoints/last.state.pt")
    assert state["iteration"] == 10
    assert all(isinstance(g["lr"], float) for g in state["optimizer"]["param_groups"])
    with (out / "metrics.csv").open() as f:
        losses = [float(r["loss"]) for r in csv.DictReader(f)]
    assert len(losses) == 10 and all(loss == loss and loss < 10 for loss in losses)


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16", "bf16, geometric step on the batch"])
def test_train_on_cuda(tmp_path, precision):
    extra = ["data.geometric_on=batch", "data.num_workers=1"] if "batch" in precision else []
    root = make_dataset(tmp_path / "d", n=8)
    cfg = load_config(None, [f"data.root={root}", f"output_dir={tmp_path / 'run'}", "model.backbone=mit_nano",
                             "model.head_channels=16", "data.crop_size=[16,16]", "data.num_workers=0",
                             "train.batch_size=2", "train.iters=4", "train.eval_every=0", "train.device=cuda",
                             f"train.precision={precision.split(',')[0]}", "model.modalities=[rgb,depth,thermal]",
                             *extra])
    trainer = Trainer(cfg, reporter=Reporter(quiet=True))
    assert next(trainer.model.parameters()).is_cuda
    metrics = trainer.fit()
    assert 0.0 <= metrics["subsets"]["rgb+depth+thermal"]["all"]["miou"] <= 1.0


@pytest.mark.parametrize("fusion,method_name,loss", [("cmx", "supervised", "ce"), ("mean", "supervised", "ce"),
                                                     ("ktb", "ktb", "ce"), ("cmx", "supervised", "ohem")])
def test_dropout_and_forward_need_no_device_sync(fusion, method_name, loss):
    """Modality dropout (or KTB's masking) + the step's forward and losses (OHEM's too) on a batch prepared like the
    trainer's: any device → host read-back raises under sync debug mode "error"."""
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
    config = (MethodConfig(modality_dropout=0.5, loss=loss) if method_name == "supervised"
              else MethodConfig(name=method_name, loss=loss))
    method = METHODS.get(method_name)(config, ignore_index=255)
    method.prepare(model, device)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        losses = method.step(model, batch, torch.Generator().manual_seed(0))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(sum(losses.values()))
