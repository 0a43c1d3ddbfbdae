"""``rgbx eval CHECKPOINT --data DIR``: mIoU, per-class IoU, the anymodal table and the robustness report."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shlex
from pathlib import Path

from rgbx.cli.common import (
    add_command,
    add_dataset_arguments,
    add_inference_speed_arguments,
    add_runtime_arguments,
    add_sensor_check_arguments,
    add_test_time_arguments,
    add_threads_argument,
    check_output,
    inference_speed_from_args,
    load_model_from_args,
    non_negative_int,
    parse_options,
    positive_int,
    sensor_monitor_from_args,
    sliding_window_from_args,
)

EXAMPLES = """  rgbx eval runs/cmx/model.safetensors --data data/synth --split test
  rgbx eval runs/cmx/model.safetensors --data data/synth --anymodal --by condition --json eval.json
  rgbx eval runs/cmx/model.safetensors --data data/synth --modalities rgb     # a rig with only the camera
  rgbx eval runs/cmx/model.safetensors --data data/synth --scales 0.5 0.75 1 1.25 1.5 --flip
  rgbx eval runs/cmx/model.safetensors --data data/kitti360 --dataset kitti360 --window 376x752   # sliding windows
  rgbx eval runs/cmx/model.safetensors --data data/synth --robustness --json robust.json   # missing / noisy sensors
  rgbx eval runs/cmx/model.safetensors --data data/synth --robustness --failures blank frozen --sensor-rule depth.min_coverage=0.05
  rgbx eval runs/cmx/model.safetensors --data data/synth --robustness --corruptions misalignment --failures none --strengths misalignment=0.05,0.1,0.2
  rgbx eval runs/cmx/model.calibrated.safetensors --data data/synth --robustness --calibration   # does confidence fall?
  rgbx eval runs/cmx/model.safetensors --data my_rig --check-sensors   # a failed sensor's frames count as it absent
  rgbx eval runs/cmx/model.safetensors --data data/synth --anymodal --confusion runs/cmx/confusion  # what is mistaken for what
  rgbx eval runs/cmx/model.safetensors --data data/synth --fast              # the device's fast path
  rgbx eval runs/cmx/model.calibrated.safetensors --data data/synth --split test --anymodal --calibration   # ECE, NLL
  rgbx eval runs/cmx/model.calibrated.safetensors --data data/synth --anymodal --calibration --reliability runs/cmx/reliability
  rgbx eval runs/cmx/model.onnx --data data/synth --runtime openvino        # the exported file, as deployed
  rgbx eval runs/cmx/model.onnx --data data/synth --runtime openvino --runtime-precision bf16   # AMX / AVX512-BF16 CPUs
  rgbx eval runs/ms3/model.safetensors --data data/other --zero-shot names.safetensors   # MS3: classes by name
  rgbx eval cmx_b2_nyu.safetensors --data data/NYUDepthv2 --dataset nyudepthv2 --as-published multi-scale  # as CMX does
  torchrun --nproc_per_node 4 -m rgbx.cli.main eval runs/cmx/model.safetensors --data data/synth --anymodal
