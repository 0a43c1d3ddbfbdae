"""``train.cuda_graph_train``: which runs the trainer refuses to capture (CPU), and the learning-rate tensors a
captured optimizer step reads. Capture and replay themselves need CUDA: tests/engine/test_gpu.py."""

from __future__ import annotations

import pytest
import torch
import yaml

from rgbx.engine.config import OptimConfig, load_config
from rgbx.engine.optim import build_optimizer, build_scheduler, keep_lr_tensors, lr_as_tensors, set_capturable
from rgbx.engine.report import Reporter
from rgbx.engine.trainer import Trainer, graph_capture_refusals
from rgbx.errors import ConfigError
from rgbx.methods import METHODS
from tests.conftest import make_dataset

# Runs compared step by step (eager against captured) use crops of 64x64, where CMX's last stage is 2x2: at 32x32
# or less it is 1x1 and its fusion module's two BatchNorms normalise batch x 1 x 1 = 2 values per channel, which
# makes the whole trajectory chaotic: weights nudged by 1e-7 (relative) gave losses 3e-3 apart by step 10 and 2e-2 by
# step 12 at 32x32 (8.6e-8 with those two norms on running statistics), 7e-8 at 64x64. Mean fusion and KTB are not
# affected.
STABLE_SIZE, STABLE_CROP = (64, 80), "data.crop_size=[64,64]"
TINY = ["model.backbone=mit_nano", "model.head_channels=16", "data.crop_size=[16,16]", "data.num_workers=0",
        "train.batch_size=2", "train.eval_batch_size=2", "model.modalities=[rgb,depth,thermal]"]


def config(root, out, *extra):
    return load_config(None, [f"data.root={root}", f"output_dir={out}", *TINY, *extra])


def refusals(cfg, device="cuda", distributed=False):
    method = METHODS.get(cfg.method.name)(cfg.method, ignore_index=255)
    return graph_capture_refusals(cfg, torch.device(device), distributed, method)


def test_the_trainer_refuses_on_the_cpu_before_training(tmp_path):
    root = make_dataset(tmp_path / "d", n=6)
    cfg = config(root, tmp_path / "run", "train.device=cpu", "train.cuda_graph_train=true", "train.iters=2")
    with pytest.raises(ConfigError, match=r"train.cuda_graph_train: .*needs CUDA \(train.device=cpu is cpu\)"):
        Trainer(cfg, reporter=Reporter(quiet=True))
    assert not (tmp_path / "run" / "metrics.csv").exists()


def test_what_can_and_cannot_be_captured(tmp_path):
    root = make_dataset(tmp_path / "d", n=6)
    plain = config(root, tmp_path / "r", "train.precision=bf16")
    assert refusals(plain) == []  # supervised, no dropout, every sensor in every sample, bf16, one process
    assert refusals(config(root, tmp_path / "r", "train.precision=fp32")) == []

    # modality dropout draws on the device in a captured step: nothing for the host to decide
    assert refusals(config(root, tmp_path / "r", "method.modality_dropout=0.3")) == []
    (reason,) = refusals(config(root, tmp_path / "r", "train.precision=fp16"))
    assert "fp16" in reason and "bf16" in reason
    (reason,) = refusals(config(root, tmp_path / "r", "train.compile=true"))
    assert "compile" in reason
    (reason,) = refusals(plain, distributed=True)
    assert "DDP" in reason
    assert len(refusals(plain, device="cpu")) == 1
    (reason,) = refusals(config(root, tmp_path / "r", "method.name=omni_pretrain"))  # picks a branch on the host
    assert "omni_pretrain" in reason
    assert refusals(config(root, tmp_path / "r", "method.name=ktb")) == []  # its masking follows the device masks


