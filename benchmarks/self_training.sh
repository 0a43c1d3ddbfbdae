#!/usr/bin/env bash
# Self-training on the built-in synthetic data: does a model trained on 30 labelled scenes get better when it also
# trains on 600 unlabelled recordings that its teacher pseudo-labelled (rgbx pseudo-label), and how close does that
# come to labelling all 630? Teacher, students and the all-labelled reference are the demo's recipe (CMX-style
# MiT-nano, RGB + depth + thermal, modality dropout 0.3), $ITERS iterations each, from scratch; the teacher is
# calibrated on the validation split before it labels. Scored on the test split (150 scenes).
# The raw split's labels stay on disk only so that the report can score the pseudo-labels: they are never read to
# make them (tests/engine/test_pseudo_label.py checks that the pseudo-labels are the same without them).
# Results: $OUT/*/test.json, $OUT/pseudo_*/pseudo_labels.json; the table: python benchmarks/self_training_table.py $OUT
#
#   bash benchmarks/self_training.sh                    # OUT=runs/self_training ITERS=1200, ~100 min on 2 cores
#   OUT=runs/self_training_10 LABELLED=10 RULES=cf50:--class-fraction=0.5 EXTRAS=0 bash benchmarks/self_training.sh
set -euo pipefail
OUT=${OUT:-runs/self_training}
ITERS=${ITERS:-1200}
LABELLED=${LABELLED:-30}
# name:flags (',' between flags, '=' between a flag and its value)
RULES=${RULES:-"cf50:--class-fraction=0.5 cf50_once:--class-fraction=0.5,--labelled-repeat=1 conf90:--min-confidence=0.9"}
DATA=$OUT/data
TRAIN="rgbx train demo train.iters=$ITERS data.num_workers=1"

if [ ! -f "$DATA/splits/raw.txt" ]; then
  rgbx synth "$DATA" --train $((LABELLED + 600)) --val 100 --test 150 --size 120x160 --seed 0
  mv "$DATA/splits/train.txt" "$OUT/all.txt"
  head -n "$LABELLED" "$OUT/all.txt" > "$DATA/splits/train.txt"
  tail -n +"$((LABELLED + 1))" "$OUT/all.txt" > "$DATA/splits/raw.txt"
fi
fit() {  # fit NAME ROOT SPLIT [KEY=VALUE ...]
  local name=$1 root=$2 split=$3
  shift 3
  [ -f "$OUT/$name/model.safetensors" ] || { echo "== train $name ($(date +%T))"; $TRAIN data.root="$root" data.train_split="$split" output_dir="$OUT/$name" "$@" > "$OUT/$name.log"; }
  [ -f "$OUT/$name/test.json" ] || rgbx eval "$OUT/$name/model.safetensors" --data "$DATA" --split test --anymodal --workers 1 \
    --json "$OUT/$name/test.json" > "$OUT/$name/test.txt"
}
fit teacher "$DATA" train
[ -f "$OUT/teacher/model.calibrated.safetensors" ] || rgbx calibrate "$OUT/teacher/model.safetensors" --data "$DATA" --split val --workers 1 > /dev/null
for entry in $RULES; do
  name=${entry%%:*}; flags=${entry#*:}
  [ -d "$OUT/pseudo_$name" ] || rgbx pseudo-label "$OUT/teacher/model.calibrated.safetensors" --data "$DATA" --split raw \
    --out "$OUT/pseudo_$name" --workers 1 ${flags//[=,]/ } > "$OUT/pseudo_$name.txt"
  fit "student_$name" "$OUT/pseudo_$name" train_pseudo
done
# EXTRAS=0: the teacher and students only
if [ "${EXTRAS:-1}" = 1 ]; then
# the student started from the teacher's weights (train.init_from) instead of from scratch, in two seeds; its control,
# the teacher trained on for as many iterations again on its labelled scenes alone; a noisier student (more modality
# dropout, wider scale jitter, more drop-path: "noisy student"); the from-scratch student in a second seed
TEACHER_INIT="train.init_from=$OUT/teacher/model.safetensors"
fit student_cf50_init "$OUT/pseudo_cf50" train_pseudo "$TEACHER_INIT"
fit student_cf50_init_seed1 "$OUT/pseudo_cf50" train_pseudo "$TEACHER_INIT" train.seed=1
fit teacher_continued "$DATA" train "$TEACHER_INIT"
fit student_cf50_noisy "$OUT/pseudo_cf50" train_pseudo method.modality_dropout=0.5 "data.scale_range=[0.5,2.0]" \
  model.drop_path_rate=0.2
fit student_cf50_seed1 "$OUT/pseudo_cf50" train_pseudo train.seed=1
# one round further: the continued teacher (2400 iterations) labels the raw split again, a student starts from it,
# and its control is that teacher trained on as long again on its labelled scenes alone (3600 iterations each)
[ -f "$OUT/teacher_continued/model.calibrated.safetensors" ] || rgbx calibrate "$OUT/teacher_continued/model.safetensors" \
  --data "$DATA" --split val --workers 1 > /dev/null
[ -d "$OUT/pseudo_cont_cf50" ] || rgbx pseudo-label "$OUT/teacher_continued/model.calibrated.safetensors" --data "$DATA" \
  --split raw --out "$OUT/pseudo_cont_cf50" --workers 1 --class-fraction 0.5 > "$OUT/pseudo_cont_cf50.txt"
CONTINUED_INIT="train.init_from=$OUT/teacher_continued/model.safetensors"
fit student_cont_cf50_init "$OUT/pseudo_cont_cf50" train_pseudo "$CONTINUED_INIT"
fit teacher_continued2 "$DATA" train "$CONTINUED_INIT"
# every scene labelled: a split of its own only while it trains (pseudo-labelling refuses a split whose samples are
# also in another split of the folder, whose labels it would replace)
[ -f "$OUT/all_labelled/model.safetensors" ] || cp "$OUT/all.txt" "$DATA/splits/all.txt"
fit all_labelled "$DATA" all
rm -f "$DATA/splits/all.txt"
# which 30 recordings to label by hand next: the 30 the teacher was least confident about (samples.csv of the cf50
# rule, lowest mean confidence) or 30 drawn at random from the raw split; each trained with the labelled split on true
# labels
[ -f "$OUT/next_least_confident.txt" ] || python -c "import csv, sys; rows = sorted(csv.DictReader(open(sys.argv[1])), key=lambda r: float(r['mean_confidence'])); print('\n'.join(r['id'] for r in rows[:int(sys.argv[2])]))" \
    "$OUT/pseudo_cf50/samples.csv" "$LABELLED" > "$OUT/next_least_confident.txt"
[ -f "$OUT/next_random.txt" ] || python -c "import random, sys; ids = open(sys.argv[1]).read().split(); random.Random(0).shuffle(ids); print('\n'.join(ids[:int(sys.argv[2])]))" \
    "$DATA/splits/raw.txt" "$LABELLED" > "$OUT/next_random.txt"
for pick in least_confident random; do
  [ -f "$OUT/more_$pick/model.safetensors" ] || cat "$DATA/splits/train.txt" "$OUT/next_$pick.txt" > "$DATA/splits/more_$pick.txt"
  fit "more_$pick" "$DATA" "more_$pick"
  rm -f "$DATA/splits/more_$pick.txt"
done
fi
python "$(dirname "$0")/self_training_table.py" "$OUT"
