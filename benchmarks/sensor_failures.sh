#!/usr/bin/env bash
# Silent sensor failures on the built-in synthetic data: a sensor keeps sending frames that carry nothing (black /
# empty, NaN, saturated, frozen). Each trained model is scored with the failed frames fed as is, screened by rgbx's
# sensor checks (rgbx.data.sensor_health: the failed sensor left out) and with the sensor absent; plus how many clean
# frames the checks fail (false alarms). The setting of benchmarks/robustness.sh (robustness_setting.sh): RGB +
# depth, MiT-nano, 120×160, ITERS iterations; models with and without modality dropout, SEEDS training seeds.
# Results: $OUT/<run>/robust.{json,txt}; the table: python benchmarks/robustness_table.py $OUT --silent ...
#
#   bash benchmarks/sensor_failures.sh                  # OUT=runs/sensor_failures, 1200 iterations, seeds 0 1
#   ITERS=2 SEEDS=0 OUT=/tmp/sf bash benchmarks/sensor_failures.sh   # a quick smoke run
set -euo pipefail
OUT=${OUT:-runs/sensor_failures}
DATA=${DATA:-$OUT/data}
ITERS=${ITERS:-1200}
SEEDS=${SEEDS:-0 1}
source "$(dirname "$0")/robustness_setting.sh"  # the data, COMMON, train and evaluate

runs=()
for seed in $SEEDS; do
  train "mean_dropout_seed$seed" synth_mean_b0 method.modality_dropout=0.5 train.seed="$seed"
  train "cmx_seed$seed"          synth_cmx_b0 method.modality_dropout=0.0 train.seed="$seed"
  runs+=("mean_dropout_seed$seed" "cmx_seed$seed")
done
evaluate "${runs[@]}"
python "$(dirname "$0")/robustness_table.py" "$OUT" --silent --only "${runs[@]}"
