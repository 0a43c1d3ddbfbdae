"""The speed switches, one flag each, shared by training, inference and ``rgbx bench``.

:class:`SpeedOptions` lists every switch; ``SpeedOptions.exact()`` turns them all off (fp32, explicit attention,
no compilation: the reference arithmetic) and ``SpeedOptions.fast(device)`` turns on what helps on that device. What
each switch does:

* ``precision``: autocast dtype, ``fp32`` (off), ``bf16`` or ``fp16`` (CUDA only, with a gradient scaler in
  training). On the CPU bf16 pays off only where the processor has bf16 matrix instructions (AMX / AVX-512 BF16):
  :func:`cpu_has_bf16` says whether it does. Seen with torch 2.14.1 on an AMX Xeon: oneDNN's bf16 convolution
  weight gradient on 1×1 output maps (a stride-32 stage of a tiny crop) sometimes returns non-finite values, depending
  on earlier allocations; crops of 64×64 and more were unaffected.
* ``attn_impl``: ``sdpa`` (fused :func:`torch.nn.functional.scaled_dot_product_attention`: flash / memory-efficient
  kernels on CUDA) or ``eager`` (explicit softmax(q kᵀ) v, as the reference code); ``None`` keeps the model's.
* ``channels_last``: model weights and inputs in NHWC memory layout (cuDNN convolutions, especially in bf16, run
  without layout transposes).
* ``compile``: :func:`torch.compile` (``compile_mode`` and ``compile_backend`` passed on; the default backend is
  inductor, ``aot_eager`` traces forward and backward without generating kernels, which the CPU tests use), of one of
  two scopes (``compile_scope``):

  - ``blocks`` (default): each building block compiled on its own, in place (the modules whose class sets
    ``compile_region = True``: transformer blocks, CMX rectify / fuse modules, decode heads), with static shapes.
    Blocks of one class share the compiled code, so compilation costs one graph per distinct block shape, not per
    block: CMX MiT-B2 (16 blocks per branch) at 64×64 with the CPU fast set, inductor, 2 cores, empty compile
    caches: first training step 170 s against 225 s for the whole model, first inference 46 against 81 s. What runs
    between blocks (patch embeddings, interpolation, the loss) stays eager.
  - ``model``: the model's forward together with the loss as one graph (most fusion; compiles for minutes on large
    models: CMX MiT-B2's training step did not finish compiling in 150 s on an H100 machine).
* ``cuda_graph``: inference only: the fixed-shape forward pass is captured once into a CUDA graph and replayed, so
  batch-1 latency is no longer bound by kernel-launch overhead. Needs a forward pass with no host synchronisation:
  rgbx's models have none when every modality is passed without masks, or with masks known on the host
  (:class:`~rgbx.data.sample.PresenceMasks`).
* ``cuda_graph_train``: the whole fixed-shape training step (forward, loss, backward, gradient clipping, the AdamW
  update) captured once into a CUDA graph and replayed (:class:`CudaGraphTrainStep`): the host issues one replay
  instead of thousands of operator calls, which bounds the eager step on fast GPUs (on an H100 CMX-B2's bf16 step
  kept the device busy 31 % of the time; ``rgbx bench`` measured 38.6 → 84.2 img/s). The optimizer is built
  capturable, with its learning rates as device tensors the schedule writes into
  (:func:`rgbx.engine.optim.lr_as_tensors`); bf16 or fp32 only (fp16's gradient scaler reads its overflow check on
  the host); randomness drawn on the host is frozen at capture, randomness drawn on the device (dropout,
  drop-path, modality dropout under ``PresenceMasks(on_device=True)``) advances with each replay. ``rgbx bench
  --options graphed`` and the trainer (``train.cuda_graph_train``, for steps that run the same device work every
  time: see :func:`rgbx.engine.trainer.graph_capture_refusals`; the trainer then decides sensor presence on the
  device). Not in the fast set.
* ``cast_weights``: inference only: the weights and biases of the linear and convolution layers are cast once to
  the autocast dtype (:func:`cast_inference_weights`, in place) instead of by autocast at every forward pass (one
  cast kernel per layer and call, replayed by a CUDA graph too: CMX-B2 has 288 such layers). The values are the
  ones autocast computes, so the outputs are the same, bit for bit; the model must then run under autocast.
* ``fuse_projections``: in DFormer-style blocks (DFormer, the OmniSegmentor encoder) the three projections of the
  normalised RGB map (``q``, ``q_cut``, ``l``) run as one matrix product and the two of the mixed map (``proj``,
  ``proj_e``) as another, and every layer scale γ is folded into the layer whose output it scales
  (``γ ⊙ (W x + b) = (γ W) x + γ b``), so the block adds its updates without multiplying them. In training the fused
  weights are formed from the weights at every step (:func:`rgbx.models.layers.stacked_linear_params`,
  differentiable): per block and step, 3 matrix products, 4 full-size products with γ and, in the backward pass,
  their gradients and the 4 full-size reductions for γ's gradient are replaced by products of weight-sized matrices
  (the residual streams stay float32 under autocast, as the unfused block keeps them). For inference
  (:meth:`rgbx.models.backbones.dformer.DFormerBlock.fuse_for_inference`) they are formed once, and under bf16
  autocast the fp32 γ no longer promotes each update to fp32, so the residual streams of stages 2-4 stay bf16 (as
  MiT's do with ``lowp_norms``) and their LayerNorm inputs need no cast (DFormer-L under the CUDA fast set: 1077 →
  860 operators per forward pass). The same function: the inference copies are formed in float32 and rounded once
  to the layers' dtype, so only the rounding differs (fp32: logits within 1e-5). They are non-persistent buffers
  (the state dict keeps the trained tensors) computed from the weights at :func:`prepare_inference`; loading a state
  dict undoes that fusion (the copies would be stale), and a block with such copies refuses to train.
* ``fold_head``: the decode head's fusion convolution applied to each stage map at its own resolution, before the
  upsampling, instead of to the concatenation of the upsampled maps (:meth:`rgbx.models.Segmentor.set_fold_head`;
  the MLP head also folds its per-stage Linear layers into it). The same function with the same weights: the
  rounding differs as between two convolution algorithms. CMX's 512-channel MLP head at 480×640 does 1.9 instead
  of 21.7 GMAC per image (CMX-B2's forward pass: 78 → 58 GMAC), and no 2048-channel map is written, cast and read.
* ``lowp_norms``: LayerNorms in autocast's low precision (:meth:`rgbx.models.Segmentor.set_lowp_norms`). CUDA's
  autocast runs LayerNorm in fp32, so a transformer's residual stream and every LayerNorm output stay fp32 and are
  cast again before each matmul, forward and backward; on the H100, CMX-B2's bf16 training step spent 17 % of its
  kernel time in LayerNorm and 15 % in copies and casts (``benchmarks/gpu.md``). With the switch the norms take and
  return bf16 (statistics still accumulated in fp32 inside the kernel) and MiT's residual stream stays bf16: the
  arithmetic the CPU's autocast already does, which leaves LayerNorm in its input's dtype. On the CPU the switch
  therefore changes little (it also casts the norms' weights). Only under bf16 autocast; no effect in fp32 or fp16
  (whose 5-bit exponent would put the residual stream at risk of overflow).
* ``matmul_resize``: bilinear resizing (the decode heads', DFormer's window attention's, the logits' final one) and
  DFormer's adaptive average pooling as two matrix products each (:func:`rgbx.models.layers.separable_by_matmul`)
  instead of ``F.interpolate`` / ``F.adaptive_avg_pool2d``: a GPU runs them at memory speed, on channels-last maps
  without a transpose, and their backward pass needs no atomics (on the H100 bilinear upsampling took 9.5 % of
  CMX-B2's captured bf16 training step, and adaptive pooling of channels-last maps 26 % of DFormer-L's batch-1
  kernel time). The same values up to rounding. In CUDA's fast set: on the H100 CMX-B2's captured training step
  went from 98.9 to 105.7 img/s and its batch-1 latency from 5.05 to 4.80 ms (``benchmarks/gpu.md``; the sweep's
  row ``graphed - matmul_resize``). On the 2-core CPU it changes little (CMX-B0: latency 1.05×, training step
  1.02×), so the CPU's fast set leaves it off.
* ``keep_host_memory``: glibc's malloc keeps freed host memory for reuse instead of unmapping every block of 32 MiB
  or more when it is freed (:mod:`rgbx.engine.host_memory`): each new block of that size otherwise starts as fresh
  pages the kernel zero-fills at first touch, and a model at full resolution allocates many per pass. Process-wide
  and sticky (:func:`backend_flags` sets it as its options say on entry and leaves it so); the values computed do not
  change, bit for bit; the process keeps its peak memory until it exits. In the CPU's fast set: on the 2-core AMD
  machine CMX-B2's batch-1 latency at 480×640 and its training step at batch 2, 240×320 ran 1.13× / 1.11× faster
  with it, the logits identical (``benchmarks/speed.md``). Not in CUDA's (the big tensors live on the device).
  Because it changes no value, the trainer (``train.keep_host_memory``) and ``rgbx eval`` / ``rgbx predict`` turn it
  on for the CPU without being asked (the exact path's CMX-B2 latency: 1.29×; ``--no-keep-host-memory`` says no).
* ``tf32``: TF32 matrix units for fp32 matmuls / convolutions on CUDA (``torch.backends.*.allow_tf32``).
* ``cudnn_benchmark``: let cuDNN time its convolution algorithms for each new input shape and keep the fastest
  (``torch.backends.cudnn.benchmark``; pays off for fixed training / inference shapes).
* ``fused_optimizer``: AdamW's fused kernel (CUDA: one launch for all parameters; CPU: one vectorised pass per
  tensor, CMX-B2's 66.6 M parameters in 44 instead of 133 ms on a 2-core Xeon, same values to 3e-8) instead of the
  default implementation (multi-tensor ``foreach`` kernels on CUDA, the per-tensor loop on the CPU); ``None`` = on
  wherever the parameters are on CUDA.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import torch
from torch import nn

from rgbx.engine.host_memory import set_keep_host_memory
from rgbx.errors import ConfigError
from rgbx.models.layers import LOWP_NORM_DTYPE, LOWP_NORMS

__all__ = [
    "CudaGraphForward",
    "CudaGraphTrainStep",
    "SpeedOptions",
    "apply_speed_options",
    "autocast",
    "cast_inference_weights",
    "compile_regions",
    "compile_report",
    "cpu_has_bf16",
    "describe_cpu",
    "keep_host_memory_where_it_pays",
    "precision_dtype",
    "prepare_inference",
    "to_memory_format",
]

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def _cpuinfo() -> str:
    """``/proc/cpuinfo`` ("" where that file does not exist)."""
    try:
        with open("/proc/cpuinfo") as f:
            return f.read()
    except OSError:
        return ""


def _cpu_flags(cpuinfo: str) -> set[str]:
    line = next((line for line in cpuinfo.splitlines() if line.startswith(("flags", "Features"))), "")
    return set(line.partition(":")[2].split())


def cpu_has_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this processor has bf16 matrix instructions (Intel AMX-BF16 or AVX-512 BF16), read from
    ``/proc/cpuinfo`` (or the given text of it; False where that file does not exist)."""
    return bool({"amx_bf16", "avx512_bf16"} & _cpu_flags(_cpuinfo() if cpuinfo is None else cpuinfo))


