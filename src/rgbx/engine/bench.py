"""Speed measurement: training images/s, inference latency and throughput, peak memory, FLOPs and model FLOPs
utilisation, for any set of :class:`~rgbx.engine.fastpath.SpeedOptions`, plus the input pipeline's samples/s.

How it is timed:

* Every measured call is one *unit of work*: a training step (forward + loss + backward + AdamW step, gradients set
  to None first), or one inference forward pass. ``warmup`` untimed calls come first (they also absorb
  ``torch.compile`` and CUDA-graph capture), then ``repeats`` timed ones; the median, min and max are reported.
* On CUDA each call is timed with a pair of CUDA events around it (no host clock, no synchronisation inside the
  call); on the CPU with ``time.perf_counter``.
* :func:`time_alternating` times several candidates (e.g. a reference implementation and rgbx) *alternately*, one
  call of each per round, so that drifts of a shared machine hit all candidates alike and their ratio is stable.
* Peak memory (CUDA) is ``torch.cuda.max_memory_allocated`` from building one candidate's step (run alone) to its
  last timed call, so it includes parameters, gradients and optimizer state, and a CUDA graph's capture: a replay
  allocates nothing, so calls after the capture would see only the tensors alive between steps (CMX-B2's graphed
  step at batch 8 read 1.5 GiB that way, 8.8 GiB with its capture on an H100).
* FLOPs: :func:`rgbx.engine.profile.count_flops` of one forward pass at batch 1 (explicit attention while
  counting); a training step is counted as 3× the forward (backward ≈ 2× forward). Model FLOPs utilisation (MFU) =
  achieved FLOP/s ÷ the device's peak for the precision used (:func:`peak_tflops`: datasheet dense figures for
  known GPUs, or a given number).
* :func:`bench_runtimes`: the same inference figures for the file ``rgbx export`` writes, run on the CPU by ONNX
  Runtime or OpenVINO (:class:`~rgbx.engine.onnx_model.OnnxSegmentor`, as ``rgbx eval / predict FILE.onnx`` run it).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from rgbx.engine.fastpath import (
    CudaGraphForward,
    CudaGraphTrainStep,
    SpeedOptions,
    apply_speed_options,
    autocast,
    backend_flags,
    compile_fn,
    prepare_inference,
    to_memory_format,
)
from rgbx.errors import ConfigError

__all__ = [
    "Timing",
    "bench_data",
    "bench_model",
    "bench_runtimes",
    "make_inference",
    "make_train_step",
    "peak_tflops",
    "time_alternating",
]

# Dense (no sparsity) peak TFLOP/s from the vendors' datasheets, SXM parts.
_PEAK_TFLOPS = {
    "H200": {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9},
    "H100": {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9},
    "A100": {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5},
    "L40S": {"bf16": 362.1, "fp16": 362.1, "tf32": 183.2, "fp32": 91.6},
}


@dataclass
class Timing:
    """Per-call times of one candidate, in milliseconds."""

    median_ms: float
    min_ms: float
    max_ms: float
    repeats: int

    @classmethod
    def of(cls, times_ms: Sequence[float]) -> Timing:
        return cls(statistics.median(times_ms), min(times_ms), max(times_ms), len(times_ms))

    def per_second(self, items: int) -> float:
        """Items (images) per second at the median time."""
        return items / (self.median_ms / 1e3)

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def peak_tflops(device: torch.device, precision: str, tf32: bool = False) -> float | None:
    """Datasheet dense peak of ``device`` for ``precision`` (fp32 with ``tf32`` counts the TF32 rate), or None
    when the device is not in the table (CPUs included)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, rates in _PEAK_TFLOPS.items():
        if key in name:
            return rates["tf32" if precision == "fp32" and tf32 else precision]
    return None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_alternating(
    candidates: Mapping[str, Callable[[], Any]], device: torch.device, warmup: int = 2, repeats: int = 5,
    settle: int = 0,
) -> dict[str, Timing]:
    """Time each zero-argument callable ``repeats`` times, alternating between candidates round by round, after
    ``warmup`` untimed calls of each. ``settle``: untimed calls of a candidate right before each of its timed calls,
    so that a timed call does not pay for the state the previous candidate left (host memory freed or kept:
    :mod:`rgbx.engine.host_memory`; caches). Returns name → :class:`Timing`."""
    if repeats < 1 or warmup < 0 or settle < 0:
        raise ValueError("time_alternating: repeats must be >= 1, warmup and settle >= 0")
    for fn in candidates.values():
        for _ in range(warmup):
            fn()
    _sync(device)
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, fn in candidates.items():
            if settle:
                for _ in range(settle):
                    fn()
                _sync(device)
            if device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                times[name].append(start.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                fn()
                times[name].append((time.perf_counter() - t0) * 1e3)
    return {name: Timing.of(t) for name, t in times.items()}


def _start_peak(device: torch.device) -> None:
    """Start counting peak allocated CUDA memory from what is allocated now (nothing on the CPU)."""
    if device.type == "cuda":
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)


