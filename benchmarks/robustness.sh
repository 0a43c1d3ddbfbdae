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
source "$(dirname "$0")/robustness_setting.sh"  # the data, COMMON, train and evaluate

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

evaluate teacher_rgb teacher_depth cmx mean mean_dropout anyseg anyseg_lambda5 ktb_plain ktb_mmst primkd_rgb \
  primkd_depth
python benchmarks/robustness_table.py "$OUT" --only cmx cmx_seed1 mean mean_dropout anyseg anyseg_lambda5 ktb_plain \
  ktb_mmst primkd_rgb primkd_depth teacher_rgb teacher_depth
