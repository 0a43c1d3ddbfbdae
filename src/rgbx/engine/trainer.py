"""The training loop: plain PyTorch, iteration based, resumable bit for bit after a kill.

Reproducibility: the sample order comes from :class:`~rgbx.data.sampler.ResumableSampler` (seeded per epoch), each
sample's augmentation from a generator seeded by (seed, epoch, index), and each step's randomness (drop path,
modality dropout) from a seed derived from (seed, iteration). A run resumed from its last checkpoint therefore sees
the same data and random draws as an uninterrupted one. Ctrl-C or SIGTERM (handed over by ``rgbx train``, see
:mod:`rgbx.engine.interruption`) stop the loop at the end of a step, where :meth:`Trainer.save_on_stop` writes a
checkpoint; under torchrun at the first step boundary after any process was signalled, all processes at the same one
(:class:`~rgbx.engine.distributed.StopVote`).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import math
import os
import re
import tempfile
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from functools import cached_property, partial
from pathlib import Path

import torch

from rgbx.data import build_dataset, collate
from rgbx.data.sample import PresenceMasks
from rgbx.data.sampler import ResumableSampler
from rgbx.data.sensor_health import FrameScreen, parse_rules
from rgbx.data.transforms import EvalTransform, TrainTransform
from rgbx.data.transforms.photometric import build_photometric_ops
from rgbx.device import resolve_device
from rgbx.engine.checkpoint import (
    differing_class_names,
    load_state,
    load_state_into,
    remove_unfinished_writes,
    save_model,
    save_state,
)
from rgbx.engine.config import (
    ExperimentConfig,
    OptimConfig,
    TrainConfig,
    to_dict,
    to_yaml,
    validation_miou_convention,
)
from rgbx.engine.distributed import (
    StopVote,
    all_reduce_grads,
    broadcast_buffers,
    init_distributed,
    parameters_without_gradient,
    shard_indices,
    sync_batchnorm,
)
from rgbx.engine.environment import run_environment
from rgbx.engine.evaluate import EvalResult, all_subsets, evaluate
from rgbx.engine.fastpath import (
    CudaGraphTrainStep,
    SpeedOptions,
    apply_speed_options,
    compile_fn,
    to_memory_format,
)
from rgbx.engine.host_memory import set_keep_host_memory
from rgbx.engine.interruption import InterruptHold, quiet_worker_exit
from rgbx.engine.optim import (
    build_optimizer,
    build_scheduler,
    freeze_parameters,
    keep_lr_tensors,
    lr_as_tensors,
    set_capturable,
)
from rgbx.engine.profile import count_parameters
from rgbx.engine.report import Reporter
from rgbx.errors import CheckpointError, ConfigError, RgbxError, Terminated
from rgbx.methods import METHODS
from rgbx.modalities import get_modality
from rgbx.models import ModelConfig, create_model
from rgbx.models.convert import REFERENCE_EVALUATION
from rgbx.models.input_encoding import InputEncoding
from rgbx.models.model_file import PARTIAL_MARK, dataset_record, read_model_info
from rgbx.models.transfer import transfer_weights
from rgbx.plugins import load_plugins

STATE_FILE = "checkpoints/last.state.pt"
# what a training state holds (Trainer._state); a file without them is not one (another program's torch.save)
STATE_KEYS = ("iteration", "best_miou", "model", "optimizer", "scheduler", "scaler", "config")
LAST_WEIGHTS = "checkpoints/last.safetensors"
FINAL_WEIGHTS = "model.safetensors"


def network_zero_fill(input_encoding, modalities) -> dict[str, list[float]]:
    """Sensor → the physical value, per channel, that the network sees as 0 (its normalisation mean, or what
    ``model.input_encoding`` maps to 0): ``data.crop_padding=centre``'s padding, as CMX and DFormer pad their
    normalised crops with 0."""
    encoding = InputEncoding(input_encoding, modalities)
    fill = {}
    for name in modalities:
        zero = encoding.zero(name)
        if zero is None:
            raise ConfigError(f"data.crop_padding=centre pads {name!r} with the network's zero input, which "
                              f"model.input_encoding.{name} cannot give (one sensor channel feeds network channels "
                              "that need different values); use data.crop_padding=end")
        fill[name] = get_modality(name).denormalize(torch.tensor(zero).view(-1, 1, 1)).flatten().tolist()
    return fill


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    if precision == "fp32":
        return None
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("train.precision=fp16 needs a CUDA device; use bf16 or fp32 on the CPU")
    return torch.bfloat16 if precision == "bf16" else torch.float16


def enet_class_weights(dataset, max_samples: int = 500) -> torch.Tensor:
    """ENet's class weights w_c = 1 / ln(1.02 + p_c), p_c = pixel frequency of class c in (up to ``max_samples``
    evenly spaced) training labels."""
    k, ignore = dataset.description.num_classes, dataset.description.ignore_index
    counts = torch.zeros(k, dtype=torch.float64)
    step = max(1, len(dataset) // max_samples)
    for i in range(0, len(dataset), step):
        label = dataset.load(i)["label"]
        if label is not None:
            label = label[label != ignore]
            counts += torch.bincount(label.flatten(), minlength=k)[:k].double()
    p = counts / counts.sum().clamp(min=1)
    return (1.0 / torch.log(1.02 + p)).float()


SPEED_PRESETS = ("custom", "fast", "exact")
# DDP's stride warning for a gradient of shape (C, 1, k, k); any other shape is a real layout mismatch
DEPTHWISE_STRIDE_WARNING = r"(?s)Grad strides do not match bucket view strides.*grad\.sizes\(\) = \[\d+, 1, "


def apply_speed_preset(cfg: ExperimentConfig, device: torch.device) -> None:
    """Resolve the speed switches of ``cfg`` for ``device``, in place (the run's config.yaml records what ran):
    ``train.speed`` = ``fast`` / ``exact`` writes the device's fast set / everything off over the switches;
    ``custom`` keeps the switches that are set and gives those left at None the device's default (the fast set on
    CUDA, where it pays without changing what is learned; the exact fp32 path elsewhere, but with the folded decode
    head, the same function in fewer operations: CMX-B0's CPU training step 1.42× faster, and the host memory kept
    for reuse, the same values bit for bit)."""
    preset = cfg.train.speed
    if preset not in SPEED_PRESETS:
        raise ConfigError(f"train.speed={preset!r}: expected one of {', '.join(SPEED_PRESETS)}")
    t = cfg.train
    names = ("precision", "channels_last", "tf32", "cudnn_benchmark", "fused_optimizer", "fold_head", "lowp_norms",
             "matmul_resize", "fuse_projections", "keep_host_memory")
    if preset == "custom":
        default = SpeedOptions.fast(device) if device.type == "cuda" else SpeedOptions.exact()
        # the folded head computes the same function (rounding aside) in fewer operations: on for every device; the
        # host memory kept changes no value: on wherever the fast set has it
        default = default.with_(fold_head=True, keep_host_memory=SpeedOptions.fast(device).keep_host_memory)
        for name in names:
            if getattr(t, name) is None:
                setattr(t, name, getattr(default, name))
        return
    opts = SpeedOptions.fast(device) if preset == "fast" else SpeedOptions.exact()
    for name in names:
        setattr(t, name, getattr(opts, name))
    cfg.model = dataclasses.replace(cfg.model, attn_impl=opts.attn_impl)


def loader_workers(requested: int | None, device: torch.device, captured: bool = False) -> int:
    """Data-loader processes: ``requested`` when set; else 2 on the CPU (the training step needs the cores) and, on
    CUDA, one per core left over beyond the main process, at most 8, or 12 for a step captured as a CUDA graph
    (``captured``). One worker reads, decodes and augments about 26 RGB-D 480×640 samples/s
    (``benchmarks/speed.md``), so two cannot feed a GPU step of 50+ images/s; the H100 machine read 231 samples/s
    with 12 workers, what a captured CMX-B0 step (147 images/s) needs."""
    if requested is not None:
        if requested < 0:
            raise ConfigError(f"data.num_workers must be >= 0 (or null for auto), got {requested}")
        return int(requested)
    if device.type != "cuda":
        return 2
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(12 if captured else 8, cores - 1))


def step_seed(seed: int, iteration: int) -> int:
    return (seed * 1_000_003 + iteration * 7_919 + 17) % (2**63)


@dataclass
class RunPaths:
    root: Path

    @property
    def state(self) -> Path:
        return self.root / STATE_FILE

    @property
    def last_weights(self) -> Path:
        return self.root / LAST_WEIGHTS

    @property
    def final_weights(self) -> Path:
        return self.root / FINAL_WEIGHTS

    @property
    def best_weights(self) -> Path:
        return self.root / "best.safetensors"


def graph_capture_refusals(cfg: ExperimentConfig, device: torch.device, distributed: bool, method) -> list[str]:
    """Why ``train.cuda_graph_train`` cannot capture this run's training step (empty: it can). A captured step
    replays the same device work at every step, so whatever decides on the host what a step runs is refused. (Which
    sensors a batch has, and modality dropout, are decided on the device in a captured step: not refused.)"""
    t = cfg.train
    reasons = []
    if device.type != "cuda":
        reasons.append(f"it needs CUDA (train.device={t.device} is {device})")
    if distributed:
        reasons.append("it runs in one process, not under torchrun / DDP")
    if t.precision == "fp16":
        reasons.append("fp16's gradient scaler reads its overflow check on the host (use train.precision=bf16 or fp32)")
    if t.compile:
        reasons.append("train.compile is not combined with it")
    if t.accumulate_grad_batches > 1:
        reasons.append("it captures one forward / backward pass a step (train.accumulate_grad_batches=1)")
    refusal = method.graph_refusal()
    if refusal:
        reasons.append(refusal)
    return reasons


def graph_buffers(batch) -> dict[str, torch.Tensor]:
    """A batch's device tensors by name: what a captured training step copies each new batch into."""
    return {**{f"input:{k}": v for k, v in batch.inputs.items()}, "label": batch.label,
            **{f"present:{k}": v for k, v in batch.present.items()}}


