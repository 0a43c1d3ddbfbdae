#!/usr/bin/env bash
# Fine-tuning from a trained model with one sensor more (README "Starting from a trained model"): train a CMX
# MiT-nano model on RGB + depth on one synthetic corpus, then train RGB + depth + thermal on another synthetic
# dataset with only 32 training scenes, from that model (train.init_from; the thermal branch starts from the depth
# branch, or keeps its random initialisation; or the RGB and depth branches frozen) against a random initialisation,
# two seeds each. About 17 minutes on 2 cores. Prints each run's final validation mIoU and the init_from report.
set -euo pipefail
OUT=${OUT:-/tmp/rgbx_fine_tune}
mkdir -p "$OUT" && cd "$OUT"
[ -d corpus ] || rgbx synth corpus --train 400 --val 20 --test 2 --size 120x160 --seed 11 >/dev/null
[ -d target ] || rgbx synth target --train 32 --val 100 --test 2 --size 120x160 --seed 12 >/dev/null
COMMON=(model.backbone=mit_nano model.fusion=cmx model.head=mlp model.head_channels=128 "data.crop_size=[120,160]"
        data.num_workers=1 train.batch_size=8 train.eval_batch_size=16 train.threads=2 optim.lr=1e-3
        optim.warmup_iters=30 train.log_every=100 train.checkpoint_every=0 train.eval_every=0
        method.name=supervised method.modality_dropout=0)
[ -f source/model.safetensors ] || rgbx train synth_cmx_b0 data.root=corpus output_dir=source train.iters=600 \
    "${COMMON[@]}" "model.modalities=[rgb,depth]" >source.log 2>&1
echo "source (rgb+depth, 400 scenes, 600 iterations): $(grep 'final val mIoU' source.log)"
for seed in 0 1; do
    for init in scratch source source_thermal_fresh source_frozen; do
        extra=()
        [ "$init" = source ] && extra=(train.init_from=source/model.safetensors)
        [ "$init" = source_thermal_fresh ] && extra=(train.init_from=source/model.safetensors
                                                   "train.init_modality_from={thermal: none}")
        [ "$init" = source_frozen ] && extra=(train.init_from=source/model.safetensors
                                            "train.freeze=[encoder.branches.rgb,encoder.branches.depth]")
        # a finished run is kept (delete $OUT to start over)
        [ -f fine_${init}_$seed/model.safetensors ] || { rm -rf fine_${init}_$seed
            rgbx train synth_cmx_b0 data.root=target output_dir=fine_${init}_$seed train.seed=$seed train.iters=300 \
                "${COMMON[@]}" "model.modalities=[rgb,depth,thermal]" "${extra[@]}" >fine_${init}_$seed.log 2>&1; }
        echo "init $init, seed $seed: $(grep 'final val mIoU' fine_${init}_$seed.log)"
    done
done
echo "the init_from report (seed 0):"
sed -n '/^init_from/,/^model:/p' fine_source_0.log | sed '$d'