def describe_cpu(cpuinfo: str | None = None) -> str:
    """This processor's model and the vector / matrix instructions the CPU fast set depends on, e.g.
    ``AMD EPYC (AVX2; no bf16 matrix units)`` or
    ``Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz (AVX-512, AMX-BF16, AVX512-BF16)``. CPU speed figures mean little
    without it (the fast set is bf16 only with bf16 matrix units). From ``/proc/cpuinfo`` (or the given text of it);
    where that file does not exist, what :mod:`platform` says."""
    import platform

    text = _cpuinfo() if cpuinfo is None else cpuinfo
    model = next((line.partition(":")[2].strip() for line in text.splitlines() if line.startswith("model name")), "")
    if not text:
        return platform.processor() or platform.machine() or "cpu"
    flags = _cpu_flags(text)
    vector = [name for flag, name in (("avx512f", "AVX-512"), ("avx2", "AVX2"), ("asimd", "NEON")) if flag in flags]
    matrix = [name for flag, name in (("amx_bf16", "AMX-BF16"), ("avx512_bf16", "AVX512-BF16")) if flag in flags]
    units = ", ".join(vector[:1] + matrix) or "no vector extensions listed"
    if not matrix:
        units += "; no bf16 matrix units"
    return f"{model or platform.machine() or 'cpu'} ({units})"


