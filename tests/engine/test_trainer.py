"""Training end to end on the toy dataset: loss goes down, checkpoints, resume after a kill is exact."""

from __future__ import annotations

import csv
import itertools
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

from rgbx.engine.checkpoint import load_model, load_state, load_weights, read_model_info
from rgbx.engine.config import load_config
from rgbx.engine.report import Reporter
from rgbx.engine.trainer import (
    Trainer,
    apply_speed_preset,
    csv_iteration,
    drop_rows_after,
    jsonl_iteration,
    loader_workers,
)
from rgbx.errors import CheckpointError, ConfigError, RgbxError
from rgbx.models import create_model
from tests.conftest import make_dataset, run_killed_at, wait_for_checkpoint

TINY = ["model.backbone=mit_nano", "model.head_channels=16", "data.crop_size=[16,16]", "data.num_workers=0",
        "train.batch_size=2", "train.eval_batch_size=2", "train.log_every=2", "optim.warmup_iters=2",
        "model.modalities=[rgb,depth,thermal]"]


def tiny_config(root, out, *extra):
    return load_config(None, [f"data.root={root}", f"output_dir={out}", *TINY, *extra])


def test_train_writes_weights_logs_and_evaluates(tmp_path):
    root = make_dataset(tmp_path / "d", n=8)
    cfg = tiny_config(root, tmp_path / "run", "train.iters=6", "train.checkpoint_every=3", "train.eval_every=3",
                      "method.modality_dropout=0.5", "train.calibrate=true")
    metrics = Trainer(cfg, reporter=Reporter(quiet=True)).fit()
    run = tmp_path / "run"
    for name in ("model.safetensors", "best.safetensors", "checkpoints/last.safetensors",
                 "checkpoints/last.state.pt", "metrics.csv", "eval.jsonl", "config.yaml"):
        assert (run / name).is_file(), name
    full = metrics["subsets"]["rgb+depth+thermal"]["all"]
    assert 0.0 <= full["miou"] <= 1.0 and set(full["per_class_iou"]) == {"ground", "box", "person"}
    assert "condition=night" in metrics["subsets"]["rgb+depth+thermal"]
    lines = (run / "metrics.csv").read_text().splitlines()
    assert lines[0].startswith("iteration,lr,loss,ce,images_per_s") and len(lines) == 4
    assert len((run / "eval.jsonl").read_text().splitlines()) == 2  # at iteration 3 and at the end
    model, info = load_model(run / "model.safetensors")
    assert info["dataset"]["classes"] == ["ground", "box", "person"] and info["iteration"] == 6
    assert load_state(run / "checkpoints/last.state.pt")["iteration"] == 6
    # the mIoU logged in training is what rgbx eval gives for the same weights (DFormer #45: its logged 51.6 came
    # out as 24.1 from its inference script)
    from rgbx.cli.main import main

    best = read_model_info(run / "best.safetensors")
    logged = [json.loads(line)["miou"] for line in (run / "eval.jsonl").read_text().splitlines()]
    assert best["val_miou"] == max(logged)
    assert main(["eval", str(run / "best.safetensors"), "--data", str(root), "--json", str(tmp_path / "e.json")]) == 0
    scored = json.loads((tmp_path / "e.json").read_text())["subsets"]["rgb+depth+thermal"]["all"]["miou"]
    assert scored == pytest.approx(best["val_miou"], abs=1e-6)
    # train.calibrate: the final file records the temperatures rgbx calibrate fits on the validation split
    import rgbx

    recorded = info["calibration"]["temperatures"]
    assert len(recorded) == 7 and info["calibration"]["fitted_on"] == f"{root} [val]"
    _, refitted = rgbx.calibrate(run / "model.safetensors", root, "val", out=tmp_path / "refit.safetensors")
    assert refitted.temperatures == pytest.approx(recorded, rel=2e-3)  # batches of 4, not 2: logits to rounding


def _unwritable(monkeypatch, folder):
    """Make ``folder`` read-only; as root, where its mode bits stop nothing, refuse temporary files in it instead."""
    import errno
    import tempfile
    from pathlib import Path

    os.chmod(folder, 0o555)
    if os.access(folder, os.W_OK):
        real = tempfile.mkstemp

        def refused(*args, dir=None, **kwargs):
            if dir is not None and Path(dir) == Path(folder):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(dir))
            return real(*args, dir=dir, **kwargs)

        monkeypatch.setattr(tempfile, "mkstemp", refused)


