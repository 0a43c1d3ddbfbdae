"""ONNX export of a :class:`~rgbx.models.Segmentor`, and a check of the exported file against PyTorch.

The exported graph has one named input per modality, in the model's modality order (``rgb``, ``depth``, ...; each
(B, C_m, H, W) float32, normalised as rgbx normalises it: ``(file value × scale − mean) / std``), plus one
``present`` input, (B, M) bool, column ``j`` saying whether modality ``j`` is present for each sample. Its output is
``logits``, (B, K, H, W). Batch, height and width are dynamic axes by default.

Absent sensors: a deployment signals a dropped sensor only through ``present`` (feed anything, e.g. the modality's
``fill`` value, in that modality's input). In PyTorch a modality absent for the whole batch is not computed at all
(:meth:`~rgbx.models.fusions.base.FusionEncoder.computed` decides that with ``bool(mask.any())``, a data-dependent
branch that tracing would freeze). The exported graph therefore always computes every modality and relies on the
masks alone; rgbx's fusions mask absent samples with ``torch.where`` before mixing, so both paths give the same
logits (:func:`verify_onnx` checks this; the tests do with a modality absent for one sample and for a whole batch).

The decode head is exported folded by default (``fold_head``: its fusion convolution applied to each stage at the
stage's resolution, before upsampling; :meth:`~rgbx.models.Segmentor.set_fold_head`): the same function, and the
exporter's constant folding multiplies the per-stage weights once, so the file computes CMX-B2 in 116 instead of
156 GFLOP per 480×640 image (B0: 22 instead of 62).

Everything a deployment needs to prepare inputs and read outputs is written into the ONNX ``metadata_props``
(see :func:`onnx_metadata`); ``onnx.load(path).metadata_props`` or
``onnxruntime.InferenceSession(path).get_modelmeta().custom_metadata_map`` read it back.

Exporters: the TorchScript exporter (``dynamo=False``) is tried first: seconds, a single file, the opset asked for.
Two things in rgbx's models freeze sizes under tracing and are handled while exporting (:func:`traceable`):
``computed()`` (above) and ``rgbx.models.layers.resize``, which casts the target size to Python ints (replaced by a
plain ``F.interpolate`` with the traced size). Where the TorchScript graph still cannot take other shapes (the mean
fusion splits by the batch size) or cannot be exported at all (dformer / ktb: adaptive pooling to input-dependent
sizes), ``exporter="auto"`` falls back to the dynamo exporter (``dynamo=True``, ``external_data=False``, so still
a single file; 15-30 s for a tiny model on 2 CPU cores).

Smallest input: MiT's key / value reduction (a conv of stride 8, 4, 2 in stages 1-3) zero-pads a map smaller than
its stride in PyTorch, so tiny inputs work there; the traced graph keeps the branch of the traced size, so a file
exported from a MiT model takes inputs of at least 32 pixels a side (``rgbx eval / predict FILE.onnx`` names the
file and the input shapes when the runtime refuses one).

Needs the optional packages ``onnx`` (and ``onnxscript`` for the dynamo exporter) to export and ``onnxruntime`` to
verify: ``pip install 'rgbx[export]'``.
"""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch
from torch import nn
from torch.export import Dim

from rgbx.errors import CheckpointError, ConfigError, RgbxError

__all__ = ["ExportWrapper", "export_onnx", "file_opset", "onnx_metadata", "read_onnx_metadata", "verify_onnx"]

INSTALL_HINT = "pip install 'rgbx[export]'"
FORMAT = "rgbx-onnx/1"