def precision_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for ``precision`` on ``device`` (None = fp32, no autocast)."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("precision fp16 needs CUDA; on the CPU use bf16 or fp32")
    return PRECISIONS[precision]


@dataclass(frozen=True)
class SpeedOptions:
    """Every speed switch (see the module docstring)."""

    precision: str = "fp32"
    attn_impl: str | None = None
    channels_last: bool = False
    compile: bool = False
    compile_scope: str = "blocks"
    compile_mode: str | None = None
    compile_backend: str | None = None
    cuda_graph: bool = False
    cuda_graph_train: bool = False
    cast_weights: bool = False
    fuse_projections: bool = False
    fold_head: bool = False
    lowp_norms: bool = False
    matmul_resize: bool = False
    keep_host_memory: bool = False
    tf32: bool = False
    cudnn_benchmark: bool = False
    fused_optimizer: bool | None = None

    @classmethod
    def exact(cls) -> SpeedOptions:
        """Everything off: fp32, explicit attention, eager PyTorch, no TF32, PyTorch's default AdamW."""
        return cls(precision="fp32", attn_impl="eager", fused_optimizer=False)

    @classmethod
    def fast(cls, device: torch.device | str) -> SpeedOptions:
        """What helps on ``device``. CUDA: bf16 autocast, fused attention, channels-last, TF32 for what stays fp32,
        fused AdamW, CUDA-graph inference, the folded head, LayerNorms in bf16, resizing and pooling as matrix
        products. CPU: fused attention, channels-last (oneDNN's convolutions run on NHWC without reorders: CMX-B2
        batch-1 inference 971 → 510 ms in bf16), the folded head, fused AdamW, freed host memory kept for reuse, and
        bf16 autocast where the processor has bf16 matrix instructions (:func:`cpu_has_bf16`). Both: DFormer-style
        blocks' fused projections. ``compile`` stays a separate choice (its first call costs tens of seconds); turn it on with
        ``replace(opts, compile=True)``."""
        device = torch.device(device)
        if device.type == "cuda":
            return cls(precision="bf16", attn_impl="sdpa", channels_last=True, tf32=True, cudnn_benchmark=True,
                       fused_optimizer=True, cuda_graph=True, cast_weights=True, fuse_projections=True,
                       fold_head=True, lowp_norms=True, matmul_resize=True)
        bf16 = cpu_has_bf16()
        return cls(precision="bf16" if bf16 else "fp32", attn_impl="sdpa", channels_last=True, fused_optimizer=True,
                   cast_weights=bf16, fuse_projections=True, fold_head=True, keep_host_memory=True)

    def with_(self, **changes) -> SpeedOptions:
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    def describe(self) -> str:
        """Short label, e.g. ``bf16 sdpa channels-last compile``."""
        parts = [self.precision]
        if self.attn_impl:
            parts.append(self.attn_impl)
        parts += [name for name, on in (("channels-last", self.channels_last), ("fold-head", self.fold_head),
                                        ("lowp-norms", self.lowp_norms and self.precision == "bf16"),
                                        ("matmul-resize", self.matmul_resize),
                                        ("keep-host-memory", self.keep_host_memory),
                                        ("tf32", self.tf32),
                                        ("cudnn-benchmark", self.cudnn_benchmark),
                                        ("compile", self.compile), ("cuda-graph", self.cuda_graph),
                                        ("cuda-graph-train", self.cuda_graph_train),
                                        ("cast-weights", self.cast_weights and self.precision != "fp32"),
                                        ("fused-proj", self.fuse_projections)) if on]
        if self.compile and self.compile_scope != "blocks":
            parts.append(f"scope={self.compile_scope}")
        if self.compile and self.compile_mode:
            parts.append(f"mode={self.compile_mode}")
        if self.fused_optimizer:
            parts.append("fused-adamw")
        return " ".join(parts)


