"""Where the time of one rgbx training step (or inference pass) goes: torch.profiler over a few steps, the top
operators by their own device time, and how much of the wall time the device was busy (a step whose kernels add up
to far less than its wall time is bound by the host: launches, synchronisation, Python).

    python benchmarks/profile_step.py --backbone mit_b2 --fusion cmx --device cuda --options fast
    python benchmarks/profile_step.py --backbone mit_nano --fusion cmx --device cpu --size 64x64 --batch 2
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

from rgbx.cli.common import CMX_B2_RGBD, add_model_arguments, model_config_from_args, parse_size
from rgbx.engine.bench import make_inference, make_train_step
from rgbx.engine.fastpath import SpeedOptions
from rgbx.modalities import get_modality
from rgbx.models import create_model


def kernel_time_ms(events) -> float:
    """Device time of the kernels in ``events`` (``prof.key_averages()``), each counted once: as the self device
    time of the operator that launched it. The kernel rows themselves (device-side events) and device-side
    annotations carry the same time again and are left out, as in the profiler table's own total."""
    from torch.autograd import DeviceType

    total = 0.0
    for e in events:
        if e.device_type != DeviceType.CPU or getattr(e, "is_user_annotation", False):
            continue
        total += getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0) or 0
    return total / 1e3


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(p, defaults=CMX_B2_RGBD)
    p.add_argument("--size", type=parse_size, default=(480, 640), help="HxW")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--device", default="cuda")
    p.add_argument("--options", choices=("exact", "fast"), default="fast")
    p.add_argument("--infer", action="store_true", help="profile inference instead of a training step")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--rows", type=int, default=30)
    args = p.parse_args()
    device = torch.device(args.device)
    h, w = args.size
    torch.manual_seed(0)
    config = model_config_from_args(args)
    model = create_model(config).to(device)
    x = {m: torch.randn(args.batch, get_modality(m).channels, h, w, device=device) for m in config.modalities}
    y = torch.randint(0, config.num_classes, (args.batch, h, w), device=device)
    opts = SpeedOptions.exact() if args.options == "exact" else SpeedOptions.fast(device)
    if args.infer and opts.cuda_graph:  # a replayed graph hides which operator launched each kernel: the same
        opts = opts.with_(cuda_graph=False)  # kernels, launched one by one (the wall time then includes launches)
    fn = make_inference(model, x, opts) if args.infer else make_train_step(model, x, y, opts)
    for _ in range(3):
        fn()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        t0 = time.perf_counter()
        for _ in range(args.steps):
            fn()
        sync()
        wall = (time.perf_counter() - t0) / args.steps
    events = prof.key_averages()
    keys = ("self_device_time_total", "self_cuda_time_total") if device.type == "cuda" else ("self_cpu_time_total",)
    for key in keys:
        try:
            print(events.table(sort_by=key, row_limit=args.rows, max_name_column_width=60))
            break
        except (AttributeError, KeyError, ValueError):
            continue
    if device.type == "cuda":
        busy = kernel_time_ms(events) / args.steps
        print(f"{args.options} ({opts.describe()}): wall {1e3 * wall:.1f} ms per "
              f"{'pass' if args.infer else 'step'}, device busy {busy:.1f} ms ({busy / (1e3 * wall):.0%})")


if __name__ == "__main__":
    main()