def require(module: str):
    """Import an optional export dependency, or raise a clear :class:`RgbxError`."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise RgbxError(f"ONNX export needs the package {module!r}, which is not installed: {INSTALL_HINT}") from None


class ExportWrapper(nn.Module):
    """``forward(*modality_tensors, present) -> logits``: the Segmentor with positional tensor inputs.

    Args:
        model: a :class:`~rgbx.models.Segmentor`.

    ``forward`` takes one (B, C_m, H, W) tensor per modality of ``model.modalities`` (in that order) and ``present``,
    (B, M) bool (or 0/1 float) with one column per modality in the same order; it returns (B, K, H, W) logits.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.modalities = tuple(model.modalities)

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        *tensors, present = args
        if len(tensors) != len(self.modalities):
            raise ConfigError(f"expected {len(self.modalities)} modality tensors ({', '.join(self.modalities)}) "
                              f"and present, got {len(args)} tensors")
        present = present if present.dtype == torch.bool else present > 0.5
        inputs = dict(zip(self.modalities, tensors))
        masks = {m: present[:, j] for j, m in enumerate(self.modalities)}
        return self.model(inputs, masks).logits


@contextlib.contextmanager
def all_modalities_computed(model: nn.Module) -> Iterator[None]:
    """While active, the model's fusion encoder computes every passed modality (absence only through the masks)
    instead of deciding per batch with the data-dependent ``computed()``, which tracing cannot represent."""
    encoder = model.encoder
    had = "computed" in vars(encoder)
    previous = vars(encoder).get("computed")
    encoder.computed = lambda present: list(present)
    try:
        yield
    finally:
        if had:
            encoder.computed = previous
        else:
            del encoder.computed


def _traceable_resize(x: torch.Tensor, size, matmul: bool = False) -> torch.Tensor:
    """:func:`rgbx.models.layers.resize` without its ``int()`` casts and same-size shortcut, which the tracer
    would freeze to the example's sizes (bilinear resizing to the same size is the identity). Always
    ``F.interpolate`` (ONNX's Resize), also where the model resizes by matrix products (``matmul``): those
    matrices depend on the sizes."""
    return torch.nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False)


@contextlib.contextmanager
def traceable(model: nn.Module) -> Iterator[None]:
    """Make ``model`` traceable with dynamic sizes: every modality computed (:func:`all_modalities_computed`), and
    two functions bound by name in the rgbx.models modules replaced: ``resize`` by :func:`_traceable_resize`, and
    ``adaptive_avg_pool`` (DFormer's window attention) by
    :func:`~rgbx.models.layers.adaptive_avg_pool_by_matmul`, which is right at every size where the exporters'
    own adaptive pooling is right only at the traced one."""
    import sys

    from rgbx.models import layers

    # layers itself is among the patched modules: restore from these, not from layers
    swaps = {"resize": (layers.resize, _traceable_resize),
             "adaptive_avg_pool": (layers.adaptive_avg_pool, layers.adaptive_avg_pool_by_matmul)}
    patched = [(module, name) for mod_name, module in list(sys.modules.items())
               if mod_name.startswith("rgbx.models") and module is not None
               for name, (original, _) in swaps.items() if getattr(module, name, None) is original]
    for module, name in patched:
        setattr(module, name, swaps[name][1])
    try:
        with all_modalities_computed(model):
            yield
    finally:
        for module, name in patched:
            setattr(module, name, swaps[name][0])


@contextlib.contextmanager
def head_folded(model: nn.Module, fold: bool) -> Iterator[None]:
    """The model's decode heads folded (or not) for the duration; each head's own setting restored afterwards."""
    heads = [m for m in model.modules() if hasattr(m, "set_fold")]
    saved = [m.fold for m in heads]
    for m in heads:
        m.set_fold(fold)
    try:
        yield
    finally:
        for m, was in zip(heads, saved, strict=True):
            m.set_fold(was)


