"""``rgbx convert``: a released checkpoint of another code base (CMX, CMNeXt, DFormer, SegFormer) → an rgbx weights
file."""

from __future__ import annotations

from pathlib import Path

from rgbx.cli.common import add_command, model_flag_overrides, parse_options, positive_int, read_off_text

EXAMPLES = """  rgbx convert NYUDV2_CMX+Segformer-B2.pth --modalities rgb hha --out cmx_b2_nyu.safetensors   # CMX's NYU X: HHA
  rgbx convert NYUDV2_CMX+Segformer-B2.pth --backbone mit_b2 --fusion cmx --head mlp --head-channels 512 \\
      --modalities rgb hha --num-classes 40 --out cmx_b2_nyu.safetensors            # everything spelled out
  rgbx convert NYUv2_DFormer_Base.pth --modalities rgb depth --out dformer_b_nyu.safetensors
  rgbx convert MFNet_CMX+Segformer-B2.pth --modalities rgb thermal --out cmx_b2_mfnet.safetensors \\
      --classes-of mfnet                                    # the benchmark's class names kept in the file
  rgbx convert CMNeXt_CMNeXt-B2_DELIVER_rgbdel.pth --modalities rgb hha event_image lidar \\
      --out cmnext_b2_deliver.safetensors   # DELIVER's CMNeXt (MODALS img, depth = its hha/ folder, event, lidar);
                                            # evaluate on DeLiVER read with --option event_format=image
  rgbx convert cmnext_b2_mcubes_rgbadn.pth --modalities rgb aolp dolp nir --classes-of mcubes \\
      --out cmnext_b2_mcubes.safetensors     # MCubeS (MODALS image, aolp, dolp, nir)
  rgbx convert mit_b2.pth --backbone mit_b2 --fusion cmx --modalities rgb thermal --num-classes 9 \\
      --out cmx_b2_init.safetensors                        # ImageNet MiT into both CMX branches (fusion at init)
  rgbx convert pytorch_model.bin --layout segformer-hf --fusion mean --modalities rgb depth --num-classes 40 \\
      --branches rgb --out init.safetensors                 # Hugging Face SegFormer weights, RGB stem only
  rgbx convert segformer_mit-b0_ade.pth --ignore decode_head. --fusion cmx --modalities rgb depth \\
      --num-classes 40 --out init.safetensors               # mmsegmentation checkpoint, encoder only

layouts (--layout, default auto = detected from the key names): cmnext, cmx, dformer, dformerv2, segformer-hf,
segformer-mmseg, segformer-nvlabs; rgbx.models.convert's docstring describes each. Model flags not given are read off
the checkpoint where it tells them (MiT / DFormer variant, fusion and head of CMNeXt / CMX / DFormer files, classes
and head width of a decode head), else taken from --config, else rgbx's defaults; the modalities never are. For the
dformer layout the ham head is built with BatchNorm eps 1e-3, as DFormer trained and evaluated it (override with
--head-option bn_eps=...). A CMNeXt file's per-modality modules are taken in the order of --modalities (primary
first); give the checkpoint's own order with --modality-order when it differs (DELIVER: img depth event lidar).
Every tensor must find its place: a missing, unused or mis-shaped tensor is an error that lists them all (leave
checkpoint parts out on purpose with --ignore PREFIX). Files are read with torch.load(weights_only=True) or
safetensors; no code is unpickled. The output is written atomically with the model config embedded, ready for
rgbx eval / predict / export or for fine-tuning.
"""


