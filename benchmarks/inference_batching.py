"""Test-time inference, batched against one pass at a time, side by side in one process: sliding windows stacked
``--window-batch`` positions per forward pass against one window per pass, and a flip run as one batch with the
image against two passes. Timed alternately (a round = one call of each), median of ``--repeats``; checks that both
give the same logits.

    python benchmarks/inference_batching.py                                     # CMX MiT-B2 RGB-D, KITTI-360's 376×1408
    python benchmarks/inference_batching.py --device cuda --fast --size 1080x1920 --window 1024x1024

The model has random weights (``rgbx.cli.common.add_model_arguments``); what is timed is
:func:`rgbx.engine.inference.predict_logits`, the code ``rgbx eval`` and ``rgbx predict`` run.
"""

from __future__ import annotations

import argparse
import json

import torch

from rgbx.cli.common import (
    CMX_B2_RGBD,
    add_model_arguments,
    add_timing_arguments,
    model_config_from_args,
    parse_size,
    settle_from_args,
)
from rgbx.engine.bench import _random_inputs, time_alternating
from rgbx.engine.fastpath import SpeedOptions, autocast, backend_flags, prepare_inference, to_memory_format
from rgbx.engine.inference import SlidingWindow, predict_logits
from rgbx.models import create_model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(p, defaults=CMX_B2_RGBD)
    p.add_argument("--device", default="cpu")
    p.add_argument("--fast", action="store_true", help="the device's fast option set (default: exact fp32)")
    p.add_argument("--size", type=parse_size, default=(376, 1408), help="image size HxW (default: KITTI-360's)")
    p.add_argument("--window", type=parse_size, default=(376, 376), help="sliding window HxW")
    p.add_argument("--stride", type=parse_size, help="default: two thirds of the window")
    p.add_argument("--window-batch", type=int, default=8)
    p.add_argument("--batch", type=int, default=1, help="images per call")
    p.add_argument("--what", nargs="+", choices=("windows", "flip"), default=["windows", "flip"])
    add_timing_arguments(p, warmup=1)
    p.add_argument("--json", help="write the figures here")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    opts = SpeedOptions.fast(device) if args.fast else SpeedOptions.exact()
    config = model_config_from_args(args)
    torch.manual_seed(0)
    model = prepare_inference(create_model(config).to(device), opts)
    gen = torch.Generator().manual_seed(0)
    x = to_memory_format(_random_inputs(config.modalities, args.batch, args.size, device, gen), opts.channels_last)

    def call(**kwargs):
        def run() -> torch.Tensor:
            with torch.inference_mode(), backend_flags(opts), autocast(device, opts.precision):
                return predict_logits(model, x, **kwargs)
        return run

    def two_flip_passes() -> torch.Tensor:  # what predict_logits did before the flip joined the batch
        with torch.inference_mode(), backend_flags(opts), autocast(device, opts.precision):
            plain = model(x).logits.float().softmax(1)
            mirrored = model({m: v.flip(-1) for m, v in x.items()}).logits.flip(-1).float().softmax(1)
            return (plain + mirrored) / 2

    setting = f"{args.batch}×{args.size[0]}x{args.size[1]}, {opts.describe()}, {device}, {torch.get_num_threads()} threads"
    out = {"setting": setting, "results": {}}
    print(setting)
    comparisons = {}
    if "windows" in args.what:
        batched = SlidingWindow(args.window, args.stride, args.window_batch)
        single = SlidingWindow(args.window, args.stride, 1)
        comparisons["windows"] = {f"{args.window_batch} windows a pass": call(window=batched),
                                  "1 window a pass": call(window=single)}
    if "flip" in args.what:
        comparisons["flip"] = {"flip in the batch": call(flip=True), "two passes": two_flip_passes}
    for what, runs in comparisons.items():
        a, b = (run().float() for run in runs.values())
        diff = (a - b).abs().max().item()
        timing = time_alternating(runs, device, args.warmup, args.repeats, settle_from_args(args, device))
        names = list(timing)
        ratio = timing[names[1]].median_ms / timing[names[0]].median_ms
        out["results"][what] = {"max_abs_diff": diff, "ratio": ratio, **{n: t.to_dict() for n, t in timing.items()}}
        print(f"{what}: " + ", ".join(f"{n} {t.median_ms:.1f} ms ({t.min_ms:.1f}-{t.max_ms:.1f})"
                                      for n, t in timing.items())
              + f"; {names[1]} ÷ {names[0]} {ratio:.2f}×; max abs difference {diff:.2e}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
