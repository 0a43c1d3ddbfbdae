"""Numerical parity of rgbx's CMX (``cmx`` fusion + ``mlp`` head) with the original implementation.

The reference is the authors' repository, https://github.com/huaaaliu/RGBX_Semantic_Segmentation (MIT licence).
Get a checkout somewhere outside rgbx (nothing of it is committed here), e.g.::

    git clone https://github.com/huaaaliu/RGBX_Semantic_Segmentation /tmp/cmx_ref
    python benchmarks/parity_cmx.py --reference /tmp/cmx_ref [--variants b0 b2 b4] [--size 480x640]

The reference is imported by ``benchmarks/references.py`` (``models/net_utils.py``,
``models/encoders/dual_segformer.py``, ``models/decoders/MLPDecoder.py`` under a private package name, with a
stand-in for ``engine.logger.get_logger``) and assembled as ``models/builder.py``'s ``EncoderDecoder`` with the MLP
decoder: backbone → decode head → bilinear upsampling to the input size.

Procedure per variant: build the reference (``decoder_embed_dim = 512``, 40 classes, as the NYU Depth V2 config),
give every tensor random values (weights ~ N(0, 1/fan_in), biases and BN running means ~ N(0, 0.1²), running
variances U(0.5, 1.5), norm weights 1 + N(0, 0.1²)), convert its state dict with the ``cmx`` layout of
``rgbx.models.convert`` into ``create_model(backbone="mit_bX", fusion="cmx", head="mlp", modalities=["rgb",
"depth"], num_classes=40, head_channels=512)`` (strict: every tensor mapped), and run both in fp32 eval mode on
the same random RGB and 1-channel depth; the reference gets the depth repeated to 3 channels, as its data loader
does for a single-channel X. Prints the max abs difference of the 4 fused stage maps (FFM outputs) and of the
logits, with the largest magnitudes for scale, and the parameter counts.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from references import build_cmx_reference, cmx_to_rgbx, randomize  # noqa: E402

from rgbx.models import create_model  # noqa: E402

VARIANTS = ("b0", "b1", "b2", "b3", "b4", "b5")


def run_variant(variant: str, reference: Path, size: tuple[int, int], seed: int) -> dict[str, float]:
    gen = torch.Generator().manual_seed(seed)
    ref = build_cmx_reference(reference, backbone=f"mit_{variant}", num_classes=40, embed_dim=512)
    randomize(ref, gen)
    ref.eval()
    model = cmx_to_rgbx(ref, modalities=("rgb", "depth"))
    h, w = size
    rgb = torch.randn(1, 3, h, w, generator=gen)
    depth = torch.randn(1, 1, h, w, generator=gen)
    x3 = depth.repeat(1, 3, 1, 1)
    result: dict[str, float] = {}
    with torch.no_grad():
        ref_fused = ref.features(rgb, x3)
        ref_logits = ref(rgb, x3)
        out = model({"rgb": rgb, "depth": depth})
    for i, (a, b) in enumerate(zip(ref_fused, out.fused, strict=True)):
        result[f"stage{i + 1}"] = (a - b).abs().max().item()
        result[f"stage{i + 1}_scale"] = a.abs().max().item()
    result["logits"] = (ref_logits - out.logits).abs().max().item()
    result["logits_scale"] = ref_logits.abs().max().item()
    result["argmax_agree"] = (ref_logits.argmax(1) == out.logits.argmax(1)).float().mean().item()
    result["ref_params"] = sum(p.numel() for p in ref.parameters())
    result["rgbx_params"] = sum(p.numel() for p in model.parameters())
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reference", type=Path, required=True,
                   help="a checkout of github.com/huaaaliu/RGBX_Semantic_Segmentation")
    p.add_argument("--variants", nargs="+", default=["b0", "b2", "b4"], choices=VARIANTS)
    p.add_argument("--size", default="480x640")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    if not (args.reference / "models" / "encoders" / "dual_segformer.py").is_file():
        p.error(f"{args.reference}: no models/encoders/dual_segformer.py (expected a CMX checkout)")
    torch.set_num_threads(args.threads)
    size = tuple(int(v) for v in args.size.split("x"))
    print(f"torch {torch.__version__}, fp32, eval, input 1×3×{size[0]}×{size[1]} + depth (reference: repeated to 3 "
          f"channels), seed {args.seed}, {args.threads} threads")
    print("| variant | stage 1 | stage 2 | stage 3 | stage 4 | logits | max abs stage 4 | max abs logits | "
          "argmax agreement | reference params | rgbx params |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for v in args.variants:
        r = run_variant(v, args.reference, size, args.seed)
        stages = " | ".join(f"{r[f'stage{i}']:.2e}" for i in range(1, 5))
        print(f"| CMX-{v.upper()} | {stages} | {r['logits']:.2e} | {r['stage4_scale']:.3g} | "
              f"{r['logits_scale']:.3g} | {r['argmax_agree']:.4%} | {r['ref_params']:,} | {r['rgbx_params']:,} |",
              flush=True)
    print()
    print("| model (RGB-D, 40 classes, head 512) | rgbx parameters |")
    print("|---|---|")
    for v in ("b2", "b4"):
        model = create_model(backbone=f"mit_{v}", fusion="cmx", head="mlp", modalities=["rgb", "depth"],
                             num_classes=40, head_channels=512)
        print(f"| CMX-{v.upper()} | {sum(q.numel() for q in model.parameters()):,} |")


if __name__ == "__main__":
    main()
