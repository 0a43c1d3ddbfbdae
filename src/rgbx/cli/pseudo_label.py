"""``rgbx pseudo-label MODEL --data DIR --split raw --out OUT``: label unlabelled recordings with a trained model, keep
the pixels it is sure of, and write a dataset folder to train the next model on (self-training)."""

from __future__ import annotations

import shutil
from pathlib import Path

from rgbx.cli.common import (
    add_command,
    add_inference_speed_arguments,
    add_runtime_arguments,
    add_sensor_check_arguments,
    add_test_time_arguments,
    add_threads_argument,
    non_negative_int,
    parse_options,
    positive_float,
    positive_int,
    predictor_from_args,
)

EXAMPLES = """  rgbx calibrate runs/teacher/model.safetensors --data data/rig --split val
  rgbx pseudo-label runs/teacher/model.calibrated.safetensors --data data/rig --split raw --out data/rig-pseudo
  rgbx train my.yaml data.root=data/rig-pseudo data.train_split=train_pseudo output_dir=runs/student
  rgbx pseudo-label model.safetensors --data data/rig --split raw --out data/rig-p --min-confidence 0.9
  rgbx pseudo-label model.safetensors --data data/rig --split raw --out data/rig-p --class-fraction 0.5 --min-confidence 0.95
  rgbx pseudo-label model.safetensors --data data/rig --split raw --out data/rig-p --check-sensors --scales 0.75 1 1.25 --flip
Predicts every sample of SPLIT (its samples need no label files: `label: {optional: true}` in dataset.yaml) with the
sensors it has, and keeps a pixel's class when its confidence (calibrated per sensor set when the model file records
temperatures: rgbx calibrate) is at least --min-confidence, or among the --class-fraction most confident pixels of
that class (class-balanced self-training, CBST): rare classes keep their share. OUT is a dataset folder that uses
DIR's sensor files where they are (relative paths, nothing copied): OUT/label/ holds the pseudo-labels (ignore
elsewhere) and the labels of DIR's other splits; split train_pseudo = the --labelled split, repeated until it is at
least as large as SPLIT (--labelled-repeat), + SPLIT. OUT/prediction/ and OUT/confidence/ (16-bit, confidence x
65536) hold the raw predictions, OUT/pseudo_labels.json the rule, the thresholds and the report, OUT/samples.csv
each sample's mean confidence and share of pixels kept (least confident first). When SPLIT does have labels, the
report scores the pseudo-labels against them (never used to make them). A second round: pseudo-label OUT's SPLIT
with the student (--data OUT --split SPLIT --out OUT2): OUT's train_pseudo, named in its
pseudo_labels.json, is the earlier round's and is not carried into OUT2, whose train_pseudo = train + SPLIT with the
student's pseudo-labels (OUT is not changed; the report is not scored against the teacher's pseudo-labels).
"""


