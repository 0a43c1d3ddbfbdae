"""``rgbx info [FILE]``: what is registered (modalities, encodings, backbones, fusions, heads, methods, presets), or
what a weights file holds."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.table import Table

from rgbx.cli.common import add_command, read_off_text

EXAMPLES = """  rgbx info                               # registered modalities, models, methods, datasets, presets
  rgbx info runs/cmx/model.safetensors    # what a model file holds: model, classes, training, parameters
  rgbx info NYUDV2_CMX+Segformer-B2.pth   # another code base's checkpoint: its layout and how to convert it
  rgbx info model.onnx                    # an exported file: its inputs, their normalisation, outputs, classes
  rgbx info --import my_lab/gated.py      # with a plugin loaded: what it registered (docs/extending.md)
"""


def add_parser(sub) -> None:
    p = add_command(sub, "info", "list registered modalities, models, methods and config presets; describe a file",
                    "List everything registered in rgbx, or describe a weights file: an rgbx model file (model, "
                    "classes, training; loaded to check that every tensor fits) or a checkpoint of another code "
                    "base (its layout and the rgbx convert command).", EXAMPLES, run)
    p.add_argument("file", nargs="?", help="a weights file to describe (.safetensors, .pth, ...)")


def run(args) -> int:
    if args.file:
        return describe_file(args.file)
    from rgbx.data import DATASETS
    from rgbx.engine.config import list_presets
    from rgbx.methods import METHODS
    from rgbx.methods.losses import SEGMENTATION_LOSSES
    from rgbx.modalities import ENCODINGS, MODALITIES, get_modality
    from rgbx.models import list_models
    from rgbx.plugins import load_installed_plugins, loaded_plugins, registered_by

    load_installed_plugins()  # the installed packages' components are listed with rgbx's own
    # piped output (no terminal width to follow): wide enough that descriptions are not squeezed into a narrow column
    console = Console(width=None if sys.stdout.isatty() else 160)
    table = Table(title="modalities")
    for col in ("name", "channels", "on disk", "unit", "sparse", "photometric augmentation", "description"):
        table.add_column(col)
    for name in MODALITIES.names():
        s = get_modality(name)
        table.add_row(name, str(s.channels), f"{s.encoding} {s.dtype} ×{s.scale:g}", s.unit, "yes" if s.sparse else "",
                      ", ".join(s.photometric), s.description)
    console.print(table)
    models = list_models()
    for kind, names in models.items():
        console.print(f"[bold]{kind}[/bold]: {', '.join(names)}")
    console.print(f"[bold]methods[/bold]: {', '.join(METHODS.names())}")
    console.print(f"[bold]segmentation losses[/bold] (method.loss): {', '.join(SEGMENTATION_LOSSES.names())}")
    console.print(f"[bold]datasets[/bold]: {', '.join(DATASETS.names())}")
    console.print(f"[bold]encodings[/bold]: {', '.join(ENCODINGS.names())}")
    console.print(f"[bold]config presets[/bold]: {', '.join(list_presets())}")
    from rgbx.models.convert import REFERENCE_EVALUATION

    console.print(f"[bold]published evaluations[/bold] (published_evaluation; rgbx eval --as-published): "
                  f"{', '.join(sorted(REFERENCE_EVALUATION))}")
    plugins = loaded_plugins()
    console.print("[bold]plugins[/bold] (--import, the config's imports, installed entry points "
                  f"rgbx.plugins): {'' if plugins else 'none loaded'}", highlight=False)
    for spec in plugins:
        console.print(f"  {spec}: {', '.join(registered_by(spec)) or 'registered nothing'}", markup=False,
                      highlight=False)
    return 0


def describe_file(path: str) -> int:
    """Print what an rgbx model file holds (loading it, so a file that does not fit its own config is an error; made
    with a plugin that is not loaded: what the file records, and which plugin builds it), or,
    for another code base's checkpoint, its layout, what can be read off it and how to convert it."""
    from pathlib import Path

    from rgbx.engine.checkpoint import load_model
    from rgbx.models.model_file import describe_model, missing_plugin, read_model_info

    file = Path(path)
    if file.suffix == ".onnx":
        return _describe_onnx(file)
    info = read_model_info(file, missing_ok=True) if file.suffix == ".safetensors" else {}
    if not info:
        return _describe_foreign(file)
    missing = missing_plugin(info)
    if missing:  # what the file records, without building the model (its plugin's code is not here)
        recorded = info.get("model") or {}
        _print_header(file, info)
        print(f"model: {describe_model(recorded)}; {recorded.get('head')} head ({recorded.get('head_channels')} "
              f"channels); not loaded: {missing}")
        num_classes = recorded.get("num_classes")
    else:
        model, info = load_model(file)
        num_classes = model.config.num_classes
        _print_model(file, model, info)
    if info.get("environment"):
        from rgbx.engine.environment import describe_environment

        print(f"trained with: {describe_environment(info['environment'])}")
    if info.get("training"):
        t = info["training"]
        seen = ("yes (leaving a failed sensor out gives it input it knows)" if t.get("absent_sensors_seen")
                else "no (every sensor present in every sample)")
        print(f"training: method {t.get('method')}, modality dropout {t.get('modality_dropout')}; samples with a "
              f"sensor absent: {seen}")
    _print_calibration(info)
    for component, plugin in (info.get("plugins") or {}).items():
        print(f"{component}: from the plugin {plugin} (load it with --import to use this file)")
    for name, fields in (info.get("sensors") or {}).items():
        print(f"sensor {name} (not built into rgbx; stated in the file): {fields.get('channels')} channel(s), "
              f"{fields.get('encoding')} {fields.get('dtype')} ×{fields.get('scale')} {fields.get('unit', '')}, "
              f"normalised with mean {fields.get('mean')} std {fields.get('std')}")
    dataset = info.get("dataset") or {}
    from rgbx.models.model_file import recorded_storage

    stored = recorded_storage(dataset)
    if stored:
        print("sensor files as the training data stored them (rgbx predict reads loose files so): " + "; ".join(
            f"{m} {v.get('encoding')} {v.get('dtype')} ×{v.get('scale'):g}"
            + (f", resampled ({v['resize']}) to the others' size" if v.get("resize") else "")
            for m, v in stored.items()))
    classes = dataset.get("classes") or []
    if classes:
        where = f" of {dataset['name']}" if dataset.get("name") else ""
        ignore = f"; ignore index {dataset['ignore_index']}" if dataset.get("ignore_index") is not None else ""
        print(f"classes{where} ({len(classes)}): {', '.join(classes)}{ignore}")
    else:
        print(f"classes: {num_classes}, unnamed (rgbx convert --classes names them)")
    history = []
    if "iteration" in info:
        history.append(f"iteration {info['iteration']}")
    if "val_miou" in info:
        over = " (all classes)" if info.get("val_miou_convention") == "all" else ""
        history.append(f"validation mIoU{over} {100 * info['val_miou']:.2f}")
    converted = info.get("converted_from")
    if converted:
        history.append(f"converted from {converted.get('file')} ({converted.get('layout')} layout)")
    if history:
        print("history: " + ", ".join(history))
    _print_protocol(file, info)
    return 0


