"""Helpers shared by the subcommands."""

from __future__ import annotations

import argparse
import math

EPILOG_FORMATTER = argparse.RawDescriptionHelpFormatter


def add_command(sub, name: str, help: str, description: str, examples: str, run) -> argparse.ArgumentParser:
    parser = sub.add_parser(name, help=help, description=description, epilog="examples:\n" + examples,
                            formatter_class=EPILOG_FORMATTER)
    parser.set_defaults(run=run)
    return parser


def check_output(flag: str, path, folder: bool = False) -> None:
    """Refuse an output path that cannot be written before the command's work starts (a folder where a file goes, a
    file where a folder goes, a file among its parents, a read-only folder), so that a long evaluation's results are
    not lost at the end."""
    import os
    from pathlib import Path

    from rgbx.errors import ConfigError

    if path is None:
        return
    path = Path(path)
    if path.is_dir() and not folder:
        raise ConfigError(f"{flag} {path}: is a folder; give the name of the file to write")
    if path.exists() and not path.is_dir() and folder:
        raise ConfigError(f"{flag} {path}: is a file; give a folder (made if missing)")
    parent = path if folder and path.exists() else path.parent  # an existing file is overwritten: its folder counts
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"{flag} {path}: cannot be written, {parent} is a file")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag} {path}: cannot be written, {parent} is not writable")


def parse_size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW, e.g. 240x320, got {text!r}") from None
    if h < 1 or w < 1:
        raise argparse.ArgumentTypeError(f"expected HxW with both at least 1, e.g. 240x320, got {text!r}")
    return h, w


