"""Input-pipeline speed: read + decode + training augmentation per sample, this checkout against another rgbx
checkout (e.g. an older commit), side by side in one process.

Both copies of rgbx are imported into this process (each under its own module namespace) and their
``dataset[i]`` calls (decode from disk + :class:`TrainTransform`) are timed alternately, one sample of each per round,
same indices and seeds, one torch thread (as in a loader worker). Also times the transform alone on the decoded
samples, and checks the two copies' outputs agree (labels and nearest-resampled maps exactly, bilinear maps to 1e-5).

    git worktree add /tmp/rgbx_old <commit>
    rgbx synth /tmp/synth480 --train 64 --val 2 --test 2 --size 480x640
    python benchmarks/data_pipeline.py /tmp/synth480 --baseline-src /tmp/rgbx_old/src --modalities rgb depth

The loader's samples/s with N worker processes is ``rgbx bench --data ROOT --workers ...``.
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import sys
import time
from pathlib import Path

import torch

HERE_SRC = Path(__file__).resolve().parents[1] / "src"


def import_rgbx(src: Path) -> dict:
    """Import ``rgbx`` from ``src`` and return its modules (removed from ``sys.modules`` afterwards, so another copy
    can be imported next)."""
    for name in [k for k in sys.modules if k == "rgbx" or k.startswith("rgbx.")]:
        del sys.modules[name]
    sys.path.insert(0, str(src))
    try:
        data = importlib.import_module("rgbx.data")
        transforms = importlib.import_module("rgbx.data.transforms")
        if not Path(data.__file__).resolve().is_relative_to(src.resolve()):
            raise SystemExit(f"imported rgbx from {data.__file__}, not from {src}")
        mods = {k: v for k, v in sys.modules.items() if k == "rgbx" or k.startswith("rgbx.")}
    finally:
        sys.path.remove(str(src))
    for name in mods:
        del sys.modules[name]
    return {"data": data, "transforms": transforms}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("root", type=Path, help="dataset root (rgbx folder format unless --dataset)")
    p.add_argument("--baseline-src", type=Path, required=True, help="src/ folder of the other rgbx checkout")
    p.add_argument("--dataset", default="folder")
    p.add_argument("--modalities", nargs="+", default=["rgb", "depth"])
    p.add_argument("--crop", default="480x640", help="training crop HxW")
    p.add_argument("--samples", type=int, default=48, help="samples per candidate and pass")
    p.add_argument("--passes", type=int, default=3, help="alternating passes (median reported)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    crop = tuple(int(v) for v in args.crop.split("x"))

    copies = {"baseline": import_rgbx(args.baseline_src), "this": import_rgbx(HERE_SRC)}
    datasets = {}
    for label, mods in copies.items():
        ds = mods["data"].build_dataset(args.dataset, args.root, "train", modalities=args.modalities)
        ds.transform = mods["transforms"].TrainTransform(crop_size=crop, ignore_index=ds.description.ignore_index)
        datasets[label] = ds
    n = min(args.samples, len(datasets["this"]))

    # agreement: same index, same seed → same sample
    worst: dict[str, float] = {}
    for i in range(n):
        a, b = (datasets[k][i] for k in ("baseline", "this"))
        if not torch.equal(a["label"], b["label"]):
            raise SystemExit(f"sample {i}: labels differ")
        for m in a["inputs"]:
            worst[m] = max(worst.get(m, 0.0), float((a["inputs"][m] - b["inputs"][m]).abs().max()))
    print("agreement: labels identical; max abs difference per modality:",
          ", ".join(f"{m} {v:.1e}" for m, v in worst.items()))

    # decoded samples, for the transform alone
    decoded = {}
    for label, ds in datasets.items():
        t = ds.transform
        ds.transform = copies[label]["transforms"].EvalTransform()
        decoded[label] = [ds[i] for i in range(n)]
        ds.transform = t

    def full(label):
        ds = datasets[label]
        for i in range(n):
            ds[i]

    def transform_only(label):
        t = datasets[label].transform
        for i, s in enumerate(decoded[label]):
            t(s, torch.Generator().manual_seed(i))

    rows = []
    for what, fn in (("read + decode + augment", full), ("augment only", transform_only)):
        times = {label: [] for label in copies}
        for label in copies:  # warm-up
            fn(label)
        for _ in range(args.passes):
            for label in copies:
                t0 = time.perf_counter()
                fn(label)
                times[label].append((time.perf_counter() - t0) / n * 1e3)
        med = {k: statistics.median(v) for k, v in times.items()}
        rows.append((what, med["baseline"], med["this"], med["baseline"] / med["this"]))
    print(f"\n{n} samples of {args.root} ({'+'.join(args.modalities)}, crop {args.crop}), 1 thread, median of "
          f"{args.passes} alternating passes:\n")
    print("| per sample | baseline ms | this ms | speed-up |")
    print("|---|---|---|---|")
    for what, a, b, r in rows:
        print(f"| {what} | {a:.1f} | {b:.1f} | {r:.2f}× |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