def _print_header(file, info: dict) -> None:
    print(f"{file}: rgbx model file ({info.get('format', '?')}), {file.stat().st_size / 2**20:.1f} MiB")


def _print_model(file, model, info: dict) -> None:
    """The model a file holds, built from it: architecture, parameters, options, input encoding."""
    from rgbx.models.model_file import describe_model

    cfg = model.config
    params = sum(p.numel() for p in model.parameters())
    _print_header(file, info)
    print(f"model: {describe_model(cfg.to_dict())}; {cfg.head} head ({cfg.head_channels} channels); "
          f"{params / 1e6:.2f} M parameters (every tensor loaded)")
    options = {k: v for k, v in (("fusion_options", cfg.fusion_options), ("head_options", cfg.head_options)) if v}
    if options:
        print("options: " + "; ".join(f"{k} {v}" for k, v in options.items()))
    if cfg.input_encoding:
        from rgbx.models.input_encoding import describe_input_encoding

        print("input encoding (inside the model: rgbx-normalised inputs are mapped to what the weights were trained "
              "on):")
        for name, entry in cfg.input_encoding.items():
            print(f"  {describe_input_encoding(name, entry)}")


def _print_protocol(file, info: dict) -> None:
    """The evaluation protocol recorded in the file (by ``rgbx convert``, or by a run whose config names a
    ``published_evaluation``), and the ``rgbx eval`` command that follows it."""
    protocol = info.get("reference_evaluation")
    if protocol:
        from rgbx.cli.evaluate import as_published_command

        print(f"scored as its authors' code does ({protocol.get('what')}): "
              f"{as_published_command(file, protocol.get('flags', ''))}, which adds {protocol.get('flags')} ([...]: "
              f"--as-published multi-scale)")


