#!/usr/bin/env bash
# MS3 multi-dataset pretraining on the CPU (docs/methods/ms3.md, "Measured"): pretrain on the union of two synthetic
# corpora whose taxonomies differ (the synth_ms3 preset: "city" calls mannequins persons and has no painting class,
# "depot" says box / vehicle / tree), with MS3 and, as the baseline MS3 argues against, plain cross-entropy on the
# merged label space; then fine-tune each on a third corpus with only 32 training scenes, against a random
# initialisation, and score the MS3 model zero-shot on that corpus's own 10 class names. Class embeddings: one fixed
# random vector per name (`random:64`, offline: equal names share a vector, nothing else is related). About 15
# minutes on 2 cores. Prints each run's final validation mIoU.
set -euo pipefail
OUT=${OUT:-/tmp/rgbx_ms3}
mkdir -p "$OUT" && cd "$OUT"
[ -d data/synth_a ] || rgbx synth data/synth_a --train 300 --val 20 --test 2 --size 120x160 --seed 1 >/dev/null
[ -d data/synth_b ] || rgbx synth data/synth_b --train 300 --val 20 --test 2 --size 120x160 --seed 2 >/dev/null
[ -d target ] || rgbx synth target --train 32 --val 100 --test 2 --size 120x160 --seed 3 >/dev/null
[ -f data/synth_ms3_names.safetensors ] || \
    rgbx embed-classes data/synth_ms3_names.safetensors --config synth_ms3 --encoder random:64 >/dev/null
COMMON=(model.backbone=mit_nano model.fusion=mean model.head=mlp model.head_channels=128 "data.crop_size=[120,160]"
        data.num_workers=1 train.batch_size=8 train.eval_batch_size=16 train.threads=2 optim.lr=1e-3
        optim.warmup_iters=30 train.log_every=100 train.checkpoint_every=0 train.eval_every=0
        "model.modalities=[rgb,depth,thermal]")
rgbx train synth_ms3 output_dir=pre_ms3 train.iters=600 method.options.multi_label_after=200 "${COMMON[@]}" \
    >pre_ms3.log 2>&1
cat >merged.yaml <<'YAML'
# the synth_ms3 union trained with plain cross-entropy over the merged label space (no class relations)
data:
  dataset: multi
  root: data
  options:
    sources:
      - {name: city, root: synth_a, classes: {mannequin: person, painting: null}}
      - {name: depot, root: synth_b, classes: {crate: box, car: vehicle, vegetation: tree}}
method:
  name: supervised
train:
  eval_group_by: source
YAML
rgbx train merged.yaml output_dir=pre_merged train.iters=600 "${COMMON[@]}" >pre_merged.log 2>&1
echo "pretraining, union val mIoU: ms3 (probe) $(grep 'final val mIoU' pre_ms3.log), merged CE $(grep 'final val mIoU' pre_merged.log)"
rgbx eval pre_ms3/model.safetensors --data target --split val --zero-shot data/synth_ms3_names.safetensors \
    --workers 1 >zero_shot.log 2>&1
echo "zero-shot on the target's classes: $(grep 'rgb+depth+thermal' zero_shot.log)"
for seed in 0 1; do
    for init in scratch pre_merged pre_ms3; do
        extra=()
        [ "$init" != scratch ] && extra=(model.pretrained=$init/model.safetensors)
        rgbx train synth_cmx_b0 data.root=target output_dir=fine_${init}_$seed train.seed=$seed train.iters=300 \
            method.name=supervised method.modality_dropout=0 "${COMMON[@]}" "${extra[@]}" >fine_${init}_$seed.log 2>&1
        echo "init $init, seed $seed: $(grep 'final val mIoU' fine_${init}_$seed.log)"
    done
done
