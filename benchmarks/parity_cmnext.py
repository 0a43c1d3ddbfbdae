"""Numerical parity of rgbx's ``cmnext`` fusion (and the ``mlp`` head on top) with the original CMNeXt.

The reference is the authors' repository, https://github.com/jamycheung/DELIVER (Apache-2.0). Get a checkout somewhere
outside rgbx (nothing of it is committed here), e.g.::

    git clone https://github.com/jamycheung/DELIVER /tmp/deliver_ref
    python benchmarks/parity_cmnext.py --reference /tmp/deliver_ref [--sets rgb,depth,event,lidar rgb,depth]
        [--size 480x640]

Only ``semseg/models/{cmnext,base}.py``, ``semseg/models/backbones/cmnext.py``,
``semseg/models/modules/{ffm,mspa}.py``, ``semseg/models/heads/segformer.py`` and ``semseg/models/layers/*`` are
imported, as stand-alone modules: the ``semseg`` packages are replaced by empty namespace modules (so their
``__init__`` files, which import datasets and every other model, do not run), and the few names the files import from
elsewhere are replaced *at run time* by stand-ins: ``fvcore.nn`` (FLOP counting, unused), ``mmcv.cnn.build_norm_layer``
(a plain ``BatchNorm2d``, which is what it builds for ``type='BN'``), ``semseg.utils.utils`` (two unused helpers), and
the heads the model file imports but CMNeXt does not use (``LightHamHead``, ``UPerHead``).

Procedure per modality set: build the reference ``CMNeXt('CMNeXt-B2', 25, ['img', ...])`` (its SegFormer head has 512
channels for B2), give every tensor random values (weights ~ N(0, 1/fan_in); biases and BN running means ~ N(0, 0.1²);
running variances U(0.5, 1.5); norm weights 1 + N(0, 0.1²); the pooling mixer's layer scales U(0.2, 1.0) instead of
their 1e-2 init, so that every block contributes), rename its state dict with
:func:`rgbx.models.fusions.cmnext.cmnext_key_map` and load it into
``create_model(backbone="mit_b2", fusion="cmnext", head="mlp", modalities=..., num_classes=25, head_channels=512)``
with ``load_strict`` (every name and shape must match), and run both in fp32 eval mode on the same random inputs. rgbx
gets each modality with its own channel count (depth / LiDAR 1, event 2); the reference gets them repeated cyclically
to 3 channels (depth, LiDAR: 3 copies, as DELIVER's loader does; event: channels (e₀, e₁, e₀)), which is what rgbx's
folded shared stem computes. Prints the max abs difference of the 4 fused stage maps and of the logits.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import types
import warnings
from pathlib import Path

import torch
from references import randomize  # benchmarks/references.py (this script's folder is on sys.path)
from torch import nn

from rgbx.engine.profile import count_parameters
from rgbx.modalities import get_modality
from rgbx.models import create_model
from rgbx.models.fusions.cmnext import cmnext_key_map
from rgbx.models.weights import load_strict

_PACKAGES = (
    "semseg",
    "semseg/models",
    "semseg/models/backbones",
    "semseg/models/heads",
    "semseg/models/modules",
    "semseg/models/layers",
    "semseg/utils",
)


def _module(name: str, path: Path | None = None, **attrs) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.__dict__.update(attrs)
    if path is not None:
        mod.__path__ = [str(path)]  # a package whose submodules are found on disk, without running __init__.py
    sys.modules[name] = mod
    return mod


def _load_reference(root: Path):
    """The reference's ``semseg.models.cmnext`` module, imported with the stand-ins described in the docstring."""
    _module("fvcore")
    _module("fvcore.nn", flop_count_table=None, FlopCountAnalysis=None)
    _module("mmcv")
    _module("mmcv.cnn", build_norm_layer=lambda cfg, num_features: ("bn", nn.BatchNorm2d(num_features)))
    for package in _PACKAGES:
        _module(package.replace("/", "."), root / package)
    _module("semseg.utils.utils", nchw_to_nlc=None, nlc_to_nchw=None)
    sys.path.insert(0, str(root))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # timm.models.layers is deprecated
        common = importlib.import_module("semseg.models.layers.common")
        initialize = importlib.import_module("semseg.models.layers.initialize")
        sys.modules["semseg.models.layers"].__dict__.update(
            DropPath=common.DropPath, trunc_normal_=initialize.trunc_normal_
        )
        backbone = importlib.import_module("semseg.models.backbones.cmnext")
        sys.modules["semseg.models.backbones"].__dict__.update(CMNeXt=backbone.CMNeXt)
        segformer = importlib.import_module("semseg.models.heads.segformer")
        sys.modules["semseg.models.heads"].__dict__.update(
            SegFormerHead=segformer.SegFormerHead, LightHamHead=None, UPerHead=None
        )
        return importlib.import_module("semseg.models.cmnext")


