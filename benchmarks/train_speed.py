"""`rgbx train` itself, the eager step against the step captured as one CUDA graph (``train.cuda_graph_train``):
images/s as the trainer logs them (data loading, the step, logging: what a user gets), side by side on one machine.

Each run is a real ``rgbx train`` process on a dataset folder (e.g. the built-in synthetic data at full size); the
table gives the median of the logged images/s over the intervals after the first (warm-up, autotuning, capture),
the wall time of the process and the last logged loss. Every run uses the same config, seed and data order, so the
losses can be compared too.

    rgbx synth /tmp/synth480 --train 64 --val 2 --test 2 --size 480x640
    python benchmarks/train_speed.py /tmp/synth480 --backbone mit_b2 --modalities rgb depth --batch 8 --workers 12

On the CPU (no capture possible) it runs the eager step only and reports the captured run's refusal.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run(root: Path, out: Path, args, graphed: bool) -> dict:
    overrides = [
        f"data.root={root}", f"output_dir={out}", f"model.backbone={args.backbone}", f"model.fusion={args.fusion}",
        f"model.modalities=[{','.join(args.modalities)}]", f"data.modalities=[{','.join(args.modalities)}]",
        f"data.crop_size=[{args.size.replace('x', ',')}]", f"train.batch_size={args.batch}",
        f"train.iters={args.iters}", f"train.log_every={args.log_every}", "train.eval_every=0",
        "train.checkpoint_every=0", f"data.num_workers={args.workers}", f"train.device={args.device}",
        "method.modality_dropout=0", f"train.cuda_graph_train={str(graphed).lower()}", *args.set,
    ]
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "rgbx.cli.main", "train", args.preset, *overrides, "--quiet"],
                          capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        lines = [line for line in (proc.stderr + proc.stdout).strip().splitlines() if line.strip()]
        return {"error": lines[-1] if lines else f"exit {proc.returncode}", "wall_s": wall}
    with (out / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    speeds = [float(r["images_per_s"]) for r in rows[1:]] or [float(rows[-1]["images_per_s"])]
    return {"images_per_s": statistics.median(speeds), "wall_s": wall, "loss": float(rows[-1]["loss"]),
            "intervals": len(speeds)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("root", type=Path, help="an rgbx dataset folder")
    p.add_argument("--preset", default="synth_cmx_b0", help="config the overrides apply to (default synth_cmx_b0)")
    p.add_argument("--backbone", default="mit_b2")
    p.add_argument("--fusion", default="cmx")
    p.add_argument("--modalities", nargs="+", default=["rgb", "depth"])
    p.add_argument("--size", default="480x640", help="training crop HxW")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--iters", type=int, default=60)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--device", default="cuda")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="more config overrides for both runs")
    p.add_argument("--markdown", type=Path, help="also write the table here")
    args = p.parse_args(argv)

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for graphed in (False, True):
            name = "captured (train.cuda_graph_train)" if graphed else "eager"
            results[name] = r = run(args.root, Path(tmp) / name.split()[0], args, graphed)
            print(f"{name}: {r}", flush=True)
    lines = [f"`rgbx train` {args.backbone} + {args.fusion}, {'+'.join(args.modalities)}, batch {args.batch} at "
             f"{args.size}, {args.iters} iterations, {args.workers} loader workers, device {args.device}; median "
             f"images/s of the logged intervals after the first",
             "", "| step | images/s | × eager | wall s | last loss |", "|---|---|---|---|---|"]
    base = results["eager"].get("images_per_s")
    for name, r in results.items():
        if "error" in r:
            lines.append(f"| {name} | failed: {r['error']} | | {r['wall_s']:.0f} | |")
            continue
        ratio = f"{r['images_per_s'] / base:.2f}×" if base else ""
        lines.append(f"| {name} | {r['images_per_s']:.1f} | {ratio} | {r['wall_s']:.0f} | {r['loss']:.4f} |")
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n")
    return 0 if "error" not in results["eager"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
