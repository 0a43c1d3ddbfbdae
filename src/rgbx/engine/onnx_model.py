"""An exported ``.onnx`` file (``rgbx export``) run as a model: ``rgbx eval`` and ``rgbx predict`` score and predict
with the file a deployment runs, through ONNX Runtime or OpenVINO, with everything else unchanged (sensor subsets,
sliding windows, multi-scale + flip, the robustness report).

:class:`OnnxSegmentor` is called like a :class:`~rgbx.models.Segmentor`: ``model(inputs, present).logits``. The
file takes every sensor it was exported with, in its order, plus the ``present`` matrix; a sensor missing from
``inputs`` is fed as zeros and marked absent, as a deployment with a failed sensor does. Inputs are moved to the CPU
and cast to float32 for the runtime; the logits come back on the inputs' device.

Runtimes (CPU):

* ``onnxruntime``: all graph optimisations, ``threads`` intra-op threads (default: ONNX Runtime's).
* ``openvino``: the file compiled for OpenVINO's CPU plugin in float32 (``INFERENCE_PRECISION_HINT=f32``, so the
  arithmetic stays that of the file) with the latency hint. On the 2-core AVX2 machine it ran CMX-B2's batch-1
  inference at 480×640 1.09–1.27× faster than PyTorch's CPU fast set (``benchmarks/speed.md``, "The exported file
  in ONNX Runtime and OpenVINO"). ``precision="bf16"`` lets the plugin compute in bfloat16
  (``INFERENCE_PRECISION_HINT=bf16``; inputs and logits stay float32) on a processor with bf16 instructions (AMX /
  AVX512-BF16): on a 2-core Xeon with AMX, CMX-B2 went from 610 ms (float32) to 245 ms, 1.8× PyTorch's fast set
  ("OpenVINO in bf16 on a processor with AMX"). Refused on a processor without them, where OpenVINO would silently
  keep float32. ``pip install 'rgbx[openvino]'``.
"""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Mapping
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn

from rgbx.engine.export import FORMAT, read_onnx_metadata, require
from rgbx.errors import CheckpointError, ConfigError, RgbxError
from rgbx.models.config import ModelConfig
from rgbx.models.segmentor import SegOutput

RUNTIMES = ("onnxruntime", "openvino")
PRECISIONS = ("fp32", "bf16")
# a runtime and its arithmetic in one name, RUNTIME[-PRECISION], as rgbx bench --runtimes and the benchmarks take them
RUNTIME_VARIANTS = ("onnxruntime", "openvino", "openvino-bf16")


def is_onnx_file(path: str | Path) -> bool:
    return str(path).lower().endswith(".onnx")


