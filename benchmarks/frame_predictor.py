"""What ``rgbx.Predictor`` adds to a frame's prediction, side by side in one process, on the raw frames a driver
gives (8-bit RGB, 16-bit depth in mm, channels last):

* the model on ready-normalised tensors (``predict_logits`` + argmax; the frame's conversion not counted): the floor;
* the same written by hand from the raw frames (scale, normalise, move, predict, argmax, back to NumPy);
* ``Predictor.__call__`` on the raw frames;
* with ``--monitor``: ``Predictor(monitor=True)``, every frame screened by the sensor checks first
  (``rgbx.data.sensor_health``), and the checks alone on the frames in physical units.

Timed alternately, median of ``--repeats``; checks that all give the same class map. Two frame pairs take turns, so
that the checks' ``frozen`` count never fires.

    python benchmarks/frame_predictor.py --backbone mit_b0 --head-channels 256          # CMX-B0 RGB-D, 480×640
    python benchmarks/frame_predictor.py --device cuda --fast
    python benchmarks/frame_predictor.py --backbone mit_b0 --head-channels 256 --monitor   # the sensor checks' cost

The model has random weights (``rgbx.cli.common.add_model_arguments``, default CMX MiT-B2 RGB-D).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

from rgbx.cli.common import (
    CMX_B2_RGBD,
    add_model_arguments,
    add_timing_arguments,
    model_config_from_args,
    parse_size,
    settle_from_args,
)
from rgbx.data.sensor_health import SensorMonitor
from rgbx.engine.bench import time_alternating
from rgbx.engine.fastpath import autocast, backend_flags
from rgbx.engine.inference import predict_logits
from rgbx.engine.predict import Predictor, frame_sample
from rgbx.modalities import get_modality
from rgbx.models import create_model
from rgbx.models.model_file import save_model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(p, defaults=CMX_B2_RGBD)
    p.add_argument("--device", default="cpu")
    p.add_argument("--fast", action="store_true", help="the device's fast option set (default: exact fp32)")
    p.add_argument("--size", type=parse_size, default=(480, 640), help="frame size HxW")
    p.add_argument("--monitor", action="store_true", help="also time the predictor with the sensor checks")
    add_timing_arguments(p, warmup=1)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    config = model_config_from_args(args)
    if sorted(config.modalities) != ["depth", "rgb"]:
        p.error("this benchmark feeds RGB + depth frames (--modalities rgb depth)")
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.safetensors"
        save_model(path, create_model(config))
        segment = Predictor.from_file(path, device=args.device, fast=args.fast)
        guarded = Predictor.from_file(path, device=args.device, fast=args.fast, monitor=True)
    device = segment.device
    rng = np.random.default_rng(0)
    h, w = args.size
    pairs = [(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), rng.integers(500, 10000, (h, w), dtype=np.uint16))
             for _ in range(2)]
    rgb, depth_mm = pairs[0]
    turn = [0, 0]  # each screened call takes the next pair: no frame repeats its predecessor
    spec_rgb, spec_depth = get_modality("rgb"), get_modality("depth")
    precision = segment.speed.precision if segment.speed is not None else "fp32"

    def prepared(rgb_frame, depth_frame) -> dict[str, torch.Tensor]:  # a program's own conversion, written by hand
        x_rgb = torch.from_numpy(rgb_frame).permute(2, 0, 1)[None].float() * spec_rgb.scale
        x_depth = torch.from_numpy(depth_frame.astype(np.float32))[None, None] * spec_depth.scale
        return {"rgb": spec_rgb.normalize(x_rgb).to(device), "depth": spec_depth.normalize(x_depth).to(device)}

    def classes(inputs) -> np.ndarray:
        with torch.inference_mode(), backend_flags(segment.speed), autocast(device, precision):
            logits = predict_logits(segment.model, inputs, None)
        return logits.float().argmax(1)[0].cpu().numpy()

    ready = prepared(rgb, depth_mm)

    def floor() -> np.ndarray:
        return classes(ready)

    def by_hand() -> np.ndarray:
        return classes(prepared(rgb, depth_mm))

    def predictor() -> np.ndarray:
        return segment({"rgb": rgb, "depth": depth_mm})

    def screened() -> np.ndarray:
        frame_rgb, frame_depth = pairs[turn[0] % 2]
        turn[0] += 1
        return guarded({"rgb": frame_rgb, "depth": frame_depth})

    physical = [frame_sample({"rgb": a, "depth": b})["inputs"] for a, b in pairs]
    checks_only = SensorMonitor()

    def checks() -> None:
        checks_only.screen(physical[turn[1] % 2])
        turn[1] += 1

    agree = min(float((floor() == by_hand()).mean()), float((floor() == predictor()).mean()))
    calls = {"model on ready tensors": floor, "by hand from raw frames": by_hand, "Predictor on raw frames": predictor}
    if args.monitor:
        turn[0] = 0
        agree = min(agree, float((floor() == screened()).mean()))
        if not all(s.ok for s in guarded.last_status.values()):
            raise SystemExit(f"the checks failed a live frame: {guarded.last_status}")
        calls.update({"Predictor + sensor checks": screened, "sensor checks alone": checks})
    times = time_alternating(calls, device, warmup=args.warmup, repeats=args.repeats,
                             settle=settle_from_args(args, device))
    base = times["model on ready tensors"].median_ms
    print(f"{config.fusion}/{config.backbone} rgb+depth {h}x{w}, {device}, {'fast' if args.fast else 'exact fp32'}; "
          f"class maps equal on {100 * agree:.2f} % of pixels")
    print("| call | median ms | min | max | × |")
    print("|---|---|---|---|---|")
    for name, t in times.items():
        print(f"| {name} | {t.median_ms:.1f} | {t.min_ms:.1f} | {t.max_ms:.1f} | {t.median_ms / base:.3f} |")


if __name__ == "__main__":
    main()