"""


def add_parser(sub) -> None:
    p = add_command(sub, "eval", "evaluate a checkpoint on a dataset split",
                    "Evaluate at the original label resolution. mIoU convention 'present' (default) averages over "
                    "classes present in the ground truth or prediction; 'all' counts absent classes as 0.",
                    EXAMPLES, run)
    _add_arguments(p)


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="rgbx model file (.safetensors), or a file rgbx export wrote (.onnx: run by "
                                      "--runtime)")
    p.add_argument("--data", required=True, help="dataset folder")
    add_dataset_arguments(p)
    p.add_argument("--split", default="val")
    p.add_argument("--anymodal", action="store_true", help="score every non-empty subset of the model's modalities")
    p.add_argument("--modalities", nargs="+", help="evaluate with only these modalities")
    p.add_argument("--by", default=None, help="sample attribute to break results down by (default: condition, where "
                                              "the samples have it; '' = none)")
    p.add_argument("--miou", choices=("present", "all"), default="present",
                   help="mIoU averaging convention: present (default; the mean over the classes in the ground truth "
                        "or the prediction, mmsegmentation's nanmean) or all (every class, an absent one as IoU 0: "
                        "DFormer's and DELIVER's NaN → 0 mean)")
    p.add_argument("--per-class", action="store_true", help="print the per-class IoU table")
    add_test_time_arguments(p)
    p.add_argument("--as-published", nargs="?", const="single-scale", choices=("single-scale", "multi-scale"),
                   help="score a model as its authors' evaluation code does: add the split and test-time flags "
                        "recorded in the file (by rgbx convert, or by a preset's published_evaluation; rgbx info "
                        "shows them); multi-scale adds the "
                        "protocol's optional multi-scale + flip flags (CMX's 'MS & Flip', DFormer's --mst). A flag "
                        "given on the command line as well must agree")
    p.add_argument("--robustness", action="store_true",
                   help="robustness report instead: every sensor subset with average and expected mIoU under "
                        "independent sensor failure, random pixel dropout, Gaussian and salt-and-pepper noise, "
                        "misalignment against the first sensor (calibration drift), and "
                        "silent failures (a sensor sending blank / NaN / saturated / frozen frames) fed as is and "
                        "screened by the sensor checks (rgbx.engine.robustness documents each)")
    p.add_argument("--seed", type=int, default=0, help="seed of the --robustness corruptions")
    p.add_argument("--failures", nargs="+", choices=("blank", "nan", "saturated", "frozen", "none"),
                   help="--robustness: the silent sensor failures to score, each fed as is and screened by the "
                        "sensor checks (default: all; none: skip)")
    # the names of rgbx.engine.robustness.CORRUPTIONS (listed here so that --help imports no engine; a test checks)
    p.add_argument("--corruptions", nargs="+", choices=("dropout", "gaussian", "salt_pepper", "misalignment", "none"),
                   help="--robustness: the corruptions to score, each at three strengths (--strengths: others; "
                        "default: all; none: skip)")
    p.add_argument("--strengths", nargs="+", metavar="NAME=V,V,...",
                   help="--robustness: other strengths for a corruption, e.g. misalignment=0.05,0.1,0.2 (defaults: "
                        "dropout 0.25,0.5,0.75; gaussian 0.1,0.25,0.5; salt_pepper 0.01,0.05,0.1; misalignment "
                        "0.01,0.02,0.05)")
    add_sensor_check_arguments(p, "a sensor whose frame fails the sensor checks (black / uniform, no measurement, "
                                  "saturated, mostly NaN: rgbx.data.sensor_health; samples are not a stream, so no "
                                  "frozen check) is absent from that sample, as rgbx predict --check-sensors leaves "
                                  "it out; --sensor-rule: the checks' thresholds, here and for --robustness")
    p.add_argument("--zero-shot", type=Path, metavar="EMBEDDINGS",
                   help="MS3 zero-shot: score the dataset's own classes, given only their language embeddings in "
                        "this .safetensors file (class name -> 1-D vector; `rgbx embed-classes`), with the run's MS3 "
                        "head; the model's classifier is not used")
    p.add_argument("--ms3-head", type=Path, help="the MS3 head for --zero-shot (default: ms3_head.safetensors next "
                                                  "to the checkpoint)")
    p.add_argument("--calibration", action="store_true",
                   help="also score how far the confidences can be trusted, per sensor set: expected calibration "
                        "error (15 bins), NLL, and the accuracy of the pixels above confidence thresholds; "
                        "uncalibrated and, for a model file rgbx calibrate wrote, with its temperatures; with "
                        "--robustness: the confidence of every case of the report (calibrated when the file has "
                        "temperatures): does it fall when a sensor fails and nothing catches it?")
    p.add_argument("--reliability", type=Path, metavar="DIR",
                   help="with --calibration: write each sensor set's reliability diagrams here (<set>.png: accuracy "
                        "per confidence bin against the diagonal, raw and calibrated side by side; <set>.csv: the "
                        "bins)")
    p.add_argument("--json", type=Path, help="write all results as JSON here")
    p.add_argument("--confusion", type=Path, metavar="DIR",
                   help="write each evaluated sensor set's confusion matrix here (<set>.csv: pixel counts, rows = "
                        "ground truth; <set>.png: shares of each row) and print the largest confusions")
    p.add_argument("--batch-size", type=positive_int, default=4)
    p.add_argument("--workers", type=non_negative_int,
                   help="loader processes (default: 2 on the CPU, on CUDA one per spare core up to 8)")
    p.add_argument("--device", default="auto")
    add_threads_argument(p)
    add_inference_speed_arguments(p)
    add_runtime_arguments(p)


def run(args) -> int:
    import torch

    from rgbx.cli.common import resolve_device
    from rgbx.engine.distributed import init_distributed

    device = resolve_device(args.device)
    ctx = init_distributed(device.type)  # under torchrun: each process scores its share, the matrices are summed
    if ctx.enabled and device.type == "cuda":
        device = torch.device("cuda", ctx.local_rank)
    try:
        return _evaluate(args, device, ctx)
    finally:
        ctx.close()


def _evaluate(args, device, ctx) -> int:
    import torch

    from rgbx.data import build_dataset, collate
    from rgbx.data.sensor_health import FrameScreen
    from rgbx.data.transforms import EvalTransform
    from rgbx.engine.calibration import TemperatureScaling
    from rgbx.engine.checkpoint import check_classes
    from rgbx.engine.distributed import shard_indices
    from rgbx.engine.evaluate import all_subsets, evaluate
    from rgbx.engine.fastpath import backend_flags, precision_dtype, prepare_inference
    from rgbx.engine.onnx_model import is_onnx_file
    from rgbx.engine.tables import print_eval_tables
    from rgbx.engine.trainer import loader_workers
    from rgbx.errors import ConfigError, DataError

    for option, what in (("failures", "silent failures"), ("corruptions", "corruptions"),
                         ("strengths", "corruptions' strengths")):
        if getattr(args, option) is not None and not args.robustness:
            raise ConfigError(f"--{option} chooses the {what} of --robustness; add --robustness")
    if args.reliability is not None and not args.calibration:
        raise ConfigError("--reliability draws the figures of --calibration; add --calibration")
    if args.calibration and args.zero_shot is not None:
        raise ConfigError("--calibration scores the model's own classifier's confidences; drop --zero-shot")
    if args.reliability is not None and args.robustness:
        raise ConfigError("--reliability draws the plain evaluation's diagrams; --robustness --calibration scores "
                          "the confidences in its report (and --json) without them")
    check_output("--json", args.json)
    check_output("--confusion", args.confusion, folder=True)
    check_output("--reliability", args.reliability, folder=True)
    if args.check_sensors and args.robustness:
        raise ConfigError("--robustness screens frames in its silent-failure section and scores the clean data as "
                          "it is; drop --check-sensors")
    # a bad --sensor-rule fails before the model loads
    monitor = sensor_monitor_from_args(args, "--robustness" if args.robustness else "--check-sensors")
    model, info = load_model_from_args(args, device)
    published = apply_published_protocol(args, info, announce=ctx.is_main) if args.as_published else None
    window = sliding_window_from_args(args)
    speed = inference_speed_from_args(args, device)  # host memory kept on the CPU, --fast or not (CMX-B2: 1.29x)
    if speed is not None:
        prepare_inference(model, speed)
    amp_dtype = precision_dtype(speed.precision, device) if speed is not None else None
    if args.modalities:
        bad = [m for m in args.modalities if m not in model.modalities]
        if bad:
            raise ConfigError(f"--modalities {bad}: the model only takes {', '.join(model.modalities)}")
    # --modalities: only those are read (data of a rig without the model's other sensors is scored as it is)
    read = [m for m in model.modalities if m in args.modalities] if args.modalities else list(model.modalities)
    try:
        dataset = build_dataset(args.dataset, args.data, args.split, modalities=read,
                                transform=EvalTransform(), **parse_options(args.option))
    except DataError as e:
        raise DataError(f"{e}{_fewer_sensors_hint(args, model)}") from None
    desc = dataset.description
    dataset.require_labels("evaluation")
    note = dataset.evaluation_note()
    if note and int(os.environ.get("RANK", "0")) == 0:
        print(f"note: {note}", flush=True)
    if args.check_sensors:  # a sensor whose frame fails the checks is absent from that sample (no frozen check)
        dataset.screen = FrameScreen(monitor.rules, monitor.per_sensor)
    asked, args.by = args.by is not None, "condition" if args.by is None else args.by
    dataset.require_attribute(args.by, f"--by {args.by}", "--by ''", asked=asked)
    if args.zero_shot is not None and is_onnx_file(args.checkpoint):
        raise ConfigError(f"--zero-shot needs the rgbx model file (its decoder features), not {args.checkpoint}")
    if args.zero_shot is not None:
        from rgbx.engine.zero_shot import ZeroShotSegmentor
        from rgbx.methods.ms3 import load_class_embeddings, load_ms3_head

        head, meta = load_ms3_head(args.ms3_head if args.ms3_head is not None else Path(args.checkpoint).parent,
                                   device)
        text = load_class_embeddings(args.zero_shot, list(desc.classes), getattr(dataset, "class_sources", None))
        model = ZeroShotSegmentor(model, head, text, meta.get("temperature", 0.07), desc.classes).to(device).eval()
    elif args.ms3_head is not None:
        raise ConfigError("--ms3-head goes with --zero-shot EMBEDDINGS")
    # zero-shot: the dataset's classes are the ones embedded, not those the model was trained on
    check_classes(model.num_classes, {} if args.zero_shot is not None else info, desc.classes, args.checkpoint,
                  args.data)
    if args.modalities:
        subsets = [tuple(read)]
    else:
        subsets = all_subsets(model.modalities) if args.anymodal else None
    share = torch.utils.data.Subset(dataset, shard_indices(len(dataset), ctx)) if ctx.enabled else dataset
    loader = torch.utils.data.DataLoader(share, batch_size=args.batch_size, collate_fn=collate,
                                         num_workers=loader_workers(args.workers, device),
                                         pin_memory=device.type == "cuda")
    temperatures = TemperatureScaling.from_info(info, str(args.checkpoint)) if args.calibration else None
    if args.robustness:
        if args.modalities:
            raise ConfigError("--robustness scores every subset of the model's modalities; drop --modalities")
        if args.confusion:
            raise ConfigError("--confusion writes the plain evaluation's confusion matrices; drop --robustness")
        with backend_flags(speed):
            return _run_robustness(args, model, loader, dataset, device, ctx.is_main, amp_dtype, window,
                                   temperatures)
    with backend_flags(speed):
        result = evaluate(model, loader, num_classes=desc.num_classes, ignore_index=desc.ignore_index,
                          subsets=subsets, group_by=args.by or None, device=device, scales=args.scales,
                          flip=args.flip, window=window, autocast_dtype=amp_dtype, scale_rule=args.scale_rule,
                          reliability=args.calibration, temperatures=temperatures)
    if not ctx.is_main:  # the other processes of a torchrun launch only contribute their counts
        return 0
    print_eval_tables(result, list(desc.classes), convention=args.miou, per_class=args.per_class,
                      title=f"{args.checkpoint} on {args.data} [{args.split}]"
                      + (f", zero-shot from {args.zero_shot}" if args.zero_shot is not None else ""))
    if args.check_sensors:
        left = ", ".join(f"{m} in {n}" for m, n in result.screened.items()) or "nothing"
        print(f"sensor checks left out: {left} of {result.samples} samples")
    if args.calibration and temperatures is None:
        print(f"{args.checkpoint} records no temperatures: the figures are the raw softmax's (rgbx calibrate fits "
              f"them on a validation split)")
    elif args.calibration and temperatures.method == "vector":
        print(f"{args.checkpoint}'s vector scaling is part of the model (its labels follow it): the uncalibrated and "
              f"calibrated figures are both after it; score the file it was fitted from for the network's own")
    if args.calibration and temperatures is not None and temperatures.test_time:
        fitted = {k: temperatures.test_time.get(k) for k in ("scales", "flip", "window", "scale_rule")}
        here = {k: v for k, v in _test_time(args, window).items() if k in fitted}
        if fitted != here:
            print(f"the temperatures were fitted for the test-time passes {fitted}; this evaluation makes {here} "
                  f"(rgbx calibrate takes the same --scales / --flip / --window)")
    if args.confusion:
        write_confusion(result, list(desc.classes), args.confusion)
    if args.reliability is not None:
        write_reliability(result, args.reliability)
    if args.json:
        data = result.to_dict(list(desc.classes), convention=args.miou)
        data.update({"checkpoint": str(args.checkpoint), "data": str(args.data), "split": args.split,
                     "model": model.config.to_dict(), "speed": speed.describe() if speed else "model's own fp32",
                     "test_time": _test_time(args, window), "as_published": published,
                     "sensor_checks": {m: dataclasses.asdict(monitor.rules_for(m)) for m in model.modalities}
                     if args.check_sensors else None,
                     "temperatures": temperatures.to_dict() if temperatures is not None else None})
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(data, indent=2))
    return 0


def _fewer_sensors_hint(args, model) -> str:
    """``"; score ... with --modalities A B"`` when the data lacks some of the model's sensors but has others."""
    from rgbx.data import build_dataset
    from rgbx.errors import RgbxError

    if args.modalities:
        return ""
    try:
        has = build_dataset(args.dataset, args.data, args.split, check="none",
                            **parse_options(args.option)).description.modalities
    except RgbxError:
        return ""
    usable = [m for m in model.modalities if m in has]
    if not usable or len(usable) == len(model.modalities):
        return ""
    return f"; score the model on the sensors the data has with --modalities {' '.join(usable)}"


