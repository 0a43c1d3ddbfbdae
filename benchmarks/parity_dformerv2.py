"""Numerical parity of rgbx's DFormerv2 encoder (and the light Ham head on top) with the original implementation.

The reference is the authors' repository, https://github.com/VCIP-RGBD/DFormer (MIT licence; DFormerv2 lives in
``models/encoders/DFormerv2.py``). Get a checkout somewhere outside rgbx (nothing of it is committed here), e.g.::

    git clone https://github.com/VCIP-RGBD/DFormer /tmp/dfv2
    python benchmarks/parity_dformerv2.py --ref /tmp/dfv2 [--variants s b l] [--size 96x128]

Only ``models/encoders/DFormerv2.py`` and ``models/decoders/{ham_head,decode_head}.py`` are imported; the mmcv /
mmengine / mmseg names they import are replaced by the stand-ins of ``parity_dformer.py`` (plus mmengine's
``load_checkpoint``, unused), and the encoder's hard-coded ``SyncBatchNorm`` is built as ``BatchNorm2d`` (the same
tensors; SyncBatchNorm needs a process group).

Procedure per variant: build the reference encoder (``DFormerv2_S/B/L``) and its ``LightHamHead`` as the original
builder does (``in_channels = dims[1:]``, ``in_index = [1, 2, 3]``, ``channels`` = the NYU config's
``decoder_embed_dim``, ``ham_channels`` left at its default 512), give every tensor random values (weights,
biases, BN statistics, the priors' mixing weights; layer scales in [0.05, 0.3]; conv positional encodings scaled
down, see :data:`POS_ENCODE_SCALE`; the priors' ``angle`` / ``decay`` buffers keep their computed values), load the state dicts strictly by name into
``create_model(backbone="dformerv2_<v>", fusion="dformerv2", head="ham", ...)``, and run both in fp32 eval mode on
the same random RGB and depth (the reference gets the depth repeated to 3 channels, as its loader makes it). Prints
the max abs difference of the 4 stage maps and of the head's logits, the argmax agreement of the logits and the
parameter counts of both models.
"""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

import torch
from parity_dformer import _load_reference as load_dformer_reference
from parity_dformer import _quiet, compare_with_reference  # benchmarks/ (this script's folder is on sys.path)
from references import randomize
from torch import nn

from rgbx.models import create_model

REF_FACTORIES = {"s": "DFormerv2_S", "b": "DFormerv2_B", "l": "DFormerv2_L"}
# decoder_embed_dim of local_configs/NYUDepthv2/DFormerv2_{S,B,L}.py
HEAD_CHANNELS = {"s": 512, "b": 512, "l": 1024}
REF_HAM_CHANNELS = 512  # LightHamHead's default; the builder does not set it


@contextlib.contextmanager
def _plain_batchnorm():
    """Build the reference's ``nn.SyncBatchNorm`` layers as ``nn.BatchNorm2d`` (same tensors, runs on the CPU)."""
    saved = nn.SyncBatchNorm
    nn.SyncBatchNorm = nn.BatchNorm2d
    try:
        yield
    finally:
        nn.SyncBatchNorm = saved


def _load_reference(root: Path):
    return load_dformer_reference(root, "DFormerv2")


# Random N(0, 1/9) kernels make every block's conv positional encoding (x ← x + DWConv3×3(x)) grow the residual
# stream by about 1.25×, so that after the 18-25 blocks of stage 3 it is ~500× the attention's output and a wrong
# attention in a late block would change the stage maps by only ~1e-6 relative (seen: a stage-4 prior without its
# depth term moved DFormerv2-S's stage-4 map by 5e-6). Scaled by 0.2, the stream stays within ~6× the attention
# output in every block, so every block's attention and prior show in the outputs.
POS_ENCODE_SCALE = 0.2


