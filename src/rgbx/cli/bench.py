"""``rgbx bench``: training images/s, inference latency / throughput, peak memory and MFU of a model under each
speed switch; ``--data`` measures the input pipeline instead."""

from __future__ import annotations

import json
from pathlib import Path

from rgbx.cli.common import (
    add_command,
    add_dataset_arguments,
    add_model_arguments,
    model_config_from_args,
    non_negative_int,
    parse_options,
    parse_size,
    positive_float,
    positive_int,
    resolve_device,
)

EXAMPLES = """  rgbx bench --backbone mit_b2 --fusion cmx --modalities rgb depth --num-classes 40 --head-channels 512
  rgbx bench --backbone mit_b0 --fusion cmx --modalities rgb depth --num-classes 40 --sweep      # which switch gives what
  rgbx bench --config synth_cmx_b0 --num-classes 10 --options exact fast compiled --json bench.json
  rgbx bench --backbone dformer_l --fusion dformer --head ham --modalities rgb depth --num-classes 40 \\
      --device cuda --train-batch 8 --train-size 480x640
  rgbx bench --backbone mit_b2 --fusion cmx --modalities rgb depth --num-classes 40 --head-channels 512 \\
      --what latency --runtimes onnxruntime openvino openvino-bf16      # the exported file, as deployed on this CPU
  rgbx bench --data data/synth --modalities rgb depth --workers 0 2 4 --crop 480x640   # input pipeline
  rgbx bench --data data/synth --modalities rgb depth --workers 4 8 --geometric-on sample batch --device cuda

option sets (--options): exact = fp32, explicit attention, no compilation, PyTorch's default AdamW (the reference
arithmetic); fast = what helps on the device (CUDA: bf16 autocast, fused attention, channels-last, folded head,
bf16 LayerNorms, TF32, fused AdamW, CUDA-graph inference; CPU: fused attention, channels-last, folded head, bf16
where the processor has AMX / AVX-512 BF16); graphed = fast + the whole training step replayed as one CUDA graph
(CUDA only); compiled = fast + torch.compile (on CUDA, inside the graphed training step); custom = exact changed
by the switch flags below. --sweep adds one set per switch of the fast set: exact with only that switch turned on
(torch.compile is measured by the compiled set), for the folded head and the switches that need the low precision
(weights cast once, bf16 LayerNorms) the fast set without that switch, and on CUDA the graphed (or fast) set with
the switch not yet in it (matmul_resize).

Defaults follow the device: on the CPU training at batch 2 on 240x320 and inference at 480x640 (the project's CPU
anchors); on CUDA training at batch 8 on 480x640.
"""

SWITCHES = ("precision", "attn_impl", "channels_last", "fold_head", "tf32", "cudnn_benchmark", "fused_optimizer",
            "cuda_graph", "keep_host_memory")


