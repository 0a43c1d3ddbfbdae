"""``rgbx synth OUT``: write the built-in procedural multi-modal dataset."""

from __future__ import annotations

from rgbx.cli.common import add_command, non_negative_int, parse_size, positive_int

EXAMPLES = """  rgbx synth data/synth                                  # 800 / 100 / 100 samples at 240x320
  rgbx synth data/night --train 200 --val 50 --test 50 --conditions night fog --seed 3
"""


def add_parser(sub) -> None:
    p = add_command(sub, "synth", "generate the built-in synthetic multi-modal dataset",
                    "Render procedural 3-D scenes into rgb, depth, thermal, lidar and event images with labels, "
                    "written in the rgbx dataset format. Deterministic by seed.", EXAMPLES, run)
    p.add_argument("out", help="output folder (new or empty, or an earlier rgbx synth output with --overwrite)")
    p.add_argument("--train", type=positive_int, default=800, help="train samples, at least 1 (default 800)")
    p.add_argument("--val", type=non_negative_int, default=100, help="val samples; 0 leaves the split out (default 100)")
    p.add_argument("--test", type=non_negative_int, default=100,
                   help="test samples; 0 leaves the split out (default 100)")
    p.add_argument("--size", type=parse_size, default=(240, 320), help="HxW (default 240x320)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=positive_int, default=None, help="processes (default: all cores)")
    p.add_argument("--conditions", nargs="+", help="only these conditions (default: all)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier rgbx synth output in OUT (its dataset.yaml, even if edited, "
                        "dataset.yaml.orig, attributes.csv and rgb, depth, thermal, lidar, event, label and splits "
                        "folders); other files in OUT are kept")


def run(args) -> int:
    import time

    from rgbx.data.synth import generate
    from rgbx.engine.report import Reporter

    reporter = Reporter()
    total = args.train + args.val + args.test
    start = time.perf_counter()
    with reporter.progress(total, 0, "synth") as bar:
        path = generate(args.out, splits={"train": args.train, "val": args.val, "test": args.test}, size=args.size,
                        seed=args.seed, workers=args.workers, conditions=args.conditions,
                        progress=lambda done, _total: bar.update(done), overwrite=args.overwrite)
    dt = time.perf_counter() - start
    reporter.print(f"wrote {total} samples to {path} in {dt:.1f} s ({60 * total / dt:.0f} samples/min)")
    return 0