@pytest.mark.parametrize("folder", ["run", "run/checkpoints"])
def test_an_unwritable_run_folder_is_refused_before_training(tmp_path, monkeypatch, folder):
    """Resuming into a folder where no file can be written fails at once, not at the first checkpoint."""
    root = make_dataset(tmp_path / "d")
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    _unwritable(monkeypatch, tmp_path / folder)
    try:
        with pytest.raises(CheckpointError, match=f"{tmp_path / folder}: cannot write a file there"):
            Trainer(tiny_config(root, tmp_path / "run", "train.iters=2", "train.checkpoint_every=1"), resume=True,
                    reporter=Reporter(quiet=True))
    finally:
        os.chmod(tmp_path / folder, 0o755)


def test_resume_on_the_same_data_packed_as_shards(tmp_path, monkeypatch):
    """A run on a dataset folder resumes on its pack (rgbx data pack: the same samples, order and augmentation) and
    ends with the weights of an uninterrupted run; another dataset is still refused."""
    from rgbx.data.datasets.shards import pack_dataset

    root = make_dataset(tmp_path / "d", n=8)
    pack_dataset(root, tmp_path / "packed", shard_size=4)
    extra = ["train.iters=2", "train.checkpoint_every=1", "train.eval_every=0"]
    full = Trainer(tiny_config(root, tmp_path / "a", *extra), reporter=Reporter(quiet=True))
    full.fit()
    run_killed_at(monkeypatch, 1, Trainer(tiny_config(root, tmp_path / "b", *extra), reporter=Reporter(quiet=True)).fit)
    resumed = Trainer(tiny_config(tmp_path / "packed", tmp_path / "b", *extra, "data.dataset=shards"), resume=True,
                      reporter=Reporter(quiet=True))
    assert resumed.iteration == 1
    resumed.fit()
    for k, v in full.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k
    # and back: the state the pack wrote resumes on the folder
    Trainer(tiny_config(root, tmp_path / "b", "train.iters=2", "train.checkpoint_every=1", "train.eval_every=0"),
            resume=True, reporter=Reporter(quiet=True))
    with pytest.raises(CheckpointError, match=r"another data config \(data.train_split"):
        Trainer(tiny_config(root, tmp_path / "b", *extra, "data.train_split=val"), resume=True,
                reporter=Reporter(quiet=True))


def test_refuses_to_overwrite_a_run(tmp_path):
    root = make_dataset(tmp_path / "d")
    cfg = tiny_config(root, tmp_path / "run", "train.iters=2")
    Trainer(cfg, reporter=Reporter(quiet=True)).fit()
    before = (tmp_path / "run" / "model.safetensors").read_bytes()
    with pytest.raises(RgbxError, match="--resume"):
        Trainer(cfg, reporter=Reporter(quiet=True))
    assert (tmp_path / "run" / "model.safetensors").read_bytes() == before


@pytest.mark.parametrize("accumulate", [1, 2])
def test_resume_in_process_is_bit_exact(tmp_path, monkeypatch, accumulate):
    root = make_dataset(tmp_path / "d", n=8)
    extra = ["train.iters=8", "train.checkpoint_every=3", "train.eval_every=0", "method.modality_dropout=0.3",
             "train.log_every=1", f"train.accumulate_grad_batches={accumulate}"]
    full = Trainer(tiny_config(root, tmp_path / "a", *extra), reporter=Reporter(quiet=True))
    full_metrics = full.fit()

    killed = Trainer(tiny_config(root, tmp_path / "b", *extra), reporter=Reporter(quiet=True))
    run_killed_at(monkeypatch, 5, killed.fit)

    resumed = Trainer(tiny_config(root, tmp_path / "b", *extra), resume=True, reporter=Reporter(quiet=True))
    assert resumed.iteration == 3  # the last checkpoint before the "kill"
    resumed_metrics = resumed.fit()
    for k, v in full.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k
    assert full_metrics["subsets"] == resumed_metrics["subsets"]
    # SIGTERM (or Ctrl-C) half way through step 5: the step finishes, a checkpoint is saved at 5 (not the one at 3)
    # and the run resumed from it ends as the uninterrupted one
    from rgbx.errors import Terminated
    from tests.engine.test_stopping import deliver_during_step

    stopped = Trainer(tiny_config(root, tmp_path / "c", *extra), reporter=Reporter(quiet=True))
    with monkeypatch.context() as patch:
        deliver_during_step(patch, 4, Terminated())
        with pytest.raises(Terminated):
            stopped.fit()
    assert stopped.iteration == 5 and stopped.stop_checkpoint == tmp_path / "c" / "checkpoints" / "last.state.pt"
    resumed = Trainer(tiny_config(root, tmp_path / "c", *extra), resume=True, reporter=Reporter(quiet=True))
    assert resumed.iteration == 5
    assert resumed.fit()["subsets"] == full_metrics["subsets"]
    for k, v in full.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k
    # every iteration's row in metrics.csv, the one the stop finished too (it was lost: the stop came before it)
    rows = {run: [{k: v for k, v in row.items() if k != "images_per_s"}
                  for row in csv.DictReader((tmp_path / run / "metrics.csv").open())] for run in "abc"}
    assert [int(row["iteration"]) for row in rows["a"]] == list(range(1, 9))
    assert rows["b"] == rows["a"] and rows["c"] == rows["a"]
    if accumulate > 1:  # the data order depends on it: resume refuses another value
        with pytest.raises(CheckpointError, match="train.accumulate_grad_batches=2; resume needs the same value"):
            Trainer(tiny_config(root, tmp_path / "b", *extra[:-1]), resume=True, reporter=Reporter(quiet=True))


