#!/usr/bin/env bash
# Confidence calibration per sensor set on the built-in synthetic data: is each sensor set's softmax confidence as
# high as its accuracy, before and after temperature scaling (rgbx calibrate), with one temperature for every set or
# one per set, and what vector scaling per set (a scale and a bias per class: the predictions change) gives? The models are those of benchmarks/sensor_failures.sh (RGB + depth, MiT-nano, 1200 iterations; with
# and without modality dropout, seeds 0 and 1; run it first). Temperatures are fitted on their validation split
# (150 scenes, seed 0) and scored on 150 held-out scenes the fit never saw (rgbx synth --seed 1), also per condition.
# Results: $OUT/<run>/calibration_{sets,one,vector}.json; the table: python benchmarks/calibration_table.py $OUT ...
#
#   bash benchmarks/calibration.sh                      # OUT=runs/sensor_failures
set -euo pipefail
OUT=${OUT:-runs/sensor_failures}
DATA=${DATA:-$OUT/data}
HELDOUT=${HELDOUT:-$OUT/heldout}
RUNS=${RUNS:-mean_dropout_seed0 mean_dropout_seed1 cmx_seed0 cmx_seed1}

[ -f "$HELDOUT/dataset.yaml" ] || rgbx synth "$HELDOUT" --train 0 --val 0 --test 150 --size 120x160 --seed 1
for run in $RUNS; do
  model="$OUT/$run/model.safetensors"
  [ -f "$model" ] || { echo "$model: missing; train it with benchmarks/sensor_failures.sh" >&2; exit 1; }
  echo "== $run ($(date +%T))"
  for kind in sets one vector; do
    sensors=all; [ "$kind" = one ] && sensors=full
    scaling=temperature; [ "$kind" = vector ] && scaling=vector
    rgbx calibrate "$model" --data "$DATA" --split val --sensors "$sensors" --scaling "$scaling" --workers 1 \
      --out "$OUT/$run/calibrated_$kind.safetensors" --json "$OUT/$run/calibrate_$kind.json" > /dev/null
    rgbx eval "$OUT/$run/calibrated_$kind.safetensors" --data "$HELDOUT" --split test --anymodal --calibration \
      --workers 1 --json "$OUT/$run/calibration_$kind.json" > "$OUT/$run/calibration_$kind.txt"
  done
done
python "$(dirname "$0")/calibration_table.py" "$OUT" --only $RUNS
