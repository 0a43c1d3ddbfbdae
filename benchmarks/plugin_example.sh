#!/usr/bin/env bash
# The example plugin (examples/plugin, docs/extending.md) on the built-in synthetic data, beside rgbx's own mean
# fusion, in the setting of benchmarks/robustness.sh (benchmarks/robustness_setting.sh: RGB + depth, MiT-nano,
# 120×160 crops, batch 8, ITERS iterations):
#   mean_dropout       rgbx's mean fusion + modality dropout 0.5 (the row of benchmarks/robustness.md)
#   gated_dropout      the plugin's gated fusion + modality dropout 0.5
#   gated_consistency  the gated fusion trained by the plugin's dropout_consistency method (subset drop 0.5, λ = 1)
#   mean_ce_dice       rgbx's mean fusion + dropout 0.5, trained against the plugin's ce_dice loss
# each loaded with --import, then `rgbx eval --robustness` on the validation split, and the tables of
# benchmarks/robustness_table.py, for each training seed in SEEDS (runs of seed N > 0 are named <run>_seedN).
# Results: benchmarks/plugin_example.md.
#
#   bash benchmarks/plugin_example.sh                       # OUT=runs/plugin_example, SEEDS="0 1"
#   ITERS=100 SEEDS=0 OUT=/tmp/pe bash benchmarks/plugin_example.sh  # a quick smoke run
set -euo pipefail
OUT=${OUT:-runs/plugin_example}
DATA=${DATA:-$OUT/data}
ITERS=${ITERS:-1200}
SEEDS=${SEEDS:-0 1}
PLUGIN=examples/plugin/rgbx_example_plugin
EXTRA=(--import "$PLUGIN/gated_fusion.py" --import "$PLUGIN/consistency.py" --import "$PLUGIN/dice_loss.py")
source "$(dirname "$0")/robustness_setting.sh"  # the data, COMMON, train and evaluate

RUNS=()
for seed in $SEEDS; do
  tag=$([ "$seed" = 0 ] && echo "" || echo "_seed$seed")
  train mean_dropout$tag      synth_mean_b0 train.seed="$seed" method.modality_dropout=0.5
  train gated_dropout$tag     synth_mean_b0 train.seed="$seed" method.modality_dropout=0.5 model.fusion=gated
  train gated_consistency$tag synth_mean_b0 train.seed="$seed" method.modality_dropout=0.0 model.fusion=gated \
                              method.name=dropout_consistency method.options.drop=0.5 method.options.weight=1.0
  train mean_ce_dice$tag      synth_mean_b0 train.seed="$seed" method.modality_dropout=0.5 method.loss=ce_dice
  RUNS+=(mean_dropout$tag gated_dropout$tag gated_consistency$tag mean_ce_dice$tag)
done
evaluate "${RUNS[@]}"
python benchmarks/robustness_table.py "$OUT" --only "${RUNS[@]}"