def test_lr_tensors_follow_the_schedule_in_place():
    """The schedule writes each step's learning rate into the same tensor (a captured step reads that tensor), with
    the values a float-lr optimizer gets; a schedule that replaces the value is mended by keep_lr_tensors."""
    torch.manual_seed(0)
    cfg = OptimConfig(lr=0.01, warmup_iters=3, head_lr_mult=10.0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    model.head = torch.nn.Linear(4, 2)
    plain_opt = build_optimizer(model, cfg, fused=False)
    plain = build_scheduler(plain_opt, cfg, total_iters=10)
    opt = build_optimizer(model, cfg, fused=False)
    schedule = build_scheduler(opt, cfg, total_iters=10)
    tensors = lr_as_tensors(opt)
    assert all(isinstance(g["initial_lr"], float) for g in opt.param_groups)  # plain numbers: no read-back
    seen = []
    for _ in range(6):
        model(torch.randn(2, 4)).sum().backward()
        opt.step()
        plain_opt.step()
        schedule.step()
        plain.step()
        keep_lr_tensors(opt, tensors)
        for g, t, ref in zip(opt.param_groups, tensors, plain_opt.param_groups, strict=True):
            assert g["lr"] is t
            assert float(t) == pytest.approx(ref["lr"], rel=1e-6)
        seen.append(float(tensors[0]))
    assert len(set(seen)) == 6  # warm-up then decay: a different rate at every step
    opt.param_groups[1]["lr"] = 0.123  # a schedule that stores a plain number instead of writing into the tensor
    keep_lr_tensors(opt, tensors)
    assert opt.param_groups[1]["lr"] is tensors[1] and float(tensors[1]) == pytest.approx(0.123)


def test_set_capturable_keeps_step_counts_where_adamw_expects_them():
    model = torch.nn.Linear(3, 2)
    opt = build_optimizer(model, OptimConfig(), fused=False)
    model(torch.randn(2, 3)).sum().backward()
    opt.step()
    set_capturable(opt, True)
    assert all(g["capturable"] for g in opt.param_groups)
    set_capturable(opt, False)
    assert not any(g["capturable"] for g in opt.param_groups)
    steps = [s["step"] for s in opt.state.values()]
    assert steps and all(s.dtype == torch.float32 and s.device.type == "cpu" and float(s) == 1.0 for s in steps)
    opt.step()  # still a working optimizer
    assert all(float(s["step"]) == 2.0 for s in opt.state.values())


class EagerStandIn:
    """CudaGraphTrainStep's contract without CUDA: each call copies the batch into the buffers the step was built on
    and runs the step body on them (what a replay does), so the trainer's plumbing runs on the CPU."""

    def __init__(self, body, optimizer, static, warmup=3):
        from rgbx.engine.fastpath import copy_into_static

        self.body, self.optimizer, self.static, self.copy = body, optimizer, dict(static), copy_into_static
        self.graph = None

    def __call__(self, inputs=None):
        self.copy(self.static, inputs or {}, "stand-in")
        self.optimizer.zero_grad(set_to_none=True)
        return self.body()


@pytest.mark.parametrize("variant", ["plain", "dropout and a missing sensor", "anyseg and a missing sensor",
                                     "ktb and a missing sensor", "primkd with dropout and a missing sensor"])
def test_the_graphed_trainer_path_trains_like_the_eager_one(tmp_path, monkeypatch, variant):
    """The trainer's captured-step path with the graph replaced by an eager stand-in: new batches reach the step's
    buffers, the schedule's rates reach the optimizer through its lr tensors, clipping runs, losses are logged. Same
    losses and weights as the eager path (a step that kept training on its first batch, or on a frozen rate, would
    differ). With modality dropout and samples without thermal, the captured path decides presence on the device;
    the eager run is made to do the same (same draws from the same per-step seed), so the two must still agree."""
    import csv

    import rgbx.engine.trainer as trainer_module

    root = make_dataset(tmp_path / "d", n=10, size=STABLE_SIZE)
    extra = [STABLE_CROP, "train.device=cpu", "train.iters=6", "train.log_every=1", "train.eval_every=0", "optim.warmup_iters=3",
             "optim.grad_clip=0.5", "model.drop_path_rate=0"]
    if variant != "plain":
        desc = yaml.safe_load((root / "dataset.yaml").read_text())
        desc["modalities"]["thermal"]["optional"] = True
        (root / "dataset.yaml").write_text(yaml.safe_dump(desc))
        for f in sorted((root / "thermal").iterdir())[::2]:
            f.unlink()
    if variant.startswith("dropout"):
        extra.append("method.modality_dropout=0.5")
    if variant.startswith("anyseg"):  # a frozen teacher of the student's architecture, anymodal dropout 0.5
        teacher = save_teacher(tmp_path / "teacher.safetensors", ["rgb", "depth", "thermal"])
        extra += ["model.fusion=mean", "method.name=anyseg", f"method.options.teacher={teacher}"]
    if variant.startswith("primkd"):  # a frozen RGB-only teacher, prediction + max-stage feature distillation
        teacher = save_teacher(tmp_path / "teacher.safetensors", ["rgb"])
        extra += ["method.name=primkd", f"method.options.teacher={teacher}", "method.modality_dropout=0.5"]
    if variant.startswith("ktb"):  # MMST: one modality masked in some full samples, auxiliary heads
        extra += ["model.fusion=ktb", "model.modalities=[rgb,thermal]", "method.name=ktb"]
    eager = Trainer(config(root, tmp_path / "eager", *extra), reporter=Reporter(quiet=True))
    eager.decide_on_device = variant != "plain"
    eager.fit()

    monkeypatch.setattr(trainer_module, "graph_capture_refusals", lambda *args: [])
    monkeypatch.setattr(trainer_module, "CudaGraphTrainStep", EagerStandIn)
    real_build = trainer_module.build_optimizer
    monkeypatch.setattr(trainer_module, "build_optimizer",  # AdamW is capturable only on accelerators
                        lambda *a, capturable=False, **k: real_build(*a, **k))
    graphed = Trainer(config(root, tmp_path / "graphed", *extra, "train.cuda_graph_train=true"),
                      reporter=Reporter(quiet=True))
    start = {k: v.clone() for k, v in graphed.model.state_dict().items()}
    graphed.fit()
    assert isinstance(graphed._graph, EagerStandIn)
    assert all(g["lr"] is t for g, t in zip(graphed.optimizer.param_groups, graphed._lr_tensors, strict=True))

    def rows(run):
        with (tmp_path / run / "metrics.csv").open() as f:
            return list(csv.DictReader(f))

    for a, b in zip(rows("eager"), rows("graphed"), strict=True):
        assert float(a["lr"]) == pytest.approx(float(b["lr"]), rel=1e-6)
        # the only difference is the rate held as a float32 tensor: 1.3e-7 seen at most; a step on a stale batch,
        # stale masks or a frozen rate is off by far more (the variants fail that way)
        assert float(a["loss"]) == pytest.approx(float(b["loss"]), rel=1e-5)
    assert_moved_alike(start, eager.model.state_dict(), graphed.model.state_dict(), 0.01)


def save_teacher(path, modalities):
    """A random frozen-teacher weights file for distillation recipes: MiT-nano, mean fusion, 3 classes."""
    from rgbx.models import create_model
    from rgbx.models.model_file import save_model

    torch.manual_seed(1)
    save_model(path, create_model(backbone="mit_nano", fusion="mean", modalities=list(modalities), num_classes=3,
                                  head_channels=16))
    return path


def assert_moved_alike(start: dict, a: dict, b: dict, tol: float) -> None:
    """Two runs from the same ``start`` weights ended within ``tol`` × how far they moved (whole-model norms).
    AdamW turns rounding-level differences of near-zero gradients (the rate held as a float32 tensor, a kernel
    choice) into differences of up to a step's size in single entries, so entries are not compared one by one
    (the CPU stand-in: 4e-5 to 1.1e-3 of the distance moved)."""
    floats = [k for k, v in start.items() if v.is_floating_point()]
    moved = float(sum(((a[k].float() - start[k].float()) ** 2).sum() for k in floats)) ** 0.5
    apart = float(sum(((a[k].float() - b[k].float()) ** 2).sum() for k in floats)) ** 0.5
    assert moved > 0 and apart <= tol * moved, (apart, moved)
