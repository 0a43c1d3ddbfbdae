#!/usr/bin/env bash
# The example plugin (examples/plugin, docs/extending.md) on the built-in synthetic data, beside rgbx's own mean fusion:
# the same setting as benchmarks/robustness.sh (RGB + depth, MiT-nano, 120×160 crops, batch 8, ITERS iterations),
#   mean_dropout       rgbx's mean fusion + modality dropout 0.5 (the row of benchmarks/robustness.md)
#   gated_dropout      the plugin's gated fusion + modality dropout 0.5
#   gated_consistency  the gated fusion trained by the plugin's dropout_consistency method (subset drop 0.5, λ = 1)
#   mean_ce_dice       rgbx's mean fusion + dropout 0.5, trained against the plugin's ce_dice loss
# each loaded with --import, then `rgbx eval --robustness` on the validation split, and the tables of
# benchmarks/robustness_table.py. Results: benchmarks/plugin_example.md.
#
#   bash benchmarks/plugin_example.sh                       # OUT=runs/plugin_example
#   ITERS=100 OUT=/tmp/pe bash benchmarks/plugin_example.sh  # a quick smoke run
set -euo pipefail
OUT=${OUT:-runs/plugin_example}
DATA=${DATA:-$OUT/data}
ITERS=${ITERS:-1200}
PLUGIN=examples/plugin/rgbx_example_plugin
mkdir -p "$OUT"
[ -f "$DATA/dataset.yaml" ] || rgbx synth "$DATA" --train 600 --val 150 --test 0 --size 120x160 --seed 0

COMMON=(data.root="$DATA" data.crop_size=[120,160] data.scale_range=[0.75,1.5] data.num_workers=1
        model.backbone=mit_nano model.head_channels=128 model.modalities=[rgb,depth]
        optim.lr=1e-3 optim.warmup_iters=30 train.iters="$ITERS" train.batch_size=8 train.eval_every=0
        train.checkpoint_every=200 train.log_every=100 train.threads=2)
IMPORTS=(--import "$PLUGIN/gated_fusion.py" --import "$PLUGIN/consistency.py" --import "$PLUGIN/dice_loss.py")

train() {  # train <run> [overrides...]: skipped when the run already finished (re-run the script to resume)
  local run=$1; shift
  if [ -f "$OUT/$run/model.safetensors" ]; then echo "== $run: done already"; return; fi
  local resume=()
  [ -f "$OUT/$run/checkpoints/last.state.pt" ] && resume=(--resume)
  echo "== $run ($(date +%T))"
  /usr/bin/time -f "$run: %e s" rgbx train synth_mean_b0 "${COMMON[@]}" output_dir="$OUT/$run" "$@" "${resume[@]}" \
    "${IMPORTS[@]}" --quiet
}

train mean_dropout      method.modality_dropout=0.5
train gated_dropout     method.modality_dropout=0.5 model.fusion=gated
train gated_consistency method.modality_dropout=0.0 model.fusion=gated method.name=dropout_consistency \
                        method.options.drop=0.5 method.options.weight=1.0
train mean_ce_dice      method.modality_dropout=0.5 method.loss=ce_dice

RUNS=(mean_dropout gated_dropout gated_consistency mean_ce_dice)
for run in "${RUNS[@]}"; do
  [ -f "$OUT/$run/robust.json" ] && continue
  echo "== eval $run ($(date +%T))"
  rgbx eval "$OUT/$run/model.safetensors" --data "$DATA" --split val --robustness --workers 1 \
    --json "$OUT/$run/robust.json" "${IMPORTS[@]}" > "$OUT/$run/robust.txt"
done
python benchmarks/robustness_table.py "$OUT" --only "${RUNS[@]}"
