#!/usr/bin/env bash
# The GPU figures in BENCHMARKS.md, in one go: a GPU machine is lent for minutes, not hours.
#
#   CIFAR10N_DIR=/path/to/cifar10n bash bench/gpu.sh OUTDIR [SECONDS]
#
# Runs the CUDA tests, bench/embed.py on CUDA, then bench/predict.py as two streams side by side,
# each pinned to half the cores (the small CNN leaves the GPU mostly idle, so one stream alone
# would waste it). Each step has a time limit inside the SECONDS budget (default 540), and results
# land in OUTDIR as they come, so a step that runs long costs only its own figures.
set -u
out=${1:?usage: bench/gpu.sh OUTDIR [SECONDS]}
budget=${2:-540}
py=${PYTHON:-python3}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
cores=$(nproc)
half=$((cores / 2))

left() { local s=$((budget - SECONDS - 10)); echo $((s > 1 ? s : 1)); }
step() { # step NAME LIMIT COMMAND...: run with a limit, log to OUTDIR/NAME.log
    local name=$1 limit=$2 start=$SECONDS
    shift 2
    timeout "$limit" "$@" >"$out/$name.log" 2>&1
    echo "$name: exit $? after $((SECONDS - start)) s" | tee -a "$out/steps.txt"
}
predict() { # predict CPUS ARGS...: one bench/predict.py run on the given cores
    local cpus=$1
    shift
    taskset -c "$cpus" timeout "$(left)" "$py" -m bench.predict --device cuda "$@"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$out/steps.txt"
"$py" -c 'import torch; print("torch", torch.__version__)' >>"$out/steps.txt" 2>&1
step tests 120 "$py" -m pytest --noconftest -q -p no:cacheprovider tests/test_cuda.py
step embed 200 "$py" -m bench.embed --device cuda --small 5000 --large 2000 --cifar 10000 \
    --batch-size 256 --repeats 3 --out "$out/embed-cuda.md"

stream_50k() { # the audit's GPU recipe first, then the narrow network for comparison
    predict "0-$((half - 1))" --n 50000 --labels worse,aggre --strategies cnn_kfold \
        --width 64 --epochs 15
    predict "0-$((half - 1))" --n 50000 --labels worse,aggre --strategies cnn_kfold
}
stream_10k() {
    predict "$half-$((cores - 1))" --n 10000 --labels worse,aggre \
        --strategies patch_heads,cnn_kfold,cnn_crossfit,cnn_once_heads
    predict "$half-$((cores - 1))" --n 10000 --labels worse --strategies cnn_kfold \
        --width 64 --epochs 15
    predict "$half-$((cores - 1))" --n 10000 --labels worse,aggre --strategies patch_cnn
}
step cifar 120 "$py" -c 'from bench import cifar; print(cifar.load_images().shape)'
start=$SECONDS
stream_50k >"$out/predict-50k.log" 2>&1 &
stream_10k >"$out/predict-10k.log" 2>&1 &
wait
echo "predict streams: done after $((SECONDS - start)) s" | tee -a "$out/steps.txt"
cp .bench/predict-results.jsonl "$out/" 2>/dev/null
