"""Reference code and rgbx side by side: same architecture, same weights, same process, same machine.

The references are the authors' public repositories. Fetch them yourself, outside rgbx (nothing of them is committed
here)::

    git clone https://github.com/huaaaliu/RGBX_Semantic_Segmentation /tmp/cmx_ref     # CMX
    git clone https://github.com/VCIP-RGBD/DFormer /tmp/dformer_ref                    # DFormer

    # CPU anchors (2 threads): batch-1 latency at 480x640, training at batch 2 on 240x320
    python benchmarks/compare_reference.py --cmx /tmp/cmx_ref --models cmx_b0 cmx_b2 --threads 2
    # GPU: training at batch 8 on 480x640, fp32 and bf16, latency at batch 1
    python benchmarks/compare_reference.py --cmx /tmp/cmx_ref --dformer /tmp/dformer_ref --device cuda \\
        --models cmx_b0 cmx_b2 cmx_b4 dformer_t dformer_s dformer_b dformer_l --markdown benchmarks/gpu.md

Per model: the reference model is built with random weights (every tensor randomised, BN statistics included), its
state dict is converted into the same rgbx architecture, and the logits of both are compared in fp32 eval mode
(TF32 off) on one random input: the check fails (and the script exits 1) when the max abs difference exceeds
``--tolerance``. Then each candidate is timed:

* ``reference fp32`` / ``reference bf16``: the reference model, ``nn.CrossEntropyLoss(ignore_index=255)`` and
  ``torch.optim.AdamW`` as its training script uses them (bf16 = the same code under ``torch.autocast``); inference
  under ``torch.no_grad`` as its evaluator does.
* ``rgbx exact``: :meth:`SpeedOptions.exact` (fp32, explicit attention, per-tensor AdamW);
* ``rgbx fast``: :meth:`SpeedOptions.fast` for the device (CUDA: bf16, SDPA, channels-last, TF32, fused AdamW and
  CUDA-graph inference; CPU: SDPA, bf16 where the processor has AMX / AVX-512 BF16);
* ``rgbx compiled`` (``--compile``): fast + ``torch.compile`` of forward + loss;
* ``rgbx graphed`` (``--graph-train``, CUDA, training only): fast with the whole training step replayed as one CUDA
  graph (:class:`rgbx.engine.fastpath.CudaGraphTrainStep`).

On the CPU the candidates are timed alternately, one call each per round (:func:`rgbx.engine.bench.time_alternating`),
so that the ratios hold on a noisy shared machine, each timed call right after an untimed one of the same candidate
(``--settle``). The host allocator is process-wide: the reference runs with glibc's settings (as they stand after
its warm-up: :mod:`rgbx.engine.host_memory`), as in its own scripts, and rgbx with its option set's (the CPU fast set
keeps freed host memory, ``keep_host_memory``; exact does not). The reference may still reuse heap memory that an
rgbx candidate left, which can only favour it. ``--reference-keeps-host-memory`` gives the reference the fast set's
setting, for the ratio of the code alone. On CUDA each candidate runs alone (they would not all fit in
memory at once), timed with CUDA events, and its peak memory is measured: the peak allocated during two calls minus
what was allocated before the candidate was built (so its own weights, gradients, optimizer state and activations). Ratios are rgbx ÷ reference speed (> 1 =
rgbx faster); training ratios are against the reference in the same precision class (exact vs reference fp32, fast
vs the better of reference fp32 / bf16).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

import references  # noqa: E402  (benchmarks/references.py)

from rgbx.cli.common import add_timing_arguments, parse_size, settle_from_args  # noqa: E402
from rgbx.engine.bench import make_inference, make_train_step, peak_tflops, time_alternating  # noqa: E402
from rgbx.engine.fastpath import SpeedOptions, autocast, describe_cpu  # noqa: E402
from rgbx.engine.host_memory import set_keep_host_memory  # noqa: E402
from rgbx.engine.onnx_model import RUNTIME_VARIANTS, open_runtime_variant  # noqa: E402
from rgbx.engine.profile import count_flops  # noqa: E402
from rgbx.models import create_model  # noqa: E402

MODELS = {
    "cmx_b0": ("cmx", "mit_b0"),
    "cmx_b2": ("cmx", "mit_b2"),
    "cmx_b4": ("cmx", "mit_b4"),
    "dformer_t": ("dformer", "t"),
    "dformer_s": ("dformer", "s"),
    "dformer_b": ("dformer", "b"),
    "dformer_l": ("dformer", "l"),
    "omni_t": ("omni", "omni_t"),
    "omni_s": ("omni", "omni_s"),
}
NUM_CLASSES = 40


# -- references -----------------------------------------------------------------------------------------------------
class DFormerReference(nn.Module):
    """DFormer's EncoderDecoder forward (encoder → LightHamHead → bilinear resize to the input), as its builder."""

    def __init__(self, encoder: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone, self.decode_head = encoder, head

    def forward(self, rgb, x):
        outs, _ = self.backbone(rgb, x)
        return F.interpolate(self.decode_head(outs), size=rgb.shape[-2:], mode="bilinear", align_corners=False)


NMF_DEVICE = {"device": "cpu"}


def build_dformer_pair(root: Path, variant: str, device: torch.device, seed: int):
    import importlib

    import parity_dformer as pd

    from rgbx.models.weights import load_strict

    if str(root) not in sys.path:
        pd._install_stubs()
        sys.path.insert(0, str(root))
    encoders = importlib.import_module("models.encoders.DFormer")
    ham = importlib.import_module("models.decoders.ham_head")
    # The original draws the NMF bases on the CPU and moves them with .cuda() unconditionally; here they go to
    # wherever the reference currently runs (the CPU for the agreement check, then the timing device).
    def build_bases(self, B, S, D, R, cuda=False):
        return F.normalize(torch.rand((B * S, D, R)).to(NMF_DEVICE["device"]), dim=1)

    ham.NMF2D._build_bases = build_bases
    gen = torch.Generator().manual_seed(seed)
    with pd._quiet():
        enc = getattr(encoders, pd.REF_FACTORIES[variant])(drop_path_rate=0.1, norm_cfg=dict(type="BN"))
    references.randomize(enc, gen)
    dims = [int(enc.stages[i][0].layer_scale_1.numel()) for i in range(4)]
    with pd._quiet():
        head = ham.LightHamHead(in_channels=dims[1:], num_classes=NUM_CLASSES, in_index=[1, 2, 3],
                                norm_cfg=dict(type="BN"), channels=512)
    references.randomize(head, gen)
    model = create_model(backbone=f"dformer_{variant}", fusion="dformer", head="ham", modalities=["rgb", "depth"],
                         num_classes=NUM_CLASSES, head_channels=512)
    load_strict(model.encoder.encoder, enc.state_dict(), "reference encoder")
    load_strict(model.head, head.state_dict(), "reference head")
    return DFormerReference(enc, head), model


def build_cmx_pair(root: Path, backbone: str, device: torch.device, seed: int):
    torch.manual_seed(seed)
    reference = references.build_cmx_reference(root, backbone=backbone, num_classes=NUM_CLASSES, embed_dim=512)
    references.randomize(reference, torch.Generator().manual_seed(seed))
    model = references.cmx_to_rgbx(reference, modalities=("rgb", "depth"))
    return reference, model


# -- measurement ----------------------------------------------------------------------------------------------------
@dataclass
class Inputs:
    rgb: torch.Tensor
    depth: torch.Tensor
    label: torch.Tensor

    @classmethod
    def random(cls, batch: int, size: tuple[int, int], device: torch.device, seed: int) -> Inputs:
        gen = torch.Generator().manual_seed(seed)
        h, w = size
        return cls(torch.randn(batch, 3, h, w, generator=gen).to(device),
                   torch.randn(batch, 1, h, w, generator=gen).to(device),
                   torch.randint(0, NUM_CLASSES, (batch, h, w), generator=gen).to(device))

    @property
    def rgbx(self) -> dict[str, torch.Tensor]:
        return {"rgb": self.rgb, "depth": self.depth}

    @property
    def x3(self) -> torch.Tensor:  # the references read the depth as a 3-channel image
        return self.depth.expand(-1, 3, -1, -1).contiguous()


def reference_train_step(ref: nn.Module, data: Inputs, precision: str,
                         keep_host_memory: bool = False) -> Callable[[], torch.Tensor]:
    device = data.rgb.device
    ref.train()
    optimizer = torch.optim.AdamW(ref.parameters(), lr=6e-5, betas=(0.9, 0.999), weight_decay=0.01)
    criterion = nn.CrossEntropyLoss(reduction="mean", ignore_index=255)
    x3 = data.x3

    def step() -> torch.Tensor:
        set_keep_host_memory(keep_host_memory)  # as the reference's own process would have it: glibc's default
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, precision):
            loss = criterion(ref(data.rgb, x3).float(), data.label)
        loss.backward()
        optimizer.step()
        return loss.detach()

    return step


