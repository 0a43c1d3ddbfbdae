"""The markdown table of benchmarks/calibration.md from the runs of benchmarks/calibration.sh.

    python benchmarks/calibration_table.py runs/sensor_failures --only mean_dropout_seed0 cmx_seed0
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def pct(v) -> str:
    return "—" if v is None else f"{100 * v:.2f}"


def runs(args, *kinds: str):
    """(run, [each kind's calibration_<kind>.json]) for each run that has them all; a row saying so for the others."""
    for run in args.only:
        paths = {kind: args.out / run / f"calibration_{kind}.json" for kind in kinds}
        if not all(p.is_file() for p in paths.values()):
            print(f"(missing: {paths})")
            continue
        yield run, [json.loads(paths[k].read_text()) for k in kinds]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="the OUT folder of benchmarks/calibration.sh")
    parser.add_argument("--only", nargs="+", metavar="RUN", required=True, help="these runs, in this order")
    args = parser.parse_args()
    print("| model | sensors | T (one) | T (per set) | accuracy | confidence: raw / one T / per set | "
          "ECE: raw / one T / per set | NLL: raw / one T / per set | ≥ 0.9 per set: accuracy (share) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for run, (sets, one) in runs(args, "sets", "one"):
        t_sets, t_one = sets["temperatures"]["temperatures"], one["temperatures"]["temperatures"]
        default = one["temperatures"]["default"]
        for subset, groups in sets["calibration"].items():
            raw, per_set = groups["all"]["uncalibrated"], groups["all"]["calibrated"]
            single = one["calibration"][subset]["all"]["calibrated"]
            high = next(c for c in per_set["coverage"] if c["threshold"] == 0.9)
            print(f"| {run} | {subset} | {t_one[default]:.3f} | {t_sets[subset]:.3f} | {pct(raw['accuracy'])} | "
                  f"{pct(raw['confidence'])} / {pct(single['confidence'])} / {pct(per_set['confidence'])} | "
                  f"{pct(raw['ece'])} / {pct(single['ece'])} / {pct(per_set['ece'])} | "
                  f"{raw['nll']:.3f} / {single['nll']:.3f} / {per_set['nll']:.3f} | "
                  f"{pct(high['accuracy'])} ({100 * high['coverage']:.0f} %) |")
    print()
    print("Vector scaling per set (a scale and a bias per class; the predictions change), against the raw model and "
          "the per-set temperature:")
    print()
    print("| model | sensors | mIoU: raw → vector | accuracy: raw → vector | ECE: raw / per-set T / vector | "
          "NLL: raw / per-set T / vector |")
    print("|---|---|---|---|---|---|")
    for run, (sets, vector) in runs(args, "sets", "vector"):
        for subset, groups in sets["calibration"].items():
            raw, per_set = groups["all"]["uncalibrated"], groups["all"]["calibrated"]
            vec = vector["calibration"][subset]["all"]["calibrated"]
            miou = (sets["subsets"][subset]["all"]["miou"], vector["subsets"][subset]["all"]["miou"])
            print(f"| {run} | {subset} | {pct(miou[0])} → {pct(miou[1])} | {pct(raw['accuracy'])} → "
                  f"{pct(vec['accuracy'])} | {pct(raw['ece'])} / {pct(per_set['ece'])} / {pct(vec['ece'])} | "
                  f"{raw['nll']:.3f} / {per_set['nll']:.3f} / {vec['nll']:.3f} |")
    print()
    print("ECE % per condition, raw → per-set temperature:")
    print()
    header = None
    for run in args.only:
        path = args.out / run / "calibration_sets.json"
        if not path.is_file():
            continue
        sets = json.loads(path.read_text())
        for subset, groups in sets["calibration"].items():
            conditions = [g for g in groups if g != "all"]
            if header is None:
                header = conditions
                print("| model | sensors | " + " | ".join(g.split("=", 1)[-1] for g in header) + " |")
                print("|---|---|" + "---|" * len(header))
            cells = [f"{pct(groups[g]['uncalibrated']['ece'])} → {pct(groups[g]['calibrated']['ece'])}"
                     if g in groups else "—" for g in header]
            print(f"| {run} | {subset} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
