"""The table of benchmarks/self_training.sh: test mIoU of the teacher (labelled scenes only), each student (labelled +
pseudo-labelled), the model trained with every scene labelled, and those trained with more scenes labelled by hand
(the least sure by samples.csv, or random), per sensor set; and what each pseudo-labelling rule kept and how right
it was.

    python benchmarks/self_training_table.py runs/self_training
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="the folder benchmarks/self_training.sh wrote (OUT)")
    args = parser.parse_args()
    runs = ["teacher", *sorted(p.parent.name for p in args.out.glob("teacher_*/test.json")),
            *sorted(p.parent.name for p in args.out.glob("student_*/test.json")), "all_labelled",
            *sorted(p.parent.name for p in args.out.glob("more_*/test.json"))]
    scores = {r: json.loads((args.out / r / "test.json").read_text()) for r in runs
              if (args.out / r / "test.json").is_file()}
    if not scores:
        raise SystemExit(f"{args.out}: no */test.json; run benchmarks/self_training.sh first")
    subsets = list(next(iter(scores.values()))["subsets"])
    print("| model | training labels | start | " + " | ".join(subsets) + " |")
    print("|---|---|---|" + "---|" * len(subsets))
    for run, result in scores.items():
        cells = [f"{100 * result['subsets'][s]['all']['miou']:.2f}" for s in subsets]
        print(f"| {run} | {_labels(args.out, run)} | {_start(args.out, run)} | " + " | ".join(cells) + " |")
    print()
    full = subsets[0]
    classes = list(next(iter(scores.values()))["subsets"][full]["all"]["per_class_iou"])
    print(f"Per-class IoU, {full}:")
    print()
    print("| model | " + " | ".join(classes) + " |")
    print("|---|" + "---|" * len(classes))
    for run, result in scores.items():
        ious = result["subsets"][full]["all"]["per_class_iou"]
        print(f"| {run} | " + " | ".join("-" if ious[c] is None else f"{100 * ious[c]:.1f}" for c in classes) + " |")
    print()
    print("| rule | kept pixels | kept right | all predicted right | labelled pixels kept | rarest 3 classes: "
          "recall (kept and right / true) |")
    print("|---|---|---|---|---|---|")
    for path in sorted(args.out.glob("pseudo_*/pseudo_labels.json")):
        r = json.loads(path.read_text())
        rule = r["rule"]
        name = " or ".join(f"{k} {v:g}" for k, v in rule.items() if v is not None)
        truth = sorted(range(len(r["classes"])), key=lambda c: r["predicted"][c])[:3]
        rare = ", ".join(f"{r['classes'][c]} {_pct(r['recall'][c])}" for c in truth) if r["recall"] else "-"
        print(f"| {path.parent.name.removeprefix('pseudo_')}: {name} | {_pct(r['kept_share'])} | "
              f"{_pct(r['accuracy_kept'])} | {_pct(r['accuracy_all'])} | {_pct(r['coverage'])} | {rare} |")


def _start(out: Path, run: str) -> str:
    """Where the run's weights started (train.init_from) and its seed and recipe changes, from its config."""
    import yaml

    cfg = yaml.safe_load((out / run / "config.yaml").read_text())
    init = cfg["train"].get("init_from") or ""
    start = "random" if not init else Path(init).parent.name
    if cfg["train"].get("seed", 0):
        start += f", seed {cfg['train']['seed']}"
    return start


def _pseudo_rule(out: Path, run: str) -> str | None:
    """The rule whose pseudo-labels a student trained on: student_<rule>[_<variant>]."""
    rest = run.removeprefix("student_")
    rules = sorted((p.parent.name.removeprefix("pseudo_") for p in out.glob("pseudo_*/pseudo_labels.json")),
                   key=len, reverse=True)
    return next((r for r in rules if rest == r or rest.startswith(r + "_")), None)


def _labels(out: Path, run: str) -> str:
    rule = _pseudo_rule(out, run) if run.startswith("student_") else None
    pseudo = out / f"pseudo_{rule}" / "pseudo_labels.json"
    if rule is not None:
        r = json.loads(pseudo.read_text())
        labelled = len((out / "data" / "splits" / f"{r['labelled']}.txt").read_text().split())
        return f"{labelled} (listed ×{r['labelled_repeat']}) + {r['samples'] - len(r['skipped'])} pseudo"
    labelled = len((out / "data/splits/train.txt").read_text().split())
    if run.startswith("more_"):
        pick = run.removeprefix("more_")
        more = len((out / f"next_{pick}.txt").read_text().split())
        return f"{labelled} + {more} {pick.replace('_', ' ')} (true labels)"
    return str(len((out / "all.txt").read_text().split())) if run == "all_labelled" else str(labelled)


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


if __name__ == "__main__":
    main()
