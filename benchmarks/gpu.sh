#!/usr/bin/env bash
# The GPU speed table in one command: the CMX and DFormer reference code and rgbx side by side (same weights, same
# process) for CMX B0/B2/B4, DFormer T/S/B/L and rgbx's OmniSegmentor encoder, where the fast training step's time
# goes, which speed switch gives what, and whether the input pipeline keeps up. Writes benchmarks/gpu.md. Finishes
# within TOTAL seconds (default 540: under the device tool's 10-minute command limit); no new side-by-side model is
# started after BUDGET seconds.
#
#   git clone https://github.com/huaaaliu/RGBX_Semantic_Segmentation /tmp/cmx_ref
#   git clone https://github.com/VCIP-RGBD/DFormer /tmp/dformer_ref
#   REF_CMX=/tmp/cmx_ref REF_DFORMER=/tmp/dformer_ref benchmarks/gpu.sh
#
# The checks that are not part of the table need a second command (the table alone fills most of the first):
# the GPU-only tests and torch.compile (minutes of compilation), and, given time, `rgbx train` eager against
# captured (STEPS="... train"):
#
#   STEPS="tests compile" TOTAL=270 OUT_MD=benchmarks/gpu_checks.md benchmarks/gpu.sh; cp .inductor_cache.tgz $OUT/
#
# torch.compile starts from nothing on a fresh machine (and has not finished inside the suite on an H100), so its
# caches (inductor's compiled graphs, Triton's kernels) are kept in INDUCTOR_CACHE (default .inductor_cache, never
# committed) and packed into .inductor_cache.tgz after the compile step: bring that file back (copy it to $OUT) and
# carry it to the next run, which unpacks it and starts where this one stopped.
#
# On the CPU, for a smoke test of the whole suite at a tiny size: DEVICE=cpu SIZE=64x64 REPEATS=1 benchmarks/gpu.sh
# STEPS picks steps, run in this order: tests train compare profile data sweep compile; gpu.md gets a section for
# each step asked for.
set -uo pipefail
cd "$(dirname "$0")/.."
REF_CMX=${REF_CMX:-.reference/cmx}
REF_DFORMER=${REF_DFORMER:-.reference/dformer}
DEVICE=${DEVICE:-cuda}
SIZE=${SIZE:-480x640}
BATCH=${BATCH:-8}
REPEATS=${REPEATS:-6}
WARMUP=${WARMUP:-2}
STEPS=${STEPS:-compare profile data sweep}
BUDGET=${BUDGET:-330}
TOTAL=${TOTAL:-540}
MODELS=${MODELS:-cmx_b2 dformer_l cmx_b0 dformer_t cmx_b4 dformer_s dformer_b omni_t}
PROFILE_TRAIN=${PROFILE_TRAIN:-dformer_l}
OUT_MD=${OUT_MD:-benchmarks/gpu.md}
LOG_DIR=${LOG_DIR:-${OUT:-/tmp}/rgbx_gpu}
mkdir -p "$LOG_DIR"
export PYTHONUNBUFFERED=1
RGBX=${RGBX:-python -m rgbx.cli.main}
start=$(date +%s)

device_line=$(python - "$DEVICE" <<'EOF'
import sys, torch
d = torch.device(sys.argv[1])
if d.type == "cuda":
    name = torch.cuda.get_device_name(d)
else:  # the CPU smoke run
    from rgbx.engine.fastpath import describe_cpu
    name = f"CPU {describe_cpu()}"
print(f"{name}; torch {torch.__version__}; CUDA {torch.version.cuda}")
EOF
)
echo "device: $device_line"

# Every step gets a time limit inside the whole suite's TOTAL seconds (the device tool allows 600 s per command), in
# order of what the issue needs most; a step that no longer fits is skipped and says so, and gpu.md is always written.
left() { echo $(( start + TOTAL - $(date +%s) )); }
run_step() {  # run_step SECONDS command ...: at most SECONDS, less when the suite's time is running out
    local t=$1 l
    shift
    l=$(( $(left) - 15 ))  # 15 s kept for writing gpu.md
    [ "$l" -lt "$t" ] && t=$l
    if [ "$t" -lt 15 ]; then
        echo "skipped: the suite's ${TOTAL} s are used up"
        return 125
    fi
    # KILL 15 s after a TERM (or STEP_SIGNAL: pytest prints the failures so far on an INT) that did not end it
    timeout -s "${STEP_SIGNAL:-TERM}" -k 15 "$t" "$@"
}