def _peak_mib(device: torch.device) -> float | None:
    """Peak allocated CUDA memory (MiB) since :func:`_start_peak` (None on the CPU)."""
    if device.type != "cuda":
        return None
    _sync(device)
    return torch.cuda.max_memory_allocated(device) / 2**20


def make_train_step(
    model: nn.Module,
    inputs: Mapping[str, torch.Tensor],
    label: torch.Tensor,
    options: SpeedOptions,
    lr: float = 6e-5,
    ignore_index: int = 255,
) -> Callable[[], torch.Tensor]:
    """One rgbx training step on fixed data, as a zero-argument callable returning the (device) loss.

    The model is put in train mode and changed in place by :func:`apply_speed_options`; the optimizer is rgbx's
    AdamW over the model's parameter groups (:func:`rgbx.engine.optim.build_optimizer`), fused or not per
    ``options.fused_optimizer``; with ``options.compile`` the forward pass and the loss are compiled together;
    with ``options.cuda_graph_train`` the whole step is captured into one CUDA graph (:class:`CudaGraphTrainStep`;
    building the callable then already runs three warm-up steps). No host synchronisation happens inside the step.
    """
    from rgbx.engine.config import OptimConfig
    from rgbx.engine.optim import build_optimizer
    from rgbx.methods.losses import cross_entropy

    device = label.device
    graphed = options.cuda_graph_train
    if graphed and device.type != "cuda":
        raise ConfigError(f"cuda_graph_train needs CUDA; the data is on {device}")
    if graphed and options.precision == "fp16":
        raise ConfigError("cuda_graph_train: fp16's gradient scaler reads its overflow check on the host; "
                          "use bf16 or fp32")
    apply_speed_options(model, options)
    model.train()
    x = to_memory_format(inputs, options.channels_last)
    optimizer = build_optimizer(model, OptimConfig(lr=lr), fused=options.fused_optimizer, capturable=graphed)
    scaler = torch.amp.GradScaler(device.type, enabled=options.precision == "fp16")

    def forward_loss(batch: dict[str, torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        return cross_entropy(model(batch).logits, target, ignore_index)

    forward_loss = compile_fn(forward_loss, options)

    if graphed:
        def body() -> torch.Tensor:
            with autocast(device, options.precision, cache=False):
                loss = forward_loss(x, label)
            loss.backward()
            optimizer.step()
            return loss.detach()

        with backend_flags(options):
            step_graph = CudaGraphTrainStep(body, optimizer, {**x, "label": label}, warmup=3)
            for _ in range(3):  # the eager warm-up steps, then the capture: later calls only replay
                step_graph()
            step_graph.capture()
        return step_graph

    def step() -> torch.Tensor:
        with backend_flags(options):
            optimizer.zero_grad(set_to_none=True)
            with autocast(device, options.precision):
                loss = forward_loss(x, label)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        return loss.detach()

    return step


def make_inference(
    model: nn.Module, inputs: Mapping[str, torch.Tensor], options: SpeedOptions
) -> Callable[[], torch.Tensor]:
    """One rgbx inference forward pass (eval mode, ``torch.inference_mode``) on fixed inputs, as a zero-argument
    callable returning the logits. ``options.cuda_graph`` captures it into a CUDA graph (CUDA only)."""
    device = next(iter(inputs.values())).device
    prepare_inference(model, options)
    x = to_memory_format(inputs, options.channels_last)

    def forward(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return model(batch).logits

    forward = compile_fn(forward, options)
    if options.cuda_graph and device.type == "cuda":
        with backend_flags(options):
            graphed = CudaGraphForward(forward, x, options.precision)

        def run() -> torch.Tensor:
            return graphed(x)

        return run

    def run() -> torch.Tensor:
        with torch.inference_mode(), backend_flags(options), autocast(device, options.precision):
            return forward(x)

    return run


def _random_inputs(modalities: Sequence[str], batch: int, size: tuple[int, int], device: torch.device,
                   generator: torch.Generator) -> dict[str, torch.Tensor]:
    from rgbx.modalities import get_modality

    h, w = size
    return {m: torch.randn(batch, get_modality(m).channels, h, w, generator=generator).to(device)
            for m in modalities}


def bench_model(
    build: Callable[[], nn.Module],
    modalities: Sequence[str],
    num_classes: int,
    options: Mapping[str, SpeedOptions],
    *,
    device: torch.device,
    size: tuple[int, int] = (480, 640),
    train_size: tuple[int, int] | None = None,
    train_batch: int = 8,
    throughput_batch: int = 8,
    warmup: int = 2,
    repeats: int = 5,
    what: Sequence[str] = ("train", "latency", "throughput"),
    peak: float | None = None,
    on_result: Callable[[str, dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Measure rgbx models built by ``build()`` (a fresh model per option set, same seed) under each named option
    set.

    Args:
        build: returns a new model with random weights (called once per option set and measurement kind, under
            ``torch.manual_seed(0)``).
        options: label → :class:`SpeedOptions`, e.g. ``{"exact": SpeedOptions.exact(), "fast": ...}``.
        size: inference input size (H, W); ``train_size`` the training crop (default: ``size``).
        what: any of ``train`` (images/s at ``train_batch``), ``latency`` (batch 1), ``throughput`` (images/s at
            ``throughput_batch``).
        peak: peak TFLOP/s for MFU (default: :func:`peak_tflops` of the device).
        on_result: called with (label, entry) as each option set is done (progress, and figures that survive a
            run stopped before the end).

    Returns:
        ``{"flops": {...}, "params": N, "results": {label: {...}}}`` with, per label, ``train`` / ``latency`` /
        ``throughput`` entries (timing, images/s, peak memory, MFU) and the options used.
    """
    from rgbx.engine.profile import count_flops

    train_size = train_size or size
    torch.manual_seed(0)
    reference = build()
    params = sum(p.numel() for p in reference.parameters())
    gen = torch.Generator().manual_seed(0)
    flops = {}
    if "train" in what:
        flops["train_fwd_per_image"] = count_flops(reference, _random_inputs(modalities, 1, train_size,
                                                                              torch.device("cpu"), gen))["flops"]
    if "latency" in what or "throughput" in what:
        flops["fwd_per_image"] = count_flops(reference, _random_inputs(modalities, 1, size, torch.device("cpu"),
                                                                        gen))["flops"]
    del reference
    results: dict[str, Any] = {}
    setting = _Setting(build, modalities, num_classes, device, size, train_size, train_batch, throughput_batch,
                       warmup, repeats, what, flops, peak, gen)
    for label, opts in options.items():
        entry: dict[str, Any] = {"options": opts.to_dict(), "describe": opts.describe()}
        try:
            _measure_option_set(entry, opts, setting)
        except ConfigError:
            raise
        except Exception as e:  # e.g. a CUDA-graph capture that fails: the other option sets still count
            entry["error"] = f"{type(e).__name__}: {e}"
            if device.type == "cuda":
                torch.cuda.synchronize(device)
        if device.type == "cuda":
            torch.cuda.empty_cache()
        results[label] = entry
        if on_result is not None:
            on_result(label, entry)
    return {"params": params, "flops": flops, "results": results}


@dataclass
class _Setting:
    """What every option set of one :func:`bench_model` call is measured on."""

    build: Callable[[], nn.Module]
    modalities: Sequence[str]
    num_classes: int
    device: torch.device
    size: tuple[int, int]
    train_size: tuple[int, int]
    train_batch: int
    throughput_batch: int
    warmup: int
    repeats: int
    what: Sequence[str]
    flops: dict[str, float]
    peak: float | None
    gen: torch.Generator


def _measure_option_set(entry: dict[str, Any], opts: SpeedOptions, st: _Setting) -> None:
    """Fill ``entry`` with the train / latency / throughput figures of one option set (see :func:`bench_model`)."""
    rate = st.peak if st.peak is not None else peak_tflops(st.device, opts.precision, opts.tf32)
    if "train" in st.what:
        torch.manual_seed(0)
        model = st.build().to(st.device)
        x = _random_inputs(st.modalities, st.train_batch, st.train_size, st.device, st.gen)
        y = torch.randint(0, st.num_classes, (st.train_batch, *st.train_size), generator=st.gen).to(st.device)
        _start_peak(st.device)
        step = make_train_step(model, x, y, opts)
        timing = time_alternating({"step": step}, st.device, st.warmup, st.repeats)["step"]
        ips = timing.per_second(st.train_batch)
        achieved = 3 * st.flops["train_fwd_per_image"] * ips / 1e12
        entry["train"] = {"batch": st.train_batch, "size": list(st.train_size), **timing.to_dict(),
                          "images_per_s": ips, "tflops": achieved,
                          "mfu": achieved / rate if rate else None,
                          "peak_memory_mb": _peak_mib(st.device)}
        del model, step
    for kind, batch in (("latency", 1), ("throughput", st.throughput_batch)):
        if kind not in st.what:
            continue
        torch.manual_seed(0)
        model = st.build().to(st.device)
        inputs = _random_inputs(st.modalities, batch, st.size, st.device, st.gen)
        _start_peak(st.device)
        run = make_inference(model, inputs, opts)
        timing = time_alternating({"infer": run}, st.device, st.warmup, st.repeats)["infer"]
        ips = timing.per_second(batch)
        achieved = st.flops["fwd_per_image"] * ips / 1e12
        entry[kind] = {"batch": batch, "size": list(st.size), **timing.to_dict(), "images_per_s": ips,
                       "tflops": achieved, "mfu": achieved / rate if rate else None,
                       "peak_memory_mb": _peak_mib(st.device)}
        del model, run


def bench_runtimes(
    build: Callable[[], nn.Module],
    modalities: Sequence[str],
    runtimes: Sequence[str],
    *,
    size: tuple[int, int] = (480, 640),
    throughput_batch: int = 8,
    warmup: int = 2,
    repeats: int = 5,
    what: Sequence[str] = ("latency", "throughput"),
    flops_per_image: float | None = None,
    threads: int | None = None,
    on_result: Callable[[str, dict[str, Any]], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """Latency (batch 1) and throughput (``throughput_batch``) of the model ``build()`` makes (seed 0, as
    :func:`bench_model` builds it), exported as ``rgbx export`` writes it (dynamic batch / H / W, folded head) and
    run on the CPU by each of ``runtimes`` (:data:`rgbx.engine.onnx_model.RUNTIME_VARIANTS`: ``onnxruntime``,
    ``openvino`` (float32) or ``openvino-bf16``, OpenVINO computing in bf16 on a processor with bf16 instructions). Returns label (``"onnx: <runtime>"``) → entry, in
    :func:`bench_model`'s result format; a runtime that cannot run here (not installed, no bf16) gets ``error``."""
    import tempfile
    from pathlib import Path

    from rgbx.engine.export import export_onnx
    from rgbx.engine.onnx_model import RUNTIME_VARIANTS, open_runtime_variant

    unknown = [r for r in runtimes if r not in RUNTIME_VARIANTS]
    if unknown:
        raise ConfigError(f"unknown runtime {', '.join(unknown)}; expected {', '.join(RUNTIME_VARIANTS)}")
    cpu = torch.device("cpu")
    gen = torch.Generator().manual_seed(0)
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="rgbx_bench_") as folder:
        torch.manual_seed(0)
        path = export_onnx(build(), Path(folder) / "model.onnx", size=size, exporter="torchscript")
        for runtime in runtimes:
            entry: dict[str, Any] = {"runtime": runtime, "describe": f"the exported .onnx file in {runtime}"}
            try:
                session = open_runtime_variant(path, runtime, threads)
                for kind, batch in (("latency", 1), ("throughput", throughput_batch)):
                    if kind not in what:
                        continue
                    inputs = _random_inputs(modalities, batch, size, cpu, gen)
                    timing = time_alternating({kind: lambda x=inputs, run=session: run(x).logits}, cpu, warmup,
                                              repeats)[kind]
                    ips = timing.per_second(batch)
                    entry[kind] = {"batch": batch, "size": list(size), **timing.to_dict(), "images_per_s": ips,
                                   "tflops": flops_per_image * ips / 1e12 if flops_per_image else None,
                                   "mfu": None, "peak_memory_mb": None}
                del session  # the runtime released now, not whenever the collector next runs
            except ConfigError as e:  # not installed, or no bf16 on this processor: the other rows still count
                entry["error"] = str(e)
            results[f"onnx: {runtime}"] = entry
            if on_result is not None:
                on_result(f"onnx: {runtime}", entry)
    return results


PREFETCH_FACTOR = 2  # batches a loader worker is asked for ahead (DataLoader's default)


def bench_data(dataset, batch_size: int, workers: int, batches: int = 20, warmup: int | None = None,
               batch_transform=None, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Samples/s of the input pipeline (read + decode + augment + collate) of ``dataset`` with ``workers`` loader
    processes, over ``batches`` batches after ``warmup`` batches.

    With ``batch_transform`` (the geometric step of a ``TrainTransform(geometric_on="batch")`` dataset,
    :class:`~rgbx.data.transforms.BatchGeometry`), each batch is moved to ``device`` (from pinned memory on CUDA)
    and transformed there in this process, as the trainer does, and that is timed too (to the device's last kernel).

    Batches the workers prepare ahead (2 each) must not be counted as made in the timed window: the warm-up
    (default: ``workers`` × 2 batches, at least 2) absorbs the workers' start-up and what they prepared during it,
    and at least twice as many batches as the workers hold ahead are timed (``batches`` is raised to that; the
    result says how many). On a 2-core machine, 12 workers read 794 samples/s timed over 10 batches after 2,
    239 over 10 after 24, 47 over 48 after 24, the rate of 2 workers (50). The dataset is read again in new
    orders when it has fewer samples than the batches need."""
    from rgbx.data import collate

    if warmup is None:
        warmup = max(2, workers * PREFETCH_FACTOR)
    batches = max(batches, 2 * workers * PREFETCH_FACTOR)
    need = warmup + batches
    if len(dataset) < batch_size:
        raise ValueError(f"bench_data: {len(dataset)} samples, fewer than one batch of {batch_size}")
    sampler = torch.utils.data.RandomSampler(dataset, num_samples=need * batch_size,
                                             generator=torch.Generator().manual_seed(0))
    device = torch.device(device)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                                         collate_fn=collate, drop_last=True, persistent_workers=False,
                                         prefetch_factor=PREFETCH_FACTOR if workers else None,
                                         pin_memory=batch_transform is not None and device.type == "cuda")
    it = iter(loader)

    def one(it):
        batch = next(it)
        if batch_transform is not None:
            batch = batch_transform(batch.to(device, non_blocking=True))
        return batch

    for _ in range(warmup):
        one(it)
    _synchronize(device)
    t0 = time.perf_counter()
    for _ in range(batches):
        one(it)
    _synchronize(device)
    dt = time.perf_counter() - t0
    del it
    return {"workers": workers, "batch": batch_size, "batches": batches, "warmup": warmup, "seconds": dt,
            "samples_per_s": batches * batch_size / dt,
            "geometric_on": "sample" if batch_transform is None else f"batch ({device.type})"}


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
