#!/usr/bin/env bash
# The benchmark suite on one CUDA GPU, as one script sized for a short slot on a lent machine
# (about 7 minutes on an H100/H200, most of it the 2-minute quality run and process start-ups):
#
#   bash benchmarks/run_gpu.sh OUT_DIR [CORPUS]
#
# 1. the GPU tests (tests/test_cuda.py) and the CPU equivalence tests of the CUDA-oriented paths;
# 2. bench_train.py on cuda in fp32 (with peak GPU memory), then in bf16 autocast;
# 3. bench_sample.py on cuda;
# 4. bench_quality.py: 2 minutes of the default `charrnn train` recipe on cuda.
# Each stage has its own time limit, so one that hangs does not cost the others. Everything is
# written to OUT_DIR: log.txt (all output) and one JSON per benchmark. CORPUS defaults to the
# embedded Tiny Shakespeare; pass the canonical one for figures comparable with the README's.
set -u
out=${1:?usage: bash benchmarks/run_gpu.sh OUT_DIR [CORPUS]}
corpus=${2:-}
py=${PYTHON:-python3}
here=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$out"
log="$out/log.txt"
export PYTHONUNBUFFERED=1 PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}"
cd "$here" || exit 1

stage() {  # stage NAME SECONDS COMMAND...
    local name=$1 limit=$2
    shift 2
    echo "== $name ($(date -u +%H:%M:%S), limit ${limit}s): $*" | tee -a "$log"
    timeout "$limit" "$@" 2>&1 | tee -a "$log"
    echo "== $name: exit ${PIPESTATUS[0]}" | tee -a "$log"
}

{
    date -u
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit --format=csv
    "$py" -c "import torch; print('torch', torch.__version__, '| CUDA', torch.version.cuda, '| cuDNN', torch.backends.cudnn.version(), '|', torch.cuda.get_device_name())"
} 2>&1 | tee -a "$log"

corpus_flag=()
[ -n "$corpus" ] && corpus_flag=(--corpus "$corpus")

stage tests 200 "$py" -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_step.py tests/test_precision_compile.py
# GPU steps take milliseconds: time 200 of them per repetition (the CPU defaults are 8-100).
stage train-fp32 200 "$py" benchmarks/bench_train.py --device cuda --steps 200 --warmup 5 "${corpus_flag[@]}" --json "$out/train-cuda-fp32.json"
stage train-bf16 120 "$py" benchmarks/bench_train.py --device cuda --dtype bf16 --steps 200 --warmup 5 --no-memory "${corpus_flag[@]}" --json "$out/train-cuda-bf16.json"
stage sample 90 "$py" benchmarks/bench_sample.py --device cuda --length 1000 --json "$out/sample-cuda.json"
stage quality 200 "$py" benchmarks/bench_quality.py --budgets 2m --train-args "--device cuda" "${corpus_flag[@]}" --json "$out/quality-cuda.json"
echo "== done $(date -u +%H:%M:%S)" | tee -a "$log"
