"""Multi-process training on the CPU (Gloo): ``torchrun`` launches of ``rgbx train``, data sharding, the evaluation's
cross-rank reduction, and the refusals. The same code runs NCCL on GPUs; only the backend differs."""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from rgbx.data.sampler import ResumableSampler
from rgbx.engine.checkpoint import load_model, load_state
from rgbx.engine.distributed import DistributedContext, all_reduce_grads, shard_indices
from rgbx.engine.evaluate import EvalResult
from tests.conftest import make_dataset

TINY = ["model.backbone=mit_nano", "model.head_channels=16", "data.crop_size=[16,16]", "data.num_workers=0",
        "train.batch_size=2", "train.eval_batch_size=2", "train.log_every=2", "optim.warmup_iters=2",
        "model.modalities=[rgb,depth,thermal]", "train.threads=1"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(nproc: int, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--master_port={free_port()}",
           "-m", "rgbx.cli.main", "train", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def explain(r: subprocess.CompletedProcess) -> str:
    """What a failed launch said: each process's error and signal lines (torchrun's summary pushes them out of a short
    tail: a rank's "terminate called ..." comes long before the launcher's traceback), then the end of the output."""
    text = r.stdout + r.stderr
    said = [line for line in text.splitlines()
            if re.search(r"Error|terminate called|Signal \d+|exitcode|Traceback|Fatal", line)]
    return "\n".join(said[-40:]) + "\n--- end of the output ---\n" + text[-2000:]


def test_sampler_gives_each_rank_its_own_share():
    per_rank = []
    for rank in range(3):
        s = ResumableSampler(20, batch_size=2, seed=1, rank=rank, world_size=3)
        it = iter(s)
        per_rank.append([next(it)[1] for _ in range(s.steps_per_epoch * 2)])
    seen = [i for share in per_rank for i in share]
    assert len(seen) == len(set(seen)) == 18  # disjoint; 20 // (2 × 3) = 3 steps of 2 per rank
    assert shard_indices(7, DistributedContext(rank=1, world_size=3)) == [1, 4]
    assert sorted(i for r in range(3) for i in shard_indices(7, DistributedContext(r, 3))) == list(range(7))


def _reduce_worker(rank: int, world: int, init: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    result = EvalResult(num_classes=2, ignore_index=255)
    pred, label = torch.tensor([0, 1, 1]), torch.tensor([0, 1, 0])
    result.matrix("rgb", "all").update(pred, label)
    if rank == 1:  # a group only this rank's share had
        result.matrix("rgb", "condition=night").update(pred, label)
    result.all_reduce()
    grads_param = torch.nn.Parameter(torch.zeros(3))
    grads_param.grad = torch.full((3,), float(rank + 1))
    unused = torch.nn.Parameter(torch.zeros(2))  # no gradient on any rank
    all_reduce_grads([grads_param, unused], DistributedContext(rank, world))
    torch.save({"all": result.matrix("rgb", "all").matrix, "night": result.matrix("rgb", "condition=night").matrix,
                "grad": grads_param.grad, "unused": unused.grad}, f"{out}/{rank}.pt")
    dist.destroy_process_group()


def _validation_worker(rank: int, world: int, port: int, data: str, out: str) -> None:
    from rgbx.engine.config import load_config
    from rgbx.engine.evaluate import evaluate
    from rgbx.engine.report import Reporter
    from rgbx.engine.trainer import Trainer

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    trainer = Trainer(load_config(None, [f"data.root={data}", f"output_dir={out}/run", *TINY, "train.iters=1"]),
                      reporter=Reporter(quiet=True))
    try:
        norms = [m for m in trainer.model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        assert norms
        if rank == 1:  # as after a last training step on another batch than rank 0's (no SyncBatchNorm on the CPU)
            with torch.no_grad():
                for m in norms:
                    m.running_mean.add_(3.0), m.running_var.mul_(30.0)
        result = trainer.evaluate()  # each rank scores its share, the confusion matrices summed
    finally:
        trainer.dist.close()
    if rank == 0:  # rank 0's model (the one it saves) scored alone on the whole split, out of the process group
        alone = evaluate(trainer.model, trainer.val_loader(share=False), num_classes=3, ignore_index=255)
        full = "+".join(trainer.model.modalities)
        torch.save({"ranks": result.matrix(full).matrix, "alone": alone.matrix(full).matrix}, f"{out}/m.pt")


def test_distributed_validation_scores_rank_0s_model(tmp_path):
    """Without SyncBatchNorm (Gloo: ``train.sync_bn`` acts on CUDA only) each rank's BatchNorm statistics follow its
    own last batch; the validation during training gives every rank rank 0's first, so the logged mIoU is that of
    the model rank 0 saves (rank 1 used to score its share with its own statistics)."""
    data = make_dataset(tmp_path / "d", n=8, splits={"train": [f"s{i:03d}" for i in range(4)],
                                                     "val": [f"s{i:03d}" for i in range(4, 8)]})
    mp.spawn(_validation_worker, args=(2, free_port(), str(data), str(tmp_path)), nprocs=2, join=True)
    saved = torch.load(tmp_path / "m.pt", weights_only=True)
    assert saved["alone"].sum() > 0
    assert torch.equal(saved["ranks"], saved["alone"])


def test_eval_reduction_agrees_on_groups_and_grads_are_averaged(tmp_path):
    mp.spawn(_reduce_worker, args=(2, f"file://{tmp_path}/init", str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        r = torch.load(tmp_path / f"{rank}.pt", weights_only=True)
        assert r["all"].tolist() == [[2, 2], [0, 2]]  # both ranks' counts summed
        assert r["night"].tolist() == [[1, 1], [0, 1]]  # present on rank 1 only, reduced on both without a hang
        assert r["grad"].tolist() == [1.5, 1.5, 1.5]
        assert r["unused"].tolist() == [0.0, 0.0]


def test_torchrun_trains_writes_once_and_refuses_another_world_size(tmp_path):
    data = make_dataset(tmp_path / "d", n=8)
    common = [f"data.root={data}", f"output_dir={tmp_path / 'run'}", *TINY, "train.checkpoint_every=2",
              "train.eval_every=4", "method.modality_dropout=0.5"]
    r = torchrun(2, "synth_cmx_b0", *common, "train.iters=6", cwd=tmp_path)
    assert r.returncode == 0, explain(r)
    out = r.stdout
    assert "× 2 processes" in out and out.count("final val mIoU") == 1  # rank 1 is silent
    assert "Grad strides" not in r.stderr  # DDP's false alarm for depthwise kernels is silenced
    run = tmp_path / "run"
    rows = (run / "metrics.csv").read_text().splitlines()
    assert len(rows) == 4 and rows[0].startswith("iteration,lr,loss")  # written by rank 0 alone: no duplicates
    assert len((run / "eval.jsonl").read_text().splitlines()) == 2
    state = load_state(run / "checkpoints/last.state.pt")
    assert state["iteration"] == 6 and state["world_size"] == 2
    model, info = load_model(run / "model.safetensors")
    assert info["iteration"] == 6
    # 8 samples, 2 per process per step: 2 steps per epoch, so 6 iterations went over the data 3 times
    images = [float(row.split(",")[-1]) for row in rows[1:]]
    assert all(v > 0 for v in images)
    # the validation scored the model rank 0 saved (each rank's BatchNorm statistics: see
    # test_distributed_validation_scores_rank_0s_model)
    from rgbx.cli.main import main

    logged = json.loads((run / "eval.jsonl").read_text().splitlines()[-1])
    assert main(["eval", str(run / "model.safetensors"), "--data", str(data), "--json", str(tmp_path / "e.json")]) == 0
    scored = json.loads((tmp_path / "e.json").read_text())["subsets"]["rgb+depth+thermal"]
    assert logged["iteration"] == 6
    assert {g: v["miou"] for g, v in scored.items()} == pytest.approx(logged["groups"], abs=1e-6)

    r = subprocess.run([sys.executable, "-m", "rgbx.cli.main", "train", "synth_cmx_b0", *common, "train.iters=8",
                        "--resume"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "2 process(es), this one has 1" in r.stdout + r.stderr


@pytest.mark.parametrize("preset", ["synth_ktb", "synth_anyseg_teacher"])
def test_torchrun_runs_the_recipes_with_auxiliary_modules(tmp_path, preset):
    """Methods that train modules besides the model (KTB's auxiliary heads) or drop whole sensors (anymodal dropout)
    under DDP, two micro-batches a step (gradients all-reduced at the second only): the run finishes and the
    processes end with the same weights (checked by the trainer itself)."""
    data = make_dataset(tmp_path / "d", n=8, modalities=("rgb", "depth"))
    args = [f"data.root={data}", f"output_dir={tmp_path / 'run'}", *[a for a in TINY if "modalities" not in a],
            "model.modalities=[rgb,depth]", "train.iters=4", "train.eval_every=0", "train.accumulate_grad_batches=2"]
    r = torchrun(2, preset, *args, cwd=tmp_path)
    assert r.returncode == 0, explain(r)
    assert (tmp_path / "run" / "model.safetensors").is_file()


def _process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (Linux /proc)."""
    found = [pid]
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            for child in f.read().split():
                found += _process_tree(int(child))
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the process tree from /proc")
def test_torchrun_stopped_by_sigterm_saves_the_step_all_stopped_at_and_resumes_to_the_same_weights(tmp_path):
    """SIGTERM to every process of a torchrun launch, as a scheduler pre-empting the job (SLURM) sends it: the
    launcher, both workers and their loader workers; the launcher then sends the workers another. The processes
    vote at each step boundary and stop at the same one, where process 0 saves (no checkpoint was due); resumed with
    torchrun, the final weights equal those of an uninterrupted 2-process run bit for bit (the per-rank data shares
    and draws are seeded like a single process's)."""
    import signal

    from safetensors.torch import load_file

    data = make_dataset(tmp_path / "d", n=8)
    args = [f"data.root={data}", *[a for a in TINY if "num_workers" not in a], "data.num_workers=1",
            "train.iters=40", "train.checkpoint_every=100000", "train.eval_every=0", "train.log_every=1",
            "method.modality_dropout=0.3"]
    r = torchrun(2, "synth_cmx_b0", *args, f"output_dir={tmp_path / 'a'}", cwd=tmp_path)
    assert r.returncode == 0, explain(r)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
           "-m", "rgbx.cli.main", "train", "synth_cmx_b0", *args, f"output_dir={tmp_path / 'b'}"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"}, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics = tmp_path / "b" / "metrics.csv"
    deadline = time.time() + 240
    while proc.poll() is None and time.time() < deadline:
        if metrics.exists() and len(metrics.read_text().splitlines()) > 6:  # iteration 6 logged
            break
        time.sleep(0.05)
    assert proc.poll() is None, "training finished before it could be stopped"
    processes = _process_tree(proc.pid)
    assert len(processes) >= 5  # the launcher, two workers, a loader worker each
    for pid in processes:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    out, _ = proc.communicate(timeout=240)
    stopped = re.search(r"stopped at iteration (\d+); .* continues from there \(saved now", out)
    assert stopped, out[-3000:]
    state = tmp_path / "b" / "checkpoints" / "last.state.pt"
    assert 6 <= load_state(state)["iteration"] == int(stopped.group(1)) < 40
    r = torchrun(2, "synth_cmx_b0", *args, f"output_dir={tmp_path / 'b'}", "--resume", cwd=tmp_path)
    assert r.returncode == 0, explain(r)
    a, b = (load_file(tmp_path / run / "model.safetensors") for run in ("a", "b"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _eval_cmd(*args: str) -> list[str]:
    return ["-m", "rgbx.cli.main", "eval", *args]


def test_torchrun_eval_gives_the_single_process_results(tmp_path):
    """``rgbx eval`` under torchrun: each process scores its share of the samples; the anymodal table (with groups
    that only some shares contain) and the robustness report equal the single-process ones exactly."""
    import json

    from rgbx.engine.config import load_config
    from rgbx.engine.report import Reporter
    from rgbx.engine.trainer import Trainer

    ids = [f"s{i:03d}" for i in range(13)]
    data = make_dataset(tmp_path / "d", n=13, splits={"train": ids[:6], "val": ids[6:]})  # 7: uneven shares
    cfg = load_config("synth_cmx_b0", [f"data.root={data}", f"output_dir={tmp_path / 'run'}", *TINY,
                                       "train.iters=4", "train.eval_every=0"])
    Trainer(cfg, reporter=Reporter(quiet=True)).fit()
    weights = str(tmp_path / "run" / "model.safetensors")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for extra in (["--anymodal", "--by", "condition", "--batch-size", "2", "--calibration"],
                  ["--robustness", "--batch-size", "3"]):
        common = [weights, "--data", str(data), "--split", "val", "--workers", "0", *extra]
        single = subprocess.run([sys.executable, *_eval_cmd(*common, "--json", str(tmp_path / "one.json"))],
                                cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert single.returncode == 0, explain(single)
        multi = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                                f"--master_port={free_port()}",
                                *_eval_cmd(*common, "--json", str(tmp_path / "two.json"))],
                               cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert multi.returncode == 0, explain(multi)
        one, two = (json.loads((tmp_path / f).read_text()) for f in ("one.json", "two.json"))
        if "--calibration" in extra:  # float32 probabilities of other batches, summed in another order: to rounding
            calibrated = [_numbers(run.pop("calibration")) for run in (one, two)]
            assert len(calibrated[0]) == len(calibrated[1]) > 100
            assert calibrated[0] == pytest.approx(calibrated[1], rel=1e-6, abs=1e-9)
        assert one == two, extra


def _numbers(tree) -> list:
    """The leaves of a JSON tree in order (None kept)."""
    if isinstance(tree, dict):
        return [v for key in sorted(tree) for v in _numbers(tree[key])]
    if isinstance(tree, list):
        return [v for item in tree for v in _numbers(item)]
    return [tree]


def test_torchrun_with_a_sensor_missing_from_whole_batches(tmp_path):
    """Plain supervised training without dropout on a dataset where thermal is optional and mostly missing: some
    batches have no thermal at all, so its CMX branch gets no gradient in that step. DDP must be told
    (find_unused_parameters, on by default for such data) or the step fails."""
    from rgbx.data.description import write_description

    data = make_dataset(tmp_path / "d", n=10, modalities=("rgb", "thermal"))
    write_description(data, name="toy", classes=["ground", "box", "person"],
                      palette=[[0, 0, 0], [200, 100, 0], [220, 20, 60]], ignore_index=255,
                      modalities={"rgb": {"encoding": "png", "scale": 1 / 255},
                                  "thermal": {"encoding": "png", "scale": 1 / 255, "optional": True}})
    for i in range(6):
        (data / "thermal" / f"s{i:03d}.png").unlink()
    args = [f"data.root={data}", *[a for a in TINY if "modalities" not in a], "model.modalities=[rgb,thermal]",
            "method.modality_dropout=0.0", "train.iters=8", "train.eval_every=0"]
    # with the Ham head too, whose stage-0 fusion gets no gradient in any step though the outputs reach it: with
    # find_unused_parameters on, DDP counted it as used and waited for its gradients (the next test: off)
    r = torchrun(2, "synth_cmx_b0", *args, "model.head=ham", f"output_dir={tmp_path / 'auto'}", cwd=tmp_path)
    assert r.returncode == 0, explain(r)
    assert "get no gradient in any step (e.g. encoder.fuse" in r.stdout
    # the case really occurs: one process waits for the missing gradients, the other at the next step's vote on
    # stopping, until the timeout, which names the likely cause
    r = torchrun(2, "synth_cmx_b0", *args, f"output_dir={tmp_path / 'off'}", "train.find_unused_parameters=false",
                 "train.distributed_timeout_s=15", cwd=tmp_path)
    assert r.returncode != 0 and "train.find_unused_parameters=false where some parameters got no gradient" in \
        (r.stdout + r.stderr), explain(r)


_LEAVE_SCRIPT = """
import gc, sys, weakref
import torch, torch.distributed as dist
from rgbx.engine.distributed import init_distributed
ctx = init_distributed("cpu")
group = weakref.ref(dist.distributed_c10d._get_default_group())
import timm  # what the CLI does after joining: build the model
t = torch.ones(3)
dist.all_reduce(t)
ctx.close()
gc.collect()
print("group freed" if group() is None else "group still held", t.tolist())
"""


def test_leaving_the_process_group_frees_it_when_torch_modules_are_imported_after_joining(tmp_path):
    """timm imports torch modules whose functions default to ``group=dist.group.WORLD``; imported after joining, they
    held the world group past destroy_process_group, Gloo's threads lived on, and now and then one aborted the process
    at exit (a torchrun ``rgbx eval`` rank died of SIGABRT). Fresh processes, so nothing is imported before joining."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(free_port())}
    procs = [subprocess.Popen([sys.executable, "-c", _LEAVE_SCRIPT], cwd=tmp_path, text=True,
                              env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for r in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
        assert out.strip() == "group freed [2.0, 2.0, 2.0]", out + err[-2000:]


def test_sync_batchnorm_converts_method_modules_in_place():
    from rgbx.engine.distributed import sync_batchnorm
    from rgbx.errors import ConfigError

    head = torch.nn.Sequential(torch.nn.Conv2d(4, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU())
    before = head[1].weight
    sync_batchnorm([head])
    assert isinstance(head[1], torch.nn.SyncBatchNorm) and head[1].weight is before  # same parameters
    with pytest.raises(ConfigError, match="bare BatchNorm"):
        sync_batchnorm([torch.nn.BatchNorm2d(3)])


def test_only_the_depthwise_stride_warning_is_silenced():
    import re

    from rgbx.engine.trainer import DEPTHWISE_STRIDE_WARNING

    depthwise = ("Grad strides do not match bucket view strides. This may indicate grad was not created according "
                 "to the gradient layout contract.\ngrad.sizes() = [512, 1, 3, 3], strides() = [9, 1, 3, 1]\n"
                 "bucket_view.sizes() = [512, 1, 3, 3], strides() = [9, 9, 3, 1]")
    rule = re.compile(DEPTHWISE_STRIDE_WARNING, re.I)  # as the warnings module compiles it
    assert rule.match(depthwise)
    assert not rule.match(depthwise.replace("[512, 1, 3, 3]", "[64, 32, 3, 3]"))  # a real layout mismatch


def test_torchrun_with_a_head_that_leaves_parameters_without_gradient(tmp_path):
    """CMX with the Ham head: the head reads stages 1-3, so the stage-0 fusion module gets no gradient in any step,
    though the model's outputs reach it. DDP's second step failed ("Expected to have finished reduction in the prior
    iteration"): here without dropout (find_unused_parameters off); with it on, the test before (DDP counted what the
    outputs reach as used). The trainer finds such parameters once (one training forward + backward, RNG and
    buffers put back), tells DDP to leave them out and says which."""
    data = make_dataset(tmp_path / "d", n=6, modalities=("rgb", "depth"))
    args = [f"data.root={data}", *[a for a in TINY if "modalities" not in a], "model.modalities=[rgb,depth]",
            "model.head=ham", "train.iters=4", "train.eval_every=0"]
    r = torchrun(2, "synth_cmx_b0", *args, "method.modality_dropout=0.0", f"output_dir={tmp_path / 'run'}",
                 cwd=tmp_path)
    assert r.returncode == 0, explain(r)
    assert "get no gradient in any step (e.g. encoder.fuse" in r.stdout


def test_parameters_without_gradient_names_what_the_head_never_reads_and_changes_nothing():
    from rgbx.engine.distributed import parameters_without_gradient
    from rgbx.models import create_model

    def build(head):
        torch.manual_seed(0)
        return create_model(backbone="mit_nano", fusion="cmx", head=head, modalities=["rgb", "depth"],
                            num_classes=3, head_channels=16)

    ham, mlp = build("ham"), build("mlp")
    before = {k: v.clone() for k, v in ham.state_dict().items()}  # BatchNorm statistics of the Ham head too
    torch.manual_seed(5)
    unused = parameters_without_gradient(ham, (32, 32), torch.device("cpu"))
    drawn = torch.rand(1)
    torch.manual_seed(5)
    assert torch.equal(drawn, torch.rand(1))  # no random number drawn
    assert all(torch.equal(before[k], v) for k, v in ham.state_dict().items()) and ham.training
    assert unused and all(n.startswith("encoder.fuse.0.") for n in unused)  # the Ham head reads stages 1-3
    assert len(unused) == sum(1 for n, _ in ham.named_parameters() if n.startswith("encoder.fuse.0."))
    assert parameters_without_gradient(mlp, (32, 32), torch.device("cpu")) == []