def _normalisation(modalities, storage: Mapping | None = None) -> dict:
    """Per modality: how a file value becomes a network input. ``storage`` (``{sensor: {encoding, dtype, scale}}``,
    what the model file records of its training data) replaces the spec's own encoding, dtype and scale: a model
    trained on 16-bit thermal is fed 16-bit thermal × the training scale; its ``resize`` (a sensor the training data
    stored at a lower resolution) is written as the entry's ``resize``."""
    from rgbx.data.files import stored_spec

    out = {}
    for m in modalities:
        spec = stored_spec(m, storage)
        out[m] = {"channels": spec.channels, "scale": spec.scale, "unit": spec.unit, "mean": list(spec.mean),
                  "std": list(spec.std), "fill": spec.fill, "invalid_value": spec.invalid_value,
                  "encoding": spec.encoding, "dtype": spec.dtype}
        resize = ((storage or {}).get(m) or {}).get("resize")
        if resize:  # stored at a lower resolution: resampled to the other sensors' size before the network
            out[m]["resize"] = resize
    return out


def _sensor_specs(modalities) -> dict:
    """The full fields of each sensor rgbx does not define (as a model file states them: ``sensors``), so that
    ``rgbx eval / predict FILE.onnx`` registers them in a process that never read their declaration."""
    from rgbx.modalities import BUILTIN_MODALITIES, get_modality, spec_to_dict

    return {m: spec_to_dict(get_modality(m)) for m in modalities if m not in BUILTIN_MODALITIES}


MIN_OPSET = 14  # the first opset the exporters write scaled_dot_product_attention in


def file_opset(path: str | Path) -> int:
    """The default-domain ONNX opset a file was written with."""
    onnx = require("onnx")
    proto = onnx.load(str(path), load_external_data=False)
    return next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))


def onnx_metadata(model: nn.Module, dataset: Mapping | None = None, size: tuple[int, int] | None = None,
                  dynamic: bool = True) -> dict[str, str]:
    """The ``metadata_props`` written by :func:`export_onnx` (every value a string; JSON where structured).

    Keys: ``format``; ``model_config`` (the rgbx ModelConfig); ``modalities`` (input order, also the column order of
    ``present``); ``inputs`` / ``outputs`` (names and layouts); ``normalization`` (per modality: channels, scale,
    mean, std, fill, ...: network input = (file value × scale − mean) / std; dtype, encoding and scale are those of
    the training data when the model file records them, ``dataset["storage"]``, else the sensor's own);
    ``sensors`` (the full fields of sensors rgbx does not define, when there are any); ``classes``, ``palette``,
    ``ignore_index``, ``dataset`` (when known); ``export_size`` and ``dynamic_axes``.
    """
    from rgbx.models.model_file import recorded_storage

    dataset = dict(dataset or {})
    modalities = list(model.modalities)
    k = model.num_classes
    classes = dataset.get("classes") or [f"class_{i}" for i in range(k)]
    if "palette" in dataset:
        palette = dataset["palette"]
    else:
        from rgbx.data.description import default_palette

        palette = [list(c) for c in default_palette(k)]
    meta = {
        "format": FORMAT,
        "model_config": model.config.to_dict(),
        "modalities": modalities,
        "inputs": {**{m: f"(B, {model.encoder.sensor_channels[m]}, H, W) float32, normalised" for m in modalities},
                   "present": f"(B, {len(modalities)}) bool, columns in 'modalities' order; False = sensor absent "
                              "(its input is ignored for that sample)"},
        "outputs": {"logits": f"(B, {k}, H, W) float32, class scores; argmax over dim 1 gives the class index"},
        "normalization": _normalisation(modalities, recorded_storage(dataset)),
        "classes": list(classes),
        "palette": [list(c) for c in palette],
        "ignore_index": dataset.get("ignore_index", 255),
        "dataset": dataset,
        "export_size": list(size) if size else None,
        "dynamic_axes": ["batch", "height", "width"] if dynamic else [],
    }
    sensors = _sensor_specs(modalities)
    if sensors:
        meta["sensors"] = sensors
    return {key: value if isinstance(value, str) else json.dumps(value) for key, value in meta.items()}


