#!/usr/bin/env bash
# The GPU figures in BENCHMARKS.md, in one go: a GPU machine is lent for minutes, not hours.
#
#   CIFAR10N_DIR=/path/to/cifar10n bash bench/gpu.sh OUTDIR [SECONDS]
#
# Two streams side by side, each pinned to half the cores (one stream alone leaves the GPU
# mostly idle): the full 50,000-image audit on one half; on the other the CUDA tests,
# bench/embed.py on CUDA, then bench/predict.py variants at 50,000 images. Every step has a time
# limit inside the SECONDS budget (default 540), and results land in OUTDIR as they come, so a
# step that runs long costs only its own figures. OUTDIR gets at most eight files.
default_budget=540
source "$(dirname "$0")/gpu_common.sh"
step() { # step NAME LIMIT CPUS COMMAND...: run pinned, with a limit, log to OUTDIR/NAME.log
    local name=$1 limit=$2 cpus=$3 start=$SECONDS
    shift 3
    limit=$((limit < $(left) ? limit : $(left)))
    taskset -c "$cpus" timeout "$limit" "$@" >"$out/$name.log" 2>&1
    local status=$?
    echo "$name: exit $status after $((SECONDS - start)) s" | tee -a "$out/steps.txt"
    return $status
}
predict() { # predict ARGS...: one bench/predict.py run on the second half, appended to its log
    local start=$SECONDS
    taskset -c "$second" timeout "$(left)" "$py" -m bench.predict --device cuda "$@" \
        >>"$out/predict.log" 2>&1
    echo "predict $*: exit $? after $((SECONDS - start)) s" | tee -a "$out/steps.txt"
}

machine_facts >"$out/steps.txt" 2>&1

audit() {
    # Only on success: the committed file of an earlier run would pass for this one.
    step audit "$(left)" "$first" "$py" -m bench.audit --labels worse --n 50000 &&
        cp bench/results/audit-worse-50000.md "$out/audit.md"
}
others() {
    step tests 90 "$second" "$py" -m pytest --noconftest -q -p no:cacheprovider tests/test_cuda.py
    step embed 170 "$second" "$py" -m bench.embed --device cuda --small 5000 --large 10000 \
        --cifar 20000 --batch-size 256 --repeats 3 --out "$out/embed-cuda.md"
    # Fewer epochs than the audit's 15: 20 and 30 were worse than 15 (BENCHMARKS.md).
    predict --n 50000 --labels worse --strategies cnn_kfold --width 64 --epochs 12
    predict --n 50000 --labels worse --strategies cnn_kfold --width 64 --epochs 10
    predict --n 50000 --labels worse --strategies patch_cnn
    cp .bench/predict-results.jsonl "$out/" 2>/dev/null
}
audit &
others &
wait
echo "all: done after $SECONDS s" | tee -a "$out/steps.txt"