def autocast(device: torch.device, precision: str, cache: bool = True) -> contextlib.AbstractContextManager:
    """Autocast to ``precision`` (none for fp32). ``cache=False`` re-casts the weights at each use instead of
    keeping the casts for the context's duration: what a region captured into a CUDA graph needs."""
    dtype = precision_dtype(precision, device)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype, cache_enabled=cache)


def cast_inference_weights(model: nn.Module, precision: str) -> nn.Module:
    """Cast, in place, the weights and biases of ``model``'s linear and convolution layers to the autocast dtype of
    ``precision`` (nothing for fp32), for inference under :func:`autocast` (``SpeedOptions.cast_weights``). Autocast
    would otherwise cast them at every forward pass; the values are the same, so are the outputs. LayerNorms in low
    precision (``lowp`` on: ``SpeedOptions.lowp_norms``) are cast too, for the same reason; other norm layers keep
    their fp32 parameters (autocast runs them in fp32), and so does a layer whose weights are computed with before
    use (it sets ``keep_weight_dtype = True``, e.g. CMNeXt's folded patch embedding). Not for a model that will still
    be trained."""
    dtype = PRECISIONS[precision]
    if dtype is None:
        return model
    for module in model.modules():
        lowp_norm = isinstance(module, LOWP_NORMS) and module.lowp and dtype == LOWP_NORM_DTYPE
        if lowp_norm or isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)) and not getattr(
                module, "keep_weight_dtype", False):
            for param in module.parameters(recurse=False):
                param.data = param.data.to(dtype)
    return model


