"""``rgbx data check DIR``: validate a dataset folder; ``rgbx data stats DIR``: class frequencies, value ranges;
``rgbx data synthesize DIR``: add modalities synthesised from RGB / depth (events, pseudo-LiDAR, estimated depth);
``rgbx data pack DIR OUT``: the folder packed into tar shards."""

from __future__ import annotations

from pathlib import Path

from rgbx.cli.common import (
    EPILOG_FORMATTER,
    add_command,
    add_dataset_arguments,
    add_sensor_check_arguments,
    non_negative_int,
    parse_options,
    parse_size,
    positive_float,
    positive_int,
)

EXAMPLES = """  rgbx data check data/synth
  rgbx data check my_rig --split train
  rgbx data stats data/synth --split train --limit 200
  rgbx data stats my_rig --split train --sensor-rule depth.min_coverage=0.05   # and frames a failed sensor sent
  rgbx data pack data/synth data/synth_shards --shard-size 500        # then data.dataset=shards
  rgbx data pack data/synth data/synth_raw --decoded                  # nothing left to decode when training
  rgbx data synthesize my_rgbd --modalities event lidar --hfov 62   # events from RGB, pseudo-LiDAR from depth
  rgbx data synthesize my_rgb --modalities depth lidar --depth-model depth_anything.onnx --depth-output disparity \\
      --hfov 62
"""


def _examples(action: str) -> str:
    """The lines of EXAMPLES for one action, as that action's --help epilog."""
    return "examples:\n" + "".join(line + "\n" for line in _example_entries() if f"rgbx data {action} " in line)


def _example_entries() -> list[str]:
    entries = []
    for line in EXAMPLES.splitlines():
        if line.startswith("      ") and entries:  # a continued command
            entries[-1] += "\n" + line
        elif line.strip():
            entries.append(line)
    return entries


