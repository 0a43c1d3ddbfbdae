#!/usr/bin/env bash
# Is a synthesised sensor worth training on? On the synthetic dataset, the rendered LiDAR (a 32-64-beam scanner in
# the 3-D scene) is replaced by pseudo-LiDAR made from the depth images with `rgbx data synthesize`, and an RGB +
# LiDAR model is trained on each, next to RGB-only and RGB + depth models (same settings, same seed). About 7
# minutes on 2 cores. Prints how the two LiDARs compare, then each run's final validation mIoU (all conditions, and
# night, where RGB alone fails). Results: benchmarks/modality_synthesis.md.
set -euo pipefail
OUT=${OUT:-/tmp/rgbx_modality_synthesis}
ITERS=${ITERS:-400}
mkdir -p "$OUT" && cd "$OUT"
[ -d rendered ] || rgbx synth rendered --train 400 --val 100 --test 2 --size 120x160 --seed 21 >/dev/null
if [ ! -d pseudo ]; then
    cp -r rendered pseudo
    # the scenes' cameras have 62-85 degree fields of view: the middle one for all
    rgbx data synthesize pseudo --modalities lidar --hfov 73 --overwrite >/dev/null
fi
COMMON=(model.backbone=mit_nano model.head=mlp model.head_channels=64 "data.crop_size=[120,160]"
        data.num_workers=1 train.batch_size=8 train.eval_batch_size=16 train.threads=2 optim.lr=1e-3
        optim.warmup_iters=30 train.log_every=100 train.checkpoint_every=0 train.eval_every=0 train.iters=$ITERS
        method.name=supervised method.modality_dropout=0)
run() {  # run NAME DATA MODALITIES FUSION
    rgbx train synth_cmx_b0 data.root="$2" output_dir="$1" "model.modalities=$3" model.fusion="$4" "${COMMON[@]}" \
        >"$1.log" 2>&1
    echo "$1: $(grep 'final val mIoU' "$1.log" | cut -d';' -f1); $(grep "iteration $ITERS:" "$1.log" | grep -o 'condition=night:[0-9.]*')"
}
python - <<'PY'
import os

import numpy as np

from rgbx.data.files import read_modality_file

rel, dens_r, dens_p = [], [], []
for f in sorted(os.listdir("rendered/lidar"))[:100]:
    r = read_modality_file(f"rendered/lidar/{f}", "lidar").numpy()[0]
    p = read_modality_file(f"pseudo/lidar/{f}", "lidar").numpy()[0]
    both = (r > 0) & (p > 0)
    dens_r.append((r > 0).mean())
    dens_p.append((p > 0).mean())
    if both.any():
        rel.append(np.median(np.abs(p[both] - r[both]) / r[both]))
print(f"returns per pixel: rendered {np.mean(dens_r):.3f}, pseudo {np.mean(dens_p):.3f}; "
      f"median relative range difference where both return: {np.median(rel):.3f}")
PY
run rgb rendered "[rgb]" mean  # one modality: the plain encoder
run rgb_lidar_rendered rendered "[rgb,lidar]" cmx
run rgb_lidar_pseudo pseudo "[rgb,lidar]" cmx
run rgb_depth rendered "[rgb,depth]" cmx