def add_parser(sub) -> None:
    p = add_command(sub, "bench", "time training and inference under each speed switch",
                    "Build a model with random weights and time a training step (forward + loss + backward + AdamW) "
                    "and inference (latency at batch 1, throughput at a larger batch) under each option set, with "
                    "warm-up and repeats (median / min / max; CUDA events on GPU). Reports images/s, ms, peak "
                    "memory, FLOPs and model FLOPs utilisation. With --data, time the input pipeline instead.",
                    EXAMPLES, run)
    add_model_arguments(p)
    p.add_argument("--size", type=parse_size, default=(480, 640), metavar="HxW",
                   help="inference input size (default 480x640)")
    p.add_argument("--train-size", type=parse_size, metavar="HxW",
                   help="training crop (default: 240x320 on the CPU, 480x640 on CUDA)")
    p.add_argument("--train-batch", type=positive_int, help="training batch (default: 2 on the CPU, 8 on CUDA)")
    p.add_argument("--throughput-batch", type=positive_int, default=8,
                   help="inference batch for throughput (default 8)")
    p.add_argument("--what", nargs="+", choices=("train", "latency", "throughput"),
                   default=["train", "latency", "throughput"], help="what to time (default: all three)")
    p.add_argument("--options", nargs="+", default=["exact", "fast"],
                   choices=("exact", "fast", "graphed", "compiled", "custom"),
                   help="option sets to time (default exact fast)")
    p.add_argument("--sweep", action="store_true", help="also time exact + each single switch of the fast set")
    # rgbx.engine.onnx_model.RUNTIME_VARIANTS, not imported so that --help stays light (a test keeps them equal)
    p.add_argument("--runtimes", nargs="+", default=[], choices=("onnxruntime", "openvino", "openvino-bf16"),
                   help="CPU inference: also the model exported as rgbx export writes it, run by these runtimes "
                        "(rgbx eval / predict FILE.onnx --runtime ...; openvino-bf16: --runtime-precision bf16, on a "
                        "processor with bf16 instructions); rows 'onnx: RUNTIME'")
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"), help="custom set: autocast precision")
    p.add_argument("--attn", choices=("sdpa", "eager"), help="custom set: attention implementation")
    p.add_argument("--channels-last", action="store_true", help="custom set: channels-last memory layout")
    p.add_argument("--fold-head", action="store_true",
                   help="custom set: the head's fusion conv per stage before upsampling (same function)")
    p.add_argument("--fuse-projections", action="store_true",
                   help="custom set: DFormer-style blocks' projections fused, layer scales folded (inference only)")
    p.add_argument("--lowp-norms", action="store_true",
                   help="custom set: LayerNorms in bf16 (with --precision bf16)")
    p.add_argument("--matmul-resize", action="store_true",
                   help="custom set: bilinear resizing as two matrix products (for GPUs)")
    p.add_argument("--keep-host-memory", action="store_true",
                   help="custom set: glibc's malloc keeps freed host memory (no fresh pages for every big tensor)")
    p.add_argument("--compile", action="store_true", help="custom set: torch.compile")
    p.add_argument("--compile-scope", choices=("blocks", "model"), default="blocks",
                   help="what compiled / custom sets compile: each block on its own (default; compiles in a "
                        "fraction of the time) or the whole forward + loss")
    p.add_argument("--compile-mode", help="torch.compile mode for compiled / custom sets (e.g. max-autotune)")
    p.add_argument("--cuda-graph", action="store_true", help="custom set: CUDA-graph inference")
    p.add_argument("--cuda-graph-train", action="store_true",
                   help="custom set: the whole training step captured into one CUDA graph")
    p.add_argument("--tf32", action="store_true", help="custom set: TF32 matmuls (CUDA)")
    p.add_argument("--fused-adamw", action="store_true", help="custom set: fused AdamW")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    p.add_argument("--warmup", type=non_negative_int, default=2, help="untimed calls before timing (default 2)")
    p.add_argument("--repeats", type=positive_int, default=5, help="timed calls (default 5; median reported)")
    p.add_argument("--threads", type=positive_int, help="torch CPU threads (default: torch's)")
    p.add_argument("--peak-tflops", type=positive_float,
                   help="device peak TFLOP/s for MFU (default: datasheet figure of known GPUs; none on CPUs)")
    p.add_argument("--json", type=Path, help="also write the full result as JSON here")
    data = p.add_argument_group("input pipeline (--data)")
    data.add_argument("--data", type=Path, metavar="ROOT", help="time reading + augmenting this dataset instead")
    add_dataset_arguments(data)
    data.add_argument("--split", default="train", help="split to read (default train)")
    data.add_argument("--workers", type=non_negative_int, nargs="+", default=[0, 2],
                      help="loader processes to try (default 0 2)")
    data.add_argument("--batch", type=positive_int, default=8, help="batch size (default 8)")
    data.add_argument("--batches", type=positive_int, default=10,
                      help="timed batches (default 10; at least 4 per worker: twice what the workers prepare ahead)")
    data.add_argument("--crop", type=parse_size, default=(480, 640), metavar="HxW", help="training crop")
    data.add_argument("--geometric-on", nargs="+", choices=["sample", "batch"], default=["sample"],
                      help="where the random resize / crop / flip runs, each tried (default sample): 'sample' in "
                           "the workers, 'batch' on each collated batch on --device, timed with the workers "
                           "(data.geometric_on)")