want() { case " $STEPS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
compare_rc=0 compile_rc=0

# 0. the GPU-only tests (training on CUDA in fp32 / bf16 / fp16, no device sync in dropout + forward, the CUDA-graph
#    inference and training step against eager), when pytest is installed: CI never has a GPU, so this is where they
#    run. Each test's name is printed as it starts, and each has its own time limit where pytest-timeout is there.
if want tests; then
    if [ "$DEVICE" = cuda ] && python -c "import pytest" 2>/dev/null; then
        per_test=()
        python -c "import pytest_timeout" 2>/dev/null && per_test=(--timeout 45)
        # the captured training step first (bench, then trainer), each line stamped with the seconds since start;
        # the whole output (tracebacks, the failures' summary, the slowest tests) goes to tests_full.log, and the
        # result lines and the failures' reasons to gpu.md
        STEP_SIGNAL=INT run_step 200 python -m pytest -v -rfE --tb=short --durations=12 -p no:cacheprovider "${per_test[@]}" -m gpu \
            tests/engine/test_bench.py tests/engine/test_gpu.py tests/models/test_layers.py \
            tests/data/test_batch_geometry.py 2>&1 | grep -v "^$" \
            | while IFS= read -r line; do echo "[$(( $(date +%s) - start ))s] $line"; done > "$LOG_DIR/tests_full.log"
        grep -E "(PASSED|FAILED|ERROR|SKIPPED)( |$)|^\[[0-9]+s\] (E  |FAILED|ERROR|[0-9.]+s (call|setup))|passed|failed" \
            "$LOG_DIR/tests_full.log" | grep -v "^\[[0-9]*s\] \(platform\|plugins\|rootdir\)" | head -80 \
            | tee "$LOG_DIR/tests.log"
        [ -s "$LOG_DIR/tests.log" ] || tail -20 "$LOG_DIR/tests_full.log" | tee "$LOG_DIR/tests.log"
    else
        echo "GPU tests not run (DEVICE=$DEVICE, or pytest missing)" | tee "$LOG_DIR/tests.log"
    fi
fi

# 1. `rgbx train` itself, the eager step against the captured one (train.cuda_graph_train), CMX-B2 RGB-D at full
#    size on the built-in synthetic data: what a user gets, data loading included
if want train; then
    run_step 150 bash -c "$RGBX synth '$LOG_DIR/synth_train' --train 48 --val 2 --test 2 --size $SIZE >/dev/null && \
        python benchmarks/train_speed.py '$LOG_DIR/synth_train' --backbone mit_b2 --modalities rgb depth \
        --size $SIZE --batch $BATCH --iters 50 --log-every 10 --workers 12 --device $DEVICE \
        --markdown '$LOG_DIR/train.md'" 2>&1 | tee "$LOG_DIR/train.log"
    rm -rf "$LOG_DIR/synth_train"
fi

# 1b. side by side (reference fp32 / bf16, rgbx exact / fast / graphed), agreement check first; no new model after
#    BUDGET s
if want compare; then
    # shellcheck disable=SC2086
    run_step $(( BUDGET + 90 )) python benchmarks/compare_reference.py --device "$DEVICE" --cmx "$REF_CMX" \
        --dformer "$REF_DFORMER" --models $MODELS --size "$SIZE" --train-size "$SIZE" --train-batch "$BATCH" \
        --warmup "$WARMUP" --repeats "$REPEATS" --budget-s "$BUDGET" --graph-train \
        --markdown "$LOG_DIR/compare.md" --json "$LOG_DIR/compare.json" 2>&1 | tee "$LOG_DIR/compare.log"
    compare_rc=${PIPESTATUS[0]}
fi

# 2. where the fast training step's time goes: the top kernels by device time, and how busy the device was.
#    PROFILE_TRAIN picks the model: DFormer-L by default (its step is the furthest from its target, and CMX-B2's
#    profile is in the gpu.md of cdfadef), or cmx_b2
if want profile; then
    case "$PROFILE_TRAIN" in
        cmx_b2) profile_model=(--backbone mit_b2 --fusion cmx) ;;
        *) profile_model=(--backbone dformer_l --fusion dformer --head ham --head-channels 512 --num-classes 40) ;;
    esac
    run_step 60 python benchmarks/profile_step.py --device "$DEVICE" "${profile_model[@]}" --size "$SIZE" \
        --batch "$BATCH" --options fast --steps 2 --rows 25 2>&1 | tee "$LOG_DIR/profile.log"
    # DFormer-L's batch-1 latency is twice CMX-B2's; counted on the CPU under the CUDA fast set's switches, its
    # forward pass runs 1077 non-view operators (860 with fuse_projections) against CMX-B2's 745: which kernels
    run_step 45 python benchmarks/profile_step.py --device "$DEVICE" --backbone dformer_l --fusion dformer \
        --head ham --head-channels 512 --num-classes 40 --size "$SIZE" --batch 1 --infer --options fast --steps 5 \
        --rows 25 2>&1 | tee "$LOG_DIR/profile_infer.log"
    # what fusing its projections and folding its layer scales gives (fuse_projections on / off under the fast set,
    # alternated in one process): CUDA-graph inference, and the captured training step (fused at every step there)
    captured=(--graphed)
    [ "$DEVICE" = cuda ] || captured=()  # the CPU smoke run: no CUDA graph to capture the training step in
    run_step 70 python benchmarks/switch_ab.py fuse_projections --backbone dformer_l --fusion dformer --head ham \
        --head-channels 512 --modalities rgb depth --num-classes 40 --size "$SIZE" --what latency train \
        "${captured[@]}" --device "$DEVICE" --repeats "$REPEATS" 2>&1 | tee "$LOG_DIR/fuse_ab.log"
    # resizing and pooling as matrix products (matmul_resize), on DFormer-L: its adaptive pooling of channels-last maps
    # took 26 % of the batch-1 kernel time (the sweep measures CMX-B2's captured training step with and without it)
    run_step 30 python benchmarks/switch_ab.py matmul_resize --backbone dformer_l --fusion dformer --head ham \
        --head-channels 512 --modalities rgb depth --num-classes 40 --size "$SIZE" --what latency \
        --device "$DEVICE" --repeats "$REPEATS" 2>&1 | tee "$LOG_DIR/matmul_ab.log"
    # test-time inference in batches (rgbx eval --window / --flip): CMX-B2's sliding windows over KITTI-360's
    # 376x1408 (6 positions of 376x376) in one pass against one at a time, and the flip in the batch against two
    # passes (the CPU measured 1.38x / 1.20x on CMX-B0; a batch-1 pass leaves a GPU mostly idle)
    slide=(--size 376x1408 --window 376x376)
    [ "$DEVICE" = cuda ] || slide=(--size 64x192 --window 64x64)  # the CPU smoke run
    run_step 40 python benchmarks/inference_batching.py --device "$DEVICE" --fast --backbone mit_b2 --fusion cmx \
        --head-channels 512 --modalities rgb depth --num-classes 40 "${slide[@]}" --repeats "$REPEATS" 2>&1 \
        | tee "$LOG_DIR/inference_batching.log"
