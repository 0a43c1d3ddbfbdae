"""Does the fast path compute what the exact path computes? Two checks:

1. Predictions of a trained model: argmax agreement (share of labelled pixels where the fast path predicts the same
   class as the exact fp32 path) and mIoU of both, over a whole split.
2. Training: the loss curves of two short runs from the same seed, exact vs fast (the precision / channels-last /
   fused-optimizer switches of the fast set for this device), logged at every ``--log-every`` iterations.

    rgbx demo                                          # trains runs/demo/run/model.safetensors on runs/demo/data
    python benchmarks/fastpath_agreement.py --weights runs/demo/run/model.safetensors --data runs/demo/data \\
        --config demo --iters 100
    python benchmarks/fastpath_agreement.py --weights runs/camvid_lite0/model.safetensors \\
        --data ../shared/data/camvid --dataset camvid --split val --iters 0
"""

from __future__ import annotations

import argparse
import csv
import tempfile
from pathlib import Path

import torch

from rgbx.data import build_dataset, collate
from rgbx.data.transforms import EvalTransform
from rgbx.engine.checkpoint import load_model
from rgbx.engine.config import load_config
from rgbx.engine.fastpath import SpeedOptions, autocast, prepare_inference, to_memory_format
from rgbx.engine.metrics import ConfusionMatrix
from rgbx.engine.report import Reporter
from rgbx.engine.trainer import Trainer


def predictions(weights: Path, data: Path, split: str, options: SpeedOptions, device: torch.device,
                dataset_name: str = "folder"):
    model, info = load_model(weights, device)
    prepare_inference(model, options)  # what rgbx eval / predict --fast do: weights cast once, projections fused
    dataset = build_dataset(dataset_name, data, split, modalities=list(model.modalities), transform=EvalTransform())
    loader = torch.utils.data.DataLoader(dataset, batch_size=8, collate_fn=collate)
    preds, labels = [], []
    with torch.inference_mode():
        for batch in loader:
            batch = batch.to(device)
            with autocast(device, options.precision):
                logits = model(to_memory_format(batch.inputs, options.channels_last), batch.present).logits
            preds.append(logits.float().argmax(1).cpu())
            labels.append(batch.label.cpu())
    return torch.cat(preds), torch.cat(labels), info


def miou(pred: torch.Tensor, label: torch.Tensor, num_classes: int, ignore: int) -> float:
    cm = ConfusionMatrix(num_classes, ignore_index=ignore)
    cm.update(pred, label)
    return cm.compute().miou


def loss_curve(config: str, data: Path, iters: int, log_every: int, options: SpeedOptions, out: Path) -> list[float]:
    overrides = [f"data.root={data}", f"output_dir={out}", f"train.iters={iters}", f"train.log_every={log_every}",
                 "train.eval_every=0", f"train.precision={options.precision}",
                 f"train.channels_last={str(options.channels_last).lower()}",
                 f"train.fold_head={str(options.fold_head).lower()}",
                 f"train.lowp_norms={str(options.lowp_norms).lower()}"]
    if options.fused_optimizer is not None:
        overrides.append(f"train.fused_optimizer={str(options.fused_optimizer).lower()}")
    if options.attn_impl:
        overrides.append(f"model.attn_impl={options.attn_impl}")
    Trainer(load_config(config, overrides), reporter=Reporter(quiet=True)).fit()
    with (out / "metrics.csv").open() as f:
        return [float(row["loss"]) for row in csv.DictReader(f)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", type=Path, required=True)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--dataset", default="folder", help="dataset format of --data (e.g. camvid)")
    p.add_argument("--config", default="demo", help="preset / YAML for the loss-curve runs")
    p.add_argument("--iters", type=int, default=100, help="iterations of each loss-curve run (0 = skip)")
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--fast-with", nargs="+", default=[], metavar="SWITCH=VALUE",
                   help="change the fast set, e.g. lowp_norms=true (CUDA's LayerNorm arithmetic, on the CPU)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    exact, fast = SpeedOptions.exact(), SpeedOptions.fast(device)
    for item in args.fast_with:
        key, _, value = item.partition("=")
        if key not in SpeedOptions.names() or not value:
            p.error(f"--fast-with {item}: expected SWITCH=VALUE with SWITCH one of {', '.join(SpeedOptions.names())}")
        current = getattr(fast, key)
        fast = fast.with_(**{key: value.lower() in ("1", "true", "yes", "on") if isinstance(current, bool) or
                             current is None else value})
    print(f"exact = {exact.describe()}; fast = {fast.describe()}")
    pe, label, info = predictions(args.weights, args.data, args.split, exact, device, args.dataset)
    pf, _, _ = predictions(args.weights, args.data, args.split, fast, device, args.dataset)
    desc = info["dataset"]
    ignore = desc.get("ignore_index", 255)
    valid = label != ignore
    agree = (pe[valid] == pf[valid]).float().mean().item()
    k = len(desc["classes"])
    print(f"{args.split}: {int(valid.sum())} labelled pixels; argmax agreement fast vs exact {100 * agree:.3f} %; "
          f"mIoU exact {100 * miou(pe, label, k, ignore):.2f}, fast {100 * miou(pf, label, k, ignore):.2f}")
    if args.iters:
        with tempfile.TemporaryDirectory() as tmp:
            curves = {name: loss_curve(args.config, args.data, args.iters, args.log_every, opts, Path(tmp) / name)
                      for name, opts in (("exact", exact), ("fast", fast))}
        print("| iteration | loss exact | loss fast | rel. diff |")
        print("|---|---|---|---|")
        for i, (a, b) in enumerate(zip(curves["exact"], curves["fast"], strict=True)):
            print(f"| {(i + 1) * args.log_every} | {a:.4f} | {b:.4f} | {abs(b - a) / a:.2%} |")


if __name__ == "__main__":
    main()
