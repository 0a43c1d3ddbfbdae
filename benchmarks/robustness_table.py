"""The markdown tables of benchmarks/robustness.md from the runs of benchmarks/robustness.sh.

    python benchmarks/robustness_table.py runs/robustness
    python benchmarks/robustness_table.py runs/sensor_failures --silent   # benchmarks/sensor_failures.md
    python benchmarks/robustness_table.py runs/sensor_failures --misalignment --only cmx_seed0   # misalignment.sh
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

RUNS = [  # (run folder, what it is)
    ("cmx", "plain cmx fusion (= PrimKD without a teacher)"),
    ("cmx_seed1", "plain cmx fusion, training seed 1 (seed-to-seed spread)"),
    ("mean", "plain mean fusion (= AnySeg teacher)"),
    ("mean_dropout", "mean + modality dropout 0.5 (AnySeg's dropout, no distillation)"),
    ("anyseg", "AnySeg student (teacher: mean)"),
    ("anyseg_lambda5", "AnySeg student, λ = 5 instead of 50"),
    ("ktb_plain", "KTB fusion, no self-teaching"),
    ("ktb_mmst", "KTB fusion + masked modality self-teaching"),
    ("primkd_rgb", "PrimKD, RGB teacher"),
    ("primkd_depth", "PrimKD, depth teacher"),
    ("teacher_rgb", "RGB only (PrimKD RGB teacher, KTB backbone)"),
    ("teacher_depth", "depth only (PrimKD depth teacher)"),
    # benchmarks/plugin_example.sh: the example plugin's components (examples/plugin)
    ("gated_dropout", "the plugin's gated fusion + modality dropout 0.5"),
    ("gated_consistency", "the gated fusion, the plugin's dropout_consistency method (subset drop 0.5, λ = 1)"),
    ("mean_ce_dice", "mean + modality dropout 0.5, the plugin's ce_dice loss"),
    # benchmarks/misalignment.sh: trained with depth shifted against RGB at random
    ("mean_dropout_shift", "mean + modality dropout 0.5 + misalignment augmentation of depth"),
    ("cmx_shift", "plain cmx fusion + misalignment augmentation of depth"),
]


def pct(v) -> str:
    return "—" if v is None else f"{100 * v:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="the OUT folder of benchmarks/robustness.sh")
    parser.add_argument("--only", nargs="+", metavar="RUN", help="these runs, in this order (default: every run)")
    parser.add_argument("--silent", action="store_true",
                        help="also the silent-failure table (benchmarks/sensor_failures.sh): each failure fed as is "
                             "/ screened by the sensor checks / the sensor absent, detection and false alarms")
    parser.add_argument("--misalignment", action="store_true",
                        help="the misalignment table of benchmarks/misalignment.sh (its misalignment.json) instead")
    args = parser.parse_args()
    described = dict(RUNS)
    for run in args.only or ():  # <run>_seedN: <run> trained with train.seed=N
        base, _, seed = run.rpartition("_seed")
        if run not in described and base in described and seed.isdigit():
            described[run] = f"{described[base]}, training seed {seed}"
    unknown = [run for run in args.only or () if run not in described]
    if unknown:
        parser.error(f"unknown run(s) {unknown}; known: {list(described)}")
    rows, noise, silent = [], [], []
    if args.misalignment:
        misalignment_table(args.out, [(run, described[run]) for run in args.only] if args.only else RUNS)
        return
    for run, what in [(run, described[run]) for run in args.only] if args.only else RUNS:
        path = args.out / run / "robust.json"
        if not path.is_file():
            print(f"(missing: {path})")
            continue
        r = json.loads(path.read_text())["robustness"]
        em = r["entire_missing"]
        sub = {name: s["miou"] for name, s in em["subsets"].items()}
        rows.append(f"| {run} | {what} | {pct(sub.get('rgb+depth'))} | {pct(sub.get('rgb'))} | "
                    f"{pct(sub.get('depth'))} | {pct(em['average'])} | {pct(em['expected'].get('0.1'))} |")
        if args.silent and r.get("silent_failures", {}).get("results"):
            silent += silent_rows(run, r["silent_failures"])
        c = r["corruptions"]
        noise.append(f"| {run} | {pct(c['dropout']['mean'].get('all'))} | {pct(c['gaussian']['mean'].get('rgb'))} | "
                     f"{pct(c['gaussian']['mean'].get('depth'))} | {pct(c['salt_pepper']['mean'].get('rgb'))} | "
                     f"{pct(c['salt_pepper']['mean'].get('depth'))} |")
    print("| run | model / recipe | rgb+depth | rgb | depth | anymodal mean | E[mIoU], p = 0.1 |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print()
    print("| run | pixel dropout, all sensors (mean of r) | Gaussian rgb | Gaussian depth | salt-pepper rgb | "
          "salt-pepper depth |")
    print("|---|---|---|---|---|---|")
    print("\n".join(noise))
    if args.silent:
        print()
        print("| run | sensor | failure | fed as is | screened | sensor absent | detected | false alarms (clean) |")
        print("|---|---|---|---|---|---|---|---|")
        print("\n".join(silent))


def misalignment_table(out: Path, runs: list[tuple[str, str]]) -> None:
    """Every sensor but the first shifted against it, at each strength, beside the clean and the sensor-absent mIoU."""
    header = None
    for run, what in runs:
        path = out / run / "misalignment.json"
        if not path.is_file():
            print(f"(missing: {path})")
            continue
        r = json.loads(path.read_text())["robustness"]
        entry, subsets = r["corruptions"]["misalignment"], r["entire_missing"]["subsets"]
        if header is None:
            header = entry["strengths"]
            print("| run | model / recipe | shifted sensor | all sensors, aligned | "
                  + " | ".join(f"shifted {100 * f:g} %" for f in header) + " | shifted sensor absent |")
            print("|---|---|---|---|" + "---|" * len(header) + "---|")
        for sensor, by_strength in entry["miou"].items():
            others = "+".join(m for m in r["modalities"] if m != sensor)
            print(f"| {run} | {what} | {sensor} | {pct(r['clean_miou'])} | "
                  + " | ".join(pct(by_strength.get(str(float(f)))) for f in header)
                  + f" | {pct(subsets.get(others, {}).get('miou'))} |")


def silent_rows(run: str, section: dict) -> list[str]:
    rows = []
    for sensor, by_failure in section["results"].items():
        alarms = section["false_alarms"][sensor]
        for failure, r in by_failure.items():
            detected = "—" if r["detected"] is None else f"{100 * r['detected']:.1f}%"
            rows.append(f"| {run} | {sensor} | {failure} | {pct(r['as_is'])} | {pct(r['screened'])} | "
                        f"{pct(section['absent'].get(sensor))} | {detected} | {alarms['any']} of {alarms['frames']} |")
    return rows


if __name__ == "__main__":
    main()
