"""Inference on samples: predictions as label PNGs, colourised masks and panels; and, for a program that has the
sensors' frames in memory (a robot's driver), ``Predictor.from_file(...)`` called on raw arrays.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from rgbx.data.files import one_frame_size, physical_units, read_modality_file, stored_spec
from rgbx.data.sample import Sample, collate, normalize_sample
from rgbx.data.sensor_health import SensorFailure, SensorMonitor, SensorStatus, replace_non_finite
from rgbx.engine.calibration import TemperatureScaling
from rgbx.engine.fastpath import SpeedOptions, autocast, backend_flags, prepare_inference
from rgbx.engine.inference import (
    CMX_NOT_PROBABILITIES,
    SlidingWindow,
    as_sliding_window,
    class_probabilities,
    predict_logits,
)
from rgbx.errors import ConfigError, DataError
from rgbx.modalities import get_modality
from rgbx.visualize import colorize, make_panel, save_image


class Predictor:
    """Wraps a trained model with its dataset info (classes, palette) for prediction on any modality subset.

    ``speed``: speed switches to predict with (e.g. ``SpeedOptions.fast(device)``; None = the model's own fp32
    arithmetic). Precision, attention, memory layout, TF32 and compilation apply; CUDA-graph capture does not
    (inputs vary in size). ``scales`` / ``flip`` / ``window`` / ``scale_rule``: test-time averaging and
    sliding-window inference (:func:`rgbx.engine.inference.predict_logits`).

    ``monitor``: a :class:`~rgbx.data.sensor_health.SensorMonitor` (or True for the default rules) that screens every
    frame first: a sensor whose frame fails its health checks (black, empty, saturated, NaN, frozen) is left out and
    the model predicts from the others; ``last_status`` then holds each sensor's
    :class:`~rgbx.data.sensor_health.SensorStatus`, and a frame whose every sensor failed raises
    :class:`~rgbx.data.sensor_health.SensorFailure`. With or without it, NaN / ±inf inputs become the sensor's "no
    measurement" value.

    Confidence (:meth:`predict_with_confidence`, ``__call__(..., confidence=True)``): each pixel's probability of
    its predicted class, calibrated by the temperature the model file records for the sensors that were used
    (``rgbx calibrate``; :mod:`rgbx.engine.calibration`), so it stays honest when the checks leave a sensor out.
    ``min_confidence``: pixels below it are left unlabelled (``ignore_index``, 255 unless the dataset says
    otherwise): "don't know" instead of a guess.

    ``storage`` (attribute): ``{sensor: {encoding, dtype, scale}}``, how the model's training data stored each
    sensor, as the model file records it (:func:`rgbx.models.model_file.recorded_storage`; {} for a file that does
    not), updated by the ``storage`` argument; integer frames and files given to :meth:`__call__` (and
    ``read_modality_file(path, sensor, predictor.storage)``) are read with it: a model trained on 16-bit thermal
    reads 16-bit thermal files at the training scale."""

    def __init__(self, model: torch.nn.Module, info: dict, device: str | torch.device = "cpu",
                 scales: tuple[float, ...] = (1.0,), flip: bool = False, speed: SpeedOptions | None = None,
                 window: SlidingWindow | None = None, scale_rule: str = "rgbx",
                 monitor: SensorMonitor | bool | None = None, min_confidence: float | None = None,
                 storage: dict[str, dict] | None = None):
        window = as_sliding_window(window)
        if min_confidence is not None and not 0 < min_confidence < 1:
            raise ConfigError(f"min_confidence {min_confidence}: expected a probability between 0 and 1 (exclusive)")
        if min_confidence is not None and scale_rule == "cmx":
            raise ConfigError(CMX_NOT_PROBABILITIES)
        self.min_confidence = min_confidence
        self.calibration = TemperatureScaling.from_info(info)
        self.last_temperature = 1.0
        self.last_sensors: tuple[str, ...] = ()  # the sensors the last prediction used (after the checks)
        if self.calibration is not None and self.calibration.test_time:
            fitted = {k: self.calibration.test_time.get(k) for k in ("scales", "flip", "window", "scale_rule")}
            here = {"scales": [float(v) for v in scales], "flip": bool(flip), "scale_rule": scale_rule,
                    "window": None if window is None else list(window.size)}
            if fitted != here:
                warnings.warn(f"the model file's confidence temperatures were fitted for the test-time passes "
                              f"{fitted}; this predictor makes {here}, so its confidences are calibrated only "
                              f"approximately (rgbx calibrate takes the same --scales / --flip / --window)",
                              stacklevel=2)
        self.monitor = SensorMonitor() if monitor is True else (monitor or None)
        self.last_status: dict[str, SensorStatus] = {}
        # a model file that says its training never left a sensor out: warn the first time the checks do
        self._training = info.get("training") or {}
        self._never_saw_absence = self._training.get("absent_sensors_seen") is False
        self.model = model.to(device).eval()
        self.speed = speed
        if speed is not None:
            prepare_inference(self.model, speed)
        self.scales, self.flip, self.window, self.scale_rule = tuple(scales), flip, window, scale_rule
        self.device = torch.device(device)
        dataset = info.get("dataset", {})
        n = model.config.num_classes
        self.recorded_classes = list(dataset.get("classes") or [])  # as the model file names them (may be none)
        self.classes = self.recorded_classes or [str(i) for i in range(n)]
        from rgbx.data.description import default_palette

        self.palette = [tuple(c) for c in dataset.get("palette") or default_palette(n)]
        self.ignore_index = dataset.get("ignore_index", 255)
        from rgbx.models.model_file import recorded_storage

        self.storage = {**recorded_storage(dataset), **recorded_storage({"storage": storage or {}})}
        if min_confidence is not None and 0 <= self.ignore_index < n:
            raise ConfigError(f"min_confidence leaves unsure pixels as the ignore index {self.ignore_index}, which is "
                              f"one of the model's {n} classes here ({self.classes[self.ignore_index]!r}): the "
                              "unlabelled pixels could not be told from that class")

    @classmethod
    def from_file(cls, path, device: str | torch.device = "cpu", fast: bool = False, runtime: str = "onnxruntime",
                  runtime_precision: str = "fp32", **test_time) -> Predictor:
        """A predictor for an rgbx model file (:func:`rgbx.load_model`), or an exported ``.onnx`` file run in
        ``runtime`` (``onnxruntime`` or ``openvino``; ``runtime_precision="bf16"``: OpenVINO in bf16, on a processor
        with bf16 instructions); ``fast``: the device's fast speed switches (PyTorch models); ``test_time``:
        ``scales``, ``flip``, ``window``, ``scale_rule``, ``monitor`` (True: screen each frame for failed sensors)
        and ``min_confidence`` (leave pixels below it unlabelled); ``storage``: how files and integer frames of a
        sensor are stored where the model file does not record it (``{"thermal": {"dtype": "uint16", "scale":
        1.5259e-05}}``).

        Example::

            segment = rgbx.Predictor.from_file("runs/x/model.safetensors", device="cuda", fast=True)
            labels = segment({"rgb": frame, "depth": depth_mm})  # (H, W) class indices; any subset of sensors
            segment.classes[labels[240, 320]]

            guarded = rgbx.Predictor.from_file("runs/x/model.safetensors", monitor=True)
            labels = guarded({"rgb": frame, "depth": depth_mm})  # a black / empty / frozen sensor is left out
            guarded.last_status["depth"].describe()  # "depth: no_signal (0.0% of pixels measured, ...)"

            labels, confidence = segment({"rgb": frame}, confidence=True)  # (H, W) probabilities of the labels
        """
        from rgbx.device import resolve_device
        from rgbx.engine.checkpoint import load_model
        from rgbx.engine.fastpath import SpeedOptions
        from rgbx.engine.onnx_model import OnnxSegmentor, is_onnx_file
        from rgbx.errors import ConfigError

        if is_onnx_file(path):
            if fast:
                raise ConfigError(f"fast=True sets PyTorch's speed switches; {path} runs in {runtime}")
            model = OnnxSegmentor(path, runtime, precision=runtime_precision)
            return cls(model, model.info, "cpu", **test_time)
        if runtime != "onnxruntime" or runtime_precision != "fp32":
            raise ConfigError(f"runtime / runtime_precision choose how an exported .onnx file runs; {path} is run by "
                              f"PyTorch (fast=True computes in bf16 where the device can)")
        device = resolve_device(device)  # auto, cpu, cuda, cuda:N
        model, info = load_model(path, device)
        return cls(model, info, device, speed=SpeedOptions.fast(device) if fast else None, **test_time)

    def __call__(self, inputs, sample_id: str = "frame", stamps: dict[str, float] | None = None,
                 now: float | None = None, confidence: bool = False):
        """(H, W) class indices for one frame of raw sensor data (:func:`frame_sample`); with ``confidence``, also
        (H, W) float32 confidences. A sensor the model lacks is an error naming it. ``stamps``: each sensor's frame
        timestamp in seconds and ``now``, for the monitor's ``stale`` check (``HealthRules.max_age``)."""
        for name in inputs:
            get_modality(name)  # a name rgbx does not know: that error first
        lacking = [name for name in inputs if name not in self.model.modalities]
        if lacking:
            raise DataError(f"sensor(s) {', '.join(map(repr, lacking))}: this model takes "
                            f"{', '.join(self.model.modalities)} (any subset); leave the others out")
        sample = frame_sample(inputs, sample_id, self.storage)
        sample["meta"].update(stamps=stamps, now=now)
        if confidence:
            labels, conf = self.predict_with_confidence(sample)
            return labels.numpy(), conf.numpy()
        return self.predict(sample).numpy()

    def predict(self, sample: Sample) -> torch.Tensor:
        """(H, W) int64 class map for one sample in physical units (modalities the model lacks are ignored); with
        ``min_confidence``, the pixels below it hold ``ignore_index``."""
        return self._predict(sample, self.min_confidence is not None)[0]

    def predict_with_confidence(self, sample: Sample) -> tuple[torch.Tensor, torch.Tensor]:
        """(H, W) int64 class map and (H, W) float32 probability of each pixel's class (calibrated when the model
        file records temperatures; ``last_temperature`` says which was used)."""
        return self._predict(sample, True)

    @torch.no_grad()
    def _predict(self, sample: Sample, with_confidence: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        usable = {m: x for m, x in sample["inputs"].items() if m in self.model.modalities}
        if not usable:
            raise DataError(f"sample {sample['meta'].get('id')} has none of the model's modalities "
                            f"({', '.join(self.model.modalities)})")
        if self.monitor is not None:
            meta = sample["meta"]
            stamps = {m: t for m, t in (meta.get("stamps") or {}).items() if m in usable}
            usable, self.last_status = self.monitor.screen(usable, stamps, meta.get("now"))
            if not usable:
                raise SensorFailure(self.last_status, f"sample {sample['meta'].get('id')}")
            if self._never_saw_absence and len(usable) < len(self.last_status):
                self._never_saw_absence = False  # once
                left_out = ", ".join(m for m in self.last_status if m not in usable)
                warnings.warn(
                    f"this model was trained with every sensor present (method {self._training.get('method')}, no "
                    f"modality dropout), and the sensor checks left {left_out} out: input it never saw. Leaving a "
                    "failed sensor out pays off for a model trained for missing sensors (method.modality_dropout, "
                    "anyseg, ktb); benchmarks/sensor_failures.md measures both", stacklevel=3)
        else:
            usable = {m: replace_non_finite(x, get_modality(m))[0] for m, x in usable.items()}
        self.last_sensors = tuple(m for m in self.model.modalities if m in usable)
        batch = collate([normalize_sample({**sample, "inputs": usable, "label": None})]).to(self.device)
        precision = self.speed.precision if self.speed is not None else "fp32"
        with backend_flags(self.speed), autocast(self.device, precision):
            scores = predict_logits(self.model, batch.inputs, batch.present, self.scales, self.flip,
                                    self.window, self.scale_rule)
            labels = scores.float().argmax(1)[0]
            if not with_confidence:
                return labels.cpu(), None
            self.last_temperature = (1.0 if self.calibration is None
                                     else self.calibration.temperature(usable, self.model.modalities))
            probs = class_probabilities(self.model, batch.inputs, batch.present, self.scales, self.flip,
                                        self.window, self.scale_rule, self.last_temperature, scores)
        confidence = probs.max(1).values[0]
        if self.min_confidence is not None:
            labels = labels.masked_fill(confidence < self.min_confidence, self.ignore_index)
        return labels.cpu(), confidence.float().cpu()

    def screen_note(self) -> str:
        """What the sensor checks left out of the last frame, as a panel's title ends: `` [left out: depth
        (no_signal)]``; ``""`` when nothing was (or there are no checks)."""
        failed = [f"{m} ({', '.join(st.failures)})" for m, st in self.last_status.items() if not st.ok]
        return f" [left out: {'; '.join(failed)}]" if self.monitor is not None and failed else ""

    def write(self, sample: Sample, pred: torch.Tensor, out_dir: Path, panel: bool = True,
              confidence: torch.Tensor | None = None) -> dict[str, Path]:
        """``out_dir``/labels, /color and /panels PNGs of one prediction; with ``confidence``, also /confidence
        (8-bit: round(255 × confidence)) and a confidence tile in the panel."""
        out_dir = Path(out_dir)
        sid = str(sample["meta"].get("id", "sample"))
        paths = {"label": out_dir / "labels" / f"{sid}.png", "color": out_dir / "color" / f"{sid}.png"}
        if confidence is not None:
            paths["confidence"] = out_dir / "confidence" / f"{sid}.png"
        for p in paths.values():
            p.parent.mkdir(parents=True, exist_ok=True)
        pred_np = pred.numpy()
        from PIL import Image

        Image.fromarray(pred_np.astype(np.uint8 if pred_np.max(initial=0) < 256 else np.uint16)).save(paths["label"])
        save_image(paths["color"], colorize(pred_np, self.palette, self.ignore_index))
        if confidence is not None:
            Image.fromarray(np.round(confidence.numpy().clip(0, 1) * 255).astype(np.uint8)).save(paths["confidence"])
        if panel:
            paths["panel"] = out_dir / "panels" / f"{sid}.png"
            paths["panel"].parent.mkdir(parents=True, exist_ok=True)
            label = sample.get("label")
            image = make_panel(sample["inputs"], pred_np, None if label is None else label.numpy(), palette=self.palette,
                               class_names=self.classes, ignore_index=self.ignore_index, title=sid + self.screen_note(),
                               confidence=confidence)
            save_image(paths["panel"], image)
        return paths


def frame_sample(inputs, sample_id: str = "frame", storage: dict[str, dict] | None = None) -> Sample:
    """One frame of raw sensor data → a sample in physical units (what :meth:`Predictor.predict` takes).

    ``inputs``: sensor name → a file path (read as ``rgbx predict`` reads it), or an array / tensor as a driver gives
    it: (H, W), (H, W, C) channels last or (C, H, W); integer values are the sensor's on-disk encoding, scaled by its
    spec (8-bit RGB 0-255, red first; 16-bit depth / LiDAR in mm; ...), floating-point values are physical units
    already (RGB 0-1, depth in metres). Any subset of the model's sensors; all of one size, but for those
    ``storage`` says were stored at another resolution (resampled to the others'). ``storage``: how integer values of
    a sensor are stored where that differs from its spec (``Predictor.storage``: the model's training data's dtype,
    scale and ``resize``).
    """
    if not inputs:
        raise DataError("a frame needs at least one sensor's data")
    tensors = {}
    for name, value in inputs.items():
        spec = stored_spec(name, storage)
        if isinstance(value, (str, Path)):
            tensors[name] = read_modality_file(value, name, storage)
            continue
        arr = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
        c = spec.channels
        if arr.ndim == 2 and c == 1:
            arr = arr[None]
        elif arr.ndim == 3 and arr.shape[0] != c and arr.shape[-1] == c:
            arr = np.moveaxis(arr, -1, 0)
        if arr.ndim != 3 or arr.shape[0] != c:
            raise DataError(f"sensor {name!r}: an array of shape {tuple(arr.shape)}; expected (H, W, {c}) or "
                            f"({c}, H, W){' or (H, W)' if c == 1 else ''}")
        if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)
                or arr.dtype == np.bool_):
            raise DataError(f"sensor {name!r}: an array of dtype {arr.dtype}; expected integers (the sensor's "
                            f"encoding) or floats (physical units)")
        tensors[name] = physical_units(arr, spec, f"sensor {name!r}")
    sizes = {name: tuple(t.shape[-2:]) for name, t in tensors.items()}
    empty = [name for name, (h, w) in sizes.items() if h == 0 or w == 0]
    if empty:
        raise DataError(f"sensor {empty[0]!r}: an empty frame ({'x'.join(map(str, sizes[empty[0]]))} pixels)")
    return {"inputs": one_frame_size(tensors, storage, f"frame {sample_id!r}"), "label": None,
            "meta": {"id": sample_id}}