def _print_calibration(info: dict) -> None:
    """The confidence temperatures ``rgbx calibrate`` recorded, if any."""
    c = info.get("calibration")
    if isinstance(c, dict):
        temperatures = ", ".join(f"{k} {float(v):.3f}" for k, v in (c.get("temperatures") or {}).items())
        t = c.get("test_time") or {}
        passes = (f"; for scales {' '.join(f'{v:g}' for v in t.get('scales') or [1.0])}"
                  f"{', flip' if t.get('flip') else ''}{', window ' + 'x'.join(map(str, t['window'])) if t.get('window') else ''}"
                  if t.get("flip") or t.get("window") or (t.get("scales") or [1.0]) != [1.0] else "")
        if c.get("method") == "vector":
            print(f"confidence calibration: vector scaling (a scale and a bias per class, in the model: the "
                  f"predictions follow it) for {', '.join(c.get('vectors') or {})} (fitted on {c.get('fitted_on')}"
                  f"{passes}; a sensor set without its own uses {c.get('default')}'s)")
            return
        print(f"confidence calibration: temperatures {temperatures} (fitted on {c.get('fitted_on')}{passes}; a sensor "
              f"set without its own uses {c.get('default')}'s)")


def _describe_onnx(file) -> int:
    """What an ``rgbx export`` file expects and returns, from its metadata (no session is started)."""
    from rgbx.engine.export import read_onnx_metadata
    from rgbx.errors import CheckpointError
    from rgbx.models.model_file import describe_model

    if not file.is_file():
        raise CheckpointError(f"{file}: not found")
    try:
        meta = read_onnx_metadata(file)
    except Exception as e:  # noqa: BLE001 — onnx raises its own decode errors
        raise CheckpointError(f"{file}: not a readable ONNX file ({type(e).__name__}: {e})") from None
    if "model_config" not in meta:
        raise CheckpointError(f"{file}: an ONNX file without rgbx metadata (not written by rgbx export)")
    print(f"{file}: ONNX model written by rgbx export ({meta.get('exporter', '?')}), "
          f"{file.stat().st_size / 2**20:.1f} MiB; {describe_model(meta['model_config'])}")
    print(f"traced at {meta.get('export_size')}; dynamic axes: {meta.get('dynamic_axes')}; "
          f"head folded: {meta.get('fold_head')}")
    for name, layout in (meta.get("inputs") or {}).items():
        norm = (meta.get("normalization") or {}).get(name)
        how = (f"; from file values: (value × {norm.get('scale'):g} − {norm.get('mean')}) / {norm.get('std')}, "
               f"absent: {norm.get('fill')}" if isinstance(norm, dict) else "")
        if isinstance(norm, dict) and norm.get("resize"):
            how += f"; stored at another resolution: resampled ({norm['resize']}) to the others' size"
        print(f"input {name}: {layout}{how}")
    for name, layout in (meta.get("outputs") or {}).items():
        print(f"output {name}: {layout}")
    classes = meta.get("classes") or []
    print(f"classes ({len(classes)}): {', '.join(classes)}; ignore index {meta.get('ignore_index')}")
    converted = meta.get("converted_from")
    if isinstance(converted, dict):
        print(f"converted from {converted.get('file')} ({converted.get('layout')} layout)")
    _print_calibration(meta)
    _print_protocol(file, meta)
    print(f"score or run it: rgbx eval {file} --data DIR [--runtime openvino]; rgbx predict {file} DIR --out OUT")
    return 0


def _describe_foreign(file) -> int:
    from rgbx.models.convert import detect_layout, infer_model_options, read_checkpoint

    state, notes = read_checkpoint(file)
    values = sum(v.numel() for v in state.values())
    print(f"{file}: not an rgbx model file; {len(state)} tensors, {values / 1e6:.2f} M values")
    for note in notes:
        print(f"  {note}")
    layout = detect_layout(state)  # a CheckpointError naming the known layouts when none matches
    read_off = read_off_text(infer_model_options(state, layout)) or "nothing beyond the layout"
    print(f"layout: {layout}; read off the checkpoint: {read_off}")
    print(f"convert it: rgbx convert {file} --modalities MODALITY ... --out {file.stem}.safetensors (the model's "
          f"sensors in order, e.g. rgb depth; rgbx convert --help lists the other flags)")
    return 0
