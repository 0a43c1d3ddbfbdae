#!/usr/bin/env bash
# OmniSegmentor pretraining on the CPU (docs/methods/omni_pretrain.md, "Measured"): pretrain omni_nano on one
# synthetic corpus with the omni_pretrain recipe (and, for comparison, with every modality in every step), then
# fine-tune on another synthetic dataset with only 32 training scenes on RGB + thermal + event, against a random
# initialisation. About 10 minutes on 2 cores. Prints each run's final validation mIoU.
set -euo pipefail
OUT=${OUT:-/tmp/rgbx_omni_pretrain}
mkdir -p "$OUT" && cd "$OUT"
[ -d corpus ] || rgbx synth corpus --train 400 --val 20 --test 2 --size 120x160 --seed 11 >/dev/null
[ -d target ] || rgbx synth target --train 32 --val 100 --test 2 --size 120x160 --seed 12 >/dev/null
COMMON=(model.backbone=omni_nano model.fusion=omni model.head=mlp model.head_channels=128 "data.crop_size=[120,160]"
        data.num_workers=1 train.batch_size=8 train.eval_batch_size=16 train.threads=2 optim.lr=1e-3
        optim.warmup_iters=30 train.log_every=100 train.checkpoint_every=0 train.eval_every=0)
ALL="model.modalities=[rgb,depth,thermal,lidar,event]"
rgbx train synth_omni_pretrain data.root=corpus output_dir=pre train.iters=600 "${COMMON[@]}" "$ALL" >pre.log 2>&1
rgbx train synth_cmx_b0 data.root=corpus output_dir=pre_joint train.iters=600 method.name=supervised \
    method.modality_dropout=0 "${COMMON[@]}" "$ALL" >pre_joint.log 2>&1
for seed in 0 1; do
    for init in scratch pre pre_joint; do
        [ "$init" = pre_joint ] && [ "$seed" = 1 ] && continue
        extra=()
        [ "$init" != scratch ] && extra=(model.pretrained=$init/model.safetensors)
        rgbx train synth_cmx_b0 data.root=target output_dir=fine_${init}_$seed train.seed=$seed train.iters=300 \
            method.name=supervised method.modality_dropout=0 "${COMMON[@]}" "model.modalities=[rgb,thermal,event]" \
            "${extra[@]}" >fine_${init}_$seed.log 2>&1
        echo "init $init, seed $seed: $(grep 'final val mIoU' fine_${init}_$seed.log)"
    done
done
