"""``rgbx predict CHECKPOINT INPUT...``: predictions, colourised masks and panels for files or folders."""

from __future__ import annotations

from pathlib import Path

from rgbx.cli.common import (
    add_command,
    add_dataset_arguments,
    add_inference_speed_arguments,
    add_runtime_arguments,
    add_sensor_check_arguments,
    add_test_time_arguments,
    add_threads_argument,
    non_negative_int,
    parse_options,
    positive_float,
    predictor_from_args,
)

EXAMPLES = """  rgbx predict runs/cmx/model.safetensors data/synth --split test --limit 8 --out preds/
  rgbx predict model.safetensors rgb=frames/ depth=depth/ --out preds/       # folders matched by file name
  rgbx predict model.safetensors rgb=img.png depth=img_depth.png --out preds/ # one sample; any subset of sensors
  rgbx predict model.safetensors data/synth --split test --out preds/ --fast   # bf16 / fused attention
  rgbx predict model.safetensors rgb=big.png --out preds/ --window 512x512      # sliding windows, large images
  rgbx predict model.onnx rgb=frames/ depth=depth/ --out preds/ --runtime openvino   # the exported file
  rgbx predict model.safetensors rgb=frames/ depth=depth/ --out preds/ --check-sensors  # drop failed sensors
  rgbx predict model.safetensors rgb=frames/ lidar=scans/ --out preds/ --check-sensors --sensor-rule lidar.frozen_after=6
  rgbx predict model.calibrated.safetensors rgb=frames/ depth=depth/ --out preds/ --confidence --min-confidence 0.6
Writes OUT/labels/<id>.png (class indices), OUT/color/<id>.png (palette) and OUT/panels/<id>.png (inputs,
prediction and, for labelled datasets, ground truth and error map). With --check-sensors, each sample's frames
are screened first (black, empty, saturated, NaN, or the same as the sensor's previous frames in file-name order: a
stream); a failed sensor is left out, and OUT/sensor_health.csv lists every frame's checks. With --confidence,
OUT/confidence/<id>.png holds each pixel's probability of its class × 255 (calibrated by the temperatures rgbx
calibrate wrote into the model file, for the sensors used); --min-confidence P leaves the pixels below P
unlabelled (the ignore index, 255).
"""


def add_parser(sub) -> None:
    p = add_command(sub, "predict", "predict on files, folders or a dataset split",
                    "Predict with a trained model on any subset of its modalities.", EXAMPLES, run)
    p.add_argument("checkpoint", help="rgbx model file (.safetensors), or a file rgbx export wrote (.onnx: run by "
                                      "--runtime)")
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="a dataset folder (with dataset.yaml), or modality=PATH items (file or folder)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the predictions of an earlier run in OUT: the PNGs in its labels/, color/, "
                        "panels/ and confidence/ and its sensor_health.csv are removed first (anything else in OUT "
                        "is kept); without it, an OUT that holds predictions is refused")
    p.add_argument("--split", default="test", help="split of a dataset folder (default: test)")
    add_dataset_arguments(p)
    p.add_argument("--limit", type=non_negative_int, default=0, help="at most N samples (0 = all)")
    p.add_argument("--no-panels", action="store_true", help="write only label and colour PNGs")
    add_test_time_arguments(p)
    p.add_argument("--device", default="auto")
    add_threads_argument(p)
    p.add_argument("--workers", type=non_negative_int,
                   help="processes reading a dataset folder ahead of the model (default: 2 on the CPU, on CUDA "
                        "one per spare core up to 8)")
    add_inference_speed_arguments(p)
    add_runtime_arguments(p)
    add_sensor_check_arguments(p)
    p.add_argument("--confidence", action="store_true",
                   help="also write each pixel's confidence (OUT/confidence/<id>.png, 0-255) and draw it in the "
                        "panels; calibrated when the model file records temperatures (rgbx calibrate)")
    p.add_argument("--min-confidence", type=positive_float, metavar="P",
                   help="leave pixels whose confidence is below P (0-1) unlabelled: the ignore index in the label "
                        "PNGs, black in the colour images, amber in the panels' error maps")


