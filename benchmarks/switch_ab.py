"""One speed switch on and off, side by side: the fast option set against the same set with the switch turned off
(or ``--base exact``: exact against exact + the switch), timed alternately in one process (a round = one call of each
candidate), so that the drift of a shared machine falls on both. Also checks that the two give the same logits.

    python benchmarks/switch_ab.py fold_head --backbone mit_b2 --fusion cmx --what latency train
    python benchmarks/switch_ab.py fold_head --backbone dformer_l --fusion dformer --head ham --device cuda

Defaults follow ``rgbx bench``: on the CPU inference at batch 1 on 480×640 and training at batch 2 on 240×320; on
CUDA training at batch 8 on 480×640.
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
from rgbx.engine.bench import _random_inputs, make_inference, make_train_step, time_alternating
from rgbx.engine.fastpath import SpeedOptions
from rgbx.models import create_model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("switch", choices=SpeedOptions.names(), help="the SpeedOptions field to turn on and off")
    p.add_argument("--base", choices=("fast", "exact"), default="fast")
    add_model_arguments(p, defaults=CMX_B2_RGBD)
    p.add_argument("--device", default="cpu")
    p.add_argument("--size", type=parse_size, default=(480, 640), help="inference size HxW")
    p.add_argument("--train-size", type=parse_size, help="training crop HxW (default 240x320 on the CPU, 480x640 on CUDA)")
    p.add_argument("--train-batch", type=int, help="default 2 on the CPU, 8 on CUDA")
    p.add_argument("--what", nargs="+", choices=("latency", "train"), default=["latency", "train"])
    p.add_argument("--graphed", action="store_true",
                   help="time the training step captured into a CUDA graph (cuda_graph_train) on both sides: on a "
                        "fast GPU the uncaptured step is bound by the host, which hides a saving on the device")
    add_timing_arguments(p)
    p.add_argument("--json", help="write the figures here")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if args.graphed and not cuda and "train" in args.what:
        p.error("--graphed captures the training step as a CUDA graph: it needs --device cuda")
    size = args.size
    train_size = args.train_size or ((480, 640) if cuda else (240, 320))
    train_batch = args.train_batch or (8 if cuda else 2)
    settle = settle_from_args(args, device)
    base = SpeedOptions.fast(device) if args.base == "fast" else SpeedOptions.exact()
    value = getattr(SpeedOptions.fast(device), args.switch)
    off_value = getattr(SpeedOptions.exact(), args.switch)
    if value == off_value:
        value = True  # a switch the device's fast set leaves off: measure it turned on
    on, off = base.with_(**{args.switch: value}), base.with_(**{args.switch: off_value})
    sets = {f"{args.switch} on": on, f"{args.switch} off": off}

    config = model_config_from_args(args)

    def build():
        torch.manual_seed(0)
        return create_model(config).to(device)

    gen = torch.Generator().manual_seed(0)
    out = {"switch": args.switch, "base": base.describe(), "device": str(device), "results": {}}
    print(f"{args.switch}: {on.describe()}  vs  {off.describe()}; {device}, {torch.get_num_threads()} threads")
    if "latency" in args.what:
        x = _random_inputs(config.modalities, 1, size, device, gen)
        runs = {name: make_inference(build(), x, opts) for name, opts in sets.items()}
        logits = {name: run().float().clone() for name, run in runs.items()}
        a, b = logits.values()
        agree = (a.argmax(1) == b.argmax(1)).float().mean().item()
        diff = (a - b).abs().max().item()
        timing = time_alternating(runs, device, args.warmup, args.repeats, settle)
        out["results"]["latency"] = {"size": list(size), "max_abs_logit_diff": diff, "argmax_agreement": agree,
                                     **{n: t.to_dict() for n, t in timing.items()}}
        names = list(timing)
        print(f"latency, batch 1, {size[0]}x{size[1]}: " + ", ".join(
            f"{n} {t.median_ms:.2f} ms ({t.min_ms:.2f}-{t.max_ms:.2f})" for n, t in timing.items())
            + f"; off ÷ on {timing[names[1]].median_ms / timing[names[0]].median_ms:.2f}×; logits max abs diff "
            f"{diff:.2e}, argmax agreement {agree:.4%}")
        del runs
    if "train" in args.what:
        x = _random_inputs(config.modalities, train_batch, train_size, device, gen)
        y = torch.randint(0, config.num_classes, (train_batch, *train_size), generator=gen).to(device)
        steps = {name: make_train_step(build(), x, y, opts.with_(cuda_graph_train=args.graphed or
                                                                  opts.cuda_graph_train))
                 for name, opts in sets.items()}
        timing = time_alternating(steps, device, args.warmup, args.repeats, settle)
        out["results"]["train"] = {"batch": train_batch, "size": list(train_size),
                                   **{n: t.to_dict() for n, t in timing.items()}}
        names = list(timing)
        graphed = " (captured)" if args.graphed else ""
        print(f"training step{graphed}, batch {train_batch}, {train_size[0]}x{train_size[1]}: " + ", ".join(
            f"{n} {t.median_ms:.1f} ms ({t.min_ms:.1f}-{t.max_ms:.1f})" for n, t in timing.items())
            + f"; off ÷ on {timing[names[1]].median_ms / timing[names[0]].median_ms:.2f}×")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