class OnnxSegmentor(nn.Module):
    """An rgbx-exported ONNX file as a model (module docstring).

    Args:
        path: the ``.onnx`` file (written by ``rgbx export``: its metadata names the sensors and classes).
        runtime: ``"onnxruntime"`` or ``"openvino"``.
        threads: CPU threads of the runtime (None: its default).
        precision: ``"fp32"`` (the file's arithmetic) or ``"bf16"`` (OpenVINO on a CPU with bf16 instructions).

    Attributes:
        modalities, num_classes, config: as a Segmentor's (``config`` is the exported model's ModelConfig).
        info: what :func:`rgbx.engine.checkpoint.load_model` returns for a model file: ``dataset`` (classes,
            palette, ignore_index), ``exported_from`` (the file) and, when the exported model file recorded them,
            ``converted_from``, ``reference_evaluation`` (the authors' evaluation protocol, for
            ``rgbx eval --as-published``) and ``calibration`` (confidence temperatures, ``rgbx calibrate``).
    """

    def __init__(self, path: str | Path, runtime: str = "onnxruntime", threads: int | None = None,
                 precision: str = "fp32"):
        super().__init__()
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"{path}: exported model file not found")
        if runtime not in RUNTIMES:
            raise ConfigError(f"unknown runtime {runtime!r}; expected one of {', '.join(RUNTIMES)}")
        if precision not in PRECISIONS:
            raise ConfigError(f"unknown runtime precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
        if precision != "fp32" and runtime != "openvino":
            raise ConfigError(f"runtime precision {precision}: only the openvino runtime computes in bf16 "
                              f"(--runtime openvino; onnxruntime runs the file's float32)")
        meta = read_onnx_metadata(path)
        if meta.get("format") != FORMAT:
            raise CheckpointError(f"{path}: not an rgbx export (its metadata has format={meta.get('format')!r}, "
                                  f"expected {FORMAT!r}); write one with rgbx export")
        self.path, self.runtime, self.precision = path, runtime, precision
        declare_onnx_sensors(meta, path)
        self.modalities = tuple(meta["modalities"])
        self.config = ModelConfig.from_dict(meta["model_config"])
        self.num_classes = self.config.num_classes
        self.channels = {m: int(meta["normalization"][m]["channels"]) for m in self.modalities}
        dataset = dict(meta.get("dataset") or {})
        dataset.setdefault("classes", meta.get("classes"))
        dataset.setdefault("palette", meta.get("palette"))
        dataset.setdefault("ignore_index", meta.get("ignore_index", 255))
        # how the file's inputs were stored: its normalisation states it for every sensor (the training data's
        # storage, or the sensor's own for a file exported before model files recorded that)
        dataset.setdefault("storage", {m: {k: v[k] for k in ("encoding", "dtype", "scale", "resize") if k in v}
                                       for m, v in (meta.get("normalization") or {}).items()})
        self.info = {"dataset": dataset, "exported_from": str(path), "runtime": runtime, "precision": precision,
                     **{k: meta[k] for k in ("converted_from", "reference_evaluation", "calibration") if k in meta}}
        self._run = (_openvino_runner(path, threads, precision) if runtime == "openvino"
                     else _onnxruntime_runner(path, threads))

    def forward(self, inputs: Mapping[str, torch.Tensor],
                present: Mapping[str, torch.Tensor] | None = None) -> SegOutput:
        if not inputs:
            raise ConfigError("no input: pass at least one of " + ", ".join(self.modalities))
        unknown = [m for m in inputs if m not in self.modalities]
        if unknown:
            raise ConfigError(f"{self.path} takes {', '.join(self.modalities)}; got {', '.join(unknown)}")
        ref = next(iter(inputs.values()))
        b, (h, w) = ref.shape[0], ref.shape[-2:]
        feed, columns = {}, []
        for m in self.modalities:
            x = inputs.get(m)
            if x is None:
                feed[m] = np.zeros((b, self.channels[m], h, w), np.float32)
                columns.append(torch.zeros(b, dtype=torch.bool))
                continue
            if x.shape[1] != self.channels[m] or x.shape[-2:] != (h, w):
                raise ConfigError(f"{m}: expected (B, {self.channels[m]}, {h}, {w}), got {tuple(x.shape)}")
            feed[m] = x.detach().to("cpu", torch.float32).contiguous().numpy()
            mask = None if present is None else present.get(m)
            columns.append(torch.ones(b, dtype=torch.bool) if mask is None else mask.detach().to("cpu", torch.bool))
        feed["present"] = torch.stack(columns, dim=1).numpy()
        try:
            out = self._run(feed)
        except Exception as e:  # the runtime's own error, e.g. an input too small for a layer the graph froze
            shapes = ", ".join(f"{m} {tuple(v.shape)}" for m, v in feed.items() if m != "present")
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise RgbxError(f"{self.path} failed in {self.runtime} on inputs {shapes}: {first}") from None
        logits = torch.from_numpy(np.ascontiguousarray(out)).to(ref.device)
        return SegOutput(logits=logits, fused=[])


def declare_onnx_sensors(meta: Mapping, path: str | Path) -> None:
    """Register the sensors of an exported file that rgbx does not define, as :func:`rgbx.load_model` does from a
    model file: from the file's ``sensors`` (their full fields), else, for a file exported before it wrote them,
    from its ``normalization`` (channels, scale, unit, mean, std, fill, invalid value, encoding, dtype; the rest
    defaults: not sparse, no photometric augmentation, drawn in gray) for a sensor not registered yet. A different
    definition already registered under the name is a CheckpointError naming the fields that differ."""
    from rgbx.modalities import MODALITIES
    from rgbx.models.model_file import declare_sensors

    sensors = dict(meta.get("sensors") or {})
    fields = ("channels", "scale", "unit", "mean", "std", "fill", "invalid_value", "encoding", "dtype")
    for m, norm in (meta.get("normalization") or {}).items():
        if m not in sensors and m not in MODALITIES and isinstance(norm, Mapping):
            sensors[m] = {k: norm[k] for k in fields if k in norm}
    declare_sensors({"sensors": sensors}, path)


def open_runtime_variant(path: str | Path, variant: str, threads: int | None = None) -> OnnxSegmentor:
    """The file run by one of :data:`RUNTIME_VARIANTS` (``openvino-bf16``: OpenVINO computing in bf16)."""
    if variant not in RUNTIME_VARIANTS:
        raise ConfigError(f"unknown runtime {variant!r}; expected one of {', '.join(RUNTIME_VARIANTS)}")
    runtime, _, precision = variant.partition("-")
    return OnnxSegmentor(path, runtime, threads, precision or "fp32")


def _onnxruntime_runner(path: Path, threads: int | None):
    ort = require("onnxruntime")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    # idle threads sleep instead of spinning: they would take the cores from the data loader (and from whatever
    # else runs between two calls)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda feed: session.run(["logits"], feed)[0]


def _openvino_runner(path: Path, threads: int | None, precision: str = "fp32"):
    try:
        import openvino as ov
    except ImportError:
        raise ConfigError("--runtime openvino needs the openvino package: pip install 'rgbx[openvino]'") from None
    core = ov.Core()
    if precision == "bf16" and "BF16" not in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        raise ConfigError(f"runtime precision bf16: OpenVINO finds no bf16 instructions on this processor "
                          f"({core.get_property('CPU', 'FULL_DEVICE_NAME')}; it can compute in "
                          f"{', '.join(core.get_property('CPU', 'OPTIMIZATION_CAPABILITIES'))}); use fp32")
    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    with _signal_stack_kept():
        compiled = core.compile_model(str(path), "CPU", config)
        request = compiled.create_infer_request()
    output = compiled.output("logits")
    return lambda feed: request.infer(feed)[output].copy()


class _SignalStack(ctypes.Structure):  # Linux's stack_t
    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]