def published_flags(flags: str, multi_scale: bool) -> list[str] | None:
    """The ``rgbx eval`` arguments of a recorded protocol (:data:`rgbx.models.convert.REFERENCE_EVALUATION`'s
    ``flags``: a trailing ``[--flag ...]`` is the optional multi-scale test, kept with ``multi_scale``); None when
    ``multi_scale`` asks for a part the protocol does not have."""
    optional = re.search(r"\[(--[^\[]*)\]\s*$", flags)
    if multi_scale and optional is None:
        return None
    base = flags[: optional.start()] if optional else flags
    return shlex.split(base) + (shlex.split(optional.group(1)) if multi_scale else [])


def as_published_command(path, flags: str) -> str:
    """The ``rgbx eval`` command line that scores ``path`` by its recorded protocol ``flags`` (``--dataset NAME`` left
    to fill in when the protocol does not name the loader)."""
    dataset = "" if "--dataset" in flags.split() else " --dataset NAME"
    return f"rgbx eval {path} --data DIR{dataset} --as-published"


# what a published protocol fixes even where it keeps rgbx eval's default (it scores with those values)
PROTOCOL_KEYS = ("split", "miou", "scales", "flip", "scale_rule")


def apply_published_protocol(args, info: dict, announce: bool = True) -> list[str]:
    """Set on ``args`` the flags of the evaluation protocol recorded in the model file's ``info``
    (``reference_evaluation``: written by ``rgbx convert``, and by a run whose config names a
    ``published_evaluation``), as if they were typed; returns them. ConfigError when the file records none, or when
    the command line gives one of them another value."""
    from rgbx.errors import ConfigError

    protocol = info.get("reference_evaluation")
    if not protocol:
        raise ConfigError(f"--as-published: {args.checkpoint} records no published evaluation protocol (rgbx "
                          f"convert records one in the CMX, CMNeXt, DFormer and DFormerv2 files it writes, and a "
                          f"training run in its model files when its config sets published_evaluation); give the "
                          f"test-time flags instead")
    flags = published_flags(protocol["flags"], multi_scale=args.as_published == "multi-scale")
    if flags is None:
        raise ConfigError(f"--as-published multi-scale: the protocol recorded in {args.checkpoint} has no multi-scale "
                          f"variant ({protocol.get('what')}: {protocol['flags']}); use --as-published")
    parser = _parser()
    typed = _typed(args)
    required = [str(args.checkpoint), "--data", str(args.data)]
    defaults = vars(parser.parse_args(required))
    try:
        wanted = vars(parser.parse_args(required + flags))
    except SystemExit:  # argparse has printed what it could not parse
        raise ConfigError(f"{args.checkpoint}: its recorded protocol flags {protocol['flags']!r} are not rgbx eval "
                          f"arguments") from None
    for key, value in wanted.items():
        given = getattr(args, key)
        if value == defaults[key]:  # a protocol that leaves the mIoU convention etc. at rgbx's default fixes it too
            if key in PROTOCOL_KEYS and typed is not None and key in typed and given != value:
                raise ConfigError(f"--as-published keeps {_flag_text(key, value)} (the protocol's); the command "
                                  f"line gives {_flag_text(key, given)}: drop one")
            continue
        if key == "option":  # KEY=VALUE pairs: the protocol's and the command line's, one value per key
            ours = dict(o.split("=", 1) for o in value)
            for o in given:
                k, _, v = o.partition("=")
                if k in ours and ours[k] != v:
                    raise ConfigError(f"--as-published sets --option {k}={ours[k]}; the command line gives "
                                      f"--option {o}: drop one")
            setattr(args, key, [*value, *(o for o in given if o not in value)])
        elif given != value and (key in typed if typed is not None else given != defaults[key]):
            flag = "--" + key.replace("_", "-")
            raise ConfigError(f"--as-published sets {flag} {_shown(value)}; the command line gives {flag} "
                              f"{_shown(given)}: drop one")
        else:
            setattr(args, key, value)
    if announce:
        print(f"as published ({protocol.get('what')}): {shlex.join(flags)}")
    return flags


