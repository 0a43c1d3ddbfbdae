"""Numerical parity of rgbx's DFormer encoder (and the light Ham head on top) with the original implementation.

The reference is the authors' repository, https://github.com/VCIP-RGBD/DFormer (MIT licence). Get a checkout
somewhere outside rgbx (nothing of it is committed here), e.g.::

    git clone https://github.com/VCIP-RGBD/DFormer /tmp/dformer_ref
    python benchmarks/parity_dformer.py --reference /tmp/dformer_ref [--variants t s b l] [--size 480x640]

Only ``models/encoders/DFormer.py`` and ``models/decoders/{ham_head,decode_head}.py`` are imported. They need
mmcv / mmengine / mmseg; this script replaces the few names they import with small stand-ins *at run time*
(BatchNorm for ``build_norm_layer``, timm's DropPath for ``build_dropout``, ``nn.Module`` for ``BaseModule``, a
conv → BN → ReLU ``ConvModule`` with mmcv's names and bias rule, bilinear ``resize``) and makes the reference NMF
draw its bases on the CPU instead of calling ``.cuda()``.

Procedure per variant: build the reference encoder, give every tensor random values (weights, biases, BN running
statistics; layer scales drawn in [0.05, 0.3] instead of their 1e-6 initialisation so that every block contributes),
load its state dict into rgbx's encoder strictly by name, and run both in fp32 eval mode on the same random RGB and
depth (the reference gets the depth repeated to 3 channels and uses channel 0, as its data loader does). The same is
done for the light Ham head (reference ``LightHamHead(in_channels=dims[1:], channels=512, in_index=[1, 2, 3])`` vs
rgbx ``ham`` with ``eval_init="random"``; both draw their NMF bases from the global generator, seeded identically
before each call). Prints the max abs difference of the 4 stage outputs and of the logits.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import types
from pathlib import Path

import torch
import torch.nn.functional as F
from references import randomize  # benchmarks/references.py (this script's folder is on sys.path)
from torch import nn

from rgbx.models import create_model
from rgbx.models.weights import load_strict

REF_FACTORIES = {"t": "DFormer_Tiny", "s": "DFormer_Small", "b": "DFormer_Base", "l": "DFormer_Large"}


def _module(name: str, **attrs) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.__dict__.update(attrs)
    sys.modules[name] = mod
    return mod


class _ConvModule(nn.Module):
    """mmcv ``ConvModule`` stand-in: conv (bias only without norm) → BN (``bn``) → ReLU (``activate``)."""

    def __init__(self, in_channels, out_channels, kernel_size, conv_cfg=None, norm_cfg=None,
                 act_cfg=dict(type="ReLU"), **_):  # noqa: B006 — mirrors mmcv's signature
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2,
                              bias=norm_cfg is None)
        self.bn = nn.BatchNorm2d(out_channels) if norm_cfg is not None else None
        self.activate = nn.ReLU(inplace=True) if act_cfg is not None else None

    def forward(self, x):
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        return self.activate(x) if self.activate is not None else x


class _BaseModule(nn.Module):
    """mmengine ``BaseModule`` stand-in (takes and ignores ``init_cfg``)."""

    def __init__(self, init_cfg=None):
        super().__init__()


def _install_stubs() -> None:
    from timm.layers import DropPath

    def build_norm_layer(cfg, num_features):
        return "bn", nn.BatchNorm2d(num_features)

    def build_dropout(cfg):
        return DropPath(cfg.get("drop_prob", 0.0))

    def resize(input, size=None, scale_factor=None, mode="nearest", align_corners=None, **_):  # noqa: A002
        return F.interpolate(input, size, scale_factor, mode, align_corners)

    _module("mmcv")
    _module("mmcv.cnn", build_norm_layer=build_norm_layer, ConvModule=_ConvModule)
    _module("mmcv.cnn.bricks")
    _module("mmcv.cnn.bricks.transformer", FFN=None, build_dropout=build_dropout)
    _module("mmengine")
    _module("mmengine.model")
    _module("mmengine.model.base_module", BaseModule=_BaseModule)
    _module("mmengine.runner")
    _module("mmengine.runner.checkpoint", load_state_dict=None, load_checkpoint=None)  # imported, never called
    _module("mmseg")
    _module("mmseg.ops", resize=resize)
    _module("models.builder", build_loss=None)
    _module("models.losses", accuracy=None)


def _load_reference(root: Path, encoder: str = "DFormer"):
    """The checkout's ``models/encoders/<encoder>.py`` and ``models/decoders/ham_head.py``, imported with the
    stand-ins (the NMF's bases drawn on the CPU)."""
    _install_stubs()
    sys.path.insert(0, str(root))
    encoders = importlib.import_module(f"models.encoders.{encoder}")
    ham = importlib.import_module("models.decoders.ham_head")

    def cpu_bases(self, B, S, D, R, cuda=False):  # the original calls .cuda() unconditionally
        return F.normalize(torch.rand((B * S, D, R)), dim=1)

    ham.NMF2D._build_bases = cpu_bases
    return encoders, ham


def run_variant(variant: str, encoders, ham, size: tuple[int, int], seed: int) -> dict[str, float]:
    gen = torch.Generator().manual_seed(seed)
    with _quiet():
        ref_enc = getattr(encoders, REF_FACTORIES[variant])(drop_path_rate=0.1, norm_cfg=dict(type="BN"))
    randomize(ref_enc, gen)
    dims = [int(ref_enc.stages[i][0].layer_scale_1.numel()) for i in range(4)]
    with _quiet():
        ref_head = ham.LightHamHead(in_channels=dims[1:], num_classes=40, in_index=[1, 2, 3],
                                    norm_cfg=dict(type="BN"), channels=512)
    randomize(ref_head, gen)
    ref_enc.eval()
    ref_head.eval()

    model = create_model(backbone=f"dformer_{variant}", fusion="dformer", head="ham", modalities=["rgb", "depth"],
                         num_classes=40, head_channels=512).eval()
    return compare_with_reference(lambda rgb, x: ref_enc(rgb, x)[0], ref_enc, ref_head, model, size, gen, seed)


def compare_with_reference(ref_encode, ref_enc, ref_head, model, size: tuple[int, int], gen: torch.Generator,
                           seed: int) -> dict[str, float]:
    """Load the reference's encoder and LightHam head into ``model`` (strictly), run both on one random RGB-D input
    (the reference's depth repeated to 3 channels; ``ref_encode(rgb, x)``: its four stage maps) with the same NMF
    bases, and return the largest differences of each stage map and of the logits, with their scales and the
    argmax agreement."""
    load_strict(model.encoder.encoder, ref_enc.state_dict(), "reference encoder")
    load_strict(model.head, ref_head.state_dict(), "reference head")
    model.head.hamburger.ham.eval_init = "random"

    h, w = size
    rgb = torch.randn(1, 3, h, w, generator=gen)
    depth = torch.randn(1, 1, h, w, generator=gen)
    with torch.no_grad():
        ref_outs = list(ref_encode(rgb, depth.repeat(1, 3, 1, 1)))
        torch.manual_seed(seed)  # the NMF bases are drawn at random in both heads
        ref_logits = ref_head(ref_outs)
        out = model.encoder({"rgb": rgb, "depth": depth})
        torch.manual_seed(seed)
        logits = model.head(out.fused)
    result = {}
    for i, (a, b) in enumerate(zip(ref_outs, out.fused, strict=True)):
        result[f"stage{i + 1}"] = (a - b).abs().max().item()
        result[f"stage{i + 1}_scale"] = a.abs().max().item()
    result["logits"] = (ref_logits - logits).abs().max().item()
    result["logits_scale"] = ref_logits.abs().max().item()
    result["argmax"] = (ref_logits.argmax(1) == logits.argmax(1)).float().mean().item()
    return result


class _quiet:
    """The reference prints its drop-path rate and NMF settings; keep the report readable."""

    def __enter__(self):
        import io

        self._stdout, sys.stdout = sys.stdout, io.StringIO()

    def __exit__(self, *exc):
        sys.stdout = self._stdout


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reference", type=Path, required=True, help="a checkout of github.com/VCIP-RGBD/DFormer")
    p.add_argument("--variants", nargs="+", default=list(REF_FACTORIES), choices=list(REF_FACTORIES))
    p.add_argument("--size", default="480x640")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    if not (args.reference / "models" / "encoders" / "DFormer.py").is_file():
        p.error(f"{args.reference}: no models/encoders/DFormer.py (expected a DFormer checkout)")
    torch.set_num_threads(args.threads)
    size = tuple(int(v) for v in args.size.split("x"))
    encoders, ham = _load_reference(args.reference)
    print(f"torch {torch.__version__}, fp32, eval, input 1×3×{size[0]}×{size[1]} + depth, seed {args.seed}")
    print("| variant | stage 1 | stage 2 | stage 3 | stage 4 | logits (Ham head) | max abs stage 4 | max abs logits |")
    print("|---|---|---|---|---|---|---|---|")
    for v in args.variants:
        r = run_variant(v, encoders, ham, size, args.seed)
        stages = " | ".join(f"{r[f'stage{i}']:.2e}" for i in range(1, 5))
        print(f"| DFormer-{v.upper()} | {stages} | {r['logits']:.2e} | {r['stage4_scale']:.3g} | "
              f"{r['logits_scale']:.3g} |", flush=True)


if __name__ == "__main__":
    main()
