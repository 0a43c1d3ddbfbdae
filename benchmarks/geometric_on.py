"""What ``data.geometric_on=batch`` takes off the loader workers, and what the batch step costs on the device.

A loader worker's work per sample (read + decode + training transform + normalise, and its share of collating) is
timed with the geometric step in the worker (``sample``) and without it (``batch``), alternately, on one thread as in
a worker process; then :class:`~rgbx.data.transforms.BatchGeometry` on collated batches on ``--device`` (the main
process's work in ``batch`` mode; on CUDA timed to the last kernel).

    rgbx synth /tmp/synth480 --train 64 --val 2 --test 2 --size 480x640
    python benchmarks/geometric_on.py /tmp/synth480 --device cpu
    rgbx data pack /tmp/synth480 /tmp/synth480_decoded --decoded       # nothing left to decode
    python benchmarks/geometric_on.py /tmp/synth480_decoded --dataset shards --device cpu
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from rgbx.data import build_dataset, collate
from rgbx.data.transforms import TrainTransform


def worker_ms(dataset, where: str, crop, batch: int, epoch: int) -> float:
    """Milliseconds per sample of one worker's work (one epoch's samples, collated ``batch`` at a time)."""
    dataset.transform = TrainTransform(crop_size=crop, ignore_index=dataset.description.ignore_index,
                                       geometric_on=where)
    n = len(dataset) // batch * batch
    t0 = time.perf_counter()
    for start in range(0, n, batch):
        collate([dataset[(epoch, i)] for i in range(start, start + batch)])
    return (time.perf_counter() - t0) / n * 1e3


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("root", help="dataset root (rgbx folder format, or packed with --dataset shards)")
    p.add_argument("--dataset", default="folder", help="folder, or shards (rgbx data pack [--decoded])")
    p.add_argument("--modalities", nargs="+", default=["rgb", "depth"])
    p.add_argument("--crop", default="480x640", help="training crop HxW")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--passes", type=int, default=3, help="alternating passes over the split (median reported)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    crop = tuple(int(v) for v in args.crop.split("x"))
    dataset = build_dataset(args.dataset, args.root, "train", modalities=args.modalities)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    times = {"sample": [], "batch": []}
    for epoch in range(args.passes):
        for where in ("sample", "batch") if epoch % 2 == 0 else ("batch", "sample"):
            times[where].append(worker_ms(dataset, where, crop, args.batch, epoch))
    torch.set_num_threads(threads)
    print(f"{args.root}: {len(dataset)} samples, {'+'.join(args.modalities)}, crop {crop[0]}x{crop[1]}, "
          f"batch {args.batch}")
    print("| geometric step on | worker ms / sample (median; all) | samples/s per worker |")
    print("|---|---|---|")
    for where, ms in times.items():
        print(f"| {where} | {statistics.median(ms):.1f} ({', '.join(f'{m:.1f}' for m in ms)}) | "
              f"{1e3 / statistics.median(ms):.1f} |")
    print(f"worker time saved: {statistics.median(times['sample']) / statistics.median(times['batch']):.2f}x")

    dataset.transform = TrainTransform(crop_size=crop, ignore_index=dataset.description.ignore_index,
                                       geometric_on="batch")
    step = dataset.transform.batch_geometry()
    device = torch.device(args.device)
    batches = [collate([dataset[(0, i)] for i in range(s, s + args.batch)])
               for s in range(0, len(dataset) // args.batch * args.batch, args.batch)]
    if device.type == "cuda":
        batches = [b.pin_memory() for b in batches]
    ms = []
    for rep in range(args.passes + 1):
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        sync()
        t0 = time.perf_counter()
        for b in batches:
            step(b.to(device, non_blocking=True))
        sync()
        if rep:  # the first pass warms up
            ms.append((time.perf_counter() - t0) / len(batches) * 1e3)
    print(f"batch step on {device} ({torch.get_num_threads()} threads), copy included: "
          f"{statistics.median(ms):.1f} ms / batch of {args.batch} ({', '.join(f'{m:.1f}' for m in ms)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