def _parser() -> argparse.ArgumentParser:
    """A stand-alone parser of ``rgbx eval``'s arguments."""
    parser = argparse.ArgumentParser(prog="rgbx eval")
    _add_arguments(parser)
    return parser


def _typed(args) -> set[str] | None:
    """The arguments (dests) typed on the command line, whatever their value (None when ``args`` did not come from
    :func:`rgbx.cli.main.main`, which keeps the command line)."""
    command_line = getattr(args, "command_line", None)
    if command_line is None:
        return None
    tokens = command_line[command_line.index("eval") + 1:] if "eval" in command_line else command_line
    parser = _parser()
    for action in parser._actions:  # no defaults: only what was typed is set
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_known_args(tokens)[0]))


def _flag_text(key: str, value) -> str:
    """``--miou present``, ``--flip`` / ``no --flip``: an eval argument as typed."""
    flag = "--" + key.replace("_", "-")
    if isinstance(value, bool):
        return flag if value else f"no {flag}"
    return f"{flag} {_shown(value)}"


def _shown(value) -> str:
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, int) for v in value):
        return "x".join(str(v) for v in value)  # a size (--window)
    if isinstance(value, (list, tuple)):
        return " ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    return str(value)


def write_confusion(result, class_names: list[str], folder: Path, top: int = 10) -> None:
    """``folder/<sensor set>.csv`` and ``.png`` for every evaluated sensor set (all samples), and the ``top``
    largest confusions of the fullest set printed."""
    from rgbx.engine.report import wide_console
    from rgbx.engine.tables import confusion_table
    from rgbx.visualize import confusion_image, save_image

    folder.mkdir(parents=True, exist_ok=True)
    for subset, groups in result.matrices.items():
        matrix = groups["all"]
        (folder / f"{subset}.csv").write_text(matrix.to_csv(class_names))
        save_image(folder / f"{subset}.png", confusion_image(matrix.matrix, class_names, title=subset))
    fullest = max(result.matrices, key=lambda s: len(s.split("+")))
    console = wide_console()
    console.print(confusion_table(result.matrices[fullest]["all"], class_names, f"largest confusions, {fullest}", top))
    console.print(f"confusion matrices: {folder}")


