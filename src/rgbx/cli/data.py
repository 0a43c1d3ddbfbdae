"""``rgbx data check DIR``: validate a dataset folder; ``rgbx data stats DIR``: class frequencies, value ranges."""

from __future__ import annotations

from rgbx.cli.common import add_command, add_dataset_arguments, parse_options

EXAMPLES = """  rgbx data check data/synth
  rgbx data check my_rig --split train
  rgbx data stats data/synth --split train --limit 200
"""


def add_parser(sub) -> None:
    p = add_command(sub, "data", "check a dataset folder or print its statistics",
                    "Validate a dataset folder in the rgbx format (docs/dataset-format.md), naming every problem.",
                    EXAMPLES, lambda args: args.data_run(args))
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    c = dsub.add_parser("check", help="validate every file (existence, size, channels, dtype, label values)")
    c.add_argument("root")
    c.add_argument("--split", nargs="+", help="only these splits (default: all)")
    add_dataset_arguments(c)
    c.set_defaults(data_run=run_check)
    s = dsub.add_parser("stats", help="class pixel frequencies and per-modality value ranges")
    s.add_argument("root")
    s.add_argument("--split", default="train")
    add_dataset_arguments(s)
    s.add_argument("--limit", type=int, default=0, help="look at the first N samples only (0 = all)")
    s.set_defaults(data_run=run_stats)


def run_check(args) -> int:
    from rgbx.data import build_dataset, check_dataset

    options = parse_options(args.option)
    counts = check_dataset(args.root, args.split, dataset=args.dataset, **options)
    desc = build_dataset(args.dataset, args.root, next(iter(counts)), check="none", **options).description
    print(f"{args.root}: OK — dataset {desc.name!r}, {desc.num_classes} classes, modalities "
          f"{', '.join(desc.modalities)}; " + ", ".join(f"{s}: {n} samples" for s, n in counts.items()))
    return 0


def run_stats(args) -> int:
    import torch
    from rich.console import Console
    from rich.table import Table

    from rgbx.data import build_dataset

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
        for name, x in s["inputs"].items():
            r = ranges.setdefault(name, [float("inf"), float("-inf"), 0.0, 0])
            r[0], r[1] = min(r[0], float(x.min())), max(r[1], float(x.max()))
            r[2] += float((x != 0).float().mean())
            r[3] += 1
    console = Console()
    total = max(1, int(counts.sum()))
    t = Table(title=f"class pixel frequencies ({args.split}, {n} samples)")
    t.add_column("class")
    t.add_column("pixels %", justify="right")
    for name, c in zip([*ds.description.classes, "(ignore)"], counts.tolist()):
        t.add_row(name, f"{100 * c / total:.2f}")
    console.print(t)
    t = Table(title="modality value ranges (physical units)")
    for col in ("modality", "min", "max", "non-zero %"):
        t.add_column(col)
    for name, (lo, hi, nz, m) in ranges.items():
        t.add_row(name, f"{lo:.3g}", f"{hi:.3g}", f"{100 * nz / m:.1f}")
    console.print(t)
    return 0