def prepare_inference(model: nn.Module, options: SpeedOptions) -> nn.Module:
    """The speed switches for a model that will only run inference, in place: :func:`apply_speed_options`, eval
    mode, with ``options.cast_weights`` the weights cast once (:func:`cast_inference_weights`), then with
    ``options.fuse_projections`` every block that can (``fuse_for_inference``) fused from those weights."""
    apply_speed_options(model, options)
    model.eval()
    if options.cast_weights:
        cast_inference_weights(model, options.precision)
    if options.fuse_projections:
        for module in list(model.modules()):
            if hasattr(module, "fuse_for_inference"):
                module.fuse_for_inference()
    return model


def keep_host_memory_where_it_pays(device: torch.device, keep: bool | None = None) -> bool:
    """Keep freed host memory as ``keep`` says; None: where the device's fast set does (the CPU), fast path or not,
    since it changes no value (:mod:`rgbx.engine.host_memory`). For ``rgbx eval`` / ``rgbx predict``, which otherwise
    run the model's own arithmetic. Returns whether the process now keeps its memory."""
    return set_keep_host_memory(SpeedOptions.fast(device).keep_host_memory if keep is None else keep)


def to_memory_format(inputs: Mapping[str, torch.Tensor], channels_last: bool) -> dict[str, torch.Tensor]:
    """``inputs`` converted to channels-last memory layout (when asked; 4-D tensors only)."""
    if not channels_last:
        return dict(inputs)
    return {k: v.contiguous(memory_format=torch.channels_last) if v.dim() == 4 else v for k, v in inputs.items()}


@contextlib.contextmanager
def backend_flags(options: SpeedOptions | None) -> Iterator[None]:
    """Set the TF32 switches of matmuls and cuDNN and cuDNN's autotuner per ``options`` for the duration (restored
    afterwards), and whether freed host memory is kept (``keep_host_memory``: set on entry and left so, since giving
    the memory back on exit would make the next call fault it in again); ``None`` leaves everything as it is."""
    if options is None:
        yield
        return
    set_keep_host_memory(options.keep_host_memory)
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark)
    torch.backends.cuda.matmul.allow_tf32 = options.tf32
    torch.backends.cudnn.allow_tf32 = options.tf32 or saved[1]  # cuDNN's default is already on
    torch.backends.cudnn.benchmark = options.cudnn_benchmark
    try:
        yield
    finally:
        (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
         torch.backends.cudnn.benchmark) = saved


COMPILE_SCOPES = ("blocks", "model")


def _compile_kwargs(options: SpeedOptions) -> dict[str, Any]:
    if options.compile_scope not in COMPILE_SCOPES:
        raise ConfigError(f"compile_scope {options.compile_scope!r}: expected one of {', '.join(COMPILE_SCOPES)}")
    kwargs: dict[str, Any] = {"mode": options.compile_mode} if options.compile_mode else {}
    if options.compile_backend:
        kwargs["backend"] = options.compile_backend
    return kwargs


