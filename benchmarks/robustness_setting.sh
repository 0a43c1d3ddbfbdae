# The training and evaluation setting of benchmarks/robustness.sh, shared by the scripts that compare with its table
# (benchmarks/plugin_example.sh); sourced, with OUT, DATA and ITERS set. Every model sees RGB + depth of the synthetic
# data (600 / 150 scenes at 120×160, seed 0), MiT-nano, 120×160 crops, batch 8, ITERS iterations.
# EXTRA: arguments added to every `rgbx train` / `rgbx eval` (e.g. --import PLUGIN).

mkdir -p "$OUT"
[ -f "$DATA/dataset.yaml" ] || rgbx synth "$DATA" --train 600 --val 150 --test 0 --size 120x160 --seed 0

COMMON=(data.root="$DATA" data.crop_size=[120,160] data.scale_range=[0.75,1.5] data.num_workers=1
        model.backbone=mit_nano model.head_channels=128 model.modalities=[rgb,depth]
        optim.lr=1e-3 optim.warmup_iters=30 train.iters="$ITERS" train.batch_size=8 train.eval_every=0
        train.checkpoint_every=200 train.log_every=100 train.threads=2)
EXTRA=(${EXTRA[@]+"${EXTRA[@]}"})

train() {  # train <run> <preset> [overrides...]: skipped when the run already finished (re-run the script to resume)
  local run=$1 preset=$2; shift 2
  if [ -f "$OUT/$run/model.safetensors" ]; then echo "== $run: done already"; return; fi
  local resume=()
  [ -f "$OUT/$run/checkpoints/last.state.pt" ] && resume=(--resume)
  echo "== $run ($(date +%T))"
  /usr/bin/time -f "$run: %e s" rgbx train "$preset" "${COMMON[@]}" output_dir="$OUT/$run" "$@" \
    ${resume[@]+"${resume[@]}"} ${EXTRA[@]+"${EXTRA[@]}"} --quiet
}

evaluate() {  # evaluate <run>...: `rgbx eval --robustness` on the validation split, skipped when done
  local run
  for run in "$@"; do
    [ -f "$OUT/$run/robust.json" ] && continue
    echo "== eval $run ($(date +%T))"
    rgbx eval "$OUT/$run/model.safetensors" --data "$DATA" --split val --robustness --workers 1 \
      --json "$OUT/$run/robust.json" ${EXTRA[@]+"${EXTRA[@]}"} > "$OUT/$run/robust.txt"
  done
}