def option_sets(args, device, fusable: bool = False) -> dict:
    """The named option sets of ``--options`` (and ``--sweep``). ``fusable``: the model has blocks that
    ``fuse_projections`` changes (DFormer-style); the sweep then also times the fast set without it."""
    from rgbx.engine.fastpath import SpeedOptions
    from rgbx.errors import ConfigError

    exact, fast = SpeedOptions.exact(), SpeedOptions.fast(device)
    sets = {}
    for name in args.options:
        if name == "exact":
            sets["exact"] = exact
        elif name == "fast":
            sets["fast"] = fast
        elif name == "graphed":
            if device.type != "cuda":
                raise ConfigError("--options graphed captures CUDA graphs: it needs --device cuda")
            sets["graphed"] = fast.with_(cuda_graph_train=True)
        elif name == "compiled":  # on CUDA inside the captured training step too: uncaptured, the fast step is
            # bound by the host (an H100 was busy 33 % of CMX-B2's step), which would hide what fusion gives
            sets["compiled"] = fast.with_(compile=True, compile_scope=args.compile_scope,
                                          compile_mode=args.compile_mode, cuda_graph_train=device.type == "cuda")
        else:
            sets["custom"] = exact.with_(
                precision=args.precision or exact.precision, attn_impl=args.attn or exact.attn_impl,
                channels_last=args.channels_last, fold_head=args.fold_head, lowp_norms=args.lowp_norms,
                matmul_resize=args.matmul_resize, compile=args.compile, compile_scope=args.compile_scope,
                compile_mode=args.compile_mode, cuda_graph=args.cuda_graph,
                cuda_graph_train=args.cuda_graph_train, tf32=args.tf32,
                fused_optimizer=args.fused_adamw or exact.fused_optimizer, fuse_projections=args.fuse_projections,
                keep_host_memory=args.keep_host_memory)
    if args.sweep:  # the rows around the fast set first: a sweep cut off by a time limit keeps those
        if fast.matmul_resize:  # what it gives, on the captured step where there is one (the uncaptured step is
            # bound by the host on fast GPUs, which would hide a device-side saving)
            base = "graphed" if "graphed" in sets else "fast"
            sets[f"{base} - matmul_resize"] = sets.get(base, fast).with_(matmul_resize=False)
        for switch in ("cast_weights", "lowp_norms"):  # need the low precision: measured as the fast set without
            if getattr(fast, switch):
                sets[f"fast - {switch}"] = fast.with_(**{switch: False})
        if fusable and fast.fuse_projections:
            sets["fast - fuse_projections"] = fast.with_(fuse_projections=False)
        # what the folded head saves under the fast set's precision (exact + fold_head measures it in fp32)
        sets["fast - fold_head"] = fast.with_(fold_head=False)
        for switch in SWITCHES:
            value = getattr(fast, switch)
            if value == getattr(exact, switch) or (switch == "cuda_graph" and device.type != "cuda"):
                continue
            sets[f"exact + {switch}"] = exact.with_(**{switch: value})
    return sets


def _cell(entry: dict | None, key: str, fmt: str) -> str:
    if not entry:
        return "-"
    return fmt.format(entry[key]) if entry.get(key) is not None else "-"


def _console():
    from rgbx.engine.report import wide_console

    return wide_console(200)  # logs and pipes: no wrapping of the wide table


