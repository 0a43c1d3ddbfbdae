"""``rgbx embed-classes OUT``: language embeddings of class names with a text encoder you have installed (for MS3).

Writes a safetensors file mapping each class name to a 1-D float vector (the format ``method.options.class_embeddings``
and ``rgbx eval --zero-shot`` read). Class names come from ``--classes``, from datasets (``--data``) or from a training
config (``--config``: every source of a ``multi`` dataset, bare names). The encoder is imported only here: rgbx
never downloads anything itself; the encoder package loads its weights as it usually does (its cache or a local
path).
"""

from __future__ import annotations

from rgbx.cli.common import add_command, add_dataset_arguments, parse_options

EXAMPLES = """  rgbx embed-classes names.safetensors --classes person car road --encoder open_clip:ViT-B-32:openai
  rgbx embed-classes names.safetensors --config synth_ms3 --encoder hf:openai/clip-vit-base-patch32
  rgbx embed-classes other.safetensors --data data/other --template "a photo of a {}."
  rgbx embed-classes names.safetensors --config synth_ms3 --encoder random:512   # offline, no semantics
"""


def add_parser(sub) -> None:
    p = add_command(sub, "embed-classes", "write language embeddings of class names (MS3)",
                    "Encode class names with a CLIP text encoder you have installed (open_clip or transformers, "
                    "imported only by this command) and write them as a .safetensors file: class name -> 1-D "
                    "vector (L2-normalised).", EXAMPLES, run)
    p.add_argument("out", help="the .safetensors file to write; an existing file written by rgbx embed-classes is "
                               "replaced, any other existing file is refused")
    p.add_argument("--classes", nargs="+", default=[], help="class names")
    p.add_argument("--data", nargs="+", default=[], help="dataset folders whose classes to add")
    add_dataset_arguments(p)
    p.add_argument("--split", default="train", help="split used to open --data / --config datasets")
    p.add_argument("--config", help="a training config or preset: the classes of its data (bare names for multi)")
    p.add_argument("--encoder", default="open_clip:ViT-B-32:openai",
                   help="open_clip:ARCH:PRETRAINED (pip install open_clip_torch), hf:MODEL_ID_OR_PATH "
                        "(pip install transformers), or random:DIM (offline, no semantics: one fixed random vector "
                        "per name); default open_clip:ViT-B-32:openai")
    p.add_argument("--template", default="a photo of a {}.", help="prompt with {} for the class name")


def class_names(args) -> list[str]:
    """The names to encode: --classes, then each --data dataset's, then the --config data's (bare names)."""
    from rgbx.data import build_dataset

    names = list(args.classes)
    for root in args.data:
        ds = build_dataset(args.dataset, root, args.split, check="none", **parse_options(args.option))
        names += list(ds.description.classes)
    if args.config:
        from rgbx.engine.config import load_config
        from rgbx.methods.ms3 import bare_name

        cfg = load_config(args.config)
        data = cfg.data
        ds = build_dataset(data.dataset, data.root, args.split, check="none", **data.options)
        sources = getattr(ds, "class_sources", None) or [None] * ds.description.num_classes
        names += [bare_name(c, s) for c, s in zip(ds.description.classes, sources)]
    return list(dict.fromkeys(names))


def encode(names: list[str], encoder: str, template: str):
    """(len(names), C) L2-normalised text embeddings of ``template.format(name)``."""
    import torch

    from rgbx.errors import ConfigError

    prompts = [template.format(n.replace("_", " ")) for n in names]
    kind, _, spec = encoder.partition(":")
    if kind == "open_clip":
        try:
            import open_clip
        except ImportError:
            raise ConfigError("--encoder open_clip:... needs open_clip: pip install open_clip_torch") from None
        arch, _, pretrained = spec.partition(":")
        model, _, _ = open_clip.create_model_and_transforms(arch, pretrained=pretrained or None)
        tokenizer = open_clip.get_tokenizer(arch)
        with torch.no_grad():
            z = model.encode_text(tokenizer(prompts))
    elif kind == "hf":
        try:
            from transformers import CLIPModel, CLIPTokenizer
        except ImportError:
            raise ConfigError("--encoder hf:... needs transformers: pip install transformers") from None
        model, tokenizer = CLIPModel.from_pretrained(spec), CLIPTokenizer.from_pretrained(spec)
        with torch.no_grad():
            z = model.get_text_features(**tokenizer(prompts, padding=True, return_tensors="pt"))
    elif kind == "random":
        z = torch.stack([random_embedding(n, _dimension(spec)) for n in names])
    else:
        raise ConfigError(f"--encoder {encoder!r}: expected open_clip:ARCH:PRETRAINED, hf:MODEL_ID_OR_PATH or "
                          f"random:DIM")
    return torch.nn.functional.normalize(z.float(), dim=-1)


def _dimension(spec: str) -> int:
    from rgbx.errors import ConfigError

    try:
        dim = int(spec or 512)
    except ValueError:
        dim = 0
    if dim < 1:
        raise ConfigError(f"--encoder random:{spec}: expected a positive dimension, e.g. random:512")
    return dim


def random_embedding(name: str, dim: int):
    """A fixed pseudo-random unit vector per class name (seeded by the name's SHA-256): the same name always gets
    the same vector, different names nearly orthogonal ones. No semantics at all: what MS3 can still use is that
    equal names in different datasets share their embedding."""
    import hashlib

    import torch

    seed = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little") % (2**63)
    v = torch.randn(dim, generator=torch.Generator().manual_seed(seed))
    return v / v.norm()


def _written_by_embed_classes(path) -> bool:
    """Whether ``path`` is a safetensors file with the metadata :func:`run` writes (``encoder``, ``template``)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception:  # not a safetensors file at all: safetensors raises several kinds
        return False
    return {"encoder", "template"} <= set(meta)


def check_out(out) -> None:
    """Refuse OUT before any work: a folder, an unwritable place, or an existing file that is not a class-embedding
    file written by rgbx embed-classes (that one is replaced)."""
    from pathlib import Path

    from rgbx.cli.common import check_output
    from rgbx.errors import ConfigError

    check_output("OUT", out)
    out = Path(out)
    if out.exists() and not _written_by_embed_classes(out):
        raise ConfigError(f"OUT {out}: exists and is not a class-embedding file written by rgbx embed-classes; it "
                          f"is not overwritten (give a new .safetensors name)")


def run(args) -> int:
    from rgbx.errors import ConfigError
    from rgbx.methods.ms3 import save_class_embeddings

    check_out(args.out)
    if "{}" not in args.template:
        raise ConfigError(f"--template {args.template!r}: put {{}} where the class name goes")
    names = class_names(args)
    if not names:
        raise ConfigError("no class names: give --classes, --data or --config")
    z = encode(names, args.encoder, args.template)
    path = save_class_embeddings(args.out, dict(zip(names, z)), encoder=args.encoder, template=args.template)
    print(f"wrote {len(names)} class embeddings of dimension {z.shape[1]} to {path}")
    return 0