def reference_inference(ref: nn.Module, data: Inputs, keep_host_memory: bool = False) -> Callable[[], torch.Tensor]:
    ref.eval()
    x3 = data.x3

    def run() -> torch.Tensor:
        set_keep_host_memory(keep_host_memory)
        with torch.no_grad():
            return ref(data.rgb, x3)

    return run


@contextlib.contextmanager
def no_tf32():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def agreement(ref: nn.Module, model: nn.Module, data: Inputs, seed: int) -> float:
    """Max abs difference of the logits in fp32 eval mode with TF32 off. A Ham head draws its NMF bases at random
    in the reference: rgbx's head is switched to random bases too and both draw from the same seed (the same
    numbers only on the CPU, where both use the CPU generator)."""
    ref.eval()
    model.eval()
    nmf = getattr(getattr(model.head, "hamburger", None), "ham", None)
    saved = (nmf.eval_init if nmf is not None else None), model.config.attn_impl
    model.set_attn_impl("eager")
    if nmf is not None:
        nmf.eval_init = "random"
    try:
        with torch.no_grad(), no_tf32():
            torch.manual_seed(seed)
            a = ref(data.rgb[:1], data.x3[:1])
            torch.manual_seed(seed)
            b = model({"rgb": data.rgb[:1], "depth": data.depth[:1]}).logits
    finally:
        if nmf is not None:
            nmf.eval_init = saved[0]
        model.set_attn_impl(saved[1])
    return (a - b).abs().max().item()


