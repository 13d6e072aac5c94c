# Shared setup of the GPU scripts (bench/gpu.sh, bench/gpu_predict.sh), sourced with their
# arguments after setting `default_budget`: OUTDIR and the SECONDS budget, the Python to run,
# the two halves of the cores (`first`, `second`; one stream alone leaves the GPU mostly idle),
# `left` (seconds of the budget still unspent) and `machine_facts` (GPU, cores, torch).
set -u
out=${1:?usage: $0 OUTDIR [SECONDS]}
budget=${2:-$default_budget}
py=${PYTHON:-python3}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
cores=$(nproc)
half=$((cores / 2))
first="0-$((half - 1))"
second="$half-$((cores - 1))"

left() { local s=$((budget - SECONDS - 5)); echo $((s > 1 ? s : 1)); }
machine_facts() {
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    echo "$cores cores"
    "$py" -c 'import torch; print("torch", torch.__version__)'
}