def build_model_config(cfg: ExperimentConfig, num_classes: int) -> ModelConfig:
    model_cfg = cfg.model
    if model_cfg.num_classes in (0, None):
        model_cfg = dataclasses.replace(model_cfg, num_classes=num_classes)
    elif model_cfg.num_classes != num_classes:
        raise ConfigError(f"model.num_classes={model_cfg.num_classes} but the dataset {cfg.data.root} has "
                          f"{num_classes} classes")
    return model_cfg


def parameter_summary(model: torch.nn.Module, method_modules) -> str:
    """One line: the model's parameters, trainable and frozen, and those the method trains besides (auxiliary heads,
    aligners), which the saved model does not carry."""
    counts = count_parameters(model)
    total, trainable = counts["total"], counts["trainable"]
    extra = sum(count_parameters(m)["trainable"] for m in method_modules)
    line = (f"model: {total / 1e6:.3f} M parameters ({trainable / 1e6:.3f} M trainable, "
            f"{(total - trainable) / 1e6:.3f} M frozen)")
    return line + (f"; the method trains {extra / 1e6:.3f} M more (in the training state, not in the model file; a "
                   f"method that needs them later writes its own file)" if extra else "")


class Trainer:
    """Trains ``cfg.model`` with ``cfg.method`` on ``cfg.data``; writes everything under ``cfg.output_dir``."""

    def __init__(self, cfg: ExperimentConfig, resume: bool = False, reporter: Reporter | None = None):
        load_plugins(cfg.imports)  # a config built in Python: its plugins (load_config has loaded a file's already)
        self.cfg = cfg
        self._environment: dict | None = None  # what the model files record the run was made with
        self.paths = RunPaths(Path(cfg.output_dir))
        self.device = resolve_device(cfg.train.device, "train.device")
        self.dist = init_distributed(self.device.type, cfg.train.distributed_timeout_s)
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
        # only rank 0 prints and writes files; the others train in silence
        self.reporter = (reporter or Reporter()) if self.dist.is_main else Reporter(quiet=True)
        if self.paths.root.exists() and not self.paths.root.is_dir():
            raise ConfigError(f"output_dir {self.paths.root}: is a file; the run's folder goes there")
        if not resume and self.paths.state.exists():
            raise RgbxError(f"{self.paths.root} already holds a training run ({self.paths.state}); pass --resume "
                            f"to continue it, or choose another output_dir")
        # trained models without the state to continue them would be overwritten by a new run (with --resume, a
        # best model alone is that of a run killed before its first checkpoint: made again from the start)
        kept = (self.paths.final_weights,) if resume else (self.paths.final_weights, self.paths.best_weights)
        models = [p.name for p in kept if p.exists()]
        if models and not self.paths.state.exists():
            raise RgbxError(f"{self.paths.root} holds trained model files ({', '.join(models)}) but no training "
                            f"state to continue from ({self.paths.state}); choose another output_dir, or move "
                            f"them away to start a new run there")
        self.check_writable()  # before anything is trained that the checkpoints could not keep
        if self.dist.is_main:  # what a process killed mid-write left (atomic_write's temporary files)
            for folder in (self.paths.root, self.paths.state.parent):
                for left in remove_unfinished_writes(folder):
                    self.reporter.print(f"removed {left}, a file a killed run left unfinished")
        self.dist.barrier()  # every rank has looked before rank 0 writes the run folder
        apply_speed_preset(cfg, self.device)
        self.num_workers = loader_workers(cfg.data.num_workers, self.device, cfg.train.cuda_graph_train)
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        self.amp_dtype = autocast_dtype(cfg.train.precision, self.device)
        torch.manual_seed(cfg.train.seed)

        modalities = list(cfg.data.modalities or cfg.model.modalities)
        unknown = [m for m in cfg.model.modalities if m not in modalities]
        if unknown:
            raise ConfigError(f"model.modalities has {unknown} which data.modalities does not load")
        data = cfg.data
        stray = sorted(set(data.photometric_ops) - set(modalities))
        if stray:
            raise ConfigError(f"data.photometric_ops names {stray}, which this run does not load "
                              f"({', '.join(modalities)})")
        self.train_set = build_dataset(data.dataset, data.root, data.train_split, modalities=modalities,
                                       seed=cfg.train.seed, check=data.check, **data.options)
        self.description = self.train_set.description
        self.train_set.transform = TrainTransform(
            crop_size=tuple(data.crop_size), scale_range=tuple(data.scale_range), hflip_prob=data.hflip_prob,
            ignore_index=self.description.ignore_index, photometric=data.photometric, geometric_on=data.geometric_on,
            scales=data.scales, sensor_ops=build_photometric_ops(data.photometric_ops),
            pad_fill=network_zero_fill(cfg.model.input_encoding, modalities) if data.crop_padding == "centre" else None,
            pad_centre=data.crop_padding == "centre")
        # the geometric step of batches whose samples left it for the batch (data.geometric_on=batch)
        self.batch_geometry = (self.train_set.transform.batch_geometry() if data.geometric_on == "batch" else None)
        if self.batch_geometry is not None and self.device.type == "cpu":
            self.reporter.print("note: data.geometric_on=batch on the CPU: the training process resamples each batch, "
                                "which costs more here than the loader workers doing it (data.geometric_on=sample)")
        self.val_set = build_dataset(data.dataset, data.root, data.val_split, modalities=modalities,
                                     transform=EvalTransform(), check=data.check, **data.options)
        self.train_set.require_labels("training (data.train_split)")
        self.val_set.require_attribute(cfg.train.eval_group_by, f"train.eval_group_by={cfg.train.eval_group_by}",
                                       "null")
        self.val_set.require_labels("the evaluation during and after training (data.val_split)")
        if data.screen_sensors:
            screen = FrameScreen(*parse_rules(data.sensor_rules))
            self.train_set.screen = self.val_set.screen = screen
        elif data.sensor_rules:
            raise ConfigError("data.sensor_rules sets thresholds of the sensor checks; add data.screen_sensors=true")
        if len(self.train_set) < cfg.train.batch_size:
            raise ConfigError(f"train.batch_size={cfg.train.batch_size} is larger than the training split "
                              f"({len(self.train_set)} samples)")
        self.model_cfg = cfg.model = build_model_config(cfg, self.description.num_classes)
        if resume and not self.paths.state.exists() and self.paths.best_weights.exists():
            # a best model without a state: a run killed before its first checkpoint, made again, if it is this
            # run's (another model copied in is not overwritten)
            recorded = read_model_info(self.paths.best_weights, missing_ok=True).get("model")
            if json.loads(json.dumps(recorded)) != json.loads(json.dumps(self.model_cfg.to_dict())):
                raise RgbxError(f"{self.paths.best_weights} is not this run's model (another model config) and there "
                                f"is no training state to continue; choose another output_dir, or move it away")
        method_class = METHODS.get(cfg.method.name)
        method_class.complete_config(cfg, self.train_set)  # options derived from the data (e.g. MS3's classes)
        # the saved run is compared with this config before anything is built from it (a teacher, the model)
        resumed = self._check_state() if resume and self.paths.state.exists() else None
        self.model = create_model(self.model_cfg)
        if cfg.train.init_from and not (resume and self.paths.state.exists()):
            transfer = transfer_weights(self.model, cfg.train.init_from, classes=self.description.classes,
                                        modality_from=cfg.train.init_modality_from)
            self.reporter.print(transfer.summary())
        if (not cfg.model.pretrained and not cfg.train.init_from and not resume
                and data.dataset not in ("folder", "shards") and "nano" not in cfg.model.backbone):
            self.reporter.print(f"note: model.pretrained is not set, so the {cfg.model.backbone} encoder starts from "
                                f"random weights; published models on {data.dataset} start from ImageNet weights "
                                f"(model.pretrained=FILE; docs/reproducing.md)")
        if cfg.train.freeze:  # before DDP, which keeps a gradient bucket for every parameter then trainable
            freeze_parameters(self.model, list(cfg.train.freeze))
        self.model = self.model.to(self.device)
        if self.dist.enabled and self.device.type == "cuda" and cfg.train.sync_bn:
            self.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        t = cfg.train
        self.speed = SpeedOptions(precision=t.precision, channels_last=t.channels_last, compile=t.compile,
                                  compile_scope=t.compile_scope, compile_mode=t.compile_mode,
                                  compile_backend=t.compile_backend, tf32=t.tf32, cudnn_benchmark=t.cudnn_benchmark,
                                  fused_optimizer=t.fused_optimizer, cuda_graph_train=t.cuda_graph_train,
                                  fold_head=t.fold_head, lowp_norms=t.lowp_norms, matmul_resize=t.matmul_resize,
                                  fuse_projections=t.fuse_projections, keep_host_memory=t.keep_host_memory)
        set_keep_host_memory(t.keep_host_memory)  # process-wide for the run
        if self.device.type == "cuda":  # process-wide for the run
            torch.backends.cuda.matmul.allow_tf32 = t.tf32
            torch.backends.cudnn.allow_tf32 = t.tf32 or torch.backends.cudnn.allow_tf32
            torch.backends.cudnn.benchmark = t.cudnn_benchmark
        apply_speed_options(self.model, self.speed)
        # what the method's step calls: the model itself, or its compiled form (same parameters), in DDP when
        # distributed (gradients averaged over the processes during backward)
        self.step_model = compile_fn(self.model, self.speed)
        if self.dist.enabled:
            find_unused = cfg.train.find_unused_parameters
            if find_unused is None:  # a whole branch goes unused when its sensor is absent from a batch
                may_lack = any(src.optional for src in self.train_set.sources.values())
                find_unused = cfg.method.name != "supervised" or cfg.method.modality_dropout > 0 or may_lack
            # parts the head never reads get no gradient in any step, yet the model's outputs reach them: DDP would
            # count them as used and wait for their gradients (its second step fails), so it leaves them out
            never = set(parameters_without_gradient(self.model, tuple(cfg.data.crop_size), self.device))
            if never:
                ids = {id(p) for n, p in self.model.named_parameters() if n in never}
                torch.nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
                    self.step_model, [n for n, p in self.step_model.named_parameters() if id(p) in ids])
                self.reporter.print(f"note: {len(never)} parameters get no gradient in any step (e.g. {min(never)}: "
                                    f"the {cfg.model.head} head does not read what they compute); DDP leaves them out")
            # DDP compares gradient strides literally; depthwise kernels (C, 1, k, k) differ only in the stride of
            # their size-1 dimension, which is no layout difference: silence that false alarm (and only that one)
            warnings.filterwarnings("ignore", message=DEPTHWISE_STRIDE_WARNING)
            self.step_model = torch.nn.parallel.DistributedDataParallel(
                self.step_model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=find_unused)
        weights = None
        if cfg.method.class_weighting == "enet":
            weights = enet_class_weights(self.train_set)
            self.reporter.print("class weights (ENet): " + ", ".join(
                f"{c} {w:.2f}" for c, w in zip(self.description.classes, weights.tolist())))
        self.method = method_class(
            cfg.method, ignore_index=self.description.ignore_index,
            class_weights=None if weights is None else weights.to(self.device))
        self.method.prepare(self.model, self.device)
        # whether the model saw samples with sensors absent (a deployed sensor check then leaves a failed one out;
        # rgbx.engine.predict warns when the model never saw that)
        optional = [m for m, src in self.train_set.description.modalities.items()
                    if m in self.model_cfg.modalities and src.optional]
        self._training = {"method": cfg.method.name, "modality_dropout": cfg.method.modality_dropout,
                          "absent_sensors_seen": bool(self.method.drops_sensors() or data.screen_sensors or optional)}
        self.graphed = cfg.train.cuda_graph_train
        # presence (missing sensors, modality dropout) decided on the device: what a captured step needs
        self.decide_on_device = self.graphed
        if self.graphed:
            reasons = graph_capture_refusals(cfg, self.device, self.dist.enabled, self.method)
            if reasons:
                raise ConfigError("train.cuda_graph_train: this run's training step cannot be captured: "
                                  + "; ".join(reasons))
        if self.dist.enabled and self.device.type == "cuda" and cfg.train.sync_bn:
            sync_batchnorm(self.method.trainable_modules())  # e.g. KTB's auxiliary heads
        self.optimizer = build_optimizer(self.model, cfg.optim, extra=self.method.trainable_modules(),
                                         fused=cfg.train.fused_optimizer, capturable=self.graphed)
        self.scheduler = build_scheduler(self.optimizer, cfg.optim, cfg.train.iters)
        if cfg.optim.warmup_iters >= cfg.train.iters:
            self.reporter.print(f"note: optim.warmup_iters={cfg.optim.warmup_iters} is not below train.iters="
                                f"{cfg.train.iters}: the whole run is warm-up (the learning rate never reaches "
                                f"optim.lr={cfg.optim.lr:g} and never decays); lower optim.warmup_iters for a short run")
        # a captured step reads its learning rates from device tensors the schedule writes into
        self._lr_tensors = lr_as_tensors(self.optimizer) if self.graphed else None
        self._graph: CudaGraphTrainStep | None = None
        self.reporter.print(parameter_summary(self.model, self.method.trainable_modules()))
        described = self.speed.with_(attn_impl=self.model_cfg.attn_impl).describe()
        self.reporter.print(f"arithmetic: {described}"
                            + ("" if cfg.train.speed == "exact" else " (train.speed=exact for the exact fp32 path)"))
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.iteration = 0
        self.best_miou = -1.0
        # Ctrl-C / SIGTERM handed over by `rgbx train` wait for the end of a step; under torchrun for the step
        # boundary where the processes vote to stop together
        self.interrupts = InterruptHold(agreed=self.dist.enabled)
        self.stop_vote = StopVote(self.dist, cfg.train.distributed_timeout_s)
        self._step_open = False  # a step began and has not finished: the state is not one to save
        self._saved_at: int | None = None  # the iteration of the last checkpoint this process wrote
        self._validation_due = False  # a stop saved the state before its iteration's validation had finished
        self._validated_at: int | None = None
        self.stop_checkpoint: Path | None = None  # what save_on_stop wrote when Ctrl-C / SIGTERM stopped fit
        if resumed is not None:
            self._restore_state(resumed)
        elif resume:
            self.reporter.print(f"no checkpoint in {self.paths.root} yet; starting from scratch")
        if self.dist.is_main:
            self.paths.root.mkdir(parents=True, exist_ok=True)
            (self.paths.root / "config.yaml").write_text(to_yaml(cfg))

    def check_writable(self) -> None:
        """Refuse at once a run folder or checkpoints folder where no file can be written (a read-only folder, a
        file in the way), which would otherwise stop the run at its first checkpoint: a temporary file is made and
        removed in each, or, where one does not exist yet, in the folder it will be made in. Every rank looks
        (they all stop, none waits for the others)."""
        for folder in (self.paths.root, self.paths.state.parent):
            where = folder
            while not where.exists() and where.parent != where:
                where = where.parent
            try:
                # named as atomic_write's temporary files, which a run's start removes should a kill leave it
                fd, tmp = tempfile.mkstemp(prefix=f".write-check.{PARTIAL_MARK}", suffix=".tmp", dir=where)
            except OSError as e:
                raise CheckpointError(f"{folder}: cannot write a file there ({e.strerror or e}); the run writes its "
                                      f"checkpoints and logs there: make it writable or choose another "
                                      f"output_dir") from None
            os.close(fd)
            os.unlink(tmp)

    # -- state ----------------------------------------------------------------------------------------------------
    def _state(self) -> dict:
        return {
            "iteration": self.iteration,
            "best_miou": self.best_miou,
            "model": self.model.state_dict(),
            "method_modules": [m.state_dict() for m in self.method.trainable_modules()],
            "optimizer": self._optimizer_state(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "config": json.dumps(to_dict(self.cfg)),
            "world_size": self.dist.world_size,
            "classes": list(self.description.classes),  # the data's, compared on resume (data.root may move)
            "train_samples": self._train_samples,
        }

    @cached_property
    def _train_samples(self) -> dict:
        """What identifies the training samples, compared on resume: their count and a hash of their ids in order
        (a moved folder or its pack keep both; another dataset or split does not). Once per run, not per
        checkpoint."""
        ids = list(getattr(self.train_set, "ids", []))
        return {"count": len(self.train_set), "ids_sha256": hashlib.sha256("\n".join(ids).encode()).hexdigest()}

    def _optimizer_state(self) -> dict:
        state = self.optimizer.state_dict()
        for group in state["param_groups"]:  # plain numbers, whether or not the step is captured
            if isinstance(group["lr"], torch.Tensor):
                group["lr"] = float(group["lr"])
        return state

    def _check_state(self) -> dict:
        """The run's saved state, read and compared with this run's config, classes, process count and iterations
        (a :class:`CheckpointError` naming what differs)."""
        state = load_state(self.paths.state)
        missing = [k for k in STATE_KEYS if k not in state]
        if missing:
            raise CheckpointError(f"{self.paths.state}: not a training state rgbx wrote (no {', '.join(missing)}); "
                                  f"move it away to start the run afresh")
        saved = json.loads(state["config"])
        current = to_dict(self.cfg)
        current["model"] = self.model_cfg.to_dict()
        for section in ("model", "data", "method", "optim"):  # optim: the restored optimizer keeps the run's
            ours, theirs = dict(current[section]), dict(saved.get(section, {}))
            if section == "data":  # how the data is read may change; what is read may not
                for key in ("num_workers", "check", "root"):
                    ours.pop(key, None), theirs.pop(key, None)
                # the folder and its pack (rgbx data pack) give the same samples, order and augmentation
                if {ours.get("dataset"), theirs.get("dataset")} == {"folder", "shards"}:
                    ours.pop("dataset"), theirs.pop("dataset")
            if section == "optim":  # a run saved before a key existed had its default
                theirs = {**dataclasses.asdict(OptimConfig()), **theirs}
            if theirs != ours:
                changed = [k for k in sorted(set(ours) | set(theirs)) if ours.get(k) != theirs.get(k)]
                shown = "; ".join(f"{section}.{k}: the run's {theirs.get(k)!r}, now {ours.get(k)!r}"
                                  for k in changed[:4])
                raise CheckpointError(f"{self.paths.state}: the run was made with another {section} config "
                                      f"({shown}{' ...' if len(changed) > 4 else ''}); resume with the run's values, "
                                      f"or start a new run from its weights with train.init_from")
        differ = differing_class_names(state.get("classes") or self.description.classes, self.description.classes)
        if differ:  # (a run saved before the state recorded its classes: not compared)
            raise CheckpointError(f"{self.paths.state}: the run trained on other classes than {self.cfg.data.root} "
                                  f"has ({', '.join(f'{i}: {a!r} vs {b!r}' for i, a, b in differ[:4])}); resume on "
                                  f"the run's data, or start a new run with train.init_from")
        samples, ours = state.get("train_samples"), self._train_samples
        if samples is not None and samples != ours:  # (a run saved before the state recorded them: not compared)
            what = (f"{samples['count']} samples, now {ours['count']}" if samples["count"] != ours["count"]
                    else f"{ours['count']} samples with other ids")
            raise CheckpointError(f"{self.paths.state}: the run trained on other samples than {self.cfg.data.root} "
                                  f"[{self.cfg.data.train_split}] holds ({what}); resume on the run's data (it may "
                                  f"have moved, or be its pack), or start a new run with train.init_from")
        for key in ("seed", "batch_size", "accumulate_grad_batches", "freeze"):
            was = saved["train"].get(key, getattr(TrainConfig(), key))  # a run saved before the key existed
            if was != getattr(self.cfg.train, key):
                raise CheckpointError(f"{self.paths.state}: the run used train.{key}={was}; resume needs the same "
                                      f"value")
        saved_world = int(state.get("world_size", 1))
        if saved_world != self.dist.world_size:
            raise CheckpointError(f"{self.paths.state}: the run used {saved_world} process(es), this one has "
                                  f"{self.dist.world_size}; resume with the same number (the data order and the "
                                  f"global batch depend on it)")
        if int(state["iteration"]) > self.cfg.train.iters:
            raise CheckpointError(f"{self.paths.state}: the run is at iteration {int(state['iteration'])}, past "
                                  f"train.iters={self.cfg.train.iters}; resume with train.iters of at least that "
                                  f"(more to train further)")
        return state

    def _restore_state(self, state: dict) -> None:
        """Model, method modules, optimizer, schedule and counters from a state :meth:`_check_state` accepted."""
        saved = json.loads(state["config"])
        load_state_into(self.model, state["model"], str(self.paths.state))
        modules = self.method.trainable_modules()
        saved_modules = state.get("method_modules", [])
        if len(saved_modules) != len(modules):
            raise CheckpointError(f"{self.paths.state}: holds {len(saved_modules)} trainable module(s) of the method, "
                                  f"{self.cfg.method.name!r} has {len(modules)}")
        for module, module_state in zip(modules, saved_modules):
            load_state_into(module, module_state, f"{self.paths.state} (method module)")
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if saved["train"]["iters"] != self.cfg.train.iters:  # a longer (or shorter) schedule than first planned
            self.scheduler = build_scheduler(self.optimizer, self.cfg.optim, self.cfg.train.iters)
            self.scheduler.last_epoch = state["iteration"]
        set_capturable(self.optimizer, self.graphed)  # the saved run may have captured its step or not
        if self.graphed:
            self._lr_tensors = lr_as_tensors(self.optimizer)
        self.scaler.load_state_dict(state["scaler"])
        self.iteration = int(state["iteration"])
        self.best_miou = float(state["best_miou"])
        self._validation_due = bool(state.get("validation_due", False))
        self.reporter.print(f"resumed {self.paths.root} at iteration {self.iteration}")
        if self.iteration >= self.cfg.train.iters:
            self.reporter.print(f"the run has finished (train.iters={self.cfg.train.iters}): its final model is "
                                f"validated and written again; give a larger train.iters to train further")

    def _dataset_info(self) -> dict:
        """What the model file records of the training data: classes, palette, ignore index and, where the loader
        decodes by scale alone (the rgbx folder format), each sensor's storage, which rgbx predict reads loose files
        with and rgbx export writes into the ONNX normalisation."""
        if type(self.train_set).decodes_by_scale():
            return dataset_record(self.description, self.model_cfg.modalities)
        return self.description.to_dict()

    def _file_info(self, **more) -> dict:
        """What a model file of the run records beside the weights: the iteration, what the run was made with
        (:mod:`rgbx.engine.environment`), the published evaluation protocol the config names (``rgbx eval
        --as-published``) and ``more``."""
        if self._environment is None:  # once per run (it asks git for rgbx's commit)
            self._environment = run_environment(self.device)
        info = {"iteration": self.iteration, "environment": self._environment, "training": self._training, **more}
        if self.cfg.published_evaluation:
            what, flags = REFERENCE_EVALUATION[self.cfg.published_evaluation]
            info["reference_evaluation"] = {"what": what, "flags": flags}
        return info

    def save_checkpoint(self, validation_due: bool = False) -> None:
        if not self.dist.is_main:
            return
        save_model(self.paths.last_weights, self.model, self._dataset_info(), **self._file_info())
        state = self._state()
        if validation_due:
            state["validation_due"] = True
        save_state(self.paths.state, state)
        self._saved_at = self.iteration

    def save_on_stop(self) -> Path | None:
        """After Ctrl-C or SIGTERM stopped :meth:`fit`: a checkpoint at the last finished iteration, so that
        ``--resume`` loses nothing trained (as an uninterrupted run: same data order and random draws from there).
        When the stop came during that iteration's validation the state says so and ``--resume`` validates first.
        Returns the state written, or None when there is nothing new to save (a checkpoint of this iteration exists,
        or a step was cut off half way and its weights cannot be trusted: the last checkpoint stays)."""
        if not self.dist.is_main or self._step_open or self._saved_at == self.iteration or self.iteration == 0:
            return None
        every = self.cfg.train.eval_every
        due = bool(every and self.iteration % every == 0 and self.iteration < self.cfg.train.iters
                   and self._validated_at != self.iteration)
        self.save_checkpoint(validation_due=due)
        return self.paths.state

    def _stop_together(self) -> None:
        """Under torchrun, at a step boundary: raise the stop on every process once any has been signalled
        (:class:`~rgbx.engine.distributed.StopVote`). Before the step and after its batches were read (a loader
        worker ended by the job's signal fails the read before the vote, never between the vote and the step), and
        before a validation. A vote that fails while this process has been signalled means that another has left:
        stop here too."""
        if not self.interrupts.agreed:
            return
        try:
            stop = self.stop_vote.any(self.interrupts.pending is not None)
        except RuntimeError as e:
            if self.interrupts.pending is not None:
                raise self.interrupts.pending from e
            raise RgbxError(
                f"the {self.dist.world_size} processes did not all reach the step after iteration {self.iteration} "
                f"(train.distributed_timeout_s={self.cfg.train.distributed_timeout_s:g}): one failed or stopped, or "
                f"waits in a collective operation, as a step of DDP with train.find_unused_parameters=false where "
                f"some parameters got no gradient (a sensor missing from a batch); {str(e).splitlines()[0][:200]}"
            ) from e
        if stop:
            raise self.interrupts.pending or Terminated()

    # -- loops ----------------------------------------------------------------------------------------------------
    def _train_loader(self):
        cfg = self.cfg.train
        steps = len(self.train_set) // (cfg.batch_size * self.dist.world_size)  # micro-batches per epoch
        if steps == 0:
            raise ConfigError(f"train.batch_size={cfg.batch_size} × {self.dist.world_size} processes is larger than "
                              f"the training split ({len(self.train_set)} samples)")
        done = self.iteration * cfg.accumulate_grad_batches  # micro-batches already trained on
        sampler = ResumableSampler(len(self.train_set), cfg.batch_size, seed=cfg.seed,
                                   start_epoch=done // steps, start_step=done % steps,
                                   rank=self.dist.rank, world_size=self.dist.world_size)
        return torch.utils.data.DataLoader(
            self.train_set, batch_size=cfg.batch_size, sampler=sampler, collate_fn=collate, drop_last=True,
            num_workers=self.num_workers, pin_memory=self.device.type == "cuda",
            persistent_workers=False, generator=torch.Generator().manual_seed(cfg.seed),
            worker_init_fn=quiet_worker_exit,
        )

    def val_loader(self, share: bool = True):
        """Validation batches; in a distributed run this rank's share (each sample scored once over all ranks), or
        with ``share=False`` the whole split."""
        dataset = self.val_set
        if self.dist.enabled and share:
            dataset = torch.utils.data.Subset(dataset, shard_indices(len(dataset), self.dist))
        return torch.utils.data.DataLoader(
            dataset, batch_size=self.cfg.train.eval_batch_size, shuffle=False, collate_fn=collate,
            num_workers=self.num_workers, pin_memory=self.device.type == "cuda",
            worker_init_fn=quiet_worker_exit,
        )

    def evaluate(self, subsets=None) -> EvalResult:
        # every rank scores its share with rank 0's BatchNorm statistics, those of the model rank 0 saves (without
        # SyncBatchNorm, as on the CPU, each rank's follow its own last batch; DDP would copy rank 0's at the next
        # training forward anyway, so the training is unchanged)
        broadcast_buffers(self.model, self.dist)
        result = evaluate(self.model, self.val_loader(), num_classes=self.description.num_classes,
                          ignore_index=self.description.ignore_index, subsets=subsets,
                          group_by=self.cfg.train.eval_group_by, device=self.device, autocast_dtype=self.amp_dtype)
        self.model.train()
        return result

    def _to_device(self, batch):
        """Move a collated batch to the device without waiting (pinned memory, non-blocking copies). The presence
        masks stay known on the host (:class:`~rgbx.data.sample.PresenceMasks`), so neither modality dropout nor the
        model needs a device → host read-back to decide what to compute. A captured step (``train.cuda_graph_train``)
        instead gets every modality of the model and masks decided on the device (``PresenceMasks.on_device``)."""
        if self.decide_on_device:  # the same tensors every step, presence decided on the device (graph buffers)
            batch = batch.with_every(self.model.modalities).to(self.device, non_blocking=True)
            batch.present = PresenceMasks(batch.present, on_device=True)
        else:
            host = dict(batch.present)  # CPU tensors: reading them needs no device sync
            certain = [m for m, mask in host.items() if bool(mask.all())]
            batch = batch.to(self.device, non_blocking=True)
            batch.present = PresenceMasks(batch.present, certain, host)
        if batch.geometry is not None:
            batch = self.batch_geometry(batch)
        if self.speed.channels_last:
            batch.inputs = to_memory_format(batch.inputs, True)
        return batch

    def _generator(self, micro_step: int) -> torch.Generator:
        """Seed torch and a generator for one forward / backward pass (``micro_step`` = iteration ×
        accumulate_grad_batches + the micro-batch's position), other draws on other ranks."""
        seed = step_seed(self.cfg.train.seed, micro_step) + self.dist.rank
        torch.manual_seed(seed)
        return torch.Generator().manual_seed(seed)

    def _single_value_batchnorm(self, error: str) -> str:
        """What to change when a BatchNorm layer met one value per channel (torch's ValueError ``error``)."""
        shape = re.search(r"torch\.Size\((\[[^\]]*\])\)", error)
        data, train = self.cfg.data, self.cfg.train
        return (f"a BatchNorm layer of the model got a single value per channel to normalise"
                f"{f' (input of shape {shape.group(1)})' if shape else ''}: train.batch_size={train.batch_size} with "
                f"data.crop_size={list(data.crop_size)} leaves a 1×1 map at the encoder's deepest stage (1/32 of the "
                f"crop); use train.batch_size ≥ 2 or a data.crop_size of at least 64×64")

    def train_step(self, batches) -> dict[str, torch.Tensor]:
        """One optimizer step on a batch, or on a list of micro-batches (``train.accumulate_grad_batches``): each
        micro-batch's loss is divided by their number and back-propagated, so the gradients summed over them are
        those of the mean loss; DDP averages over the processes once, at the last one."""
        batches = list(batches) if isinstance(batches, (list, tuple)) else [batches]
        n = len(batches)
        if self.graphed:
            return self._graphed_step(batches[0], self._generator(self.iteration))
        self.optimizer.zero_grad(set_to_none=True)
        values: dict[str, torch.Tensor] = {}
        for k, batch in enumerate(batches):
            generator = self._generator(self.iteration * n + k)
            later_sync = self.dist.enabled and k < n - 1  # gradients all-reduced once, after the last micro-batch
            with self.step_model.no_sync() if later_sync else nullcontext():
                try:
                    losses = self._losses(batch, generator)
                except ValueError as e:
                    if "Expected more than 1 value per channel" not in str(e):
                        raise
                    raise ConfigError(self._single_value_batchnorm(str(e))) from None
                loss = sum(losses.values())
                self.scaler.scale(loss if n == 1 else loss / n).backward()
            for name, v in (("loss", loss), *losses.items()):
                v = v.detach() if n == 1 else v.detach() / n
                values[name] = v if name not in values else values[name] + v
        if self.dist.enabled:  # the model's gradients are averaged by DDP; the method's own modules' here
            all_reduce_grads((p for m in self.method.trainable_modules() for p in m.parameters()), self.dist)
        if self.cfg.optim.grad_clip:
            self.scaler.unscale_(self.optimizer)
            self._clip_gradients()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return values

    def _losses(self, batch, generator: torch.Generator, weight_cache: bool = True) -> dict[str, torch.Tensor]:
        """The method's weighted loss terms on ``batch``, under autocast when the run has a low precision."""
        amp = (torch.autocast(self.device.type, dtype=self.amp_dtype, cache_enabled=weight_cache)
               if self.amp_dtype else nullcontext())
        with amp:
            return self.method.step(self.step_model, batch, generator)

    def _clip_gradients(self) -> None:
        params = [p for group in self.optimizer.param_groups for p in group["params"]]  # model + method modules
        torch.nn.utils.clip_grad_norm_(params, self.cfg.optim.grad_clip)

    def _graphed_step(self, batch, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """The step captured once as a CUDA graph (``train.cuda_graph_train``, :class:`CudaGraphTrainStep`): the
        first batch's device tensors become the graph's input buffers, the first three steps run eagerly (warm-up),
        the fourth captures, and every step from then on copies its batch in and replays. Same arithmetic as
        :meth:`train_step`; the learning rate is read from device tensors the schedule writes into."""
        if self._graph is None:
            body = partial(self._graph_body, batch, generator)
            self._graph = CudaGraphTrainStep(body, self.optimizer, graph_buffers(batch))
            out = self._graph()  # this batch already lies in the buffers
        else:
            out = self._graph(graph_buffers(batch))
        self.scheduler.step()
        keep_lr_tensors(self.optimizer, self._lr_tensors)
        return dict(out)

    def _graph_body(self, batch, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """One step on the graph's buffers, without zeroing gradients or reading anything back (captured)."""
        losses = self._losses(batch, generator, weight_cache=False)  # no autocast weight cache inside a graph
        loss = sum(losses.values())
        loss.backward()
        if self.cfg.optim.grad_clip:
            self._clip_gradients()
        self.optimizer.step()
        return {"loss": loss.detach(), **{k: v.detach() for k, v in losses.items()}}

    def fit(self) -> dict:
        cfg = self.cfg.train
        self.model.train()
        log_path = self.paths.root / "metrics.csv"
        new_log = not log_path.exists() or self.iteration == 0
        if not new_log and self.dist.is_main:  # a resumed run: the killed one's rows after its checkpoint go
            drop_rows_after(log_path, self.iteration, csv_iteration)
            drop_rows_after(self.paths.root / "eval.jsonl", self.iteration, jsonl_iteration)
        log_file = log_path.open("w" if new_log else "a", newline="") if self.dist.is_main else None
        writer = None
        sums: dict[str, float] = {}
        count, t0, images = 0, time.perf_counter(), 0
        tb = self._tensorboard()
        loader = self._train_loader()
        self._saved_at = self.iteration if self.iteration else None  # a resumed run's checkpoint is this iteration's
        self._step_open = False
        try:
            if self._validation_due:  # the run was stopped during this iteration's validation
                self._eval_and_log(tb)
            with self.reporter.progress(cfg.iters, self.iteration, "train") as bar:
                micro_batches = iter(loader)  # endless: the sampler goes on from epoch to epoch
                while self.iteration < cfg.iters:
                    batches = [self._to_device(next(micro_batches)) for _ in range(cfg.accumulate_grad_batches)]
                    self._stop_together()
                    with self.interrupts.held():  # the step and its log row: a stop waits for both
                        self._step_open = True
                        values = self.train_step(batches)
                        self.iteration += 1
                        self._step_open = False
                        images += sum(len(b) for b in batches) * self.dist.world_size
                        for k, v in values.items():
                            sums[k] = sums.get(k, 0.0) + v
                        count += 1
                        if self.iteration % cfg.log_every == 0 or self.iteration == cfg.iters:
                            means = self.dist.all_reduce_mean(torch.stack([v / count for v in sums.values()]))
                            row = dict(zip(sums, means.tolist()))  # one host sync per log interval
                            if not math.isfinite(row["loss"]):
                                raise RgbxError(f"loss became {row['loss']} at iteration {self.iteration}; lower "
                                                f"optim.lr or set optim.grad_clip (last good checkpoint: "
                                                f"{self.paths.state})")
                            dt = time.perf_counter() - t0
                            row = {"iteration": self.iteration, "lr": float(self.scheduler.get_last_lr()[0]), **row,
                                   "images_per_s": images / dt if dt > 0 else 0.0}
                            if writer is None and log_file is not None:
                                writer = csv.DictWriter(log_file, fieldnames=list(row))
                                if new_log:
                                    writer.writeheader()
                            if writer is not None:
                                writer.writerow(row)
                                log_file.flush()
                            if tb:
                                for k, v in row.items():
                                    if k != "iteration":
                                        tb.add_scalar(f"train/{k}", v, self.iteration)
                            bar.update(self.iteration, loss=row["loss"], lr=row["lr"], ips=row["images_per_s"])
                            sums, count, t0, images = {}, 0, time.perf_counter(), 0
                        else:
                            bar.update(self.iteration)
                    # the validation of an iteration comes before its checkpoint: the state then holds the best
                    # mIoU with it, and a kill during the validation resumes from the checkpoint before, which
                    # trains these iterations again and validates them (eval.jsonl's rows and best.safetensors as
                    # an uninterrupted run's); the other order would resume past a validation never finished
                    if cfg.eval_every and self.iteration % cfg.eval_every == 0 and self.iteration < cfg.iters:
                        self._stop_together()
                        self._eval_and_log(tb)
                    if (cfg.checkpoint_every and self.iteration % cfg.checkpoint_every == 0
                            and self.iteration < cfg.iters):
                        self.save_checkpoint()
        except KeyboardInterrupt:  # Ctrl-C, or SIGTERM where `rgbx train` turns it into one
            self.stop_checkpoint = self.save_on_stop()
            raise
        except RuntimeError as e:  # (not rgbx's own errors: a diverged loss is never saved)
            if self.interrupts.pending is None:
                raise
            # under torchrun, stopping: what the job's signal ended failed before the vote (a loader worker, a
            # process of the launch that stopped already); stop here (saved unless half way through a step)
            self.stop_checkpoint = self.save_on_stop()
            raise self.interrupts.pending from e
        finally:
            if log_file is not None:
                log_file.close()
        # DDP keeps every rank's weights identical; a difference means the processes went out of step
        if self.dist.enabled:
            with torch.no_grad():
                checksum = float(sum(p.double().sum() for p in self.model.parameters()))
            self.dist.check_same(checksum, "the weights' checksum")
        # the last checkpoint before the last validation: a kill during it resumes at train.iters and validates
        # again (no iteration trained twice); the state is written again when this validation set a new best, so
        # a run continued to more iterations compares with it
        self.save_checkpoint()
        best = self.best_miou
        result = self._eval_and_log(tb)
        if self.best_miou != best and self.dist.is_main:
            save_state(self.paths.state, self._state())
        if self.dist.is_main:
            extra = {"calibration": self._calibrate().to_dict()} if cfg.calibrate else {}
            save_model(self.paths.final_weights, self.model, self._dataset_info(), **self._file_info(**extra))
            written = self.method.save_run_files(self.paths.root)  # e.g. MS3's head, for zero-shot prediction
            if written is not None:
                self.reporter.print(f"method files: {written}")
        if tb:
            tb.close()
        self.dist.barrier()  # the final files are written before any rank returns
        return result

    def _calibrate(self):
        """Temperatures per sensor set fitted on the whole validation split (``train.calibrate``; the main process
        alone, after training)."""
        from rgbx.engine.calibration import fit_temperatures

        data = self.cfg.data
        scaling = fit_temperatures(self.model, self.val_loader(share=False), all_subsets(self.model.modalities),
                                   ignore_index=self.description.ignore_index, device=self.device,
                                   seed=self.cfg.train.seed, fitted_on=f"{data.root} [{data.val_split}]")
        self.model.train()
        self.reporter.print("confidence temperatures (validation split): "
                            + ", ".join(f"{k} {v:.3f}" for k, v in scaling.temperatures.items()))
        return scaling

    def _eval_and_log(self, tb=None) -> dict:
        result = self.evaluate()
        convention = validation_miou_convention(self.cfg)
        metrics = result.to_dict(list(self.description.classes), convention=convention)
        full = "+".join(self.model.modalities)
        miou = metrics["subsets"][full]["all"]["miou"]
        entry = {"iteration": self.iteration, "miou": miou, "miou_convention": convention,
                 "groups": {g: m["miou"] for g, m in metrics["subsets"][full].items()}}
        if self.dist.is_main:  # one entry per iteration (a finished run resumed evaluates its last one again)
            drop_rows_after(self.paths.root / "eval.jsonl", self.iteration - 1, jsonl_iteration)
            with (self.paths.root / "eval.jsonl").open("a") as f:
                f.write(json.dumps(entry) + "\n")
        over = " (all classes)" if convention == "all" else ""
        self.reporter.print(f"iteration {self.iteration}: val mIoU{over} {100 * miou:.2f} "
                            + " ".join(f"{g}:{100 * v:.1f}" for g, v in entry["groups"].items() if g != "all"))
        if tb:
            tb.add_scalar("val/miou", miou, self.iteration)
        if miou > self.best_miou:
            if self.dist.is_main:
                save_model(self.paths.best_weights, self.model, self._dataset_info(),
                           **self._file_info(val_miou=miou, val_miou_convention=convention))
            self.best_miou = miou  # after the file: a stop while it is written validates this iteration again
        self._validated_at = self.iteration
        self._validation_due = False
        return metrics

    def _tensorboard(self):
        if not self.cfg.train.tensorboard or not self.dist.is_main:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError("train.tensorboard=true needs the tensorboard package: pip install 'rgbx[tensorboard]'") from None
        # a resumed run replaces the killed one's events after its checkpoint
        return SummaryWriter(str(self.paths.root / "tensorboard"), purge_step=self.iteration + 1 if self.iteration else None)


def csv_iteration(line: str, header: str) -> int | None:
    """The ``iteration`` of a metrics.csv row (None for the header or a row without one)."""
    if line == header:
        return None
    row = dict(zip(*csv.reader([header, line])))
    try:
        return int(float(row["iteration"]))
    except (KeyError, ValueError):
        return None


def jsonl_iteration(line: str, header: str) -> int | None:
    """The ``iteration`` of an eval.jsonl entry."""
    try:
        return int(json.loads(line)["iteration"])
    except (ValueError, KeyError, TypeError):
        return None


def drop_rows_after(path: Path, iteration: int, row_iteration) -> None:
    """Remove the log rows of ``path`` written after ``iteration`` (a run killed after its last checkpoint logged
    iterations the resumed run logs again), written anew atomically; rows without an iteration are kept."""
    if not path.exists():
        return
    lines = path.read_text().splitlines(keepends=True)
    header = lines[0] if lines else ""
    kept = [line for line in lines if (i := row_iteration(line, header)) is None or i <= iteration]
    if len(kept) != len(lines):
        part = path.with_name(path.name + ".part")
        part.write_text("".join(kept))
        os.replace(part, path)


def train(config: str | ExperimentConfig, overrides: list[str] | tuple[str, ...] = (), *, resume: bool = False,
          quiet: bool = True) -> dict:
    """Train from Python, as ``rgbx train CONFIG key=value ... [--resume]`` does (the same run folder and files).

    Args:
        config: a preset name, a YAML file, or an :class:`~rgbx.engine.config.ExperimentConfig`.
        overrides: ``key=value`` strings, e.g. ``["data.root=data/synth", "train.iters=200"]``.
        resume: continue the run in ``output_dir`` from its last checkpoint.
        quiet: no progress output.

    Returns the final evaluation's metrics (as ``Trainer.fit``). ``train.threads`` holds for the run only: the
    caller's torch thread count is back afterwards.
    """
    from rgbx.engine.config import load_config

    if isinstance(config, ExperimentConfig):
        if overrides:
            raise ConfigError("train(ExperimentConfig, overrides): set the config's fields instead, or pass a "
                              "preset / YAML path with the overrides")
        cfg = config
    else:
        cfg = load_config(config, list(overrides), resume=resume)
    threads = torch.get_num_threads()
    try:
        trainer = Trainer(cfg, resume=resume, reporter=Reporter(quiet=quiet))
        try:
            return trainer.fit()
        finally:
            trainer.dist.close()
    finally:
        torch.set_num_threads(threads)
