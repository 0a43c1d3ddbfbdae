"""The training transform's CPU time per sample, an earlier revision's resampling and colour jitter against this
checkout's, alternated in one process (one thread: what one loader worker spends on augmentation).

    rgbx synth /tmp/synth480 --train 48 --val 2 --test 2 --size 480x640
    python benchmarks/transform_ab.py /tmp/synth480 --before 50cb405

The functions swapped in for "before" are read from ``--before`` with ``git show``: the bilinear window, the
nearest-neighbour resize and ColorJitter. The rest of the pipeline (decode excluded) is the same in both.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import time
import types
from pathlib import Path

import torch

import rgbx.data.transforms.geometric as geometric
import rgbx.data.transforms.photometric as photometric
from rgbx.cli.common import parse_size
from rgbx.data import build_dataset
from rgbx.data.transforms import TrainTransform

REPO = Path(__file__).resolve().parents[1]


def module_at(revision: str, path: str) -> types.ModuleType:
    source = subprocess.run(["git", "-C", str(REPO), "show", f"{revision}:{path}"], capture_output=True, text=True,
                            check=True).stdout
    module = types.ModuleType(f"{Path(path).stem}_at_{revision}")
    exec(compile(source, f"{revision}:{path}", "exec"), module.__dict__)
    return module


def swap(fns: tuple) -> None:
    geometric._resize_bilinear_window, geometric._resize_nearest, photometric.ColorJitter.__call__ = fns


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", type=Path, help="a dataset folder (e.g. made by rgbx synth)")
    p.add_argument("--before", required=True, help="git revision to compare with")
    p.add_argument("--modalities", nargs="+", default=["rgb", "depth"])
    p.add_argument("--crop", type=parse_size, default=(480, 640))
    p.add_argument("--samples", type=int, default=16)
    p.add_argument("--rounds", type=int, default=6)
    args = p.parse_args()
    torch.set_num_threads(1)
    old_geometric = module_at(args.before, "src/rgbx/data/transforms/geometric.py")
    old_photometric = module_at(args.before, "src/rgbx/data/transforms/photometric.py")
    sets = {"before": (old_geometric._resize_bilinear_window, old_geometric._resize_nearest,
                       old_photometric.ColorJitter.__call__),
            "now": (geometric._resize_bilinear_window, geometric._resize_nearest, photometric.ColorJitter.__call__)}
    dataset = build_dataset("folder", args.data, "train", modalities=args.modalities)
    samples = [dataset[i % len(dataset)] for i in range(args.samples)]
    transform = TrainTransform(crop_size=args.crop, ignore_index=dataset.description.ignore_index)
    times: dict[str, list[float]] = {name: [] for name in sets}
    try:
        for r in range(args.rounds):
            for name, fns in sets.items():
                swap(fns)
                t0 = time.perf_counter()
                for i, sample in enumerate(samples):
                    transform(sample, torch.Generator().manual_seed(1000 * r + i))
                times[name].append((time.perf_counter() - t0) * 1e3 / len(samples))
    finally:
        swap(sets["now"])
    before, now = statistics.median(times["before"]), statistics.median(times["now"])
    print(f"TrainTransform per sample ({'+'.join(args.modalities)}, crop {args.crop[0]}x{args.crop[1]}, "
          f"{transform.scale_range} scale, 1 thread, median of {args.rounds} rounds of {args.samples}): "
          f"{args.before} {before:.1f} ms, now {now:.1f} ms, {before / now:.2f}x")


if __name__ == "__main__":
    main()