def add_parser(sub) -> None:
    p = add_command(sub, "data", "check a dataset folder or print its statistics",
                    "Validate a dataset folder in the rgbx format (docs/dataset-format.md), naming every problem.",
                    EXAMPLES, lambda args: args.data_run(args))
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    c = dsub.add_parser("check", epilog=_examples("check"), formatter_class=EPILOG_FORMATTER, help="validate every file (existence, size, channels, dtype, label values)")
    c.add_argument("root")
    c.add_argument("--split", nargs="+", help="only these splits (default: all)")
    add_dataset_arguments(c)
    c.set_defaults(data_run=run_check)
    s = dsub.add_parser("stats", epilog=_examples("stats"), formatter_class=EPILOG_FORMATTER, help="class pixel frequencies, per-modality value ranges and the frames that fail the sensor checks")
    s.add_argument("root")
    s.add_argument("--split", default="train")
    add_dataset_arguments(s)
    s.add_argument("--limit", type=non_negative_int, default=0, help="look at the first N samples only (0 = all)")
    add_sensor_check_arguments(s, switch=False)
    s.set_defaults(data_run=run_stats)
    y = dsub.add_parser("synthesize", epilog=_examples("synthesize"), formatter_class=EPILOG_FORMATTER, help="add event / depth / thermal (from RGB) and lidar (from depth) to a dataset",
                        description="Write simulated event counts (from each RGB image moved along a short camera "
                                    "trajectory), depth or thermal from RGB (estimators you export to ONNX) and "
                                    "pseudo-LiDAR (a multi-beam scanner's rays through the depth map) into the "
                                    "dataset folder, list them in its dataset.yaml (the file as it was is kept as "
                                    "dataset.yaml.orig) and record them in synthesized.yaml. Source files are read "
                                    "with the storage dataset.yaml declares; a new modality gets its source's "
                                    "resolution and 'resize'. Nothing is replaced until every modality is "
                                    "written: a failed or interrupted run leaves the folders as they were. See "
                                    "rgbx.data.modality_synthesis.")
    y.add_argument("root")
    y.add_argument("--modalities", nargs="+", required=True, choices=("depth", "thermal", "event", "lidar"))
    y.add_argument("--depth-model", type=Path, help="depth: a monocular depth estimator as an ONNX file")
    y.add_argument("--depth-output", choices=("metric", "disparity"), default="metric",
                   help="depth: what the estimator outputs, depth in metres (default) or relative inverse depth")
    y.add_argument("--depth-range", type=positive_float, nargs=2, default=(0.5, 20.0), metavar=("NEAR", "FAR"),
                   help="depth: metres the disparity of each image is mapped onto (default 0.5 20): the lowest "
                        "disparity (the sky, anything at infinity) lands at FAR; depth beyond 65.535 m is written "
                        "as 0 (no measurement)")
    y.add_argument("--depth-size", type=parse_size, metavar="HxW",
                   help="depth: the estimator's input size (default: its own fixed size, else the image's)")
    y.add_argument("--thermal-model", type=Path, help="thermal: an RGB→thermal estimator as an ONNX file")
    y.add_argument("--thermal-output", choices=("unit", "minmax"), default="unit",
                   help="thermal: the estimator outputs relative temperature in [0, 1] (default), or any scale, "
                        "stretched per image")
    y.add_argument("--focal", type=positive_float,
                   help="lidar: the camera's focal length in pixels of the depth images as stored (scale it if "
                        "depth is stored at another resolution than RGB; --hfov needs no scaling)")
    y.add_argument("--hfov", type=positive_float,
                   help="lidar: the camera's horizontal field of view in degrees (instead of --focal), converted "
                        "to a focal length for each depth image's own width")
    y.add_argument("--beams", type=positive_int, default=64,
                   help="lidar: number of beams (default 64), spread evenly over fixed elevations, -24.8° to +2° "
                        "about the camera's optical axis (a 64-beam scanner's span): image rows above +2° get no "
                        "returns; ranges beyond 65.535 m (16-bit mm) are dropped as no return")
    y.add_argument("--seed", type=non_negative_int, default=0,
                   help="the simulation's seed (default 0); each sample's result depends only on it and the sample")
    y.add_argument("--overwrite", action="store_true",
                   help="replace the folders of these modalities that an earlier synthesize wrote, as recorded "
                        "in synthesized.yaml (never the dataset's own files, nor files synthesize did not write)")
    y.set_defaults(data_run=run_synthesize)
    k = dsub.add_parser("pack", epilog=_examples("pack"), formatter_class=EPILOG_FORMATTER, help="pack a dataset folder into tar shards (read with --dataset shards)",
                        description="Write the samples of a dataset folder in the rgbx format into tar shards of "
                                    "--shard-size samples plus an index per split, for file systems where many "
                                    "small files are slow. Train on it with data.dataset=shards data.root=OUT: the "
                                    "same samples, read by random access. See rgbx.data.datasets.shards.")
    k.add_argument("root")
    k.add_argument("out")
    k.add_argument("--shard-size", type=positive_int, default=1000, help="samples per shard (default 1000)")
    k.add_argument("--split", nargs="+", help="only these splits (default: all)")
    k.add_argument("--overwrite", action="store_true",
                   help="replace an earlier packed copy at OUT: only the files a pack writes (dataset.yaml, the "
                        "shards and indexes in shards/) are replaced; anything else in OUT is kept")
    k.add_argument("--decoded", action="store_true",
                   help="store each file's values as an uncompressed array: reading decodes nothing (a loader "
                        "worker spends most of its time decoding PNGs), the shards are larger, the samples the same")
    k.set_defaults(data_run=run_pack)


