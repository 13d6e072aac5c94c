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
default_budget=480
source "$(dirname "$0")/gpu_common.sh"
{
    machine_facts
    "$py" -c 'from bench import cifar; print("images", cifar.load_images().shape)'
} >"$out/steps.txt" 2>&1
predict() { # predict COLUMN CPUS: both seeds of one label column, pinned to CPUS
    taskset -c "$2" timeout "$(left)" "$py" -m bench.predict --device cuda --n 50000 \
        --labels "$1" --strategies cnn_kfold --width 64 --epochs 15 --seed 0 --repeats 2 \
        --cross-fittings 1 --save "$out" >"$out/$1.log" 2>&1
    echo "$1: exit $? at $SECONDS s" >>"$out/steps.txt"
}
tests_then_worse() {
    taskset -c "$first" timeout 100 "$py" -m pytest --noconftest -q -p no:cacheprovider \
        tests/test_cuda.py >"$out/tests.log" 2>&1
    echo "tests: exit $? at $SECONDS s" >>"$out/steps.txt"
    predict worse "$first"
}
tests_then_worse &
predict aggre "$second" &
wait
echo "done at $SECONDS s" >>"$out/steps.txt"