def compile_regions(model: nn.Module, options: SpeedOptions) -> list[nn.Module]:
    """Compile, in place, every submodule of ``model`` whose class sets ``compile_region = True`` (static shapes;
    ``options.compile_mode`` / ``compile_backend`` passed on). Returns the compiled modules.

    Blocks of one class share their compiled code; each distinct input shape or attribute value (a stage) is one
    more graph, so dynamo's per-function recompilation limit is raised to leave room for every stage in training
    and inference at a few batch sizes."""
    kwargs = _compile_kwargs(options)
    regions = [m for m in model.modules() if getattr(type(m), "compile_region", False)]
    if not regions:
        raise ConfigError(f"{type(model).__name__} has no compile regions; use compile_scope='model'")
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    setattr(config, name, max(getattr(config, name), 64))
    for module in regions:
        module.compile(dynamic=False, **kwargs)
    return regions


def apply_speed_options(model: nn.Module, options: SpeedOptions) -> nn.Module:
    """Apply the switches that change the model itself, in place: attention implementation, the decode head's order
    of operations, memory layout and, with ``compile_scope="blocks"``, compilation of its blocks. Returns
    ``model``."""
    if options.attn_impl is not None:
        if not hasattr(model, "set_attn_impl"):
            raise ConfigError(f"{type(model).__name__} has no attention switch (set_attn_impl)")
        model.set_attn_impl(options.attn_impl)
    if hasattr(model, "set_fold_head"):
        model.set_fold_head(options.fold_head)
    if hasattr(model, "set_lowp_norms"):
        model.set_lowp_norms(options.lowp_norms)
    if hasattr(model, "set_matmul_resize"):
        model.set_matmul_resize(options.matmul_resize)
    for module in model.modules():
        if hasattr(module, "set_live_fusion"):
            module.set_live_fusion(options.fuse_projections)
    if options.channels_last:
        model.to(memory_format=torch.channels_last)
    if options.compile and options.compile_scope == "blocks":
        compile_regions(model, options)
    return model


def compile_report(rows: int = 20) -> str:
    """Where this process's torch.compile time went so far: frames compiled (a function compiled again for another
    shape or module counts again; ``TORCH_LOGS=recompiles`` says why each was), graphs made, and the ``rows``
    costliest phases (dynamo's own timers, seconds summed over calls; phases nest, so they overlap). Printed by
    ``rgbx bench`` after compiling, and when a time limit stops it mid-compilation (SIGTERM), so that a cut-off run
    still says where the time went."""
    from torch._dynamo.utils import compile_times, counters

    names, seconds = compile_times(repr="csv", aggregate=True)
    stats = counters["stats"]
    lines = [f"torch.compile: {counters['frames'].get('total', 0)} frames compiled, "
             f"{stats.get('unique_graphs', 0)} graphs, {stats.get('calls_captured', 0)} operators captured"]
    for name, t in sorted(zip(names, (float(v) for v in seconds)), key=lambda kv: -kv[1])[:rows]:
        lines.append(f"  {t:9.2f} s  {name}")
    return "\n".join(lines)


def compile_fn(fn: Callable, options: SpeedOptions) -> Callable:
    """``torch.compile(fn)`` when ``options.compile`` is on with ``compile_scope="model"``, else ``fn`` (the blocks
    scope compiles inside the model: :func:`apply_speed_options`)."""
    if not options.compile:
        return fn
    kwargs = _compile_kwargs(options)
    if options.compile_scope != "model":
        return fn
    return torch.compile(fn, **kwargs)


