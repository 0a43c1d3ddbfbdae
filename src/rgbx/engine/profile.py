"""Model cost: parameters, forward FLOPs, inference latency, throughput and peak memory.

What is measured, and how:

* Parameters: ``sum(p.numel())`` over the unique parameters (total and trainable), and per submodule: the top-level
  children (for a :class:`~rgbx.models.Segmentor`: ``encoder``, ``head``) and one level below, with a ``ModuleDict``
  expanded by key (``encoder.branches.rgb``, ``encoder.branches.depth``, ``encoder.rectify``, ``encoder.fuse``,
  ``head.linear``, ...). Parameters a module holds directly appear under ``<name>.(own)``.
* FLOPs: :class:`torch.utils.flop_counter.FlopCounterMode` over one forward pass at batch 1 in eval mode, in total
  and for the same modules as the parameters. A module its parent runs by another route than calling it (CMX's
  branches run stage by stage through ``forward_stage``) is given the FLOPs of its called descendants. It counts
  only matmul / conv / attention kernels (not norms, activations, softmax or resizing), and it counts 0 for
  ``scaled_dot_product_attention`` on the CPU, so attention is switched to the explicit ``"eager"`` form while
  counting and switched back afterwards. ``FlopCounterMode`` counts a multiply-add as 2 FLOPs; the "GFLOPs"
  published for segmentation models (fvcore, mmcv ``get_flops``) are multiply-accumulates, so compare papers with
  ``gmacs`` (= ``gflops / 2``).
* Latency: for each batch size, ``warmup`` untimed forward passes, then ``repeats`` timed ones (median / min / max /
  mean in ms) under ``torch.inference_mode`` in eval mode with the model's own attention implementation. On CUDA
  each pass is timed with ``torch.cuda.Event`` pairs after a synchronisation; on the CPU with
  ``time.perf_counter``. Throughput = batch / median time. Peak memory (CUDA only) is
  ``torch.cuda.max_memory_allocated`` during the timed passes of each batch size, parameters included.

:func:`profile_model` leaves the model as it found it (device, train/eval mode, attention implementation) and prints
nothing.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["count_flops", "count_parameters", "profile_model"]


def _device_of(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def _submodule_paths(model: nn.Module) -> list[str]:
    """The submodules that parameters and FLOPs are reported for below the top-level children: each grandchild, a
    ``ModuleDict`` grandchild expanded by key (``encoder.branches.rgb``, ``encoder.rectify``, ``head.linear``)."""
    paths = []
    for name, child in model.named_children():
        for sub, grandchild in child.named_children():
            if isinstance(grandchild, nn.ModuleDict):
                paths += [f"{name}.{sub}.{key}" for key in grandchild]
            else:
                paths.append(f"{name}.{sub}")
    return paths


def _called_flops(module: nn.Module, path: str, counts: Mapping[str, Mapping[Any, int]]) -> int | None:
    """FLOPs that ``FlopCounterMode`` (``counts``: its per-module table, keys prefixed with the root's class name)
    saw inside ``module``: its own row when it was called as a module, else the sum over its children's (a module
    run through a method of its own, like a branch's ``forward_stage``, has no row while its stages do). None when
    nothing inside it was counted."""
    own = counts.get(path)
    if own is not None:
        return sum(int(v) for v in own.values())
    found = [f for name, child in module.named_children()
             if (f := _called_flops(child, f"{path}.{name}", counts)) is not None]
    return sum(found) if found else None


def count_parameters(model: nn.Module) -> dict[str, Any]:
    """``{"total", "trainable", "by_module", "by_submodule"}`` (counts of unique parameters; see the module
    docstring for the grouping)."""
    paths = _submodule_paths(model)
    by_module: dict[str, int] = {}
    by_submodule: dict[str, int] = {}
    total = trainable = 0
    for name, p in model.named_parameters():  # unique parameters (shared ones once)
        n = p.numel()
        total += n
        trainable += n if p.requires_grad else 0
        parts = name.split(".")
        if len(parts) == 1:
            by_module["(own)"] = by_module.get("(own)", 0) + n
            by_submodule["(own)"] = by_submodule.get("(own)", 0) + n
            continue
        by_module[parts[0]] = by_module.get(parts[0], 0) + n
        key = next((path for path in paths if name.startswith(f"{path}.")), f"{parts[0]}.(own)")
        by_submodule[key] = by_submodule.get(key, 0) + n
    return {"total": total, "trainable": trainable, "by_module": by_module, "by_submodule": by_submodule}


@contextmanager
def _calls_within(model: nn.Module, reported: Sequence[str]):
    """Yields ``{inner: outer}`` for the reported submodules run inside another's call (a fusion's per-sensor stem,
    which a shared backbone's first stage calls: ``FlopCounterMode`` counts its FLOPs in both rows), filled while the
    model runs; forward hooks on every module under a reported path, removed after."""
    modules = dict(model.named_modules())
    owner: dict[int, str] = {}
    for path in reported:
        for m in modules[path].modules():
            owner.setdefault(id(m), path)
    stack: list[str] = []
    within: dict[str, str] = {}

    def enter(module, args):
        path = owner[id(module)]
        outer = next((p for p in reversed(stack) if p != path), None)
        if outer is not None and not stack[-1] == path:
            within.setdefault(path, outer)
        stack.append(path)

    def leave(module, args, output):
        stack.pop()

    handles = []
    for m in model.modules():
        if id(m) in owner:
            handles.append(m.register_forward_pre_hook(enter))
            handles.append(m.register_forward_hook(leave, always_call=True))
    try:
        yield within
    finally:
        for h in handles:
            h.remove()


def _attn_state(model: nn.Module) -> tuple[list[tuple[nn.Module, str]], Any]:
    saved = [(m, m.attn_impl) for m in model.modules() if isinstance(getattr(m, "attn_impl", None), str)]
    return saved, getattr(model, "config", None)


def _restore_attn(model: nn.Module, saved: list[tuple[nn.Module, str]], config: Any) -> None:
    values = {v for _, v in saved}
    if len(values) == 1 and hasattr(model, "set_attn_impl"):
        model.set_attn_impl(values.pop())  # lets the model redo whatever its switch does
    for m, v in saved:
        m.attn_impl = v
    if config is not None:
        model.config = config


@contextmanager
def _eager_attention(model: nn.Module):
    """Switch attention to the explicit (``"eager"``) form for the duration; yields whether anything switched."""
    saved, config = _attn_state(model)
    switchable = hasattr(model, "set_attn_impl") or any(hasattr(m, "set_attn_impl") for m in model.modules())
    try:
        if hasattr(model, "set_attn_impl"):
            model.set_attn_impl("eager")
        else:
            for m in model.modules():
                if hasattr(m, "set_attn_impl"):
                    m.set_attn_impl("eager")
        for m, _ in saved:
            m.attn_impl = "eager"
        yield switchable or bool(saved)
    finally:
        _restore_attn(model, saved, config)


@contextmanager
def _eval_mode(model: nn.Module):
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        yield
    finally:
        for m, training in modes:
            m.training = training


def count_flops(model: nn.Module, inputs: Mapping[str, torch.Tensor] | torch.Tensor) -> dict[str, Any]:
    """Forward FLOPs of ``model(inputs)`` in eval mode with attention forced eager (see the module docstring).

    Returns ``{"flops", "gflops", "gmacs", "attn_forced_eager", "by_module", "by_submodule", "by_op"}``;
    ``by_module`` holds the GFLOPs of the top-level children that were called as modules, ``by_submodule`` those of
    the submodules :func:`count_parameters` reports (``encoder.branches.rgb``, ``encoder.fuse``, ...; those with
    counted FLOPs; each FLOP in one row: a submodule run inside another's call, like a fusion's stem inside the shared
    backbone's first stage, is taken out of the enclosing row, and ``<child>.(own)`` holds what a top-level child
    computes outside its submodules; the rows add up to the total), ``by_op`` the GFLOPs per aten operator
    (``convolution``, ``mm``/``addmm`` = layers, ``bmm`` = products of two activations: attention ``q kᵀ`` and
    ``attn v``, CMX's cross-attention context, the Hamburger's NMF). Module-hook counters such as thop (used by
    DFormer's ``benchmark.py``) see only layers, i.e. miss the ``bmm`` part.
    """
    counter = FlopCounterMode(display=False)
    reported = _submodule_paths(model)
    with _eval_mode(model), _eager_attention(model) as forced, torch.no_grad(), _calls_within(model, reported) as \
            within, counter:
        model(inputs)
    flops = int(counter.get_total_flops())
    counts = counter.get_flop_counts()
    root = type(model).__name__
    by_module = {}
    for name, _ in model.named_children():
        ops = counts.get(f"{root}.{name}")
        if ops:
            by_module[name] = sum(int(v) for v in ops.values()) / 1e9
    modules = dict(model.named_modules())
    called = {path: _called_flops(modules[path], f"{root}.{path}", counts) or 0 for path in reported}
    for inner, outer in within.items():  # counted in the enclosing one's row too: the rows are made disjoint
        called[outer] -= called[inner]
    for name, _ in model.named_children():  # a child's own operations (a head's functional convolution, resizing)
        ops = counts.get(f"{root}.{name}")
        if ops:
            called[f"{name}.(own)"] = sum(int(v) for v in ops.values()) - sum(
                n for path, n in called.items() if path.startswith(f"{name}.") and not path.endswith(".(own)"))
    by_submodule = {path: n / 1e9 for path, n in called.items() if n}
    by_op = {str(op).removeprefix("aten."): int(n) / 1e9 for op, n in counts.get("Global", {}).items()}
    return {
        "flops": flops,
        "gflops": flops / 1e9,
        "gmacs": flops / 2e9,
        "attn_forced_eager": forced,
        "by_module": by_module,
        "by_submodule": by_submodule,
        "by_op": by_op,
    }


def _batch(inputs: Mapping[str, torch.Tensor] | torch.Tensor, size: int, device: torch.device):
    def one(x: torch.Tensor) -> torch.Tensor:
        return x[:1].to(device).expand(size, *x.shape[1:]).contiguous()

    if isinstance(inputs, torch.Tensor):
        return one(inputs)
    return {k: one(v) for k, v in inputs.items()}


def _time(model: nn.Module, inputs, device: torch.device, warmup: int, repeats: int) -> list[float]:
    """Per-pass times in ms (``warmup`` untimed passes first)."""
    times = []
    with torch.inference_mode():
        for _ in range(warmup):
            model(inputs)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            with torch.cuda.device(device):  # the events record on this device's current stream
                for _ in range(repeats):
                    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    start.record()
                    model(inputs)
                    end.record()
                    end.synchronize()
                    times.append(start.elapsed_time(end))
        else:
            for _ in range(repeats):
                t0 = time.perf_counter()
                model(inputs)
                times.append((time.perf_counter() - t0) * 1e3)
    return times


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    from rgbx.engine.fastpath import describe_cpu

    return describe_cpu()


def profile_model(
    model: nn.Module,
    inputs: Mapping[str, torch.Tensor] | torch.Tensor,
    *,
    device: str | torch.device | None = None,
    warmup: int = 5,
    repeats: int = 20,
    batch_sizes: Sequence[int] = (1, 8),
) -> dict[str, Any]:
    """Parameters, FLOPs, latency, throughput and (CUDA) peak memory of ``model``.

    Args:
        model: called as ``model(inputs)`` (e.g. a :class:`~rgbx.models.Segmentor` with a modality → tensor dict).
        inputs: modality → (B, C, H, W) tensor (or one tensor); only the first sample is used, repeated to each
            batch size. FLOPs are counted at batch 1.
        device: where to run (default: where the model is); the model is moved there for the measurement and moved
            back afterwards.
        warmup: untimed passes before timing, per batch size.
        repeats: timed passes per batch size (>= 1).
        batch_sizes: batch sizes to time; latency is reported for batch 1 (if listed), throughput for the largest.

    Returns:
        A JSON-serialisable dict: ``params`` (:func:`count_parameters`), ``flops`` (:func:`count_flops`),
        ``timings`` (one entry per batch size: ``batch``, ``median_ms``, ``min_ms``, ``max_ms``, ``mean_ms``,
        ``images_per_s``, ``peak_memory_mb``), ``latency_ms`` (the batch-1 entry's ``median``/``min``/``max``/
        ``mean``, or None), ``throughput`` (``batch``, ``images_per_s`` at the largest batch), ``peak_memory_mb``
        (max over batch sizes, CUDA only, else None), and the context: ``device``, ``device_name``, ``torch``,
        ``threads``, ``dtype``, ``input_shapes``, ``warmup``, ``repeats``, ``attn_impl`` (used for timing).
    """
    if repeats < 1 or warmup < 0:
        raise ValueError("profile_model: repeats must be >= 1 and warmup >= 0")
    sizes = sorted({int(b) for b in batch_sizes})
    if not sizes or sizes[0] < 1:
        raise ValueError(f"profile_model: batch_sizes must be positive integers, got {list(batch_sizes)}")
    original = _device_of(model)
    device = torch.device(device) if device is not None else original
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    first = inputs if isinstance(inputs, torch.Tensor) else next(iter(inputs.values()))
    shapes = (
        {"input": list(inputs.shape[1:])}
        if isinstance(inputs, torch.Tensor)
        else {k: list(v.shape[1:]) for k, v in inputs.items()}
    )
    saved_attn, _ = _attn_state(model)
    result: dict[str, Any] = {
        "device": str(device),
        "device_name": _device_name(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "dtype": str(first.dtype).removeprefix("torch."),
        "input_shapes": shapes,
        "warmup": warmup,
        "repeats": repeats,
        "attn_impl": sorted({v for _, v in saved_attn}) or None,
        "params": count_parameters(model),
    }
    moved = device != original
    try:
        if moved:
            model.to(device)
        result["flops"] = count_flops(model, _batch(inputs, 1, device))
        timings = []
        with _eval_mode(model):
            for b in sizes:
                x = _batch(inputs, b, device)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                    torch.cuda.reset_peak_memory_stats(device)
                times = _time(model, x, device, warmup, repeats)
                median = statistics.median(times)
                timings.append(
                    {
                        "batch": b,
                        "median_ms": median,
                        "min_ms": min(times),
                        "max_ms": max(times),
                        "mean_ms": statistics.fmean(times),
                        "images_per_s": b / (median / 1e3) if median > 0 else float("inf"),
                        "peak_memory_mb": torch.cuda.max_memory_allocated(device) / 2**20
                        if device.type == "cuda"
                        else None,
                    }
                )
                del x
    finally:
        if moved:
            model.to(original)
    result["timings"] = timings
    one = next((t for t in timings if t["batch"] == 1), None)
    result["latency_ms"] = (
        {k: one[f"{k}_ms"] for k in ("median", "min", "max", "mean")} | {"batch": 1} if one else None
    )
    largest = timings[-1]
    result["throughput"] = {"batch": largest["batch"], "images_per_s": largest["images_per_s"]}
    peaks = [t["peak_memory_mb"] for t in timings if t["peak_memory_mb"] is not None]
    result["peak_memory_mb"] = max(peaks) if peaks else None
    return result