def read_onnx_metadata(path: str | Path) -> dict:
    """The rgbx metadata of an exported file, JSON values decoded."""
    onnx = require("onnx")
    if not Path(path).is_file():
        raise CheckpointError(f"{path}: file not found")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001 — protobuf raises its own decode errors for a truncated file
        raise CheckpointError(f"{path}: not a readable ONNX file ({type(e).__name__}: {e}); a copy cut short? "
                              f"write it again with rgbx export") from None
    if not proto.graph.node:
        raise CheckpointError(f"{path}: an ONNX file without a graph ({Path(path).stat().st_size} bytes); write it "
                              f"again with rgbx export")
    out = {}
    for prop in proto.metadata_props:
        try:
            out[prop.key] = json.loads(prop.value)
        except json.JSONDecodeError:
            out[prop.key] = prop.value
    return out


def export_onnx(model: nn.Module, path: str | Path, size: tuple[int, int] = (480, 640), opset: int = 17,
                dynamic: bool = True, dataset: Mapping | None = None, batch: int = 2,
                exporter: str = "auto", fold_head: bool = True, provenance: Mapping | None = None) -> Path:
    """Export ``model`` (a Segmentor) to a single ONNX file (no external data), written atomically.

    Not thread-safe: while exporting, ``resize`` is swapped in the rgbx.models modules (restored afterwards).

    Args:
        model: the model (moved to the CPU and put in eval mode; restored afterwards).
        path: the .onnx file to write.
        size: (H, W) of the example input used for tracing (the graph accepts other sizes when ``dynamic``).
        opset: ONNX opset version.
        dynamic: dynamic batch / height / width axes (otherwise the graph is fixed to ``batch`` × ``size``).
        dataset: dataset info (classes, palette, ignore_index; as stored in rgbx checkpoints) for the metadata.
        batch: example batch size; at least 2, since a batch-1 example would specialise the batch axis.
        exporter: ``"torchscript"`` (``torch.onnx.export(dynamo=False)``: fast, opset as asked), ``"dynamo"``
            (``dynamo=True``: slow, ~1 min for a tiny model on 2 cores; the opset may stay at the exporter's own
            when conversion to ``opset`` fails) or ``"auto"``: TorchScript, then, when ``dynamic`` and onnxruntime is
            installed, a run of the file at another batch size and H×W against PyTorch; if the TorchScript export
            fails, or that run fails or disagrees (the tracer froze a size, e.g. a ``split`` by the batch size, or
            the key grid KTB's sparse fusion pools to, ``min(H, 16)``), the dynamo exporter, which keeps sizes
            symbolic.
        fold_head: export the decode head folded (see the module docstring; the model's own setting is restored
            afterwards); ``False``: the reference order of operations.
        provenance: more metadata from the model file, kept as JSON under its own keys: ``converted_from`` and
            ``reference_evaluation`` (what ``rgbx convert`` records), ``calibration`` (``rgbx calibrate``), so that ``rgbx eval --as-published`` and
            ``rgbx info`` read them off the exported file too.

    Returns:
        ``path``.
    """
    onnx = require("onnx")
    from rgbx.engine.checkpoint import atomic_write

    if exporter not in ("auto", "torchscript", "dynamo"):
        raise ConfigError(f"exporter must be auto, torchscript or dynamo, got {exporter!r}")
    newest = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= newest:
        raise ConfigError(f"opset {opset}: rgbx models need ONNX opset {MIN_OPSET} or newer (scaled-dot-product "
                          f"attention), and the installed onnx {onnx.__version__} knows opsets up to {newest}")
    h, w = size
    if h < 1 or w < 1 or batch < 1:
        raise ConfigError(f"export size and batch must be positive, got size {size} and batch {batch}")
    if dynamic and batch < 2:
        batch = 2  # a batch-1 example specialises the batch dimension
    path = Path(path)
    device = next(model.parameters()).device
    was_training = model.training
    model = model.cpu().eval()
    wrapper = ExportWrapper(model).eval()
    generator = torch.Generator().manual_seed(0)
    example = tuple(torch.randn(batch, model.encoder.sensor_channels[m], h, w, generator=generator)
                    for m in wrapper.modalities)
    present = torch.ones(batch, len(wrapper.modalities), dtype=torch.bool)
    names = [*wrapper.modalities, "present"]
    dynamic_axes = None
    if dynamic:
        dynamic_axes = {m: {0: "batch", 2: "height", 3: "width"} for m in wrapper.modalities}
        dynamic_axes["present"] = {0: "batch"}
        dynamic_axes["logits"] = {0: "batch", 2: "height", 3: "width"}

    def trace(tmp: str, use_dynamo: bool) -> None:
        with traceable(model), head_folded(model, fold_head), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TorchScript-exporter deprecation and tracer warnings
            if use_dynamo:
                shapes = [{0: Dim.DYNAMIC, 2: Dim.DYNAMIC, 3: Dim.DYNAMIC}] * len(wrapper.modalities)
                with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                    torch.onnx.export(wrapper, (*example, present), tmp, dynamo=True, opset_version=opset,
                                      input_names=names, output_names=["logits"], external_data=False, optimize=False,
                                      dynamic_shapes=((*shapes, {0: Dim.DYNAMIC}),) if dynamic else None)
            else:
                torch.onnx.export(wrapper, (*example, present), tmp, dynamo=False, opset_version=opset,
                                  input_names=names, output_names=["logits"], dynamic_axes=dynamic_axes,
                                  do_constant_folding=True)

    def dynamo_trace(tmp: str) -> None:
        """The dynamo export, its failure one error: torch.export's symbolic shape solver gives up at some small
        example sizes (a MiT model at 40×56) that a larger example avoids."""
        try:
            trace(tmp, True)
        except Exception as e:
            text = str(e).partition("Exception summary")[2] or str(e)
            cause = " ".join(text.partition("(Refer to")[0].split())
            hint = ("; the axes are dynamic, so the file takes other sizes too: export with a larger example, e.g. "
                    "--size 480x640 (the default)" if dynamic else "; try another --size")
            held = " (the TorchScript file did not hold at other sizes)" if exporter == "auto" else ""
            raise ConfigError(f"the dynamo exporter could not export the model at the example size {h}x{w}{held}: "
                              f"{cause[:300]}{hint}") from e

    def write(tmp: str) -> None:
        nonlocal used
        used = exporter
        if exporter == "dynamo":
            dynamo_trace(tmp)
        elif exporter == "torchscript":
            trace(tmp, False)
        else:
            try:
                with _output_discarded():  # a failing TorchScript export prints its whole graph from C++
                    trace(tmp, False)
                fallback = dynamic and not _agrees_at_other_shapes(tmp, wrapper, batch, h, w)
            except Exception:  # an op the TorchScript exporter cannot express
                fallback = True
            if fallback:
                used = "dynamo"
                dynamo_trace(tmp)
        proto = onnx.load(tmp)
        del proto.metadata_props[:]
        meta = onnx_metadata(model, dataset, size, dynamic)
        meta["exporter"] = "torch.onnx dynamo" if used == "dynamo" else "torch.onnx TorchScript"
        meta["fold_head"] = json.dumps(fold_head)
        meta.update({key: json.dumps(value) for key, value in (provenance or {}).items()})
        for key, value in meta.items():
            prop = proto.metadata_props.add()
            prop.key, prop.value = key, value
        onnx.checker.check_model(proto)
        onnx.save(proto, tmp)

    used = exporter
    try:
        atomic_write(path, write)
    finally:
        model.to(device).train(was_training)
    return path