def run_check(args) -> int:
    from rgbx.data import build_dataset, check_dataset

    options = parse_options(args.option)
    counts = check_dataset(args.root, args.split, dataset=args.dataset, **options)
    desc = build_dataset(args.dataset, args.root, next(iter(counts)), check="none", **options).description
    print(f"{args.root}: OK — dataset {desc.name!r}, {desc.num_classes} classes, modalities "
          f"{', '.join(desc.modalities)}; " + ", ".join(f"{s}: {n} samples" for s, n in counts.items()))
    ids = {split: set(build_dataset(args.dataset, args.root, split, check="none", **options).ids) for split in counts}
    for scored in [s for s in ids if s in ("val", "test")]:
        for trained in [s for s in ids if s not in ("val", "test")]:
            shared = sorted(ids[scored] & ids[trained])
            if shared:
                print(f"note: split {scored} shares {len(shared)} of its {len(ids[scored])} samples with split "
                      f"{trained} ({', '.join(shared[:3])}{', ...' if len(shared) > 3 else ''}): a model trained on "
                      f"{trained} is scored on samples it learned")
    if not args.split and args.dataset not in ("folder", "shards"):
        from rgbx.data import DATASETS

        absent = [s for s in getattr(DATASETS.get(args.dataset), "SPLITS", ()) if s not in counts]
        if absent:
            print(f"not on disk, skipped: split{'s' if len(absent) > 1 else ''} {', '.join(absent)} (name a split "
                  f"with --split to have its absence reported as a problem)")
    return 0


def run_stats(args) -> int:
    import torch
    from rich.console import Console
    from rich.table import Table

    from rgbx.data import build_dataset
    from rgbx.data.sensor_health import CHECKS, HealthRules, SensorMonitor, parse_rules

    rules, per_sensor = parse_rules(args.sensor_rule, base=HealthRules(frozen_after=1))
    monitor = SensorMonitor(rules, per_sensor)  # frozen: a frame equal to the sample before (a duplicate)
    failed: dict[str, dict[str, list[str]]] = {}  # modality -> check -> sample ids
    ds = build_dataset(args.dataset, args.root, args.split, **parse_options(args.option))
    n = len(ds) if args.limit <= 0 else min(args.limit, len(ds))
    k = ds.description.num_classes
    counts = torch.zeros(k + 1, dtype=torch.int64)
    ranges: dict[str, list[float]] = {}
    for i in range(n):
        s = ds.load(i)
        if s["label"] is not None:
            lab = s["label"].clone()
            lab[(lab < 0) | (lab >= k)] = k
            counts += torch.bincount(lab.flatten(), minlength=k + 1)
        for name, status in monitor.screen(s["inputs"])[1].items():
            checks = failed.setdefault(name, {})
            for check in status.failures:
                checks.setdefault(check, []).append(str(s["meta"].get("id", i)))
        for name, x in s["inputs"].items():
            r = ranges.setdefault(name, [float("inf"), float("-inf"), 0.0, 0])
            r[0], r[1] = min(r[0], float(x.min())), max(r[1], float(x.max()))
            r[2] += float((x != 0).float().mean())
            r[3] += 1
    console = Console()
    total = max(1, int(counts.sum()))
    t = Table(title=f"class pixel frequencies ({args.split}, {n} samples)")
    t.add_column("class", overflow="fold")  # names and ids are never cut (a narrow terminal, a pipe: 80 columns)
    t.add_column("pixels %", justify="right")
    for name, c in zip([*ds.description.classes, "(ignore)"], counts.tolist()):
        t.add_row(name, f"{100 * c / total:.2f}")
    console.print(t)
    t = Table(title="modality value ranges (physical units)")
    for col in ("modality", "min", "max", "non-zero %"):
        t.add_column(col, overflow="fold")
    for name, (lo, hi, nz, m) in ranges.items():
        t.add_row(name, f"{lo:.3g}", f"{hi:.3g}", f"{100 * nz / m:.1f}")
    console.print(t)
    t = Table(title="frames that fail the sensor checks (rgbx.data.sensor_health; frozen: the same frame as the "
                    "sample before)", caption="such frames teach a model that a failed sensor's output means "
                                              "something; rgbx predict --check-sensors leaves them out")
    for col in ("modality", "frames", *CHECKS, "first samples"):
        t.add_column(col, overflow="fold")  # the ids of the failed frames folded onto more lines, never cut
    for name, checks in failed.items():
        ids = sorted({sid for found in checks.values() for sid in found})
        t.add_row(name, str(ranges[name][3]), *(str(len(checks.get(c, ()))) for c in CHECKS),
                  ", ".join(ids[:5]) + (" ..." if len(ids) > 5 else ""))
    console.print(t)
    return 0