def print_bench(result: dict, title: str) -> None:
    from rich.table import Table

    table = Table(title=title)
    for col in ("options", "train img/s", "×", "train ms (min-max)", "train peak MiB", "train MFU",
                "latency ms (min-max)", "×", "throughput img/s", "infer MFU"):
        table.add_column(col, justify="left" if col == "options" else "right")
    base = next((r for r in result["results"].values() if "error" not in r), {})
    for label, r in result["results"].items():
        if "error" in r:
            table.add_row(f"{label} [dim]({r['describe']})[/dim]: FAILED {r['error'][:80]}", *["-"] * 9)
            continue
        tr, lat, thr = r.get("train"), r.get("latency"), r.get("throughput")
        speedup = f"{tr['images_per_s'] / base['train']['images_per_s']:.2f}" if tr and base.get("train") else "-"
        lat_x = f"{base['latency']['median_ms'] / lat['median_ms']:.2f}" if lat and base.get("latency") else "-"
        table.add_row(
            f"{label} [dim]({r['describe']})[/dim]",
            _cell(tr, "images_per_s", "{:.2f}"), speedup,
            f"{tr['median_ms']:.1f} ({tr['min_ms']:.1f}-{tr['max_ms']:.1f})" if tr else "-",
            _cell(tr, "peak_memory_mb", "{:.0f}"), _cell(tr, "mfu", "{:.1%}"),
            f"{lat['median_ms']:.2f} ({lat['min_ms']:.2f}-{lat['max_ms']:.2f})" if lat else "-", lat_x,
            _cell(thr, "images_per_s", "{:.1f}"), _cell(thr or lat, "mfu", "{:.1%}"),
        )
    console = _console()
    console.print(table)
    flops = result["flops"]
    parts = [f"{result['params'] / 1e6:.2f} M parameters"]
    if "fwd_per_image" in flops:
        parts.append(f"forward {flops['fwd_per_image'] / 1e9:.3g} GFLOP/image at {result['size']}")
    if "train_fwd_per_image" in flops:
        parts.append(f"training forward {flops['train_fwd_per_image'] / 1e9:.3g} GFLOP/image at "
                     f"{result['train_size']} (step = 3x)")
    parts.append(f"{result['warmup']} warm-up + {result['repeats']} timed calls, median; × = speed relative to "
                 f"the first row; device {result['device_name']}, torch {result['torch']}, "
                 f"{result['threads']} threads")
    console.print("; ".join(parts))


def run_data(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from rgbx.data import build_dataset
    from rgbx.data.transforms import TrainTransform
    from rgbx.engine.bench import bench_data
    from rgbx.errors import ConfigError

    dataset = build_dataset(args.dataset, args.data, args.split, modalities=args.modalities,
                            **parse_options(args.option))
    device = resolve_device(args.device)
    rows = []
    for where in args.geometric_on:
        dataset.transform = TrainTransform(crop_size=args.crop, ignore_index=dataset.description.ignore_index,
                                           geometric_on=where)
        step = dataset.transform.batch_geometry() if where == "batch" else None
        for workers in args.workers:
            try:
                rows.append(bench_data(dataset, args.batch, workers, args.batches, batch_transform=step,
                                       device=device))
            except ValueError as e:
                raise ConfigError(str(e)) from None
    table = Table(title=f"input pipeline: {args.data} ({args.split}, {len(dataset)} samples, "
                        f"{'+'.join(dataset.sources)}, crop {args.crop[0]}x{args.crop[1]})")
    for col in ("geometric on", "workers", "batch", "samples/s", "ms / batch"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(r["geometric_on"], str(r["workers"]), str(r["batch"]), f"{r['samples_per_s']:.1f}",
                      f"{1e3 * r['seconds'] / r['batches']:.0f}")
    Console().print(table)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"data": str(args.data), "results": rows}, indent=2))
    return 0


def print_progress(label: str, entry: dict) -> None:
    """One line per option set as it finishes (the table comes at the end)."""
    if "error" in entry:
        print(f"{label}: FAILED: {entry['error']}", flush=True)
        return
    parts = [f"train {entry['train']['images_per_s']:.2f} img/s"] if "train" in entry else []
    if "latency" in entry:
        parts.append(f"latency {entry['latency']['median_ms']:.2f} ms")
    if "throughput" in entry:  # as the table gives it (img/s), with the median time of the batch it comes from
        thr = entry["throughput"]
        parts.append(f"throughput {thr['images_per_s']:.1f} img/s (batch {thr['batch']}: {thr['median_ms']:.2f} ms)")
    print(f"{label}: {', '.join(parts)}", flush=True)


