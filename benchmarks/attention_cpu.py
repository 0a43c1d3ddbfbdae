"""CPU: fused SDPA vs eager attention in MiT, training step (forward + backward), same model, same process.

Why ``attn_impl="auto"`` picks eager on the CPU. Timings alternate between the two implementations so that load
from other processes affects both alike; the ratio is what to read.

    python benchmarks/attention_cpu.py [--batch 8 24] [--size 120x160] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from rgbx.models import create_model


def step_time(model, x, y) -> float:
    t = time.perf_counter()
    out = model(x)
    torch.nn.functional.cross_entropy(out.logits, y).backward()
    return time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="mit_b0")
    p.add_argument("--batch", type=int, nargs="+", default=[8, 24])
    p.add_argument("--size", default="120x160")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    h, w = (int(v) for v in args.size.split("x"))
    print("| backbone | batch | size | sdpa s/step | eager s/step | sdpa / eager |\n|---|---|---|---|---|---|")
    for batch in args.batch:
        models = {impl: create_model(backbone=args.backbone, fusion="mean", modalities=["rgb"], num_classes=10,
                                     head_channels=128, attn_impl=impl) for impl in ("sdpa", "eager")}
        models["eager"].load_state_dict(models["sdpa"].state_dict())
        x = {"rgb": torch.randn(batch, 3, h, w)}
        y = torch.randint(0, 10, (batch, h, w))
        times = {impl: [] for impl in models}
        for i in range(args.repeats + 1):
            for impl, m in models.items():
                t = step_time(m, x, y)
                if i > 0:  # the first round is warm-up
                    times[impl].append(t)
        s, e = statistics.median(times["sdpa"]), statistics.median(times["eager"])
        print(f"| {args.backbone} | {batch} | {h}x{w} | {s:.3f} | {e:.3f} | {s / e:.2f} |")


if __name__ == "__main__":
    main()
