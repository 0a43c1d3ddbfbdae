#!/usr/bin/env bash
# Reproduction of the robust-training recipes on the built-in synthetic data (issue 5), CPU-sized:
# plain fusion (cmx, mean), AnySeg teacher / student, Keep-the-Balance with and without self-teaching, PrimKD with an
# RGB teacher / a depth teacher / none — every model RGB + depth, MiT-nano, 120×160 crops, batch 8, the same number of
# iterations (ITERS), then `rgbx eval --robustness` on the validation split. Results: $OUT/<run>/robust.{json,txt};
# benchmarks/robustness_table.py turns them into the markdown table of benchmarks/robustness.md.
#
#   bash benchmarks/robustness.sh                    # OUT=runs/robustness, DATA=runs/robustness/data
#   ITERS=200 OUT=/tmp/rb bash benchmarks/robustness.sh   # a quick smoke run
set -euo pipefail
OUT=${OUT:-runs/robustness}
DATA=${DATA:-$OUT/data}
ITERS=${ITERS:-1200}
mkdir -p "$OUT"
[ -f "$DATA/dataset.yaml" ] || rgbx synth "$DATA" --train 600 --val 150 --test 0 --size 120x160 --seed 0

COMMON=(data.root="$DATA" data.crop_size=[120,160] data.scale_range=[0.75,1.5] data.num_workers=1
        model.backbone=mit_nano model.head_channels=128 model.modalities=[rgb,depth]
        optim.lr=1e-3 optim.warmup_iters=30 train.iters="$ITERS" train.batch_size=8 train.eval_every=0
        train.checkpoint_every=200 train.log_every=100 train.threads=2)

train() {  # train <run> <preset> [overrides...]: skipped when the run already finished (re-run the script to resume)
  local run=$1 preset=$2; shift 2
  if [ -f "$OUT/$run/model.safetensors" ]; then echo "== $run: done already"; return; fi
  local resume=()
  [ -f "$OUT/$run/checkpoints/last.state.pt" ] && resume=(--resume)
  echo "== $run ($(date +%T))"
  /usr/bin/time -f "$run: %e s" rgbx train "$preset" "${COMMON[@]}" output_dir="$OUT/$run" "$@" "${resume[@]}" --quiet
}

# Teachers / pretraining: plain supervised, one modality (mean fusion over one modality = a plain encoder).
train teacher_rgb   synth_primkd_teacher model.modalities=[rgb]
train teacher_depth synth_primkd_teacher model.modalities=[depth]
# Plain fusion, no modality dropout (cmx is also "PrimKD without a teacher"; mean is the AnySeg teacher).
train cmx           synth_cmx_b0 method.modality_dropout=0.0
train mean          synth_mean_b0 method.modality_dropout=0.0
# Control for AnySeg: the same anymodal dropout, no distillation.
train mean_dropout  synth_mean_b0 method.modality_dropout=0.5
train anyseg        synth_anyseg_student method.options.teacher="$OUT/mean/model.safetensors"
train anyseg_lambda5 synth_anyseg_student method.options.teacher="$OUT/mean/model.safetensors" \
                    method.options.lambda_mad=5
# Keep the Balance: frozen backbone = the RGB model's encoder; with / without masked-modality self-teaching.
train ktb_plain     synth_primkd_teacher model.fusion=ktb model.modalities=[rgb,depth] \
                    model.pretrained="$OUT/teacher_rgb/model.safetensors"
train ktb_mmst      synth_ktb model.pretrained="$OUT/teacher_rgb/model.safetensors"
# PrimKD: the cmx student distilled from an RGB or a depth teacher.
train primkd_rgb    synth_primkd_student method.options.teacher="$OUT/teacher_rgb/model.safetensors" \
                    method.options.primary=rgb
train primkd_depth  synth_primkd_student method.options.teacher="$OUT/teacher_depth/model.safetensors" \
                    method.options.primary=depth

for run in teacher_rgb teacher_depth cmx mean mean_dropout anyseg anyseg_lambda5 ktb_plain ktb_mmst primkd_rgb primkd_depth; do
  [ -f "$OUT/$run/robust.json" ] && continue
  echo "== eval $run ($(date +%T))"
  rgbx eval "$OUT/$run/model.safetensors" --data "$DATA" --split val --robustness --workers 1 \
    --json "$OUT/$run/robust.json" > "$OUT/$run/robust.txt"
done
python benchmarks/robustness_table.py "$OUT"