def run(args) -> int:
    import torch

    from rgbx.engine.bench import bench_model, peak_tflops
    from rgbx.engine.profile import _device_name
    from rgbx.errors import ConfigError
    from rgbx.models import create_model

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.data is not None:
        return run_data(args)
    if args.repeats < 1 or args.warmup < 0:
        raise ConfigError("--repeats must be >= 1 and --warmup >= 0")
    config = model_config_from_args(args)
    device = resolve_device(args.device)
    cpu = device.type == "cpu"
    train_size = args.train_size or ((240, 320) if cpu else tuple(args.size))
    train_batch = args.train_batch or (2 if cpu else 8)
    if args.runtimes and not cpu:
        raise ConfigError(f"--runtimes runs the exported file on the CPU; drop it or use --device cpu (not {device})")
    if args.runtimes and not {"latency", "throughput"} & set(args.what):
        raise ConfigError("--runtimes times inference: add latency or throughput to --what")
    fusable = args.sweep and any(hasattr(m, "fuse_for_inference") for m in create_model(config).modules())
    sets = option_sets(args, device, fusable)
    compiling = any(o.compile for o in sets.values())
    if compiling:
        report_compile_on_termination()
    result = bench_model(lambda: create_model(config), config.modalities, config.num_classes, sets, device=device,
                         size=tuple(args.size), train_size=train_size, train_batch=train_batch,
                         throughput_batch=args.throughput_batch, warmup=args.warmup, repeats=args.repeats,
                         what=args.what, peak=args.peak_tflops, on_result=print_progress)
    if args.runtimes:
        from rgbx.engine.bench import bench_runtimes

        result["results"].update(bench_runtimes(
            lambda: create_model(config), config.modalities, args.runtimes, size=tuple(args.size),
            throughput_batch=args.throughput_batch, warmup=args.warmup, repeats=args.repeats, what=args.what,
            flops_per_image=result["flops"].get("fwd_per_image"), threads=torch.get_num_threads(),
            on_result=print_progress))
    result.update(model=config.to_dict(), device=str(device), device_name=_device_name(device),
                  torch=torch.__version__, threads=torch.get_num_threads(), warmup=args.warmup,
                  repeats=args.repeats, size="x".join(map(str, args.size)),
                  train_size="x".join(map(str, train_size)),
                  peak_tflops={k: args.peak_tflops or peak_tflops(device, o.precision, o.tf32) for k, o in sets.items()},
                  runtimes=list(args.runtimes))
    title = (f"{config.backbone} + {config.fusion} + {config.head}, {'+'.join(config.modalities)}, "
             f"{config.num_classes} classes; train batch {train_batch} at {result['train_size']}, inference at "
             f"{result['size']}")
    print_bench(result, title)
    if compiling:
        from rgbx.engine.fastpath import compile_report

        print(compile_report(), flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    failed = {label: entry["error"] for label, entry in result["results"].items() if "error" in entry}
    if failed and len(failed) == len(result["results"]):  # nothing measured: not a benchmark that ran
        label, error = next(iter(failed.items()))
        hint = (f" (--train-batch {train_batch} at --train-size {result['train_size']} leaves a 1×1 map at the "
                f"deepest stage for BatchNorm: use --train-batch 2 or more, or a larger --train-size)"
                if "Expected more than 1 value per channel" in error else "")
        raise ConfigError(f"every option set failed; {label}: {error}{hint}")
    return 0


def report_compile_on_termination() -> None:
    """On SIGTERM (e.g. ``timeout`` ending a compilation that takes too long) print where the compile time went,
    then exit with status 124 as ``timeout`` would. The exit is immediate (``os._exit``): a ``SystemExit`` raised
    in the middle of inductor's code was caught and printed there, and compilation went on for another 43 s."""
    import os
    import signal
    import sys

    def handler(signum, frame):
        from rgbx.engine.fastpath import compile_report

        print(f"stopped by signal {signum} while running; {compile_report()}", flush=True)
        sys.stderr.flush()
        os._exit(124)

    signal.signal(signal.SIGTERM, handler)
    print("compiling: a SIGTERM (a time limit) now ends the run with where the compile time went", flush=True)