def write_reliability(result, folder: Path) -> None:
    """``folder/<sensor set>.png`` (the reliability diagrams of every kind of confidence scored, side by side) and
    ``.csv`` (each bin's pixels, confidence and accuracy per kind), over all samples."""
    import csv

    import numpy as np

    from rgbx.visualize import reliability_image, save_image

    folder.mkdir(parents=True, exist_ok=True)
    for subset, kinds in result.calibration().items():
        images = [reliability_image(m.bins, title=f"{subset}, {kind}", ece=m.ece) for kind, m in kinds.items()]
        height = max(image.shape[0] for image in images)
        save_image(folder / f"{subset}.png", np.concatenate(
            [np.pad(image, ((0, height - image.shape[0]), (0, 8), (0, 0)), constant_values=255) for image in images],
            axis=1))
        with open(folder / f"{subset}.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["confidences", "lower", "upper", "pixels", "confidence", "accuracy"])
            for kind, m in kinds.items():
                for b in m.bins:
                    writer.writerow([kind, f"{b['lower']:.4f}", f"{b['upper']:.4f}", b["pixels"],
                                     "" if b["confidence"] is None else f"{b['confidence']:.6f}",
                                     "" if b["accuracy"] is None else f"{b['accuracy']:.6f}"])
    print(f"reliability diagrams: {folder}")


def _test_time(args, window) -> dict:
    """How each prediction was made, for the JSON report."""
    return {"scales": list(args.scales), "flip": args.flip, "scale_rule": args.scale_rule,
            "window": None if window is None else list(window.size),
            "stride": None if window is None else list(window.stride)}


def _previous_in(dataset):
    """``previous(meta)``: the physical frames of the sample before ``meta["id"]`` in the split (None for the first),
    so that the frozen failure is the same whatever the batch size or torchrun's shares."""
    from rgbx.modalities import get_modality

    position = {sid: i for i, sid in enumerate(dataset.ids)}

    def previous(meta: dict):
        i = position.get(meta.get("id"), 0)
        if i == 0:
            return None
        sample = dataset[i - 1]
        return {m: get_modality(m).denormalize(x) for m, x in sample["inputs"].items()}

    return previous


def _chosen(values: list[str] | None, option: str) -> list[str] | None:
    """``--failures`` / ``--corruptions``: None (all), [] (``none``) or the names, once each."""
    from rgbx.errors import ConfigError

    if values is None:
        return None
    if "none" in values:
        if len(values) > 1:
            raise ConfigError(f"{option} none skips them all; give it alone")
        return []
    return list(dict.fromkeys(values))


def _strengths(items: list[str] | None) -> dict[str, list[float]] | None:
    """``--strengths NAME=V,V,...`` → {name: [values]} (the names are checked by the robustness report)."""
    from rgbx.errors import ConfigError

    if not items:
        return None
    out = {}
    for item in items:
        name, _, values = item.partition("=")
        try:
            out[name] = [float(v) for v in values.split(",")]
        except ValueError:
            raise ConfigError(f"--strengths {item!r}: expected NAME=V1,V2,... with numbers") from None
        if not name:
            raise ConfigError(f"--strengths {item!r}: expected NAME=V1,V2,... with numbers")
    return out


def _run_robustness(args, model, loader, dataset, device, is_main: bool = True, amp_dtype=None,
                    window=None, temperatures=None) -> int:
    from rgbx.engine.robustness import print_robustness_tables, robustness_report

    desc = dataset.description
    report = robustness_report(model, loader, num_classes=desc.num_classes, ignore_index=desc.ignore_index,
                               device=device, seed=args.seed, convention=args.miou, class_names=list(desc.classes),
                               autocast_dtype=amp_dtype, scales=args.scales, flip=args.flip, window=window,
                               scale_rule=args.scale_rule, failures=_chosen(args.failures, "--failures"),
                               corruptions=_chosen(args.corruptions, "--corruptions"),
                               strengths=_strengths(args.strengths),
                               monitor=sensor_monitor_from_args(args, "--robustness"),
                               previous=_previous_in(dataset), confidence=args.calibration,
                               temperatures=temperatures)
    if not is_main:
        return 0
    print_robustness_tables(report, title=f"{args.checkpoint} on {args.data} [{args.split}], seed {args.seed}")
    if args.json:
        data = {"robustness": report, "miou_convention": args.miou, "seed": args.seed,
                "checkpoint": str(args.checkpoint), "data": str(args.data), "split": args.split,
                "model": model.config.to_dict(), "test_time": _test_time(args, window)}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(data, indent=2))
    return 0