class CudaGraphForward:
    """A fixed-shape inference forward pass captured into one CUDA graph.

    ``fn(inputs)`` is run a few times on a side stream (warm-up: cuDNN / cuBLAS handles, autotuning, compilation),
    then captured once. Each call copies the new inputs into the captured input buffers and replays the graph; the
    returned output is the graph's own output buffer, overwritten by the next call (copy it to keep it).

    Args:
        fn: ``fn(inputs) -> output`` (e.g. a model in eval mode, or a compiled one); called under
            ``torch.inference_mode`` and the given autocast context.
        example: modality → CUDA tensor, the shapes and dtypes every later call must have.
        precision: autocast precision of the captured call (``fp32`` = none).
    """

    def __init__(self, fn: Callable, example: Mapping[str, torch.Tensor], precision: str = "fp32",
                 warmup: int = 3):
        if not all(t.is_cuda for t in example.values()):
            raise ConfigError("cuda_graph needs CUDA inputs")
        # the graph reads the weights of the model fn calls at their addresses, and holds no reference to them:
        # without this one, a caller that keeps only this object (make_inference's closure) let the model be freed
        # and its memory be reused by the next model built (on the H100: NaN logits, an illegal memory access, a
        # segmentation fault in replay, when two graphed models were timed side by side)
        self.fn = fn
        self.static = {k: v.clone() for k, v in example.items()}
        device = next(iter(example.values())).device

        def make_amp():
            return autocast(device, precision)

        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.inference_mode(), torch.cuda.stream(stream):
            for _ in range(warmup):
                with make_amp():
                    fn(self.static)
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(self.graph), make_amp():
            self.output = fn(self.static)

    def __call__(self, inputs: Mapping[str, torch.Tensor]):
        copy_into_static(self.static, inputs, "cuda_graph")
        self.graph.replay()
        return self.output


def copy_into_static(static: Mapping[str, torch.Tensor], inputs: Mapping[str, torch.Tensor], what: str) -> None:
    """Copy ``inputs`` into a captured graph's input buffers of the same names and shapes."""
    for k, v in inputs.items():
        if k not in static or v.shape != static[k].shape:
            raise ConfigError(f"{what}: input {k!r} {tuple(v.shape)} differs from the captured "
                              f"{tuple(static[k].shape) if k in static else 'inputs ' + ', '.join(static)}")
        static[k].copy_(v, non_blocking=True)


class CudaGraphTrainStep:
    """A whole fixed-shape training step, forward + loss + backward + optimizer update, captured into one CUDA graph.

    ``body()`` runs the step on the tensors in ``static`` and returns its (detached) outputs, a tensor or a dict of
    tensors such as the loss terms; it must not zero the gradients (the capture starts from ``None`` gradients, so
    the replayed backward writes them afresh) nor read anything back to the host, and ``optimizer`` must be built
    with ``capturable=True`` (a learning rate that changes between steps must be a device tensor the schedule writes
    into, :func:`rgbx.engine.optim.lr_as_tensors`).

    Each call copies new tensors into ``static`` (same names and shapes) and runs one real training step on them:
    the first ``warmup`` calls run ``body`` eagerly on a side stream (cuDNN / cuBLAS handles, autotuning, the
    optimizer's state; their outputs are fresh tensors), the next one captures the graph (:meth:`capture`, or
    earlier if called) and every call from then on replays it and returns the graph's output buffers, overwritten by
    the next call (copy or reduce them to keep them).
    """

    def __init__(self, body: Callable[[], Any], optimizer: torch.optim.Optimizer,
                 static: Mapping[str, torch.Tensor], warmup: int = 3):
        if not all(t.is_cuda for t in static.values()):
            raise ConfigError("cuda_graph_train needs CUDA tensors")
        if not all(g.get("capturable") for g in optimizer.param_groups):
            raise ConfigError("cuda_graph_train needs an optimizer built with capturable=True")
        self.body, self.optimizer, self.static = body, optimizer, dict(static)
        self.warmup_left = warmup
        self.graph: torch.cuda.CUDAGraph | None = None
        self.output: Any = None

    def _eager(self) -> Any:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            self.optimizer.zero_grad(set_to_none=True)
            output = self.body()
        torch.cuda.current_stream().wait_stream(stream)
        return output

    def capture(self) -> None:
        """Capture the step (once): later calls replay it."""
        if self.graph is not None:
            return
        self.optimizer.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self.output = self.body()
        self.graph = graph

    def __call__(self, inputs: Mapping[str, torch.Tensor] | None = None) -> Any:
        copy_into_static(self.static, inputs or {}, "cuda_graph_train")
        if self.graph is None and self.warmup_left > 0:
            self.warmup_left -= 1
            return self._eager()
        self.capture()
        self.graph.replay()
        return self.output