_SS_DISABLE = 2
_AT_MINSIGSTKSZ = 51


@contextmanager
def _signal_stack_kept():
    """Give the calling thread back the alternate signal stack it had before OpenVINO compiled a model.

    OpenVINO's CPU plugin installs an alternate signal stack of its own on the thread that compiles a model and, when
    the model is destroyed, puts back the one it found, if its own is still current. Two models destroyed in the
    order they were made leave the thread's signal stack pointing at the first one's freed memory, and the next
    signal with a Python handler (they all run on the alternate stack: SIGCHLD from a DataLoader worker) kills the
    process with SIGSEGV (seen as a pytest worker dying in a later test). With the previous stack back, no model's
    own is current, so none restores anything. Kept only when it can hold a signal frame with this processor's full
    register state (or when there was none); Linux only."""
    if not sys.platform.startswith("linux"):
        yield
        return
    libc = ctypes.CDLL(None, use_errno=True)
    before = _SignalStack()
    if libc.sigaltstack(None, ctypes.byref(before)) != 0:
        yield
        return
    try:
        yield
    finally:
        libc.getauxval.restype = ctypes.c_ulong
        frame = libc.getauxval(_AT_MINSIGSTKSZ)  # the kernel's size of a signal frame here (0: not told)
        if before.ss_flags & _SS_DISABLE or before.ss_size >= frame:
            libc.sigaltstack(ctypes.byref(before), None)