def run_synthesize(args) -> int:
    from rgbx.data.modality_synthesis import (
        OnnxDepthEstimator,
        OnnxThermalEstimator,
        PseudoLidar,
        synthesize_dataset,
    )
    from rgbx.engine.report import Reporter
    from rgbx.errors import ConfigError, DataError

    if args.focal and args.hfov:
        raise ConfigError("give --focal or --hfov, not both")
    if args.beams < 1:
        raise ConfigError(f"--beams {args.beams}: expected at least 1")
    if args.hfov and not 0 < args.hfov < 180:
        raise ConfigError(f"--hfov {args.hfov}: expected degrees in (0, 180)")
    estimator = None
    if "depth" in args.modalities:
        if args.depth_model is None:
            raise ConfigError("--modalities depth needs --depth-model FILE.onnx (a monocular depth estimator)")
        estimator = OnnxDepthEstimator(args.depth_model, output=args.depth_output,
                                       depth_range=tuple(args.depth_range))
        if args.depth_size and estimator.fixed and tuple(args.depth_size) != estimator.fixed:
            h, w = estimator.fixed
            raise ConfigError(f"--depth-size {args.depth_size[0]}x{args.depth_size[1]}: {args.depth_model} takes a "
                              f"fixed input size of {h}x{w} (leave --depth-size out to use it, or export the model "
                              f"with dynamic height and width)")
        estimator.input_size = args.depth_size
    thermal = None
    if "thermal" in args.modalities:
        if args.thermal_model is None:
            raise ConfigError("--modalities thermal needs --thermal-model FILE.onnx (an RGB→thermal estimator)")
        thermal = OnnxThermalEstimator(args.thermal_model, output=args.thermal_output)
    reporter = Reporter()
    try:
        with reporter.progress(0, 0, "synthesize") as bar:
            written = synthesize_dataset(args.root, args.modalities, focal_px=args.focal, hfov_deg=args.hfov,
                                         depth_estimator=estimator, thermal_estimator=thermal, seed=args.seed,
                                         overwrite=args.overwrite, lidar=PseudoLidar(beams=args.beams),
                                         progress=bar.update)
    except DataError as e:  # name the command-line flag, not the Python argument
        raise DataError(str(e).replace("overwrite=True", "--overwrite")) from None
    extra = ""
    if "lidar" in args.modalities:
        extra = f" (focal {args.focal:g} px)" if args.focal else f" (hfov {args.hfov:g}°)"
    reporter.print(f"{args.root}: wrote " + ", ".join(f"{n} {m} files" for m, n in written.items()) + extra)
    return 0


def run_pack(args) -> int:
    from rgbx.data.datasets.shards import pack_dataset
    from rgbx.engine.report import Reporter

    reporter = Reporter()
    with reporter.progress(0, 0, "pack") as bar:
        summary = pack_dataset(args.root, args.out, shard_size=args.shard_size, splits=args.split,
                               overwrite=args.overwrite, decoded=args.decoded, progress=bar.update)
    reporter.print(f"{args.out}: " + ", ".join(f"{s}: {v['samples']} samples in {v['shards']} shard(s)"
                                               for s, v in summary.items())
                   + " — train with data.dataset=shards data.root=" + str(args.out))
    return 0
