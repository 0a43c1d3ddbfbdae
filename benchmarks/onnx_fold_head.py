"""An exported model with the decode head folded (``rgbx export``'s default) against the same model exported in the
reference order (``--no-fold-head``): both files run by onnxruntime on the CPU, alternately in one process, batch 1;
prints the latencies, their ratio and the largest logit difference between the two files.

    python benchmarks/onnx_fold_head.py --backbone mit_b2 --fusion cmx --size 480x640 --threads 2

Needs ``pip install 'rgbx[export]'``. Random weights (the arithmetic does not depend on them).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from rgbx.cli.common import CMX_B2_RGBD, add_model_arguments, model_config_from_args, parse_size
from rgbx.engine.export import export_onnx, require
from rgbx.models import create_model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(p, defaults=CMX_B2_RGBD)
    p.add_argument("--size", type=parse_size, default=(480, 640), help="HxW")
    p.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args()
    ort = require("onnxruntime")
    h, w = args.size
    torch.manual_seed(0)
    config = model_config_from_args(args)
    model = create_model(config)
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    sessions = {}
    with tempfile.TemporaryDirectory() as tmp:
        for fold in (True, False):
            path = export_onnx(model, Path(tmp) / f"fold_{fold}.onnx", size=(h, w), fold_head=fold)
            sessions[fold] = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feed = {m: rng.standard_normal((1, model.encoder.sensor_channels[m], h, w), dtype=np.float32)
            for m in model.modalities}
    feed["present"] = np.ones((1, len(model.modalities)), dtype=bool)
    logits = {fold: s.run(None, feed)[0] for fold, s in sessions.items()}
    for _ in range(args.warmup):
        for s in sessions.values():
            s.run(None, feed)
    times: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(args.repeats):
        for fold, s in sessions.items():
            t0 = time.perf_counter()
            s.run(None, feed)
            times[fold].append((time.perf_counter() - t0) * 1e3)
    med = {fold: statistics.median(t) for fold, t in times.items()}
    print(f"{config.backbone} + {config.fusion} + {config.head}, {'+'.join(model.modalities)}, {h}x{w}, batch 1, "
          f"onnxruntime {ort.__version__} CPU, {args.threads} threads, median of {args.repeats}: folded "
          f"{med[True]:.1f} ms ({min(times[True]):.1f}-{max(times[True]):.1f}), reference order {med[False]:.1f} ms "
          f"({min(times[False]):.1f}-{max(times[False]):.1f}); {med[False] / med[True]:.2f}x; logits max abs "
          f"difference {float(np.abs(logits[True] - logits[False]).max()):.1e}")


if __name__ == "__main__":
    main()