def _reference_input(x: torch.Tensor) -> torch.Tensor:
    """A C-channel rgbx input repeated cyclically to 3 channels (channel k = channel k mod C)."""
    return x[:, [k % x.shape[1] for k in range(3)]]


def run_set(reference, modalities: list[str], size: tuple[int, int], seed: int) -> dict[str, float]:
    gen = torch.Generator().manual_seed(seed)
    ref = reference.CMNeXt("CMNeXt-B2", 25, ["img", *modalities[1:]])
    randomize(ref, gen, layer_scale=(0.2, 1.0))
    ref.eval()
    model = create_model(backbone="mit_b2", fusion="cmnext", head="mlp", modalities=modalities, num_classes=25,
                         head_channels=512).eval()
    load_strict(model, cmnext_key_map(ref.state_dict(), modalities), "reference CMNeXt")

    h, w = size
    inputs = {m: torch.randn(1, get_modality(m).channels, h, w, generator=gen) for m in modalities}
    captured = {}
    hook = ref.backbone.register_forward_hook(lambda mod, args, out: captured.setdefault("fused", out))
    with torch.no_grad():
        ref_logits = ref([_reference_input(inputs[m]) for m in modalities])
        out = model(inputs)
    hook.remove()
    result = {"tensors": len(ref.state_dict()), "params_ref": sum(p.numel() for p in ref.parameters()),
              "params_rgbx": count_parameters(model)["total"]}
    for i, (a, b) in enumerate(zip(captured["fused"], out.fused, strict=True)):
        result[f"stage{i + 1}"] = (a - b).abs().max().item()
        result[f"stage{i + 1}_scale"] = a.abs().max().item()
    result["logits"] = (ref_logits - out.logits).abs().max().item()
    result["logits_scale"] = ref_logits.abs().max().item()
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reference", type=Path, required=True, help="a checkout of github.com/jamycheung/DELIVER")
    p.add_argument("--sets", nargs="+", default=["rgb,depth,event,lidar", "rgb,depth"],
                   help="comma-separated rgbx modality lists, rgb first (the reference's 'img')")
    p.add_argument("--size", default="480x640")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    if not (args.reference / "semseg" / "models" / "backbones" / "cmnext.py").is_file():
        p.error(f"{args.reference}: no semseg/models/backbones/cmnext.py (expected a DELIVER checkout)")
    torch.set_num_threads(args.threads)
    size = tuple(int(v) for v in args.size.split("x"))
    reference = _load_reference(args.reference)
    print(f"torch {torch.__version__}, fp32, eval, CMNeXt-B2 + SegFormer head (512 ch, 25 classes), "
          f"input 1×C×{size[0]}×{size[1]} per modality, seed {args.seed}")
    print("| modalities | stage 1 | stage 2 | stage 3 | stage 4 | logits | max abs stage 4 | max abs logits "
          "| tensors | params (reference / rgbx) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for spec in args.sets:
        modalities = spec.split(",")
        if modalities[0] != "rgb":
            p.error(f"--sets {spec}: the first modality must be rgb (the reference's 'img')")
        r = run_set(reference, modalities, size, args.seed)
        stages = " | ".join(f"{r[f'stage{i}']:.2e}" for i in range(1, 5))
        name = "RGB-" + "-".join(get_modality(m).name[0].upper() for m in modalities[1:])
        print(f"| {name} | {stages} | {r['logits']:.2e} | {r['stage4_scale']:.3g} | {r['logits_scale']:.3g} | "
              f"{r['tensors']} | {r['params_ref']:,} / {r['params_rgbx']:,} |", flush=True)


if __name__ == "__main__":
    main()
