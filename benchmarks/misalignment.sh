#!/usr/bin/env bash
# Misaligned sensors on the built-in synthetic data: the extrinsic calibration between a sensor and the camera the
# labels are drawn in has drifted (a bumped mount). rgbx eval --robustness --corruptions misalignment shifts every
# sensor but the first by a share of the frame's shorter side (SHIFTS: the defaults 1 / 2 / 5 % and 10 / 20 % beyond)
# in a random direction per sample (the uncovered border: no measurement); the table sets that beside the aligned mIoU and the mIoU without the shifted sensor: from
# what drift on is a model better off without it? The models are benchmarks/sensor_failures.sh's (RGB + depth,
# MiT-nano, 120×160; with and without modality dropout), scored on its 150 held-out scenes (rgbx synth --seed 1),
# and the same two recipes trained with the misalignment augmentation on depth (data.photometric_ops: depth's own
# ops plus a shift of up to MAX_SHIFT of the shorter side with probability 0.5; trained here, skipped when done).
# Results: $OUT/<run>/misalignment.{json,txt}; the table: python benchmarks/robustness_table.py $OUT --misalignment
#
#   bash benchmarks/misalignment.sh                     # OUT=runs/sensor_failures
set -euo pipefail
OUT=${OUT:-runs/sensor_failures}
HELDOUT=${HELDOUT:-$OUT/heldout}
DATA=${DATA:-$OUT/data}
ITERS=${ITERS:-1200}
SEEDS=${SEEDS:-0}
MAX_SHIFT=${MAX_SHIFT:-0.1}
RUNS=${RUNS:-mean_dropout_seed0 mean_dropout_seed1 cmx_seed0 cmx_seed1}
SHIFTS=${SHIFTS:-0.01,0.02,0.05,0.1,0.2}
source "$(dirname "$0")/robustness_setting.sh"  # the data, COMMON and train: benchmarks/sensor_failures.sh's setting

augment="data.photometric_ops={depth: [depth_noise, depth_holes, {name: misalignment, max_fraction: $MAX_SHIFT}]}"
for seed in $SEEDS; do
  train "mean_dropout_shift_seed$seed" synth_mean_b0 method.modality_dropout=0.5 train.seed="$seed" "$augment"
  train "cmx_shift_seed$seed"          synth_cmx_b0 method.modality_dropout=0.0 train.seed="$seed" "$augment"
  RUNS="$RUNS mean_dropout_shift_seed$seed cmx_shift_seed$seed"
done

[ -f "$HELDOUT/dataset.yaml" ] || rgbx synth "$HELDOUT" --train 0 --val 0 --test 150 --size 120x160 --seed 1
for run in $RUNS; do
  model="$OUT/$run/model.safetensors"
  [ -f "$model" ] || { echo "$model: missing; train it with benchmarks/sensor_failures.sh" >&2; exit 1; }
  [ -f "$OUT/$run/misalignment.json" ] && continue
  echo "== eval $run ($(date +%T))"
  rgbx eval "$model" --data "$HELDOUT" --split test --robustness --corruptions misalignment --failures none \
    --strengths "misalignment=$SHIFTS" \
    --workers 1 --json "$OUT/$run/misalignment.json" > "$OUT/$run/misalignment.txt"
done
python "$(dirname "$0")/robustness_table.py" "$OUT" --misalignment --only $RUNS
