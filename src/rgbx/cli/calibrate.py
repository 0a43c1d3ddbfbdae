"""``rgbx calibrate MODEL --data DIR``: fit confidence temperatures (or vector scaling) per sensor set and write them
into a model file."""

from __future__ import annotations

import json
from pathlib import Path

from rgbx.cli.common import (
    add_command,
    add_dataset_arguments,
    add_test_time_arguments,
    add_threads_argument,
    non_negative_int,
    parse_options,
    positive_int,
    sliding_window_from_args,
)

EXAMPLES = """  rgbx calibrate runs/cmx/model.safetensors --data data/synth --split val   # -> runs/cmx/model.calibrated.safetensors
  rgbx eval runs/cmx/model.calibrated.safetensors --data data/synth --split test --anymodal --calibration
  rgbx predict runs/cmx/model.calibrated.safetensors rgb=frames/ depth=depth/ --out preds/ --confidence --min-confidence 0.6
  rgbx calibrate runs/cmx/model.safetensors --data data/synth --sensors full   # one temperature for every sensor set
  rgbx calibrate runs/cmx/model.safetensors --data data/synth --scales 0.75 1 1.25 --flip   # for multi-scale + flip
  rgbx calibrate runs/cmx/model.safetensors --data data/synth --scaling vector   # per class, per set: labels change
Fits, for each set of the model's sensors (every non-empty subset by default), the temperature T that makes
softmax(logits / T) the most likely explanation of the labels of the split (Guo et al. 2017), and writes a copy of
the model file that records them. Predictions (argmax) do not change; confidences (rgbx predict --confidence,
Predictor(..., confidence=True)) become calibrated, with the temperature of the sensors actually used, so they stay
honest when a sensor fails. Fit on a split the model was not trained on, and check on another one. With
--scales / --flip / --window, the fit is for those test-time passes (averaging them softens the probabilities):
give the ones the deployment uses.
--scaling vector fits, per sensor set, a scale and a bias for each class instead (vector scaling, Guo et al. §4.2),
into the model itself: the predictions change with it. For a model whose predictions from a subset of its sensors
lean towards some classes (one trained with every sensor present, then a sensor fails), it can recover much of the
accuracy as well as the calibration (benchmarks/calibration.md); compare both files with rgbx eval --anymodal on
held-out data before deploying it.
"""


def add_parser(sub) -> None:
    p = add_command(sub, "calibrate", "fit confidence temperatures (or vector scaling) per sensor set",
                    "Calibrate a model's confidences on a labelled split: one temperature per sensor set (or a scale "
                    "and a bias per class: --scaling vector).", EXAMPLES,
                    run)
    p.add_argument("checkpoint", help="rgbx model file (.safetensors)")
    p.add_argument("--data", required=True, help="dataset folder")
    add_dataset_arguments(p)
    p.add_argument("--split", default="val", help="the labelled split to fit on (default: val; not the training "
                                                  "split, whose confidences are too high)")
    p.add_argument("--sensors", choices=("all", "full"), default="all",
                   help="all: one temperature per non-empty subset of the model's sensors (a rig that loses one uses "
                        "its own); full: one temperature, fitted with every sensor, for every set")
    p.add_argument("--scaling", choices=("temperature", "vector"), default="temperature",
                   help="temperature: one temperature per set, predictions unchanged (default); vector: per set a "
                        "scale and a bias for each class, written into the model (its predictions change)")
    p.add_argument("--pixels-per-image", type=positive_int, default=2048,
                   help="labelled pixels drawn at random from each image for the fit (default 2048)")
    p.add_argument("--seed", type=int, default=0, help="seed of the pixel draw")
    add_test_time_arguments(p)
    p.add_argument("--out", type=Path,
                   help="the calibrated model file to write (default: MODEL.calibrated.safetensors beside MODEL; "
                        "giving MODEL itself replaces it, atomically)")
    p.add_argument("--json", type=Path, help="write the temperatures and the fit's figures as JSON here")
    p.add_argument("--batch-size", type=positive_int, default=4)
    p.add_argument("--workers", type=non_negative_int,
                   help="loader processes (default: 2 on the CPU, on CUDA one per spare core up to 8)")
    p.add_argument("--device", default="auto")
    add_threads_argument(p)