def add_parser(sub) -> None:
    p = add_command(sub, "convert", "convert a CMX / CMNeXt / DFormer(v2) / SegFormer checkpoint to rgbx",
                    "Load a released checkpoint of another code base (CMX EncoderDecoder, DELIVER's CMNeXt, DFormer, "
                    "SegFormer / MiT in "
                    "the NVlabs, mmsegmentation or Hugging Face layout) into an rgbx model built from the flags, "
                    "strictly, and write it as an rgbx weights file.",
                    EXAMPLES, run)
    p.add_argument("checkpoint", type=Path, help="the checkpoint (.pth / .pt / .pth.tar / .bin / .safetensors)")
    p.add_argument("--out", type=Path, required=True, help="the rgbx weights file to write (.safetensors)")
    p.add_argument("--layout", default="auto",
                   choices=("auto", "cmnext", "cmx", "dformer", "dformerv2", "segformer-hf", "segformer-mmseg",
                            "segformer-nvlabs"),
                   help="the checkpoint's layout (default: detected from its key names)")
    p.add_argument("--config", help="YAML training config or preset name whose model section describes the model")
    p.add_argument("--backbone", help="backbone, e.g. mit_b2, dformer_b (default: read off the checkpoint)")
    p.add_argument("--fusion", help="fusion, e.g. cmx, mean, dformer (default: cmnext / cmx / dformer / dformerv2 "
                   "for those layouts, else the config's or cmx)")
    p.add_argument("--head", help="decode head, e.g. mlp, ham (default: the checkpoint's decode head, else mlp)")
    p.add_argument("--head-channels", type=positive_int,
                   help="head width (default: the checkpoint's decode head, else 256)")
    p.add_argument("--modalities", nargs="+", help="modalities of the model (default: the config's, else rgb depth); "
                   "CMX's RGB path goes to the first, X to the second; CMNeXt's per-modality modules follow their "
                   "order (see --modality-order)")
    p.add_argument("--num-classes", type=positive_int, help="number of classes (default: the checkpoint's decode head)")
    p.add_argument("--classes", nargs="+", metavar="NAME",
                   help="the class names, in the checkpoint's order (kept in the file: eval / predict name their "
                        "outputs with them, and train.init_from matches classifier rows by them)")
    p.add_argument("--classes-of", metavar="DATASET",
                   help="take the class names from a public benchmark rgbx reads (nyudepthv2, sunrgbd, mfnet, "
                        "pst900, deliver, mcubes, muses, kitti360, eventscape, camvid), in its label order")
    p.add_argument("--head-option", action="append", default=[], metavar="KEY=VALUE",
                   help="a head option (repeatable), e.g. bn_eps=1e-3")
    p.add_argument("--fusion-option", action="append", default=[], metavar="KEY=VALUE",
                   help="a fusion option (repeatable)")
    p.add_argument("--branches", nargs="+", metavar="MODALITY",
                   help="SegFormer layouts: the modalities whose encoder branch / stem receive the weights "
                        "(default: all)")
    p.add_argument("--modality-order", nargs="+", metavar="MODALITY",
                   help="cmnext layout: the model's modalities in the checkpoint's order, primary first (the "
                        "reference's MODALS with img = the primary; default: the order of --modalities)")
    p.add_argument("--ignore", nargs="+", default=[], metavar="PREFIX",
                   help="checkpoint key prefixes to leave out on purpose, e.g. decode_head. aux_head.")
    p.add_argument("--input-encoding", choices=("reference", "rgbx"), default="reference",
                   help="reference (default): the model sees what the checkpoint's own code fed it from the same "
                        "files (CMX / DFormer: blue-first RGB, ImageNet statistics on CMX's X images, DFormer's "
                        "depth scale; DELIVER: its sensors / 255, MCubeS's AoLP as [sin, cos, sin]; stored as "
                        "model.input_encoding); rgbx: every sensor as rgbx normalises it "
                        "(for fine-tuning the weights on rgbx's inputs)")


