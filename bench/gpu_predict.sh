#!/usr/bin/env bash
# K-fold CNN probabilities on a GPU machine, kept for scoring on the development machine:
#
#   CIFAR10N_DIR=/path/to/cifar10n bash bench/gpu_predict.sh OUTDIR [SECONDS]
#   python -m bench.saved_quality OUTDIR        # later, anywhere: the check against cleanlab
#
# The CUDA tests first, then `cnn_kfold` (width 64, 15 epochs, the audit's GPU recipe) on all
# 50,000 images with seeds 0 and 1, `worse` and `aggre` side by side on half the cores each
# (bench/predict.py --seed 0 --repeats 2 --cross-fittings 1: one cross-fitting per seed, and
# their mean scored, which is what `cnn_kfold` now returns by default).
# OUTDIR gets eight files: steps.txt, tests.log, one log per label column, four .npz.
set -u
out=${1:?usage: bench/gpu_predict.sh OUTDIR [SECONDS]}
budget=${2:-480}
py=${PYTHON:-python3}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
cores=$(nproc)
half=$((cores / 2))
left() { local s=$((budget - SECONDS)); echo $((s > 1 ? s : 1)); }
{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    echo "$cores cores"
    "$py" -c 'import torch; print("torch", torch.__version__)'
    "$py" -c 'from bench import cifar; print("images", cifar.load_images().shape)'
} >"$out/steps.txt" 2>&1
predict() { # predict COLUMN CPUS: both seeds of one label column, pinned to CPUS
    taskset -c "$2" timeout "$(left)" "$py" -m bench.predict --device cuda --n 50000 \
        --labels "$1" --strategies cnn_kfold --width 64 --epochs 15 --seed 0 --repeats 2 \
        --cross-fittings 1 --save "$out" >"$out/$1.log" 2>&1
    echo "$1: exit $? at $SECONDS s" >>"$out/steps.txt"
}
first() {
    taskset -c "0-$((half - 1))" timeout 100 "$py" -m pytest --noconftest -q -p no:cacheprovider \
        tests/test_cuda.py >"$out/tests.log" 2>&1
    echo "tests: exit $? at $SECONDS s" >>"$out/steps.txt"
    predict worse "0-$((half - 1))"
}
first &
predict aggre "$half-$((cores - 1))" &
wait
echo "done at $SECONDS s" >>"$out/steps.txt"