def _samples(args, modalities, storage=None):
    import torch

    from rgbx.data import build_dataset
    from rgbx.data.datasets.base import AsLoaded
    from rgbx.data.description import DESCRIPTION_FILE
    from rgbx.data.files import discover_samples, one_frame_size, read_modality_file
    from rgbx.errors import ConfigError

    if len(args.inputs) == 1 and "=" not in args.inputs[0]:
        root = Path(args.inputs[0])
        if args.dataset == "folder" and not (root / DESCRIPTION_FILE).is_file():
            raise ConfigError(f"{root}: not a dataset folder (no {DESCRIPTION_FILE}); give modality=PATH items, "
                              f"e.g. rgb={root}")
        options = parse_options(args.option)
        offered = build_dataset(args.dataset, root, args.split, check="none", **options).description.modalities
        lacking = [m for m in modalities if m not in offered]
        if lacking and len(lacking) < len(modalities):  # (none of them: the dataset's error below names them)
            print(f"note: {root} has no {', '.join(lacking)}; predicting from "
                  f"{', '.join(m for m in modalities if m in offered)} (a missing sensor, as the model was trained "
                  f"to take)", flush=True)
        ds = build_dataset(args.dataset, root, args.split, modalities=[m for m in modalities if m in offered],
                           **options)
        n = len(ds) if args.limit <= 0 else min(args.limit, len(ds))
        # samples read and decoded by loader processes while the model predicts the previous ones
        loader = torch.utils.data.DataLoader(AsLoaded(ds, n), batch_size=None, num_workers=args.workers)
        yield from loader
        return
    sources = {}
    for item in args.inputs:
        if "=" not in item:
            raise ConfigError(f"input {item!r}: expected modality=PATH (e.g. rgb=img.png)")
        name, path = item.split("=", 1)
        if name not in modalities:
            raise ConfigError(f"input {item!r}: the model takes {', '.join(modalities)}, not {name!r}")
        sources[name] = _input_path(item)
    found = discover_samples(sources)
    if args.limit > 0:
        found = found[: args.limit]
    for sid, paths in found:
        inputs = {m: read_modality_file(p, m, storage) for m, p in paths.items()}
        where = f"sample {sid!r} ({', '.join(str(p) for p in paths.values())})"
        yield {"inputs": one_frame_size(inputs, storage, where), "label": None, "meta": {"id": sid}}


PREDICTION_FOLDERS = ("labels", "color", "panels", "confidence")  # what Predictor.write fills, per sample
SENSOR_LOG = "sensor_health.csv"


def _earlier_predictions(out: Path) -> list[Path]:
    """The files an earlier rgbx predict wrote in ``out``."""
    files = [p for name in PREDICTION_FOLDERS if (out / name).is_dir() for p in sorted((out / name).glob("*.png"))]
    return files + ([out / SENSOR_LOG] if (out / SENSOR_LOG).is_file() else [])


def _make_room(args, remove: bool) -> None:
    """An ``--out`` with an earlier run's predictions: refused, or with ``--overwrite`` emptied of them when
    ``remove`` (a second run's predictions mixed with the first's stale ones, for frames it did not predict,
    otherwise)."""
    from rgbx.errors import ConfigError

    earlier = _earlier_predictions(Path(args.out))
    if not earlier:
        return
    if not args.overwrite:
        folders = sorted({p.parent.name + "/" for p in earlier if p.name != SENSOR_LOG})
        raise ConfigError(f"--out {args.out} already holds {len(earlier)} prediction file(s) of an earlier run "
                          f"({', '.join(folders) or SENSOR_LOG}); pass --overwrite to replace them, or choose "
                          f"another folder")
    for p in earlier if remove else ():
        p.unlink()


def _input_path(item: str) -> Path | None:
    """The path of a ``sensor=PATH`` input (None for an item without '='); an empty one is refused (``Path("")`` is
    the current folder: predictions from whatever lies there)."""
    from rgbx.errors import ConfigError

    if "=" not in item:
        return None
    name, path = item.split("=", 1)
    if not path.strip():
        raise ConfigError(f"{name}=: empty path; give a file or a folder after the '=' (e.g. {name}=img.png)")
    return Path(path)


def _check_out(args) -> None:
    """``--out`` must not be where the inputs are: its labels/ would replace a dataset's own label folder (then
    scored at 100 % by rgbx eval) and its images would mix with the inputs."""
    from rgbx.cli.common import check_output
    from rgbx.errors import ConfigError

    check_output("--out", args.out, folder=True)
    out = Path(args.out).resolve()
    if len(args.inputs) == 1 and "=" not in args.inputs[0]:
        root = Path(args.inputs[0]).resolve()
        inputs = [root, *(p for p in root.iterdir() if p.is_dir())] if root.is_dir() else []
        inside = [p for p in inputs[1:] if out == p or p in out.parents]
        if out == root or inside:
            raise ConfigError(f"--out {args.out} is {'the dataset folder' if out == root else 'inside its folder'} "
                              f"{inside[0] if inside and out != root else root}: predictions go to a folder of their "
                              f"own (its labels/ and panels/ would mix with, or replace, the data)")
        return
    for item in args.inputs:
        _input_path(item)
        folder = Path(item.split("=", 1)[-1]).resolve()
        if folder.is_dir() and (out == folder or folder in out.parents):
            raise ConfigError(f"--out {args.out} is inside the input folder {folder} ({item}): predictions go to a "
                              f"folder of their own")