fi

# 3. does the input pipeline keep up? (before the sweep: still open on an H100) RGB-D 480x640 read + decode +
#    augment, samples/s with N loader workers, the geometric step in the workers (sample) or on each batch on the
#    GPU (batch: data.geometric_on=batch)
if want data; then
    # (96 samples: making 192 took more than the 15 s the last H100 run had left for this step)
    # then the same samples packed decoded (rgbx data pack --decoded: nothing left to decode in the workers)
    samples=96 data_size=480x640 workers="4 8 12" workers_decoded="4 8"
    [ "$DEVICE" = cuda ] || { samples=24 data_size=96x128 workers="0 1" workers_decoded="0 1"; }  # CPU smoke run
    run_step 90 bash -c "$RGBX synth '$LOG_DIR/synth480' --train $samples --val 2 --test 2 --size $data_size \
        >/dev/null && \
        $RGBX bench --data '$LOG_DIR/synth480' --modalities rgb depth --workers $workers --crop $data_size \
        --batch 8 --batches 10 --geometric-on batch sample --device $DEVICE && \
        $RGBX data pack '$LOG_DIR/synth480' '$LOG_DIR/decoded480' --split train --decoded >/dev/null && \
        $RGBX bench --data '$LOG_DIR/decoded480' --dataset shards --modalities rgb depth --workers $workers_decoded \
        --crop $data_size --batch 8 --batches 10 --geometric-on batch sample --device $DEVICE" 2>&1 \
        | tee "$LOG_DIR/data.log"
    rm -rf "$LOG_DIR/synth480" "$LOG_DIR/decoded480"
fi