def run(args) -> int:
    import os

    from rgbx.cli.common import check_output, resolve_device
    from rgbx.engine.calibration import at_bound, calibrate_file
    from rgbx.engine.report import Reporter, wide_console
    from rgbx.engine.trainer import loader_workers
    from rgbx.errors import ConfigError
    from rgbx.models.model_file import read_model_info

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("rgbx calibrate runs in one process (the fit is one pass over a validation split); "
                          "start it without torchrun")
    check_output("--out", args.out)
    device = resolve_device(args.device)
    where = f"{args.data} [{args.split}]"
    previous = (read_model_info(args.checkpoint, missing_ok=True) if str(args.checkpoint).endswith(".safetensors")
                else {}).get("calibration")
    with Reporter().progress(0, label=f"calibrating on {where}") as bar:
        out, scaling = calibrate_file(args.checkpoint, args.data, args.split, dataset=args.dataset,
                                      options=parse_options(args.option), sensors=args.sensors,
                                      per_image=args.pixels_per_image, seed=args.seed, out=args.out,
                                      batch_size=args.batch_size, num_workers=loader_workers(args.workers, device),
                                      device=device, progress=lambda done, total: bar.update(done, total),
                                      scales=tuple(args.scales), flip=args.flip, window=sliding_window_from_args(args),
                                      scale_rule=args.scale_rule, scaling=args.scaling)
    console = wide_console()
    what = "vector scaling" if scaling.method == "vector" else "temperatures"
    console.print(calibration_fit_table(scaling, f"{what} fitted on {where}"))
    edge = [name for name, t in scaling.temperatures.items() if scaling.method == "temperature" and at_bound(t)]
    if edge:
        console.print(f"at the search's edge: {', '.join(edge)} (the confidences of these sets carry almost no "
                      f"information about being right; is the model trained for them?)", markup=False,
                      highlight=False)
    if previous:
        console.print(f"replaced the calibration {args.checkpoint} held (fitted on {previous.get('fitted_on')})",
                      markup=False, highlight=False)
    console.print(f"wrote {out}; check it on data the fit did not see: rgbx eval {out} --data {args.data} --split "
                  f"{_held_out_split(args)} --calibration{' --anymodal' if len(scaling.temperatures) > 1 else ''}"
                  + (f" (the predictions changed: score {args.checkpoint} the same way)" if scaling.method == "vector"
                     else ""), markup=False, highlight=False, soft_wrap=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"checkpoint": str(args.checkpoint), "out": str(out), **scaling.to_dict()},
                                        indent=2))
    return 0


def _held_out_split(args) -> str:
    """A split of the dataset folder other than the fitted one, for the closing hint (``SPLIT`` when there is none,
    or the dataset is not an rgbx folder)."""
    from rgbx.data.datasets.folder import list_splits

    others = [s for s in list_splits(args.data) if s not in (args.split, "train")] if args.dataset == "folder" else []
    return "test" if "test" in others else (others[0] if others else "SPLIT")


def calibration_fit_table(scaling, title: str):
    from rich.table import Table
    from rich.text import Text

    vector = scaling.method == "vector"
    table = Table(title=Text(title), caption="NLL in nats per pixel, ECE and accuracy in % (15 bins), on the pixels "
                                             "drawn for the fit")
    first = ("scale (min–max)", "bias (min–max)") if vector else ("temperature",)
    last = ("accuracy before", "accuracy after", "pixels") if vector else ("pixels",)
    for column in ("sensors", *first, "NLL before", "NLL after", "ECE before", "ECE after", *last):
        table.add_column(column, justify="left" if column == "sensors" else "right")
    for name in scaling.fit:
        fit, t = scaling.fit[name], scaling.temperatures.get(name)
        if t is None:
            table.add_row(name, *(["—"] * len(first)), "", "", "", "", *([""] * (len(last) - 1)),
                          "0 (" + fit.get("note", "") + ")")
            continue
        nll, ece = fit.get("nll", [float("nan")] * 2), fit.get("ece", [float("nan")] * 2)
        if vector:
            v = scaling.vectors[name]
            head = (f"{min(v['scale']):.2f}–{max(v['scale']):.2f}", f"{min(v['bias']):+.2f}–{max(v['bias']):+.2f}")
            acc = fit.get("accuracy", [float("nan")] * 2)
            tail = (f"{100 * acc[0]:.2f}", f"{100 * acc[1]:.2f}", str(fit.get("pixels", "")))
        else:
            head, tail = (f"{t:.3f}",), (str(fit.get("pixels", "")),)
        table.add_row(name, *head, f"{nll[0]:.4f}", f"{nll[1]:.4f}", f"{100 * ece[0]:.2f}", f"{100 * ece[1]:.2f}",
                      *tail)
    return table
