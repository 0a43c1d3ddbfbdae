"""Multi-process training with torch.distributed: one process per GPU (or per CPU worker), launched by ``torchrun``.

``torchrun --nproc_per_node 4 -m rgbx.cli.main train CONFIG`` (or ``--nnodes N --node_rank R --master_addr ...``
across machines) sets ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` for each process; :func:`init_distributed` reads
them and joins the process group (NCCL on CUDA, Gloo on the CPU). Without those variables everything here is a no-op
for a single process. What the trainer does with it:

* data: each rank reads its own share of every epoch (:class:`~rgbx.data.sampler.ResumableSampler` with the rank),
  ``train.batch_size`` is per process (global batch = batch_size × world size); validation samples are split
  between ranks without repetition (:func:`shard_indices`) and the confusion matrices summed;
* model: wrapped in :class:`~torch.nn.parallel.DistributedDataParallel` (gradients averaged during backward); the
  method's own trainable modules (auxiliary heads, aligners) have their gradients averaged after backward;
  BatchNorm becomes SyncBatchNorm on CUDA (``train.sync_bn``); on the CPU each rank keeps its own running
  statistics, and an evaluation first gives every rank rank 0's (:func:`broadcast_buffers`): the model it saves;
* files: only rank 0 writes checkpoints, weights, logs; every rank reads the same checkpoint to resume (multi-node
  runs need ``output_dir`` on a shared file system).
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.distributed as dist

from rgbx.errors import ConfigError

__all__ = ["DistributedContext", "StopVote", "all_reduce_grads", "broadcast_buffers", "init_distributed",
           "shard_indices", "sync_batchnorm"]


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands: ``rank`` of ``world_size`` processes, ``local_rank`` on its machine."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialized_here: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def all_reduce_mean(self, values: torch.Tensor) -> torch.Tensor:
        """The mean of ``values`` over all ranks (the tensor itself when alone)."""
        if not self.enabled:
            return values
        values = values.clone()
        dist.all_reduce(values)
        return values / self.world_size

    def check_same(self, value: float, what: str) -> None:
        """Raise when ``value`` differs between ranks (e.g. a checksum of the weights, which DDP keeps identical)."""
        if not self.enabled:
            return
        values: list = [None] * self.world_size
        dist.all_gather_object(values, float(value))
        if len(set(values)) > 1:
            raise RuntimeError(f"{what} differs between the {self.world_size} processes: {values}")

    def close(self) -> None:
        """Leave the process group, if this context joined it."""
        if self.initialized_here and dist.is_initialized():
            dist.destroy_process_group()


class StopVote:
    """The processes of a launch stop together: at each step boundary every process says whether it has been asked
    to stop (Ctrl-C, SIGTERM) and all learn whether any has, so all stop at the same boundary and process 0 saves the
    state there (:meth:`rgbx.engine.trainer.Trainer.save_on_stop`). One all-reduce (max) of one integer, on a Gloo
    group of its own: in host memory, so it waits for no device work (no synchronisation in the training step), and
    apart from the gradients' collective operations. Made by every process at the same point (``new_group`` is
    collective); alone, a process's own answer."""

    def __init__(self, ctx: DistributedContext, timeout_s: float = 1800.0):
        self.group = None
        if ctx.enabled:
            self.group = dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=timeout_s))

    def any(self, stopping: bool) -> bool:
        if self.group is None:
            return stopping
        flag = torch.tensor([int(stopping)], dtype=torch.int32)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.group)
        return bool(flag.item())


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"environment variable {name}={value!r}: expected an integer (set by torchrun)") from None


def init_distributed(device_type: str, timeout_s: float = 1800.0) -> DistributedContext:
    """Join the process group described by torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
    ``MASTER_ADDR`` / ``MASTER_PORT``), with NCCL when ``device_type`` is ``cuda`` and Gloo otherwise; on CUDA the
    process's current device becomes ``cuda:LOCAL_RANK``. A single process (no ``WORLD_SIZE`` or 1) joins nothing."""
    world = _env_int("WORLD_SIZE", 1)
    rank, local = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    if world <= 1:
        return DistributedContext()
    if not 0 <= rank < world:
        raise ConfigError(f"RANK={rank} is outside WORLD_SIZE={world}")
    if device_type == "cuda":
        if local >= torch.cuda.device_count():
            raise ConfigError(f"LOCAL_RANK={local} but this machine has {torch.cuda.device_count()} CUDA device(s); "
                              f"start at most that many processes per node (torchrun --nproc_per_node)")
        torch.cuda.set_device(local)
    if dist.is_initialized():
        if dist.get_world_size() != world:
            raise ConfigError(f"a process group of {dist.get_world_size()} is already running, WORLD_SIZE={world}")
        return DistributedContext(rank, world, local, initialized_here=False)
    _import_world_group_holders()
    dist.init_process_group("nccl" if device_type == "cuda" else "gloo",
                            timeout=datetime.timedelta(seconds=timeout_s))
    return DistributedContext(rank, world, local, initialized_here=True)