# 4. which switch gives what (CMX-B2): exact, exact + each switch, fast, fast + the training step as one CUDA graph
if want sweep; then
    graphed=()
    [ "$DEVICE" = cuda ] && graphed=(graphed)
    # shellcheck disable=SC2086
    run_step 150 $RGBX bench --device "$DEVICE" --backbone mit_b2 --fusion cmx --modalities rgb depth \
        --num-classes 40 --head-channels 512 --size "$SIZE" --train-size "$SIZE" --train-batch "$BATCH" \
        --what train latency --options exact fast "${graphed[@]}" --sweep --warmup "$WARMUP" --repeats "$REPEATS" \
        --json "$LOG_DIR/sweep.json" 2>&1 | tee "$LOG_DIR/sweep.log"
fi

# 5. torch.compile on top of the fast set, each block compiled on its own (compile_scope=blocks: one graph per
#    distinct block shape). The training step has never finished compiling inside the suite on an H100 (150 s, and
#    255 s in a command of its own), so inference (compiled blocks inside the CUDA-graph forward: kernel fusion is
#    what batch-1 latency still needs) comes first, then training with what is left; or a command of its own
#    (STEPS=compile). Recompilations are logged with their reason, and a step cut off by its time limit still prints
#    where the compile time went (rgbx bench's report on SIGTERM)
if want compile; then
    INDUCTOR_CACHE=${INDUCTOR_CACHE:-$PWD/.inductor_cache}
    if [ ! -d "$INDUCTOR_CACHE" ] && [ -f "$INDUCTOR_CACHE.tgz" ]; then
        mkdir -p "$INDUCTOR_CACHE" && tar xzf "$INDUCTOR_CACHE.tgz" -C "$INDUCTOR_CACHE"
    fi
    cache_before=$(du -sm "$INDUCTOR_CACHE" 2>/dev/null | cut -f1)
    export TORCHINDUCTOR_CACHE_DIR=$INDUCTOR_CACHE TORCHINDUCTOR_FX_GRAPH_CACHE=1 TORCHINDUCTOR_AUTOGRAD_CACHE=1
    for what in latency train; do
        base=fast  # compiled trains inside the captured step on CUDA: compared with the captured step without it
        [ "$what" = train ] && [ "$DEVICE" = cuda ] && base=graphed
        # shellcheck disable=SC2086
        run_step 600 env TORCH_LOGS=recompiles $RGBX bench --device "$DEVICE" --backbone mit_b2 --fusion cmx \
            --modalities rgb depth --num-classes 40 --head-channels 512 --size "$SIZE" --train-size "$SIZE" \
            --train-batch "$BATCH" --what "$what" --options $base compiled --warmup "$WARMUP" --repeats "$REPEATS" \
            --json "$LOG_DIR/compile_$what.json" 2>&1 | tee -a "$LOG_DIR/compile.log"
        compile_rc=${PIPESTATUS[0]}
        [ "$compile_rc" = 0 ] || break
    done
    if [ -d "$INDUCTOR_CACHE" ]; then
        tar czf "$INDUCTOR_CACHE.tgz" -C "$INDUCTOR_CACHE" .
        echo "inductor cache: ${cache_before:-0} MB before, $(du -sm "$INDUCTOR_CACHE" | cut -f1) MB after;" \
            "$(du -h "$INDUCTOR_CACHE.tgz" | cut -f1) packed in $INDUCTOR_CACHE.tgz" | tee -a "$LOG_DIR/compile.log"
    fi
fi

