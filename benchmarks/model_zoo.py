"""Parameters and FLOPs of every registered model family at 480×640, beside the published figures.

    python benchmarks/model_zoo.py > benchmarks/models.md        # ≈ 5 min on 2 CPU cores

Parameters: unique parameters of ``create_model(...)`` (40 classes; CMNeXt on DeLiVER: 25 classes). FLOPs:
:func:`rgbx.engine.profile.count_flops` at batch 1 with attention counted (forced explicit while counting);
GMACs = GFLOPs / 2, the unit of the papers' "GFLOPs"; "GMACs w/o bmm" leaves out products of two activations
(attention, cross-attention contexts, NMF), which layer-hook counters such as thop do not see.
"""

from __future__ import annotations

import sys
import time

import torch

from rgbx.engine.profile import count_flops
from rgbx.modalities import get_modality
from rgbx.models import create_model

RGBD = ["rgb", "depth"]
RGBDEL = ["rgb", "depth", "event", "lidar"]

# (label, create_model kwargs, published params in M, published GMACs, source)
MODELS = [
    *[(f"CMX MiT-{v.upper()}", dict(backbone=f"mit_{v}", fusion="cmx", head="mlp", head_channels=512,
                                  modalities=RGBD), pub, macs, src)
      for v, pub, macs, src in (("b0", None, None, ""), ("b1", None, None, ""),
                                ("b2", 66.6, 67.6, "CMX (T-ITS 2023), NYU"), ("b3", None, None, ""),
                                ("b4", 139.9, 134.3, "CMX, NYU"), ("b5", 181.1, 167.8, "CMX, NYU"))],
    *[(f"CMNeXt MiT-{v.upper()} RGB-D-E-L", dict(backbone=f"mit_{v}", fusion="cmnext", head="mlp",
                                                head_channels=256 if v in ("b0", "b1") else 512,
                                                modalities=RGBDEL, num_classes=25), pub, None, src)
      for v, pub, src in (("b0", None, ""), ("b2", 58.73, "CMNeXt (CVPR 2023), DeLiVER"), ("b4", None, ""))],
    ("CMNeXt MiT-B2 RGB-D", dict(backbone="mit_b2", fusion="cmnext", head="mlp", head_channels=512,
                                 modalities=RGBD, num_classes=25), None, None, ""),
    *[(f"DFormer-{v.upper()} (Ham head)", dict(backbone=f"dformer_{v}", fusion="dformer", head="ham",
                                               head_channels=512, modalities=RGBD), pub, macs,
       "DFormer (ICLR 2024), NYU")
      for v, pub, macs in (("t", 6.0, 11.8), ("s", 18.7, 25.6), ("b", 29.5, 41.9), ("l", 39.0, 65.7))],
    *[(f"OmniSegmentor-{v.upper()} (Ham head)", dict(backbone=f"omni_{v}", fusion="omni", head="ham",
                                                     head_channels=512, modalities=RGBD), None, None, "")
      for v in ("t", "s", "b", "l")],
    ("OmniSegmentor-T RGB-D-E-L", dict(backbone="omni_t", fusion="omni", head="ham", head_channels=512,
                                       modalities=RGBDEL), None, None, ""),
    *[(f"mean (shared MiT-{v.upper()}) + MLP", dict(backbone=f"mit_{v}", fusion="mean", head="mlp",
                                                    head_channels=256 if v in ("b0", "b1") else 768,
                                                    modalities=RGBD), None, None, "")
      for v in ("b0", "b2")],
    ("KTB (frozen MiT-B2 + MAPA/DSCF) + MLP", dict(backbone="mit_b2", fusion="ktb", head="mlp", head_channels=512,
                                                   modalities=RGBD), None, None, ""),
    ("CMX EfficientNet-Lite0 + MLP", dict(backbone="efficientnet_lite0", fusion="cmx", head="mlp",
                                          head_channels=128, modalities=RGBD), None, None, ""),
]


def main() -> None:
    torch.set_num_threads(2)
    h, w = 480, 640
    print("# Model zoo: parameters and FLOPs at 480×640\n")
    print(__doc__.split("\n\n", 1)[1].strip().replace("\n", " ") + "\n")
    print("| model | modalities | classes | params (M) | published params (M) | trainable (M) | GFLOPs | GMACs | "
          "GMACs w/o bmm | published GMACs | source |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    t0 = time.perf_counter()
    for label, kwargs, pub, pub_macs, src in MODELS:
        kwargs = {"num_classes": 40, **kwargs}
        torch.manual_seed(0)
        model = create_model(**kwargs).eval()
        params = sum(p.numel() for p in model.parameters())
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        inputs = {m: torch.randn(1, get_modality(m).channels, h, w) for m in kwargs["modalities"]}
        flops = count_flops(model, inputs)
        bmm = flops["by_op"].get("bmm", 0.0) / 2
        match = ""
        if pub is not None:
            match = " ✓" if abs(params / 1e6 - pub) <= 0.05 + 1e-9 else " ✗"
        print(f"| {label} | {'-'.join(m.upper()[0] for m in kwargs['modalities'])} | {kwargs['num_classes']} | "
              f"{params / 1e6:.2f} | {'' if pub is None else f'{pub}{match}'} | {trainable / 1e6:.2f} | "
              f"{flops['gflops']:.1f} | {flops['gmacs']:.1f} | {flops['gmacs'] - bmm:.1f} | "
              f"{'' if pub_macs is None else pub_macs} | {src} |", flush=True)
        del model
    print(f"\n{len(MODELS)} models, {time.perf_counter() - t0:.0f} s on {torch.get_num_threads()} CPU threads, torch "
          f"{torch.__version__}. ✓ = within 0.05 M of the published count.", file=sys.stdout)


if __name__ == "__main__":
    main()