def test_a_kill_during_validation_resumes_to_the_same_evaluations_and_best_model(tmp_path, monkeypatch):
    """A run killed while it validates (here: at iteration 2, which is also a checkpoint) and resumed ends as an
    uninterrupted run: the same eval.jsonl rows, the same best model and the same state. (The checkpoint at an
    iteration used to come before its validation: the resumed run went on past a validation never finished.)"""
    from safetensors.torch import load_file

    from tests.conftest import TrainingKilled

    root = make_dataset(tmp_path / "d", n=8)
    extra = ["train.iters=4", "train.checkpoint_every=1", "train.eval_every=2"]
    Trainer(tiny_config(root, tmp_path / "a", *extra), reporter=Reporter(quiet=True)).fit()

    real_evaluate = Trainer.evaluate

    def dies(self, subsets=None):
        if self.iteration == 2:
            raise TrainingKilled
        return real_evaluate(self, subsets)

    monkeypatch.setattr(Trainer, "evaluate", dies)
    with pytest.raises(TrainingKilled):
        Trainer(tiny_config(root, tmp_path / "b", *extra), reporter=Reporter(quiet=True)).fit()
    monkeypatch.setattr(Trainer, "evaluate", real_evaluate)
    resumed = Trainer(tiny_config(root, tmp_path / "b", *extra), resume=True, reporter=Reporter(quiet=True))
    resumed_at = resumed.iteration
    resumed.fit()

    def rows(run):
        return [json.loads(line) for line in (tmp_path / run / "eval.jsonl").read_text().splitlines()]

    assert [r["iteration"] for r in rows("b")] == [2, 4]
    assert rows("b") == rows("a")
    assert resumed_at == 1  # the checkpoint before the validation that was cut short
    for name in ("best.safetensors", "model.safetensors"):
        a, b = load_file(tmp_path / "a" / name), load_file(tmp_path / "b" / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
        assert read_model_info(tmp_path / "a" / name)["iteration"] == read_model_info(tmp_path / "b" / name)["iteration"]
    state_a, state_b = (load_state(tmp_path / run / "checkpoints/last.state.pt") for run in "ab")
    # the state's best mIoU includes every validation up to its iteration, the last one too (a run continued to
    # more iterations compares with it)
    assert state_a["best_miou"] == state_b["best_miou"] == max(r["miou"] for r in rows("a"))
    assert state_a["iteration"] == state_b["iteration"] == 4


def test_accumulated_micro_batches_give_the_step_of_one_batch(tmp_path):
    """Two micro-batches of one sample (train.accumulate_grad_batches=2) against one batch of the same two samples:
    the same gradients and the same weights after the step. The models run in eval mode (no dropout or drop path,
    BatchNorm from its running statistics), so how the batch is split is the only difference; every sample has the
    same number of labelled pixels (one ignored pixel, no padding), so the mean of the micro-batches' mean losses is
    the batch's mean loss."""
    root = make_dataset(tmp_path / "d", n=4)
    same = ["data.crop_size=[16,20]", "data.scale_range=[1,1]", "data.hflip_prob=0", "train.iters=1"]
    whole = Trainer(tiny_config(root, tmp_path / "a", *same, "train.batch_size=2"), reporter=Reporter(quiet=True))
    split = Trainer(tiny_config(root, tmp_path / "b", *same, "train.batch_size=1", "train.accumulate_grad_batches=2"),
                    reporter=Reporter(quiet=True))
    for k, v in whole.model.state_dict().items():
        assert torch.equal(v, split.model.state_dict()[k]), k
    batch = whole._to_device(next(iter(whole._train_loader())))
    micro_batches = [split._to_device(b) for b in itertools.islice(split._train_loader(), 2)]
    for m in batch.inputs:  # the same two samples, augmented alike
        assert torch.equal(batch.inputs[m], torch.cat([b.inputs[m] for b in micro_batches])), m
    whole.model.eval(), split.model.eval()
    one = whole.train_step(batch)
    two = split.train_step(micro_batches)
    torch.testing.assert_close(one["loss"], two["loss"])
    grads = {n: p.grad for n, p in split.model.named_parameters() if p.grad is not None}
    assert len(grads) > 50
    for name, p in whole.model.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(p.grad, grads[name], rtol=1e-4, atol=1e-6, msg=name)
    for k, v in whole.model.state_dict().items():
        torch.testing.assert_close(v, split.model.state_dict()[k], rtol=1e-4, atol=1e-6, msg=k)
    # and a whole run takes two micro-batches a step (of two samples: BatchNorm trains on more than one value
    # per channel at these tiny sizes), over two epochs of the 4-sample split
    cfg = tiny_config(root, tmp_path / "c", "train.accumulate_grad_batches=2", "train.iters=2", "train.eval_every=0",
                      "train.log_every=1")
    run = Trainer(cfg, reporter=Reporter(quiet=True))
    seen = []
    run_step = run.train_step
    run.train_step = lambda batches: seen.append(len(batches)) or run_step(batches)
    run.fit()
    assert seen == [2, 2] and run.iteration == 2


def test_the_geometric_step_on_the_batch_trains_like_the_per_sample_one(tmp_path):
    """data.geometric_on=batch: the workers (one real worker process here) leave resize / crop / flip to the
    training device. The step sees the per-sample pipeline's batches (same draws; labels and depth bit for bit),
    and the run logs the same losses."""
    import csv

    root = make_dataset(tmp_path / "d", n=8)
    extra = ["train.iters=4", "train.log_every=1", "train.eval_every=0", "data.scale_range=[0.5,2.0]"]
    per_sample = Trainer(tiny_config(root, tmp_path / "a", *extra), reporter=Reporter(quiet=True))
    per_batch = Trainer(tiny_config(root, tmp_path / "b", *extra, "data.geometric_on=batch", "data.num_workers=1"),
                        reporter=Reporter(quiet=True))
    assert per_batch.batch_geometry is not None and per_sample.batch_geometry is None
    for a, b in itertools.islice(zip(per_sample._train_loader(), per_batch._train_loader()), 4):  # endless
        assert b.geometry is not None and a.geometry is None
        b = per_batch._to_device(b)
        assert b.geometry is None and torch.equal(a.label, b.label)
        assert torch.equal(a.inputs["depth"], b.inputs["depth"])
        for name in ("rgb", "thermal"):
            torch.testing.assert_close(a.inputs[name], b.inputs[name], rtol=0, atol=2e-6)
    per_sample.fit()
    per_batch.fit()

    def losses(run):
        with (tmp_path / run / "metrics.csv").open() as f:
            return [float(row["loss"]) for row in csv.DictReader(f)]

    assert len(losses("b")) == 4
    assert losses("b") == pytest.approx(losses("a"), rel=1e-4)


@pytest.mark.slow
def test_kill_and_resume_from_the_cli_reaches_the_same_metrics(tmp_path):
    root = make_dataset(tmp_path / "d", n=8)
    args = [f"data.root={root}", *TINY, "train.iters=40", "train.checkpoint_every=4", "train.eval_every=0",
            "train.log_every=1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "rgbx.cli.main", "train", "synth_cmx_b0"]
    subprocess.run([*cmd, *args, f"output_dir={tmp_path / 'a'}", "--quiet"], check=True, env=env, timeout=300)
    proc = subprocess.Popen([*cmd, *args, f"output_dir={tmp_path / 'b'}", "--quiet"], env=env)
    state = tmp_path / "b" / "checkpoints" / "last.state.pt"
    wait_for_checkpoint(proc, state, 8)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = load_state(state)["iteration"]
    assert 8 <= killed_at < 40
    subprocess.run([*cmd, *args, f"output_dir={tmp_path / 'b'}", "--quiet", "--resume"], check=True, env=env,
                   timeout=300)
    a = [json.loads(x) for x in (tmp_path / "a" / "eval.jsonl").read_text().splitlines()][-1]
    b = [json.loads(x) for x in (tmp_path / "b" / "eval.jsonl").read_text().splitlines()][-1]
    assert a["miou"] == b["miou"] and a["groups"] == b["groups"]
    # metrics.csv: the killed run's rows after its checkpoint were replaced by the resumed run's, not kept as well
    logged = {run: list(csv.DictReader((tmp_path / run / "metrics.csv").open())) for run in "ab"}
    assert [int(r["iteration"]) for r in logged["b"]] == list(range(1, 41))
    assert [r["loss"] for r in logged["b"]] == [r["loss"] for r in logged["a"]]


def test_resume_drops_the_log_rows_written_after_the_checkpoint(tmp_path):
    log = tmp_path / "metrics.csv"
    log.write_text("iteration,lr,loss\n1,0.1,2.0\n2,0.1,1.5\n3,0.1,1.2\n")
    drop_rows_after(log, 2, csv_iteration)
    assert log.read_text() == "iteration,lr,loss\n1,0.1,2.0\n2,0.1,1.5\n"
    evals = tmp_path / "eval.jsonl"
    evals.write_text('{"iteration": 4, "miou": 0.5}\n{"iteration": 8, "miou": 0.6}\n')
    drop_rows_after(evals, 6, jsonl_iteration)
    assert evals.read_text() == '{"iteration": 4, "miou": 0.5}\n'
    assert not (tmp_path / "eval.jsonl.part").exists()


def test_a_finished_run_resumed_logs_its_final_evaluation_once(tmp_path, capsys):
    root = make_dataset(tmp_path / "d")
    cfg = tiny_config(root, tmp_path / "run", "train.iters=2", "train.eval_every=1")
    Trainer(cfg, reporter=Reporter(quiet=True)).fit()
    capsys.readouterr()
    Trainer(cfg, resume=True, reporter=Reporter()).fit()  # nothing left to train: evaluates again, and says so
    assert "the run has finished (train.iters=2)" in " ".join(capsys.readouterr().out.split())
    logged = [json.loads(line)["iteration"] for line in (tmp_path / "run" / "eval.jsonl").read_text().splitlines()]
    assert logged == [1, 2]


def test_checkpoint_for_a_different_model_is_refused(tmp_path):
    root = make_dataset(tmp_path / "d")
    cfg = tiny_config(root, tmp_path / "run", "train.iters=1")
    Trainer(cfg, reporter=Reporter(quiet=True)).fit()
    other = create_model(backbone="mit_nano", fusion="mean", modalities=["rgb"], num_classes=5, head_channels=16)
    with pytest.raises(CheckpointError, match="different model") as e:
        load_weights(tmp_path / "run" / "model.safetensors", other)
    assert "cmx/mit_nano over rgb+depth+thermal with 3 classes" in str(e.value)
    assert read_model_info(tmp_path / "run" / "model.safetensors")["model"]["fusion"] == "cmx"


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    p = tmp_path / "bad.safetensors"
    p.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="bad.safetensors"):
        load_model(p)


def test_speed_switches_train_the_same_model(tmp_path):
    """channels-last, torch.compile (aot_eager: the real tracing of forward and backward, no code generation on the
    CPU), fused AdamW and bf16 autocast each train from the same start to nearly the same losses as the exact path,
    and the weights they save load as an ordinary rgbx model."""
    import csv

    root = make_dataset(tmp_path / "d", n=8)
    runs = {
        "exact": [],
        "switches": ["train.channels_last=true", "train.compile=true", "train.compile_backend=aot_eager",
                     "train.fused_optimizer=true"],
        "bf16": ["train.precision=bf16"],
        "preset": ["train.speed=fast"],  # the device's fast set written into the switches
    }
    losses = {}
    for name, extra in runs.items():
        # 64x64 crops: with 16x16 ones the last stage is 1x1, where oneDNN's bf16 convolution weight gradient (CPU,
        # torch 2.14.1) sometimes returns non-finite values depending on prior allocations (seen on an AMX Xeon)
        cfg = tiny_config(root, tmp_path / name, "train.iters=4", "train.eval_every=0", "train.log_every=1",
                          "data.crop_size=[64,64]", *extra)
        Trainer(cfg, reporter=Reporter(quiet=True)).fit()
        with (tmp_path / name / "metrics.csv").open() as f:
            losses[name] = [float(row["loss"]) for row in csv.DictReader(f)]
        load_model(tmp_path / name / "model.safetensors")
    assert len(losses["exact"]) == 4
    assert losses["switches"] == pytest.approx(losses["exact"], rel=1e-4)
    assert losses["bf16"] == pytest.approx(losses["exact"], rel=5e-2)
    from rgbx.engine.fastpath import SpeedOptions

    fast = SpeedOptions.fast("cpu")
    saved = load_config(str(tmp_path / "preset" / "config.yaml"), [])
    assert (saved.train.precision, saved.train.channels_last, saved.model.attn_impl) == \
        (fast.precision, True, "sdpa")
    assert losses["preset"] == pytest.approx(losses["exact"], rel=5e-2 if fast.precision == "bf16" else 1e-4)
    with pytest.raises(ConfigError, match="train.speed"):
        Trainer(tiny_config(root, tmp_path / "bad", "train.speed=turbo"), reporter=Reporter(quiet=True))


def test_loader_workers_auto_follows_the_device(monkeypatch):
    assert loader_workers(3, torch.device("cpu")) == 3
    assert loader_workers(0, torch.device("cuda")) == 0
    assert loader_workers(None, torch.device("cpu")) == 2
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    assert loader_workers(None, torch.device("cuda")) == 8
    assert loader_workers(None, torch.device("cuda"), captured=True) == 12  # 16 cores
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    assert loader_workers(None, torch.device("cuda")) == 3
    assert loader_workers(None, torch.device("cuda"), captured=True) == 3
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    assert loader_workers(None, torch.device("cuda")) == 1
    with pytest.raises(ConfigError, match="num_workers"):
        loader_workers(-1, torch.device("cpu"))


def test_speed_defaults_follow_the_device_and_explicit_switches_win():
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    cfg = load_config(None, [])
    apply_speed_preset(cfg, cuda)  # the fast path is the default where it pays
    t = cfg.train
    assert (t.precision, t.channels_last, t.tf32, t.cudnn_benchmark, t.fused_optimizer, t.fold_head,
            t.lowp_norms, t.matmul_resize, t.fuse_projections, t.keep_host_memory) == (
        "bf16", True, True, True, True, True, True, True, True, False)
    cfg = load_config(None, ["train.precision=fp32", "train.channels_last=false"])
    apply_speed_preset(cfg, cuda)
    assert (cfg.train.precision, cfg.train.channels_last, cfg.train.tf32) == ("fp32", False, True)
    cfg = load_config(None, [])
    apply_speed_preset(cfg, cpu)  # on the CPU the default stays the exact fp32 path, with the same-function fold
    assert (cfg.train.precision, cfg.train.channels_last, cfg.train.fused_optimizer, cfg.train.fold_head,
            cfg.train.lowp_norms, cfg.train.matmul_resize, cfg.train.fuse_projections, cfg.train.keep_host_memory) == (
        "fp32", False, False, True, False, False, False, True)  # and the host memory kept: the same values
    cfg = load_config(None, ["train.speed=exact"])
    apply_speed_preset(cfg, cpu)
    assert cfg.train.fold_head is False and cfg.train.keep_host_memory is False
    cfg = load_config(None, ["train.speed=exact", "train.precision=bf16"])
    apply_speed_preset(cfg, cuda)  # exact is one word away, whatever else is set
    assert (cfg.train.precision, cfg.train.tf32, cfg.model.attn_impl) == ("fp32", False, "eager")


def test_fine_tuning_starts_from_another_model_and_resume_ignores_it(tmp_path):
    """train.init_from: a model trained elsewhere (other classes, one sensor fewer) is where the run starts; a
    resumed run continues from its own checkpoint instead."""
    from rgbx.models.model_file import save_model

    root = make_dataset(tmp_path / "d")
    torch.manual_seed(5)
    source = create_model(backbone="mit_nano", fusion="cmx", modalities=["rgb", "depth"], num_classes=4,
                          head_channels=16)
    file = save_model(tmp_path / "benchmark.safetensors", source,
                      {"name": "other", "classes": ["person", "sky", "ground", "car"], "palette": [],
                       "ignore_index": 255})
    printed = []

    class Recorder(Reporter):
        def print(self, *args, **kwargs):
            printed.append(" ".join(map(str, args)))

    cfg = tiny_config(root, tmp_path / "run", "train.iters=2", f"train.init_from={file}")
    trainer = Trainer(cfg, reporter=Recorder(quiet=True))
    ours, theirs = trainer.model.state_dict(), source.state_dict()
    for key in theirs:
        if key.startswith("encoder.branches."):
            assert torch.equal(ours[key], theirs[key]), key
            assert torch.equal(ours[key.replace(".depth.", ".thermal.")], theirs[key]), key
    w = ours["head.classifier.weight"]  # toy classes: ground, box, person
    assert torch.equal(w[0], theirs["head.classifier.weight"][2]) and torch.equal(w[2], theirs["head.classifier.weight"][0])
    report = next(line for line in printed if line.startswith("init_from"))
    assert "thermal <- the file's depth weights" in report
    assert "2 of 3 classes from the file's rows of the same name (ground, person); new, initialised fresh: box" in report
    trainer.fit()

    trained = load_state(tmp_path / "run" / "checkpoints" / "last.state.pt")["model"]
    resumed = Trainer(tiny_config(root, tmp_path / "run", "train.iters=3", f"train.init_from={file}"), resume=True,
                      reporter=Recorder(quiet=True))
    for key, value in resumed.model.state_dict().items():
        assert torch.equal(value.cpu(), trained[key]), key
    assert sum(line.startswith("init_from") for line in printed) == 1

    with pytest.raises(ConfigError, match="init_modality_from .* needs train.init_from"):
        tiny_config(root, tmp_path / "x", "train.init_modality_from={thermal: depth}")
    with pytest.raises(CheckpointError, match="init_from file not found"):
        Trainer(tiny_config(root, tmp_path / "y", "train.init_from=nowhere.safetensors"), reporter=Recorder(quiet=True))


def test_frozen_modules_keep_their_weights_and_resume_needs_the_same_list(tmp_path):
    root = make_dataset(tmp_path / "d")
    cfg = tiny_config(root, tmp_path / "run", "train.iters=2", "train.checkpoint_every=1",
                      "train.freeze=[encoder.branches.rgb,encoder.branches.depth]")
    trainer = Trainer(cfg, reporter=Reporter(quiet=True))
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.fit()
    after = trainer.model.state_dict()
    frozen = [k for k in before if k.startswith(("encoder.branches.rgb.", "encoder.branches.depth."))]
    assert frozen and all(torch.equal(after[k], before[k]) for k in frozen)  # MiT branches hold no BatchNorm
    changed = [k for k, v in before.items() if not torch.equal(after[k], v)]
    assert any(k.startswith("encoder.branches.thermal.") for k in changed)
    assert any(k.startswith("encoder.fuse.") for k in changed) and any(k.startswith("head.") for k in changed)
    with pytest.raises(CheckpointError, match="train.freeze"):
        Trainer(tiny_config(root, tmp_path / "run", "train.iters=3", "train.freeze=[encoder]"), resume=True,
                reporter=Reporter(quiet=True))
    with pytest.raises(ConfigError, match=r"train.freeze: 'encoder.branch' names no parameter of the model; its "
                                          r"modules include .*encoder.branches"):
        Trainer(tiny_config(root, tmp_path / "x", "train.freeze=[encoder.branch]"), reporter=Reporter(quiet=True))


def test_screen_sensors_in_training(tmp_path, capsys):
    from PIL import Image

    from rgbx.data import FolderDataset
    from rgbx.data.sensor_health import FrameScreen
    from rgbx.errors import ConfigError

    root = make_dataset(tmp_path / "d", n=8)
    first = FolderDataset(root, "train").ids[0]
    Image.fromarray(np.zeros((16, 20, 3), np.uint8)).save(root / "rgb" / f"{first}.png")  # a black frame
    trainer = Trainer(tiny_config(root, tmp_path / "run", "train.iters=2", "train.eval_every=0",
                                  "data.screen_sensors=true", "data.sensor_rules=[thermal.max_saturated=0.5]"),
                      reporter=Reporter(quiet=True))
    assert isinstance(trainer.train_set.screen, FrameScreen) and trainer.val_set.screen is trainer.train_set.screen
    assert trainer.train_set.screen.per_sensor["thermal"].max_saturated == 0.5
    assert sorted(trainer.train_set[0]["inputs"]) == ["depth", "thermal"]  # the black frame's camera: absent
    trainer.fit()
    model_file = tmp_path / "run" / "model.safetensors"
    assert load_model(model_file)[1]["training"] == {"method": "supervised", "modality_dropout": 0.0,
                                                      "absent_sensors_seen": True}  # the screened frames
    from rgbx.cli.main import main

    assert main(["info", str(model_file)]) == 0
    assert "training: method supervised, modality dropout 0.0; samples with a sensor absent: yes" in (
        capsys.readouterr().out)
    with pytest.raises(ConfigError, match="add data.screen_sensors=true"):
        Trainer(tiny_config(root, tmp_path / "run2", "data.sensor_rules=[frozen_after=2]"),
                reporter=Reporter(quiet=True))


def test_validation_during_training_uses_the_configured_miou_convention(tmp_path):
    """``train.eval_miou=all`` (the default of presets whose published evaluation averages every class, as DFormer's
    and DELIVER's code do): the logged mIoU, best.safetensors and the final line use it, and equal what ``rgbx eval
    --miou all`` gives. A fourth class that no label has makes the two conventions differ."""
    from rgbx.cli.main import main
    from rgbx.data.description import write_description

    root = make_dataset(tmp_path / "d", n=6)
    write_description(root, name="toy", classes=["ground", "box", "person", "bicycle"],
                      palette=[[0, 0, 0], [200, 100, 0], [220, 20, 60], [0, 0, 200]], ignore_index=255,
                      modalities={m: {"encoding": "png", "scale": s} for m, s in
                                  (("rgb", 1 / 255), ("depth", 1e-3), ("thermal", 1 / 255))})
    cfg = tiny_config(root, tmp_path / "run", "train.iters=4", "train.eval_every=0", "train.eval_miou=all",
                      "train.eval_group_by=null")
    Trainer(cfg, reporter=Reporter(quiet=True)).fit()
    run = tmp_path / "run"
    entry = json.loads((run / "eval.jsonl").read_text().splitlines()[-1])
    assert entry["miou_convention"] == "all"
    assert read_model_info(run / "best.safetensors")["val_miou_convention"] == "all"
    scored = {}
    for convention in ("all", "present"):
        out = tmp_path / f"{convention}.json"
        assert main(["eval", str(run / "model.safetensors"), "--data", str(root), "--miou", convention, "--by", "",
                     "--json", str(out)]) == 0
        scored[convention] = json.loads(out.read_text())["subsets"]["rgb+depth+thermal"]["all"]["miou"]
    assert entry["miou"] == pytest.approx(scored["all"], abs=1e-6)
    assert scored["all"] < scored["present"]  # bicycle counted as 0 by one convention only


def test_a_resumed_run_removes_what_a_killed_write_left(tmp_path):
    """A run killed while writing a checkpoint leaves atomic_write's temporary file (27 MB partial states in the
    fault sweep), which nothing removed; a resume (or a new run) in that folder removes such files, only those."""
    root = make_dataset(tmp_path / "d")
    cfg = tiny_config(root, tmp_path / "run", "train.iters=2", "train.checkpoint_every=1", "train.eval_every=0")
    Trainer(cfg, reporter=Reporter(quiet=True)).fit()
    checkpoints = tmp_path / "run" / "checkpoints"
    left = [checkpoints / ".last.state.pt.rgbx-partial-a1b2c3d4.tmp", tmp_path / "run" / ".model.safetensors.x9y8z7w6.tmp"]
    mine = [checkpoints / "notes.tmp", tmp_path / "run" / ".hidden.tmp"]
    for path in (*left, *mine):
        path.write_bytes(b"partial")
    cfg = tiny_config(root, tmp_path / "run", "train.iters=3", "train.checkpoint_every=1", "train.eval_every=0")
    Trainer(cfg, resume=True, reporter=Reporter(quiet=True)).fit()
    assert not any(p.exists() for p in left) and all(p.exists() for p in mine)


def test_a_run_shorter_than_its_warm_up_says_so(tmp_path, capsys):
    root = make_dataset(tmp_path / "d", n=4)
    Trainer(tiny_config(root, tmp_path / "run", "train.iters=3", "optim.warmup_iters=3"), reporter=Reporter())
    assert "optim.warmup_iters=3 is not below train.iters=3: the whole run is warm-up" in capsys.readouterr().out
    Trainer(tiny_config(root, tmp_path / "run2", "train.iters=4", "optim.warmup_iters=3"), reporter=Reporter())
    assert "warm-up" not in capsys.readouterr().out