def run(args) -> int:
    from rgbx.cli.common import resolve_device
    from rgbx.data.sensor_health import SensorFailure
    from rgbx.engine.trainer import loader_workers
    from rgbx.errors import ConfigError

    _check_out(args)
    if args.min_confidence is not None and args.min_confidence >= 1:
        raise ConfigError(f"--min-confidence {args.min_confidence:g}: expected a probability below 1")
    _make_room(args, remove=False)  # refused before any work
    device = resolve_device(args.device)
    args.workers = loader_workers(args.workers, device)
    # host memory kept on the CPU, --fast or not
    predictor = predictor_from_args(args, device, min_confidence=args.min_confidence)
    _make_room(args, remove=True)  # the model is loaded: the earlier predictions go now
    model = predictor.model
    with_confidence = args.confidence or args.min_confidence is not None
    count, log = 0, SensorLog(args.out) if predictor.monitor is not None else None
    tally = ConfidenceTally(args.min_confidence) if with_confidence else None
    try:
        for sample in _samples(args, list(model.modalities), predictor.storage):
            try:
                pred, confidence = (predictor.predict_with_confidence(sample) if with_confidence
                                    else (predictor.predict(sample), None))
            except SensorFailure as failure:
                log.add(sample["meta"].get("id"), failure.statuses, predicted=False)
                print(failure, flush=True)
                continue
            if log is not None:
                log.add(sample["meta"].get("id"), predictor.last_status, predicted=True)
            if tally is not None:
                tally.add(confidence, predictor.last_temperature)
            predictor.write(sample, pred, args.out, panel=not args.no_panels,
                            confidence=confidence if args.confidence else None)
            count += 1
    finally:
        if log is not None:
            log.close()
    print(f"wrote predictions for {count} sample(s) to {args.out}")
    if log is not None:
        print(log.summary())
    if tally is not None and count:
        print(tally.summary(None if predictor.calibration is None else predictor.calibration.method))
    return 0


class ConfidenceTally:
    """The mean confidence over the predicted pixels, the share below ``--min-confidence`` and the temperatures
    used, for the closing summary."""

    def __init__(self, threshold: float | None):
        self.threshold, self.pixels, self.total, self.below = threshold, 0, 0.0, 0
        self.temperatures: set[float] = set()

    def add(self, confidence, temperature: float) -> None:
        self.pixels += confidence.numel()
        self.total += float(confidence.double().sum())
        if self.threshold is not None:
            self.below += int((confidence < self.threshold).sum())
        self.temperatures.add(round(temperature, 4))

    def summary(self, calibration: str | None) -> str:
        """``calibration``: the model file's method (``temperature`` / ``vector``), None when it has none."""
        text = f"confidence: mean {100 * self.total / max(self.pixels, 1):.1f}%"
        if self.threshold is not None:
            text += (f"; {100 * self.below / max(self.pixels, 1):.1f}% of pixels below {self.threshold:g} left "
                     f"unlabelled")
        if calibration == "vector":
            text += " (calibrated: vector scaling per sensor set, in the model)"
        elif calibration is not None:
            text += f" (calibrated: temperature {', '.join(f'{t:g}' for t in sorted(self.temperatures))})"
        else:
            text += " (uncalibrated softmax: rgbx calibrate fits temperatures)"
        return text


class SensorLog:
    """``OUT/sensor_health.csv``: one row per sample and sensor (the checks' figures and verdict), and a summary."""

    COLUMNS = ("id", "sensor", "ok", "failures", "predicted", "non_finite", "coverage", "contrast", "saturated",
               "repeats")

    def __init__(self, out: Path):
        import csv

        out.mkdir(parents=True, exist_ok=True)
        self.path = out / "sensor_health.csv"
        self._file = open(self.path, "w", newline="")
        self._writer = csv.writer(self._file)
        self._writer.writerow(self.COLUMNS)
        self.frames, self.skipped = 0, 0
        self.failed: dict[str, dict[str, int]] = {}  # sensor -> check (and "frames", "any") -> frames

    def add(self, sample_id, statuses, predicted: bool) -> None:
        self.frames += 1
        self.skipped += not predicted
        for sensor, st in statuses.items():
            self._writer.writerow((sample_id, sensor, int(st.ok), " ".join(st.failures), int(predicted),
                                   f"{st.non_finite:.4g}", f"{st.coverage:.4g}", f"{st.contrast:.4g}",
                                   f"{st.saturated:.4g}", st.repeats))
            counts = self.failed.setdefault(sensor, {"frames": 0, "any": 0})
            counts["frames"] += 1
            counts["any"] += not st.ok
            for check in st.failures:
                counts[check] = counts.get(check, 0) + 1

    def close(self) -> None:
        self._file.close()

    def summary(self) -> str:
        parts = []
        for sensor, counts in self.failed.items():
            detail = ", ".join(f"{k} {v}" for k, v in counts.items() if k not in ("frames", "any"))
            parts.append(f"{sensor} failed in {counts['any']} of {counts['frames']} frames"
                         + (f" ({detail})" if detail else ""))
        skipped = f"; {self.skipped} sample(s) had no working sensor and were skipped" if self.skipped else ""
        return f"sensor checks: {'; '.join(parts)}{skipped} (per frame: {self.path})"