def add_parser(sub) -> None:
    p = add_command(sub, "pseudo-label", "label unlabelled recordings for self-training",
                    "Pseudo-label a dataset split with a trained model (self-training).", EXAMPLES, run)
    p.add_argument("checkpoint", help="rgbx model file (.safetensors), or a file rgbx export wrote (.onnx)")
    p.add_argument("--data", required=True, type=Path, help="dataset folder in the rgbx format (docs/dataset-format.md)")
    p.add_argument("--split", required=True, help="the split to pseudo-label (e.g. raw recordings without labels)")
    p.add_argument("--out", required=True, type=Path, help="the dataset folder to write (must not exist)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="a dataset option (repeatable), e.g. --option conditions=[night,fog]")
    p.add_argument("--min-confidence", type=positive_float, metavar="P",
                   help="keep pixels whose confidence is at least P (0-1), compared in 1/4096 bins: P is rounded up "
                        "to the next bin edge (0.6 keeps 0.600098 and above; rgbx predict --min-confidence compares "
                        "exactly)")
    p.add_argument("--class-fraction", type=positive_float, metavar="F",
                   help="keep the most confident fraction F (0-1] of each predicted class's pixels (class-balanced); "
                        "with --min-confidence, a pixel passing either is kept. Default (neither given): 0.5")
    p.add_argument("--labelled", default="train",
                   help="the labelled split that train_pseudo joins (default train; 'none': the pseudo-labelled "
                        "samples alone)")
    p.add_argument("--labelled-repeat", type=positive_int, metavar="N",
                   help="list each labelled sample N times in train_pseudo (default: as many times as makes them at "
                        "least as many as the pseudo-labelled ones, so the true labels keep their weight)")
    p.add_argument("--out-split", default="train_pseudo", help="name of the joined split (default train_pseudo)")
    add_test_time_arguments(p)
    add_sensor_check_arguments(p, "screen each sample's frames first and leave out a sensor whose frame failed "
                                  "(black, empty, saturated, NaN, frozen): the pseudo-label comes from the others")
    p.add_argument("--json", type=Path, help="also write the report as JSON here")
    p.add_argument("--device", default="auto")
    add_threads_argument(p)
    p.add_argument("--workers", type=non_negative_int,
                   help="processes reading the split ahead of the model (default: 2 on the CPU, on CUDA one per "
                        "spare core up to 8)")
    add_inference_speed_arguments(p)
    add_runtime_arguments(p)


def run(args) -> int:
    from rgbx.cli.common import resolve_device
    from rgbx.engine.pseudo_label import DEFAULT_RULE, LABELLED_HINT, PseudoLabelRule, pseudo_label
    from rgbx.engine.report import Reporter, wide_console
    from rgbx.engine.trainer import loader_workers
    from rgbx.errors import ConfigError

    rule = (DEFAULT_RULE if args.min_confidence is None and args.class_fraction is None
            else PseudoLabelRule(args.min_confidence, args.class_fraction))
    if args.out.exists():  # before the model is loaded
        raise ConfigError(f"{args.out}: already exists; pseudo-labels go to a new folder (nothing is overwritten)")
    device = resolve_device(args.device)
    predictor = predictor_from_args(args, device)
    labelled = None if args.labelled == "none" else args.labelled
    try:
        with Reporter().progress(0, label=f"pseudo-labelling {args.data} [{args.split}]") as bar:
            report = pseudo_label(predictor, args.data, args.split, args.out, rule, labelled=labelled,
                                  labelled_repeat=args.labelled_repeat,
                                  out_split=args.out_split, options=parse_options(args.option),
                                  num_workers=loader_workers(args.workers, device),
                                  provenance={"model": str(args.checkpoint)},
                                  progress=lambda done, total: bar.update(done, total))
    except ConfigError as e:  # name the command-line flag, not the Python argument
        if LABELLED_HINT not in str(e):
            raise
        raise ConfigError(str(e).replace(LABELLED_HINT, "--labelled SPLIT, or --labelled none")) from None
    console = wide_console()
    console.print(report_table(report, f"pseudo-labels of {args.data} [{args.split}]: {rule.describe()}"))
    say = lambda text: console.print(text, markup=False, highlight=False, soft_wrap=True)  # noqa: E731
    say(f"kept {100 * report.kept_share:.1f}% of {sum(report.predicted)} pixels in {report.samples - len(report.skipped)}"
        f" sample(s)" + (f"; {len(report.skipped)} skipped (every sensor failed)" if report.skipped else ""))
    if report.accuracy_all is not None:
        say(f"against the split's own labels ({report.scored_samples} samples): the model's classes are "
            f"{100 * report.accuracy_all:.1f}% right, the kept pixels {100 * (report.accuracy_kept or 0):.1f}% "
            f"({100 * report.coverage:.1f}% of the labelled pixels kept)")
    with (args.out / "samples.csv").open() as f:
        least = [line.split(",", 1)[0] for line in f.read().splitlines()[1:4]]
    say(f"least confident: {', '.join(least)} ... ({args.out / 'samples.csv'})")
    if predictor.calibration is None:
        say("the model file has no confidence temperatures: the confidences are the raw softmax (rgbx calibrate "
            "fits them; --min-confidence then means what it says)")
    say(f"wrote {args.out}; train on it: rgbx train CONFIG data.root={args.out} data.train_split={args.out_split}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(args.out / "pseudo_labels.json", args.json)
    return 0


def report_table(report, title: str):
    from rich.table import Table
    from rich.text import Text

    scored = bool(report.precision)
    table = Table(title=Text(title), caption="threshold: the confidence a pixel of that predicted class needs; "
                                             + ("precision: kept pixels right, of those with a label; recall: the "
                                                "class's labelled pixels kept and right" if scored else
                                                "the split has no labels to score the pseudo-labels against"))
    columns = ["class", "predicted px", "threshold", "kept"] + (["precision", "recall"] if scored else [])
    for column in columns:
        table.add_column(column, justify="left" if column == "class" else "right")
    for c, name in enumerate(report.classes):
        predicted, kept = report.predicted[c], report.kept[c]
        row = [name, str(predicted), "-" if report.thresholds[c] >= 1 else f"{report.thresholds[c]:.3f}",
               f"{100 * kept / predicted:.1f}%" if predicted else "-"]
        if scored:
            row += [_percent(report.precision[c]), _percent(report.recall[c])]
        table.add_row(*row)
    return table


def _percent(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"
