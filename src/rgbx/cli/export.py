"""``rgbx export``: a trained model to ONNX, with one input per modality and a presence input."""

from __future__ import annotations

from pathlib import Path

from rgbx.cli.common import add_command, parse_size, positive_int

EXAMPLES = """  rgbx export runs/cmx/model.safetensors --out cmx.onnx
  rgbx export runs/cmx/model.safetensors --out cmx.onnx --size 480x640 --opset 17 --check
  rgbx export runs/cmx/model.safetensors --out cmx_static.onnx --static --size 240x320

the file has one input per modality, named after it (rgb, depth, ...; (B, C, H, W) float32 normalised as rgbx does:
(file value x scale - mean) / std), plus 'present', (B, M) bool with one column per modality in the model's order
(False = that sensor is absent for that sample; its input is then ignored), and one output, 'logits' (B, K, H, W).
Classes, palette, modality order and each modality's normalisation are in the file's metadata_props
(onnxruntime: InferenceSession(path).get_modelmeta().custom_metadata_map).
Needs onnx and onnxruntime: pip install 'rgbx[export]'.
"""


def add_parser(sub) -> None:
    p = add_command(sub, "export", "export a model to ONNX",
                    "Export an rgbx weights file to ONNX (one named input per modality + a 'present' mask input, "
                    "output 'logits'), with the model config, classes, palette and normalisation in the metadata. "
                    "--check compares onnxruntime (CPU) with PyTorch on random inputs at another size and batch, "
                    "with one modality absent for one sample.",
                    EXAMPLES, run)
    p.add_argument("checkpoint", type=Path, help="rgbx weights file (.safetensors)")
    p.add_argument("--out", type=Path, required=True, help="the .onnx file to write")
    p.add_argument("--size", type=parse_size, default=(480, 640), metavar="HxW",
                   help="example input size for tracing (default 480x640); with dynamic axes others work too")
    p.add_argument("--opset", type=positive_int, default=17, help="ONNX opset version (default 17)")
    dyn = p.add_mutually_exclusive_group()
    dyn.add_argument("--dynamic", dest="dynamic", action="store_true", default=True,
                     help="dynamic batch, height and width axes (the default)")
    dyn.add_argument("--static", dest="dynamic", action="store_false",
                     help="fix the graph to batch 2 and --size")
    p.add_argument("--exporter", choices=("auto", "torchscript", "dynamo"), default="auto",
                   help="torch.onnx exporter (default auto: TorchScript, dynamo if the TorchScript graph does not "
                        "run at other shapes)")
    p.add_argument("--no-fold-head", dest="fold_head", action="store_false",
                   help="export the decode head in the reference order of operations (default: folded, the same "
                        "function in fewer operations)")
    p.add_argument("--check", action="store_true",
                   help="verify with onnxruntime against PyTorch and print the max abs difference")
    p.add_argument("--tolerance", type=float, default=1e-4,
                   help="--check fails (exit 1) above this max abs difference (default 1e-4)")


def _check_inputs(model, size: tuple[int, int], dynamic: bool):
    """Random normalised inputs at a batch and size other than the export's when the axes are dynamic, with the
    last modality of the model absent for sample 0."""
    import torch

    h, w = size
    batch, (ch, cw) = (3, (h + 32, w + 64)) if dynamic else (2, (h, w))
    generator = torch.Generator().manual_seed(0)
    inputs = {m: torch.randn(batch, model.encoder.sensor_channels[m], ch, cw, generator=generator)
              for m in model.modalities}
    present = torch.ones(batch, len(model.modalities), dtype=torch.bool)
    present[0, -1] = False
    return inputs, present


# what a model file records about its origin and its authors' evaluation (rgbx convert, a preset's run) and its
# confidence temperatures (rgbx calibrate), kept in the exported file
PROVENANCE = ("converted_from", "reference_evaluation", "calibration")


def run(args) -> int:
    from rgbx.engine.checkpoint import load_model
    from rgbx.engine.export import export_onnx, file_opset, read_onnx_metadata, require, verify_onnx
    from rgbx.errors import ConfigError

    if min(args.size) < 1:
        raise ConfigError(f"--size must be positive, got {args.size[0]}x{args.size[1]}")
    out = Path(args.out)
    if out.exists() and out.resolve() == Path(args.checkpoint).resolve():
        raise ConfigError(f"--out {out} is the model file being exported; write the .onnx file beside it")
    if out.is_dir():
        raise ConfigError(f"--out {out} is a folder; give the .onnx file to write, e.g. {out / 'model.onnx'}")
    if out.exists() and out.suffix.lower() != ".onnx":
        raise ConfigError(f"--out {out} exists and is not an .onnx file; it is not overwritten (give an .onnx path)")
    require("onnx")
    if args.check:
        require("onnxruntime")
    model, info = load_model(args.checkpoint)
    path = export_onnx(model, args.out, size=args.size, opset=args.opset, dynamic=args.dynamic,
                       dataset=info.get("dataset"), exporter=args.exporter, fold_head=args.fold_head,
                       provenance={k: info[k] for k in PROVENANCE if k in info})
    size_mb, opset = path.stat().st_size / 2**20, file_opset(path)
    print(f"wrote {path} ({size_mb:.1f} MiB): inputs {', '.join(model.modalities)}, present "
          f"(B, {len(model.modalities)}); output logits (B, {model.num_classes}, H, W)"
          f"{'; dynamic batch/H/W' if args.dynamic else ''}; exporter: {read_onnx_metadata(path)['exporter']}, "
          f"opset {opset}")
    if opset != args.opset:
        print(f"note: asked for opset {args.opset}; the dynamo exporter kept opset {opset} (it could not convert the "
              f"graph to {args.opset})")
    if args.check:
        inputs, present = _check_inputs(model, args.size, args.dynamic)
        diff = verify_onnx(path, model, inputs, present)
        shape = next(iter(inputs.values())).shape
        absent = model.modalities[-1]
        print(f"check: onnxruntime vs PyTorch at batch {shape[0]}, {shape[2]}x{shape[3]} ({absent} absent for "
              f"sample 0): max abs difference {diff:.3g}")
        if not diff <= args.tolerance:
            print(f"check FAILED: max abs difference {diff:.3g} > tolerance {args.tolerance:g}")
            return 1
    return 0