def measure(factories: dict[str, Callable[[], Callable]], device: torch.device, warmup: int, repeats: int,
            alternate: bool, optional: Sequence[str] = (), settle: int = 0) -> dict[str, dict]:
    """name → {"timing": Timing, "peak_gib": float|None, "seconds": {"build": s, "timed": s}}. ``factories`` build
    the callable (and its model); a candidate named in ``optional`` that fails is reported and left out instead of
    failing the model. On CUDA the peak memory is the most allocated while the candidate was built and run (its
    warm-up and timed calls, a CUDA graph's capture included), above what was allocated before."""
    out: dict[str, dict] = {}
    if alternate:
        fns = {name: make() for name, make in factories.items()}
        for name, t in time_alternating(fns, device, warmup, repeats, settle).items():
            out[name] = {"timing": t, "peak_gib": None}
        return out
    cuda = device.type == "cuda"
    for name, make in factories.items():
        if cuda:
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device) if cuda else 0
        t0 = time.perf_counter()
        try:
            fn = make()
            t1 = time.perf_counter()
            t = time_alternating({name: fn}, device, warmup, repeats)[name]
        except Exception as e:  # an optional candidate (the graphed step) failing must not lose the others
            if name not in optional:
                raise
            print(f"{name}: FAILED: {type(e).__name__}: {e}", flush=True)
            fn = None
            if cuda:
                torch.cuda.synchronize(device)
                torch.cuda.empty_cache()
            continue
        peak = None
        if cuda:
            torch.cuda.synchronize(device)
            peak = (torch.cuda.max_memory_allocated(device) - base) / 2**30
        seconds = {"build": t1 - t0, "timed": time.perf_counter() - t1}
        # where a model's minutes go (building, cuDNN autotuning and first calls, capture) for the suite's budget
        print(f"  {name}: built in {seconds['build']:.1f} s, warm-up + timed calls {seconds['timed']:.1f} s",
              flush=True)
        out[name] = {"timing": t, "peak_gib": peak, "seconds": seconds}
        del fn
        if cuda:
            torch.cuda.empty_cache()
    return out