def model_config(args, inferred: dict, layout: str):
    """The :class:`~rgbx.models.ModelConfig`: the flags, over the ``--config`` model section (or, without one,
    over what the checkpoint tells, ``inferred``), over rgbx's defaults; with ``--input-encoding reference`` the
    input encoding of the ``layout``'s code base under the config's own entries. Returns (config, notes)."""
    from rgbx.engine.config import load_config
    from rgbx.errors import ConfigError
    from rgbx.models import ModelConfig
    from rgbx.models.convert import reference_input_encoding

    inferred = dict(inferred)
    checkpoint_head_options = inferred.pop("head_options", {})
    if args.config:
        data = load_config(args.config).model.to_dict()
        if not data.get("num_classes") and "num_classes" in inferred:
            data["num_classes"] = inferred["num_classes"]
    else:
        data = ModelConfig().to_dict() | inferred
    data |= model_flag_overrides(args)
    head_options = dict(data.get("head_options") or {})
    if data["head"] == inferred.get("head"):  # options read off the checkpoint are for its own head only
        head_options = checkpoint_head_options | head_options
    data["head_options"] = head_options | parse_options(args.head_option)
    data["fusion_options"] = dict(data.get("fusion_options") or {}) | parse_options(args.fusion_option)
    data["pretrained"] = ""  # the converted checkpoint provides the weights
    if not data.get("num_classes"):
        raise ConfigError("--num-classes is required: the checkpoint has no decode head to read it from "
                          "(and --config does not set model.num_classes)")
    notes: list[str] = []
    if args.input_encoding == "reference":
        encoding, notes = reference_input_encoding(layout, data["modalities"], data["num_classes"])
        data["input_encoding"] = encoding | dict(data.get("input_encoding") or {})
    else:
        data["input_encoding"] = {}
    return ModelConfig.from_dict(data).validate(), notes


def run(args) -> int:
    from rgbx.engine.checkpoint import read_model_info, save_model
    from rgbx.errors import ConfigError
    from rgbx.models import create_model
    from rgbx.models.convert import convert_checkpoint, detect_layout, infer_model_options, read_checkpoint

    if str(args.checkpoint).endswith(".safetensors") and read_model_info(args.checkpoint, missing_ok=True):
        raise ConfigError(f"{args.checkpoint}: already an rgbx model file; use it as it is (rgbx eval / predict, "
                          f"train.init_from to fine-tune; rgbx info {args.checkpoint} describes it)")
    state, notes = read_checkpoint(args.checkpoint)
    layout = detect_layout(state) if args.layout == "auto" else args.layout
    inferred = infer_model_options(state, layout)
    config, encoding_notes = model_config(args, inferred, layout)
    read_off = read_off_text(inferred)
    print(f"{args.checkpoint}: layout {layout}" + (" (detected)" if args.layout == "auto" else "")
          + (f"; read off the checkpoint: {read_off}" if read_off else ""))
    options = "".join(f", {k} {v}" for k, v in (("head_options", config.head_options),
                                                   ("fusion_options", config.fusion_options)) if v)
    print(f"model: {config.fusion}/{config.backbone} + {config.head} head ({config.head_channels} channels) over "
          f"{'+'.join(config.modalities)}, {config.num_classes} classes{options}")
    if config.input_encoding:
        from rgbx.models.input_encoding import describe_input_encoding

        print("input encoding (what the checkpoint's code fed its network; rgbx's inputs are mapped to it inside the "
              "model):")
        for m, enc in config.input_encoding.items():
            print(f"  {describe_input_encoding(m, enc)}")
    if args.classes and args.classes_of:
        raise ConfigError("--classes and --classes-of both name the classes: give one")
    if args.classes_of:
        from rgbx.data import DATASETS

        args.classes = list(DATASETS.get(args.classes_of).class_names(config.num_classes))
    if args.classes and len(args.classes) != config.num_classes:
        raise ConfigError(f"--classes names {len(args.classes)} classes; the model has {config.num_classes}")
    model = create_model(config)
    report = convert_checkpoint(state, model, layout, branches=args.branches, ignore=args.ignore,
                                name=str(args.checkpoint), modality_order=args.modality_order)
    report.notes[:0] = notes
    report.notes.extend(encoding_notes)
    print(report.summary())
    from rgbx.models.convert import reference_evaluation

    protocol = reference_evaluation(layout, config.modalities, config.num_classes)
    info = {"converted_from": {"file": args.checkpoint.name, "layout": layout}}
    if protocol is not None:  # kept in the file: rgbx info shows it
        info["reference_evaluation"] = {"what": protocol[0], "flags": protocol[1]}
    dataset = {"classes": list(args.classes)} if args.classes else None
    path = save_model(args.out, model.eval(), dataset, **info)
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB)")
    if protocol is not None:
        from rgbx.cli.evaluate import as_published_command

        print(f"to score it as the {layout} code does ({protocol[0]}):\n  {as_published_command(path, protocol[1])}  "
              f"(= {protocol[1]}; [...]: --as-published multi-scale)")
    return 0