# torch modules whose functions take ``group=dist.group.WORLD`` as a default argument: imported once the process group
# exists (timm imports them, and so does torch._dynamo, which torch's optimizers load on first use; the CLI builds its
# model and optimizer after joining), each default holds the world group, so destroy_process_group cannot free it and
# Gloo's worker threads outlive it. A worker that drops a finished collective's tensor while the interpreter shuts
# down then aborts the process (SIGABRT, "terminate called without an active exception", as in pytorch/pytorch#190489).
# Imported before joining, their defaults are None.
WORLD_GROUP_HOLDERS = ("torch.distributed.nn.functional", "torch.distributed.optim",
                       "torch.distributed.fsdp.sharded_grad_scaler")


def _import_world_group_holders() -> None:
    import importlib

    for name in WORLD_GROUP_HOLDERS:
        try:
            importlib.import_module(name)
        except ImportError:  # a torch build without it: nothing there to hold the group either
            pass


def shard_indices(num_samples: int, ctx: DistributedContext) -> list[int]:
    """This rank's share of ``range(num_samples)`` for evaluation: every ``world_size``-th index from ``rank``, so
    each sample is scored exactly once over all ranks (no padding duplicates, unlike DistributedSampler)."""
    return list(range(ctx.rank, num_samples, ctx.world_size))


def all_reduce_grads(params: Iterable[torch.nn.Parameter], ctx: DistributedContext) -> None:
    """Average the gradients of ``params`` over all ranks, in one flat all-reduce (a missing gradient counts as
    zero, so every rank sends the same tensors)."""
    if not ctx.enabled:
        return
    params = [p for p in params if p.requires_grad]
    if not params:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= ctx.world_size
    offset = 0
    for p in params:
        n = p.numel()
        chunk = flat[offset: offset + n].view_as(p)
        if p.grad is None:
            p.grad = chunk.clone()
        else:
            p.grad.copy_(chunk)
        offset += n


def broadcast_buffers(module: torch.nn.Module, ctx: DistributedContext, src: int = 0) -> None:
    """Give every rank rank ``src``'s buffers of ``module`` (BatchNorm running statistics), in place. Without
    SyncBatchNorm (``train.sync_bn`` acts on CUDA only) each rank's statistics follow its own batches; DDP copies rank
    0's at the start of every training forward, so after the last step they differ by each rank's own update. A
    distributed evaluation calls this first, so that every rank scores the model rank 0 saves."""
    if not ctx.enabled:
        return
    with torch.no_grad():
        for buffer in module.buffers():
            if buffer.is_contiguous():
                dist.broadcast(buffer, src)
            else:  # (a strided view: received whole, copied in where it differs)
                received = buffer.contiguous()
                dist.broadcast(received, src)
                if not torch.equal(received, buffer):
                    buffer.copy_(received)


def parameters_without_gradient(model: torch.nn.Module, size: tuple[int, int], device: torch.device) -> list[str]:
    """Names of the trainable parameters of a segmentation model that one training forward + backward with every
    sensor present leaves without a gradient: parts the head never reads (the Ham head reads stages 1-3, so CMX's
    stage-0 fusion module; the FCN head the last stage), which DDP must leave out or its second step fails. Zero
    inputs of batch 2 at ``size``; the random number generators and the buffers (BatchNorm statistics) are put back,
    so training runs as it would without the check."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        return []
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    was_training = model.training
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        try:
            model.train()
            inputs = {m: torch.zeros(2, c, *size, device=device, dtype=named[0][1].dtype)
                      for m, c in model.encoder.sensor_channels.items()}
            logits = model(inputs).logits
            grads = torch.autograd.grad(logits.sum(), [p for _, p in named], allow_unused=True)
        finally:
            model.train(was_training)
            with torch.no_grad():
                for b, saved in buffers:
                    b.copy_(saved)
    return [n for (n, _), g in zip(named, grads) if g is None]


def sync_batchnorm(modules: Iterable[torch.nn.Module]) -> None:
    """Turn the BatchNorm layers inside ``modules`` into SyncBatchNorm, in place (statistics over all processes;
    CUDA only at run time). A module that is itself a BatchNorm layer cannot be replaced in place and is refused."""
    for module in modules:
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            raise ConfigError(f"{type(module).__name__}: a bare BatchNorm layer cannot be synchronised in place; "
                              f"wrap it in a module")
        converted = torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)
        assert converted is module