@contextlib.contextmanager
def _output_discarded() -> Iterator[None]:
    """Standard output and error discarded at the file-descriptor level (what C++ code prints too), then
    restored."""
    import os
    import sys

    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 1)
        os.dup2(null, 2)
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, null):
            os.close(fd)


def _agrees_at_other_shapes(path: str, wrapper: ExportWrapper, batch: int, h: int, w: int) -> bool:
    """Whether onnxruntime runs the file at batch + 1 and at a larger and a smaller H×W ((h + 16) × (w + 32), and
    about half the traced size) and gives PyTorch's logits there (random inputs; within 1e-4 of the logits' scale,
    where a size the tracer froze is off by percents); True when onnxruntime is missing. The smaller size catches a
    frozen size that only breaks below the traced one: KTB's top-k over ``ceil(ratio · keys)`` keys, frozen at the
    traced key count, asks onnxruntime for more keys than a smaller map has (an error, not a wrong value), and
    goes unnoticed at a larger size while the fusion's output convolutions are still at their zero start."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return True
    gen = torch.Generator().manual_seed(1)
    for height, width in ((h + 16, w + 32), (max(16, h // 2), max(16, w // 2))):
        inputs = {m: torch.randn(batch + 1, wrapper.model.encoder.sensor_channels[m], height, width, generator=gen)
                  for m in wrapper.modalities}
        try:
            got, expected = _both_logits(path, wrapper.model, inputs, None, quiet=True)
        except Exception:  # onnxruntime raises its own error types (Fail, InvalidArgument, ...); a shape mismatch
            return False
        if float((got - expected).abs().max()) > 1e-4 * float(expected.abs().max()) + 1e-6:
            return False
    return True


def _present_matrix(present, modalities, batch: int) -> torch.Tensor:
    if present is None:
        return torch.ones(batch, len(modalities), dtype=torch.bool)
    if isinstance(present, Mapping):
        return torch.stack([torch.as_tensor(present[m]).bool() if m in present else torch.ones(batch, dtype=torch.bool)
                            for m in modalities], dim=1)
    present = torch.as_tensor(present)
    if present.shape != (batch, len(modalities)):
        raise ConfigError(f"present has shape {tuple(present.shape)}, expected ({batch}, {len(modalities)})")
    return present.bool()


def verify_onnx(path: str | Path, model: nn.Module, inputs: Mapping[str, torch.Tensor],
                present: Mapping[str, torch.Tensor] | torch.Tensor | None = None) -> float:
    """Run the exported file with onnxruntime (CPU) and ``model`` in PyTorch on the same inputs.

    Args:
        path: the exported .onnx file.
        model: the Segmentor it was exported from.
        inputs: modality → (B, C_m, H, W) normalised tensor, for every modality of the model.
        present: modality → (B,) bool, or a (B, M) bool matrix in the model's modality order; None = all present.
            PyTorch runs the model's own path (which skips modalities absent for the whole batch).

    Returns:
        The maximum absolute difference between the two logits.
    """
    got, expected = _both_logits(path, model, inputs, present)
    return float((got - expected).abs().max())


def _both_logits(path: str | Path, model: nn.Module, inputs: Mapping[str, torch.Tensor],
                 present: Mapping[str, torch.Tensor] | torch.Tensor | None, quiet: bool = False
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """The logits of the exported file (onnxruntime, CPU) and of ``model`` (PyTorch, its own path, eval mode) on
    the same inputs, both float32 on the CPU (see :func:`verify_onnx`); ``quiet``: onnxruntime logs nothing."""
    ort = require("onnxruntime")
    modalities = tuple(model.modalities)
    missing = [m for m in modalities if m not in inputs]
    if missing:
        raise ConfigError(f"verify_onnx needs an input for every modality of the model; missing: {', '.join(missing)}")
    batch = inputs[modalities[0]].shape[0]
    matrix = _present_matrix(present, modalities, batch)
    masks = {m: matrix[:, j] for j, m in enumerate(modalities)}
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            expected = model({m: inputs[m].to(device) for m in modalities},
                             {m: v.to(device) for m, v in masks.items()}).logits.float().cpu()
    finally:
        model.train(was_training)
    options = ort.SessionOptions()
    if quiet:
        options.log_severity_level = 4
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {m: inputs[m].detach().float().cpu().numpy() for m in modalities}
    feed["present"] = matrix.numpy()
    (got,) = session.run(["logits"], feed)
    if tuple(got.shape) != tuple(expected.shape):
        raise RgbxError(f"{path}: ONNX logits have shape {tuple(got.shape)}, PyTorch's {tuple(expected.shape)}")
    return torch.from_numpy(got), expected