def run_model(name: str, args, device: torch.device) -> dict:
    kind, variant = MODELS[name]
    seed = args.seed
    phases, t0 = {}, time.perf_counter()

    def phase(label: str) -> None:  # seconds spent since the previous phase, for the log
        nonlocal t0
        phases[label] = time.perf_counter() - t0
        t0 = time.perf_counter()
    if kind == "cmx":
        ref, model = build_cmx_pair(args.cmx, variant, device, seed)
    elif kind == "dformer":
        ref, model = build_dformer_pair(args.dformer, variant, device, seed)
    else:
        ref, model = None, create_model(backbone=variant, fusion="omni", head="ham", modalities=["rgb", "depth"],
                                        num_classes=NUM_CLASSES, head_channels=512)
    phase("build")
    params = sum(p.numel() for p in model.parameters())
    flop_data = Inputs.random(1, tuple(args.train_size), torch.device("cpu"), seed)
    fwd_flops_train = count_flops(model, flop_data.rgbx)["flops"]
    fwd_flops_infer = count_flops(model, Inputs.random(1, tuple(args.size), torch.device("cpu"), seed).rgbx)["flops"]
    result: dict = {"model": name, "params": params, "fwd_gflop_train_size": fwd_flops_train / 1e9,
                    "fwd_gflop": fwd_flops_infer / 1e9, "phase_s": phases}
    phase("flops")
    NMF_DEVICE["device"] = torch.device("cpu")
    if ref is not None:  # on the CPU first (same random NMF bases there), then on the device for the others
        check = Inputs.random(1, tuple(args.check_size or args.size), torch.device("cpu"), seed + 1)
        result["max_abs_diff"] = agreement(ref, model, check, seed)
        ref = ref.to(device)
        NMF_DEVICE["device"] = device
    model = model.to(device)
    if ref is not None and device.type != "cpu" and kind != "dformer":
        check = Inputs.random(1, tuple(args.size), device, seed + 1)
        result["max_abs_diff_device"] = agreement(ref, model, check, seed)
    if ref is not None:
        result["agrees"] = max(result["max_abs_diff"], result.get("max_abs_diff_device", 0.0)) <= args.tolerance
    phase("agreement")
    exact, fast = SpeedOptions.exact(), SpeedOptions.fast(device)
    sets = {"rgbx exact": exact, "rgbx fast": fast}
    if args.compile:
        sets["rgbx compiled"] = fast.with_(compile=True)

    def rgbx_train(opts):
        return lambda: make_train_step(copy.deepcopy(model), train.rgbx, train.label, opts)

    def rgbx_infer(opts):
        return lambda: make_inference(copy.deepcopy(model), infer.rgbx, opts)

    alternate = device.type == "cpu"
    settle = settle_from_args(args, device)
    keep = args.reference_keeps_host_memory
    if "train" in args.what:
        train = Inputs.random(args.train_batch, tuple(args.train_size), device, seed + 2)
        factories = {}
        if ref is not None:
            factories["reference fp32"] = lambda: reference_train_step(copy.deepcopy(ref), train, "fp32", keep)
            if device.type == "cuda" or args.reference_bf16:
                factories["reference bf16"] = lambda: reference_train_step(copy.deepcopy(ref), train, "bf16", keep)
        factories.update({k: rgbx_train(o) for k, o in sets.items()})
        if args.graph_train and device.type == "cuda":
            factories["rgbx graphed"] = rgbx_train(fast.with_(cuda_graph_train=True))
        result["train"] = measure(factories, device, args.warmup, args.repeats, alternate, optional=["rgbx graphed"],
                                  settle=settle)
        phase("train")
    if "latency" in args.what:
        infer = Inputs.random(1, tuple(args.size), device, seed + 3)
        factories = {}
        if ref is not None:
            factories["reference fp32"] = lambda: reference_inference(copy.deepcopy(ref), infer, keep)
        factories.update({k: rgbx_infer(o) for k, o in sets.items()})
        for runtime in args.runtimes:
            factories[f"rgbx {runtime}"] = runtime_inference(model, infer, runtime, args)
        result["latency"] = measure(factories, device, args.warmup, args.repeats, alternate, settle=settle)
        phase("latency")
    result["options"] = {k: o.describe() for k, o in sets.items()}
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def runtime_inference(model, infer, runtime: str, args) -> Callable[[], Callable]:
    """The rgbx model exported as rgbx export writes it (folded head; fixed batch-1 shape at the latency size) and
    run by ``runtime`` (rgbx.engine.onnx_model.OnnxSegmentor), as ``rgbx eval / predict FILE.onnx`` run it;
    ``openvino-bf16``: OpenVINO computing in bf16 (``--runtime openvino --runtime-precision bf16``)."""
    import tempfile

    from rgbx.engine.export import export_onnx

    def make() -> Callable:
        folder = Path(tempfile.mkdtemp(prefix="rgbx_runtime_"))
        path = export_onnx(copy.deepcopy(model).cpu(), folder / "model.onnx", size=tuple(args.size), dynamic=False,
                           batch=1, exporter="torchscript")
        session = open_runtime_variant(path, runtime, threads=torch.get_num_threads())
        return lambda: session(infer.rgbx).logits

    return make