elapsed=$(( $(date +%s) - start ))
table_or_tail() {  # the rich table of a bench log; the progress lines where it stopped before the table
    if grep -q '┏' "$1" 2>/dev/null; then sed -n '/┏/,$p' "$1"; else grep -v "^\[W\|Warning\|_warn_once" "$1" 2>/dev/null | tail -26; fi
}
{
    echo "# GPU speed: reference code vs rgbx, side by side"
    echo
    echo "Produced by \`benchmarks/gpu.sh\` (one command, STEPS=\"${STEPS}\"; ${elapsed} s on this run). Device: ${device_line}."
    if want compare; then
        echo "References: huaaaliu/RGBX_Semantic_Segmentation (CMX) and VCIP-RGBD/DFormer, imported from checkouts"
        echo "outside rgbx (see \`benchmarks/compare_reference.py --help\`); their weights converted into rgbx, outputs"
        echo "checked to agree before timing."
        echo
        echo "## Side by side"
        echo
        cat "$LOG_DIR/compare.md" 2>/dev/null || { echo "(compare_reference.py wrote no table; exit $compare_rc)"; \
            grep "done in\|FAILED\|skipped" "$LOG_DIR/compare.log" 2>/dev/null; }
        echo
        echo "Where each model's time went (seconds; for the suite's budget):"
        echo
        echo '```'
        grep "done in\|built in\|skipped\|total" "$LOG_DIR/compare.log" 2>/dev/null || true
        echo '```'
    fi
    if want tests; then
        echo
        echo "## GPU-only tests (\`pytest -m gpu\`)"
        echo
        echo '```'
        cat "$LOG_DIR/tests.log" 2>/dev/null || true
        echo '```'
    fi
    if want train; then
        echo
        echo "## \`rgbx train\`: the eager step against the captured one"
        echo
        cat "$LOG_DIR/train.md" 2>/dev/null || { echo '```'; tail -5 "$LOG_DIR/train.log" 2>/dev/null; echo '```'; }
    fi
    if want profile; then
        echo
        echo "## Where the fast training step's time goes (${PROFILE_TRAIN}, RGB-D, torch.profiler, 2 steps)"
        echo
        echo '```'
        grep -v "^\[W\|Warning\|_warn_once\|^USDT\|^ERROR:" "$LOG_DIR/profile.log" 2>/dev/null | tail -40 || true
        echo '```'
        echo
        echo "## Where DFormer-L's batch-1 inference time goes (RGB-D, fast set without the CUDA graph, 5 passes)"
        echo
        echo '```'
        grep -v "^\[W\|Warning\|_warn_once\|^USDT\|^ERROR:" "$LOG_DIR/profile_infer.log" 2>/dev/null | tail -40 || true
        echo '```'
        echo
        echo "DFormer-L's fused projections and folded layer scales (\`benchmarks/switch_ab.py fuse_projections\`):"
        echo
        echo '```'
        grep "latency\|training step\|Error" "$LOG_DIR/fuse_ab.log" 2>/dev/null | tail -4 || true
        echo '```'
        echo
        echo "DFormer-L's resizing and pooling as matrix products (\`benchmarks/switch_ab.py matmul_resize\`):"
        echo
        echo '```'
        grep "latency\|training step\|Error" "$LOG_DIR/matmul_ab.log" 2>/dev/null | tail -4 || true
        echo '```'
        echo
        echo "Test-time inference in batches, CMX-B2 (\`benchmarks/inference_batching.py\`):"
        echo
        echo '```'
        grep "windows\|flip\|Error" "$LOG_DIR/inference_batching.log" 2>/dev/null | tail -4 || true
        echo '```'
    fi
    if want sweep; then
        echo
        echo "## Which switch gives what (CMX MiT-B2, RGB-D)"
        echo
        echo '```'
        table_or_tail "$LOG_DIR/sweep.log"
        echo '```'
    fi
    if want data; then
        echo
        echo "## Input pipeline on this machine (RGB-D ${data_size/x/×}, \`rgbx bench --data\`)"
        echo
        echo '```'
        if grep -q 'input pipeline:' "$LOG_DIR/data.log"; then  # both tables, each with its title
            sed -n '/input pipeline:/,$p' "$LOG_DIR/data.log" | grep -v "Warning\|worker_number_rationality"
        else
            table_or_tail "$LOG_DIR/data.log"
        fi
        echo '```'
    fi
    if want compile; then
        echo
        echo "## torch.compile, blocks scope (CMX MiT-B2, RGB-D)"
        echo
        echo '```'
        grep -v "__recompiles\]\|^[VW][0-9]\{4\} " "$LOG_DIR/compile.log" > "$LOG_DIR/compile_table.log" 2>/dev/null
        table_or_tail "$LOG_DIR/compile_table.log"
        echo "recompilations (TORCH_LOGS=recompiles; why: compile.log in the logs), by function:"
        grep -o "Recompiling function [^ ]* in [^ ]*" "$LOG_DIR/compile.log" 2>/dev/null | sed 's|in .*/src/|in src/|' \
            | sort | uniq -c
        [ "$compile_rc" = 124 ] && echo "(did not finish within its time limit)"
        [ "$compile_rc" = 125 ] && echo "(skipped: no time left in the suite)"
        echo '```'
    fi
} > "$OUT_MD"
echo "wrote $OUT_MD in ${elapsed} s"
exit "$compare_rc"