def _number(kind, least, what: str):
    """An argparse ``type``: ``kind(text)``, refused below ``least`` (or at it, for a float ``least`` of 0) and when
    not finite."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not math.isfinite(value) or value < least or (kind is float and least == 0 and value == 0):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value
    parse.__name__ = what  # argparse names the type in its own messages
    return parse


positive_int = _number(int, 1, "a whole number >= 1")
non_negative_int = _number(int, 0, "a whole number >= 0")
positive_float = _number(float, 0, "a number > 0")


def add_dataset_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", default="folder",
                        help="dataset format (rgbx info lists them; default: the rgbx folder format)")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="a dataset option (repeatable), e.g. --option conditions=[night,fog]")


def add_test_time_arguments(parser: argparse.ArgumentParser) -> None:
    """``--scales``, ``--flip``, ``--scale-rule``, ``--window``, ``--stride`` and ``--window-batch``
    (:func:`rgbx.engine.inference.predict_logits`)."""
    parser.add_argument("--scales", type=positive_float, nargs="+", default=[1.0],
                        help="multi-scale testing: average class probabilities over these input scales, e.g. "
                             "0.5 0.75 1 1.25 1.5")
    parser.add_argument("--flip", action="store_true", help="also average over horizontally flipped inputs")
    parser.add_argument("--scale-rule", choices=("rgbx", "dformer", "cmx"), default="rgbx",
                        help="how --scales resize: rgbx (default: round(h x s), each sensor by its own rule), "
                             "dformer (DFormer's evaluate_msf, to reproduce its multi-scale numbers: sizes rounded "
                             "up to multiples of 32, every input bilinear with align_corners=True) or cmx (CMX's "
                             "sliding_eval_rgbX, to reproduce its MS & Flip numbers; needs --window, CMX's "
                             "eval_crop_size: images padded to it, its window placement, exp scores summed)")
    parser.add_argument("--window", type=parse_size, metavar="HxW",
                        help="sliding-window inference: run the model on HxW windows (clipped to the image) and "
                             "average the logits where they overlap, e.g. 480x640 (default: whole images)")
    parser.add_argument("--stride", type=parse_size, metavar="HxW",
                        help="step between sliding windows (default: two thirds of --window)")
    parser.add_argument("--window-batch", type=positive_int, metavar="N",
                        help="window positions run in one forward pass (default 8; 1: one at a time, least memory)")


def add_inference_speed_arguments(parser: argparse.ArgumentParser) -> None:
    """``--fast`` and ``--[no-]keep-host-memory`` of the commands that run a trained model
    (:func:`inference_speed_from_args`)."""
    parser.add_argument("--fast", action="store_true",
                        help="the device's fast path (rgbx.engine.fastpath: bf16 autocast where the device has bf16 "
                             "matrix units, fused attention, channels-last, TF32); 0.2-0.6 %% of pixels may change "
                             "their class (benchmarks/speed.md); default: the model's own fp32 arithmetic")
    parser.add_argument("--keep-host-memory", action=argparse.BooleanOptionalAction,
                        help="glibc's malloc keeps freed host memory for reuse instead of giving large blocks back "
                             "to the kernel (no value changes; the process keeps its peak memory until it exits). "
                             "Default: on for the CPU, --fast or not")


def add_sensor_check_arguments(parser: argparse.ArgumentParser, switch: bool | str = True) -> None:
    """``--check-sensors`` (``switch``; a string: its help) and ``--sensor-rule`` (:func:`sensor_monitor_from_args`)."""
    if switch:
        parser.add_argument("--check-sensors", action="store_true",
                            help=switch if isinstance(switch, str) else
                            "screen each sample's frames first and leave out a sensor whose frame failed "
                            "(black / uniform, no measurement, saturated, mostly NaN, or the same as its previous "
                            "frames: rgbx.data.sensor_health)")
    parser.add_argument("--sensor-rule", action="append", default=[], metavar="[SENSOR.]KEY=VALUE",
                        help="a threshold of the checks, for every sensor or one, e.g. frozen_after=5, "
                             "depth.min_coverage=0.05, rgb.min_contrast=0.02 (repeatable; keys: max_non_finite, "
                             "min_coverage, min_contrast, max_saturated, frozen_after, frozen_tolerance)")


def sensor_monitor_from_args(args, needed_by: str = "--check-sensors"):
    """A :class:`~rgbx.data.sensor_health.SensorMonitor` with ``--sensor-rule``'s thresholds, or None when
    ``needed_by`` (an option) is off (a rule then is an error: it would change nothing)."""
    from rgbx.data.sensor_health import SensorMonitor, parse_rules
    from rgbx.errors import ConfigError

    if not getattr(args, needed_by.lstrip("-").replace("-", "_")):
        if args.sensor_rule:
            raise ConfigError(f"--sensor-rule sets a threshold of the sensor checks; add {needed_by}")
        return None
    rules, per_sensor = parse_rules(args.sensor_rule)
    return SensorMonitor(rules, per_sensor)


def add_runtime_arguments(parser: argparse.ArgumentParser) -> None:
    """``--runtime`` and ``--runtime-threads`` for a ``.onnx`` file given in place of a model file
    (:func:`load_model_from_args`)."""
    # rgbx.engine.onnx_model.RUNTIMES / PRECISIONS, not imported (--help stays light; a test keeps them equal)
    parser.add_argument("--runtime", choices=("onnxruntime", "openvino"), default="onnxruntime",
                        help="for an exported .onnx file (rgbx export) given instead of a model file: the runtime "
                             "that runs it on the CPU (default onnxruntime; openvino: pip install 'rgbx[openvino]')")
    parser.add_argument("--runtime-threads", type=positive_int, metavar="N", help="CPU threads of that runtime")
    parser.add_argument("--runtime-precision", choices=("fp32", "bf16"), default="fp32",
                        help="arithmetic of the runtime: fp32 (the file's, the default) or bf16 (--runtime openvino "
                             "on a processor with bf16 instructions, e.g. AMX: faster, logits within bf16 rounding)")


def load_model_from_args(args, device):
    """``(model, info)`` for ``args.checkpoint``: an rgbx model file (:func:`rgbx.engine.checkpoint.load_model`), or
    an exported ``.onnx`` file run by ``args.runtime`` (:class:`rgbx.engine.onnx_model.OnnxSegmentor`), which takes
    no PyTorch speed switch."""
    from rgbx.engine.onnx_model import OnnxSegmentor, is_onnx_file

    if is_onnx_file(args.checkpoint):
        if getattr(args, "fast", False):
            from rgbx.errors import ConfigError

            raise ConfigError(f"--fast sets PyTorch's speed switches; {args.checkpoint} runs in {args.runtime} "
                              f"(drop --fast)")
        model = OnnxSegmentor(args.checkpoint, args.runtime, args.runtime_threads, args.runtime_precision)
        return model, model.info
    if getattr(args, "runtime_precision", "fp32") != "fp32":
        from rgbx.errors import ConfigError

        raise ConfigError(f"--runtime-precision sets the arithmetic of an exported .onnx file's runtime; "
                          f"{args.checkpoint} is run by PyTorch (--fast computes in bf16 where the device can)")
    from rgbx.engine.checkpoint import load_model

    return load_model(args.checkpoint, device)


def inference_speed_from_args(args, device):
    """The :class:`~rgbx.engine.fastpath.SpeedOptions` of ``--fast`` (None without it: the model's own arithmetic),
    after setting whether freed host memory is kept: as ``--[no-]keep-host-memory`` says, else where the device's
    fast set keeps it (the CPU), ``--fast`` or not, since it changes no value."""
    from rgbx.engine.fastpath import SpeedOptions, keep_host_memory_where_it_pays

    kept = keep_host_memory_where_it_pays(device, args.keep_host_memory)
    return SpeedOptions.fast(device).with_(keep_host_memory=kept) if args.fast else None


def predictor_from_args(args, device, **options):
    """The :class:`~rgbx.engine.predict.Predictor` of a command that predicts with ``args.checkpoint``: the model
    (:func:`load_model_from_args`), ``--fast`` (:func:`inference_speed_from_args`), the test-time passes
    (``--scales``, ``--flip``, ``--window``, ``--scale-rule``) and ``--check-sensors`` / ``--sensor-rule``;
    ``options``: more of its arguments (``min_confidence``)."""
    from rgbx.engine.predict import Predictor

    monitor = sensor_monitor_from_args(args)  # a stray --sensor-rule is refused before the model is loaded
    window = sliding_window_from_args(args)
    model, info = load_model_from_args(args, device)
    return Predictor(model, info, device, scales=tuple(args.scales), flip=args.flip,
                     speed=inference_speed_from_args(args, device), window=window, scale_rule=args.scale_rule,
                     monitor=monitor, **options)


def add_threads_argument(parser: argparse.ArgumentParser) -> None:
    """``--threads N``: torch's CPU threads for the command (set by :func:`rgbx.cli.main.main`)."""
    parser.add_argument("--threads", type=positive_int, metavar="N",
                        help="torch CPU threads (default: torch's, one per core; on a machine shared with other "
                             "work fewer can be faster)")


def add_timing_arguments(parser: argparse.ArgumentParser, warmup: int = 2) -> None:
    """``--warmup``, ``--repeats``, ``--settle`` and ``--threads`` of the scripts that time candidates alternately
    (:func:`rgbx.engine.bench.time_alternating`); :func:`settle_from_args` resolves ``--settle``."""
    parser.add_argument("--warmup", type=non_negative_int, default=warmup,
                        help=f"untimed calls of each candidate first (default {warmup})")
    parser.add_argument("--repeats", type=positive_int, default=5,
                        help="timed calls of each candidate; the median is reported")
    parser.add_argument("--settle", type=non_negative_int,
                        help="untimed calls of a candidate right before each of its timed calls (default 1 on the "
                             "CPU, 0 on CUDA): a timed call then finds the process's host memory as its own "
                             "candidate leaves it, not as the previous one did")
    parser.add_argument("--threads", type=positive_int, help="CPU threads (torch.set_num_threads)")


def settle_from_args(args, device) -> int:
    """``--settle``, or its default for the torch ``device``: 1 on the CPU (where the host allocator's state carries
    over from one candidate to the next), 0 on CUDA."""
    if args.settle is not None:
        return args.settle
    return 0 if device.type == "cuda" else 1


def sliding_window_from_args(args):
    """The :class:`~rgbx.engine.inference.SlidingWindow` of ``--window`` / ``--stride`` (None without
    ``--window``)."""
    from rgbx.engine.inference import SlidingWindow
    from rgbx.errors import ConfigError

    if args.window is None:
        if getattr(args, "scale_rule", "rgbx") == "cmx":
            raise ConfigError("--scale-rule cmx needs --window HxW: CMX's eval_crop_size, e.g. --window 480x640 for "
                              "NYU Depth V2 and MFNet")
        for flag, value in (("--stride", args.stride), ("--window-batch", args.window_batch)):
            if value is not None:
                raise ConfigError(f"{flag} goes with --window HxW")
        return None
    if args.window_batch is None:
        return SlidingWindow(args.window, args.stride)
    return SlidingWindow(args.window, args.stride, args.window_batch)


def read_off_text(inferred: dict) -> str:
    """What ``rgbx.models.convert.infer_model_options`` read off a checkpoint, as ``backbone mit_b2, num_classes 40``
    (the head options left out); "" when nothing."""
    return ", ".join(f"{k} {v}" for k, v in inferred.items() if k != "head_options")


def parse_options(items: list[str]) -> dict:
    """``key=value`` strings → dict; values parsed as YAML (numbers, lists, booleans)."""
    import yaml

    from rgbx.errors import ConfigError

    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--option {item!r}: expected KEY=VALUE")
        options[key] = yaml.safe_load(value)
    return options


# the speed issue's anchor model (CMX MiT-B2, RGB-D, 40 classes, 512-channel head): the benchmark scripts' default
CMX_B2_RGBD = {"backbone": "mit_b2", "fusion": "cmx", "head": "mlp", "head_channels": 512,
               "modalities": ["rgb", "depth"], "num_classes": 40}


def add_model_arguments(p: argparse.ArgumentParser, defaults: dict | None = None) -> None:
    """Flags that describe a model (for commands that build one with random weights: profile, bench);
    ``defaults`` (e.g. :data:`CMX_B2_RGBD`): the model when no ``--config`` is given, the flags written over it."""
    p.add_argument("--config", help="YAML training config or preset name (rgbx info lists presets); its model "
                   "section is used")
    p.add_argument("--backbone", help="backbone (default: the config's, else mit_b0)")
    p.add_argument("--fusion", help="fusion (default: the config's, else cmx)")
    p.add_argument("--head", help="decode head, e.g. mlp, ham, fcn (default: the config's, else mlp)")
    p.add_argument("--head-channels", type=positive_int, help="head width (CMX uses 512, SegFormer-B0 256)")
    p.add_argument("--modalities", nargs="+", help="modalities the model takes (default: the config's)")
    p.add_argument("--num-classes", type=positive_int, help="number of classes (required unless the config sets it)")
    if defaults:  # the model without --config (a config's model section is not overridden by them)
        p.set_defaults(model_defaults=dict(defaults))


MODEL_FLAGS = ("backbone", "fusion", "head", "head_channels", "modalities", "num_classes")


def model_flag_overrides(args) -> dict:
    """The model fields set on the command line (``--backbone``, ``--fusion``, ``--head``, ``--head-channels``,
    ``--modalities``, ``--num-classes``), unset ones left out."""
    return {k: getattr(args, k) for k in MODEL_FLAGS if getattr(args, k, None) is not None}


def model_config_from_args(args):
    """The :class:`~rgbx.models.ModelConfig` of ``--config`` (its model section) overridden by the model flags of
    :func:`add_model_arguments`, with random weights (``pretrained`` cleared)."""
    from rgbx.engine.config import load_config
    from rgbx.errors import ConfigError
    from rgbx.models import ModelConfig

    if args.config:
        base = load_config(args.config).model.to_dict()
    else:
        base = ModelConfig().to_dict() | (getattr(args, "model_defaults", None) or {})
    data = base | model_flag_overrides(args)
    data["pretrained"] = ""  # random weights: the architecture is all that is measured
    if not data["num_classes"]:
        raise ConfigError("--num-classes is required (the config does not set model.num_classes)")
    return ModelConfig.from_dict(data).validate()


def resolve_device(name: str):
    """``--device``: ``auto`` → CUDA when available, else the CPU (:func:`rgbx.device.resolve_device`)."""
    from rgbx.device import resolve_device as resolve

    return resolve(name, "--device")