# -- report ---------------------------------------------------------------------------------------------------------
def _ips(r: dict, name: str, batch: int) -> float | None:
    e = r.get("train", {}).get(name)
    return e["timing"].per_second(batch) if e else None


def _ms(r: dict, name: str) -> float | None:
    e = r.get("latency", {}).get(name)
    return e["timing"].median_ms if e else None


def _fmt(v, spec=".1f", suffix=""):
    return "–" if v is None else f"{v:{spec}}{suffix}"


def report(results: list[dict], args, device: torch.device) -> str:
    b = args.train_batch
    peak = peak_tflops(device, "bf16")
    lines = []
    head = ("| model | params | fwd GFLOP | agree (max abs) | ref train fp32 | ref train bf16 | rgbx exact train | "
            "rgbx fast train | fastest rgbx ÷ best ref | ref latency ms | rgbx exact latency | rgbx fast latency | "
            "fast ÷ ref latency | ref peak GiB | fastest rgbx peak GiB | fastest rgbx MFU |")
    lines += [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        ref32, ref16 = _ips(r, "reference fp32", b), _ips(r, "reference bf16", b)
        ex, fa = _ips(r, "rgbx exact", b), _ips(r, "rgbx fast", b)
        comp, graphed = _ips(r, "rgbx compiled", b), _ips(r, "rgbx graphed", b)
        best_ref = max([v for v in (ref32, ref16) if v], default=None)
        candidates = {"rgbx fast": fa, "rgbx compiled": comp, "rgbx graphed": graphed}
        fastest = max((k for k, v in candidates.items() if v), key=candidates.get, default=None)
        fast_best = candidates[fastest] if fastest else None
        lref, lex, lfa = _ms(r, "reference fp32"), _ms(r, "rgbx exact"), _ms(r, "rgbx fast")
        ref_peak = (r.get("train", {}).get("reference bf16") or r.get("train", {}).get("reference fp32") or {})
        fast_peak = r.get("train", {}).get(fastest, {}) if fastest else {}  # a graph's capture included
        mfu = (3 * r["fwd_gflop_train_size"] * fast_best / 1e3 / peak) if (peak and fast_best) else None
        fast_cell = (_fmt(fa) + (f" (compiled {comp:.1f})" if comp else "")
                     + (f" (graphed {graphed:.1f})" if graphed else ""))
        diff = max(r.get("max_abs_diff", 0.0), r.get("max_abs_diff_device", 0.0))
        agree = f"{diff:.1e} {'ok' if r['agrees'] else 'FAIL'}" if "agrees" in r else "no reference"
        lines.append(
            f"| {r['model']} | {r['params'] / 1e6:.2f} M | {r['fwd_gflop']:.1f} | {agree} | {_fmt(ref32)} | "
            f"{_fmt(ref16)} | {_fmt(ex)} | {fast_cell} | "
            f"{_fmt(fast_best / best_ref if fast_best and best_ref else None, '.2f', '×')} | {_fmt(lref)} | "
            f"{_fmt(lex)} | {_fmt(lfa, '.2f')} | {_fmt(lref / lfa if lref and lfa else None, '.2f', '×')} | "
            f"{_fmt(ref_peak.get('peak_gib'))} | {_fmt(fast_peak.get('peak_gib'))} | "
            f"{_fmt(100 * mfu if mfu else None, '.1f', ' %')} |")
    runtimes = [f"rgbx {variant}" for variant in RUNTIME_VARIANTS if any(_ms(r, f"rgbx {variant}") for r in results)]
    if runtimes:
        head = ("| model | ref latency ms | rgbx fast | " + " | ".join(runtimes) + " | "
                + " | ".join(f"{name.split()[1]} ÷ ref" for name in runtimes) + " |")
        lines += ["", "The exported file (rgbx export, fixed batch-1 shape) in each runtime, same calls alternated:", "",
                  head, "|" + "---|" * (head.count("|") - 1)]
        for r in results:
            lref = _ms(r, "reference fp32")
            values = [_ms(r, name) for name in runtimes]
            ratios = [_fmt(lref / v if lref and v else None, ".2f", "×") for v in values]
            lines.append(f"| {r['model']} | {_fmt(lref)} | {_fmt(_ms(r, 'rgbx fast'))} | "
                         + " | ".join(_fmt(v) for v in values) + " | " + " | ".join(ratios) + " |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cmx", type=Path, help="a checkout of github.com/huaaaliu/RGBX_Semantic_Segmentation")
    p.add_argument("--dformer", type=Path, help="a checkout of github.com/VCIP-RGBD/DFormer")
    p.add_argument("--models", nargs="+", default=["cmx_b0", "cmx_b2"], choices=list(MODELS))
    p.add_argument("--device", default="cpu")
    p.add_argument("--size", type=parse_size, default=(480, 640),
                   help="inference size HxW (default 480x640)")
    p.add_argument("--train-size", type=parse_size,
                   help="training size HxW (default 240x320 on the CPU, 480x640 on CUDA)")
    p.add_argument("--train-batch", type=int, help="training batch (default 2 on the CPU, 8 on CUDA)")
    p.add_argument("--what", nargs="+", default=["train", "latency"], choices=("train", "latency"))
    add_timing_arguments(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--check-size", type=parse_size,
                   help="size of the CPU agreement check (default: --size)")
    p.add_argument("--tolerance", type=float, default=1e-3, help="max abs logit difference allowed (default 1e-3)")
    p.add_argument("--compile", action="store_true", help="also time rgbx fast + torch.compile")
    p.add_argument("--graph-train", action="store_true",
                   help="CUDA: also time rgbx fast with the whole training step replayed as one CUDA graph")
    p.add_argument("--reference-bf16", action="store_true", help="on the CPU also time the reference under bf16")
    p.add_argument("--reference-keeps-host-memory", action="store_true",
                   help="give the reference the host allocator setting of rgbx's CPU fast set (keep_host_memory; "
                        "default: glibc's own, as the reference's scripts run): the ratio of the code alone")
    p.add_argument("--runtimes", nargs="+", default=[], choices=RUNTIME_VARIANTS,
                   help="CPU latency: also the model exported to ONNX and run by these runtimes (rgbx eval / predict "
                        "FILE.onnx --runtime ...; openvino-bf16: --runtime openvino --runtime-precision bf16, on a "
                        "processor with bf16 instructions); openvino: pip install 'rgbx[openvino]'")
    p.add_argument("--budget-s", type=float, help="stop starting new models after this many seconds")
    p.add_argument("--markdown", type=Path, help="write the table (with the command and device) here")
    p.add_argument("--json", type=Path, help="write all figures here")
    args = p.parse_args()
    device = torch.device(args.device)
    cpu = device.type == "cpu"
    args.train_size = args.train_size or ((240, 320) if cpu else args.size)
    args.train_batch = args.train_batch or (2 if cpu else 8)
    if args.runtimes and not cpu:
        p.error("--runtimes runs the exported file on the CPU: use it with --device cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    for name in args.models:
        kind = MODELS[name][0]
        if kind == "cmx" and not (args.cmx and (args.cmx / "models" / "net_utils.py").is_file()):
            p.error(f"{name} needs --cmx pointing to a RGBX_Semantic_Segmentation checkout (see --help)")
        if kind == "dformer" and not (args.dformer and (args.dformer / "models" / "encoders" / "DFormer.py").is_file()):
            p.error(f"{name} needs --dformer pointing to a DFormer checkout (see --help)")
    start = time.perf_counter()
    results, skipped = [], []
    for name in args.models:
        if args.budget_s and time.perf_counter() - start > args.budget_s:
            skipped.append(name)
            continue
        t0 = time.perf_counter()
        try:
            r = run_model(name, args, device)
        except Exception as e:  # one model failing must not lose the others' figures
            print(f"{name}: FAILED: {type(e).__name__}: {e}", flush=True)
            results.append({"model": name, "error": f"{type(e).__name__}: {e}"})
            continue
        r["seconds"] = time.perf_counter() - t0
        results.append(r)
        spent = ", ".join(f"{k} {v:.0f} s" for k, v in r["phase_s"].items())
        print(f"{name}: done in {r['seconds']:.0f} s ({spent}); agreement {r.get('max_abs_diff')}", flush=True)
        print(report([r], args, device), flush=True)
    ok = [r for r in results if "error" not in r]
    table = report(ok, args, device)
    dev = (torch.cuda.get_device_name(device) if device.type == "cuda"
           else f"CPU {describe_cpu()}, {torch.get_num_threads()} threads")
    header = (f"device: {dev}; torch {torch.__version__}; training batch {args.train_batch} at "
              f"{args.train_size[0]}x{args.train_size[1]} (forward + loss + backward + AdamW), latency batch 1 at "
              f"{args.size[0]}x{args.size[1]}; {args.warmup} warm-up + {args.repeats} timed calls, median; "
              f"{'candidates alternated call by call' if cpu else 'each candidate alone, CUDA events'}; "
              f"train columns in images/s; 40 classes, RGB-D, random weights")
    print(header)
    print(table)
    for r in results:
        if "error" in r:
            print(f"{r['model']}: FAILED: {r['error']}")
    if skipped:
        print(f"skipped (time budget {args.budget_s:.0f} s): {', '.join(skipped)}")
    print(f"total {time.perf_counter() - start:.0f} s")
    if args.markdown:
        opts = next((r["options"] for r in ok), {})
        text = [header, "", "rgbx option sets: " + "; ".join(f"{k} = {v}" for k, v in opts.items()), "", table]
        if skipped:
            text.append(f"\nskipped (time budget): {', '.join(skipped)}")
        for r in results:
            if "error" in r:
                text.append(f"\n{r['model']}: FAILED: {r['error']}")
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text("\n".join(text) + "\n")
    if args.json:
        def plain(v):
            if hasattr(v, "to_dict"):
                return v.to_dict()
            if isinstance(v, dict):
                return {k: plain(x) for k, x in v.items()}
            return v
        args.json.write_text(json.dumps([plain(r) for r in results], indent=2))
    failed = [r for r in ok if r.get("agrees") is False] or [r for r in results if "error" in r]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