@torch.no_grad()
def _randomize_v2(module: nn.Module, gen: torch.Generator) -> None:
    """:func:`references.randomize`, with DFormerv2's layer scales (``gamma_*``) drawn in [0.05, 0.3], the conv
    positional encodings' kernels scaled by :data:`POS_ENCODE_SCALE` and the priors' computed ``angle`` / ``decay``
    buffers kept."""
    state = module.state_dict()
    kept = {k: v.clone() for k, v in state.items() if k.endswith((".angle", ".decay"))}
    randomize(module, gen)
    for k, v in state.items():
        if k in kept:
            v.copy_(kept[k])
        elif k.rsplit(".", 1)[-1].startswith("gamma_"):
            v.copy_(torch.rand(v.shape, generator=gen) * 0.25 + 0.05)
        elif ".cnn_pos_encode." in k and k.endswith(".weight"):
            v.mul_(POS_ENCODE_SCALE)


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def run_variant(variant: str, encoders, ham, size: tuple[int, int], seed: int,
                attn_impl: str = "sdpa") -> dict[str, float]:
    gen = torch.Generator().manual_seed(seed)
    channels = HEAD_CHANNELS[variant]
    with _quiet(), _plain_batchnorm():
        ref_enc = getattr(encoders, REF_FACTORIES[variant])(drop_path_rate=0.1, norm_cfg=dict(type="BN"))
    _randomize_v2(ref_enc, gen)
    dims = [int(layer.embed_dim) for layer in ref_enc.layers]
    with _quiet():
        ref_head = ham.LightHamHead(in_channels=dims[1:], num_classes=40, in_index=[1, 2, 3],
                                    norm_cfg=dict(type="BN"), channels=channels)
    randomize(ref_head, gen)
    ref_enc.eval()
    ref_head.eval()

    model = create_model(backbone=f"dformerv2_{variant}", fusion="dformerv2", head="ham",
                         modalities=["rgb", "depth"], num_classes=40, head_channels=channels,
                         head_options={"ham_channels": REF_HAM_CHANNELS}, attn_impl=attn_impl).eval()
    result = compare_with_reference(ref_enc, ref_enc, ref_head, model, size, gen, seed)
    result["ref_params"] = _count(ref_enc) + _count(ref_head)
    result["params"] = _count(model)
    result["ref_encoder_params"] = _count(ref_enc)
    result["encoder_params"] = _count(model.encoder)
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ref", type=Path, required=True,
                   help="a checkout of github.com/VCIP-RGBD/DFormer (needs models/encoders/DFormerv2.py and "
                        "models/decoders/ham_head.py); e.g. git clone https://github.com/VCIP-RGBD/DFormer /tmp/dfv2")
    p.add_argument("--variants", nargs="+", default=list(REF_FACTORIES), choices=list(REF_FACTORIES))
    p.add_argument("--size", default="96x128", help="input H×W (default 96x128)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--attn-impl", choices=("sdpa", "eager"), default="sdpa",
                   help="rgbx's attention: fused scaled_dot_product_attention or the explicit softmax (the reference's)")
    args = p.parse_args()
    if not (args.ref / "models" / "encoders" / "DFormerv2.py").is_file():
        p.error(f"{args.ref}: no models/encoders/DFormerv2.py (expected a DFormer checkout)")
    torch.set_num_threads(args.threads)
    size = tuple(int(v) for v in args.size.split("x"))
    encoders, ham = _load_reference(args.ref)
    print(f"torch {torch.__version__}, fp32, eval, input 1×3×{size[0]}×{size[1]} + depth, seed {args.seed}, "
          f"rgbx attention {args.attn_impl}")
    print("| variant | stage 1 | stage 2 | stage 3 | stage 4 | logits (Ham head) | argmax agree | max abs stage 4 | "
          "max abs logits | params ref / rgbx (encoder ref / rgbx) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for v in args.variants:
        r = run_variant(v, encoders, ham, size, args.seed, args.attn_impl)
        stages = " | ".join(f"{r[f'stage{i}']:.2e}" for i in range(1, 5))
        print(f"| DFormerv2-{v.upper()} | {stages} | {r['logits']:.2e} | {100 * r['argmax']:.2f} % | "
              f"{r['stage4_scale']:.3g} | {r['logits_scale']:.3g} | {r['ref_params']:,} / {r['params']:,} "
              f"({r['ref_encoder_params']:,} / {r['encoder_params']:,}) |", flush=True)


if __name__ == "__main__":
    main()
