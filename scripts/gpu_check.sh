#!/usr/bin/env bash
# Every GPU check in one command, for a short lease on a GPU machine (about 8 minutes on an H100-class
# GPU): the environment (scripts/gpu_env.sh: offline from .whl when there is no venv), the GPU and the
# versions, the CUDA tests (tests/test_cuda.py), then the GPU benchmark (python -m ndt.bench.gpu, under
# 5 minutes). Each part's output goes to the terminal and to $OUT (default results/gpu_check): versions.txt,
# cuda_tests.log, bench_gpu.log. A failing test does not stop the benchmark; the exit status is the
# tests' or else the benchmark's. Arguments go to pytest (e.g. -x, or -k NAME).
set -uo pipefail

cd "$(dirname "$0")/.." || exit 2
if ! command -v nvidia-smi >/dev/null || ! nvidia-smi -L >/dev/null 2>&1; then
    echo "gpu_check.sh: no NVIDIA GPU visible (nvidia-smi fails or is missing); run it on a CUDA machine" >&2
    exit 2
fi
# shellcheck source=scripts/gpu_env.sh
source scripts/gpu_env.sh || exit 2
OUT=${OUT:-results/gpu_check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1

{
    nvidia-smi -L
    "$PY" -c "import sys, torch, transformers, numpy; print('python', sys.version.split()[0], '| torch', torch.__version__, 'CUDA', torch.version.cuda, '| transformers', transformers.__version__, '| numpy', numpy.__version__); print(torch.cuda.get_device_name(0), torch.cuda.get_device_capability(0), torch.cuda.device_count(), 'device(s)')"
} 2>&1 | tee "$OUT/versions.txt"

SECONDS=0
"$PY" -m pytest -q -p no:cacheprovider -o addopts="-ra" tests/test_cuda.py "$@" 2>&1 | tee "$OUT/cuda_tests.log"
tests=${PIPESTATUS[0]}
echo "gpu_check.sh: CUDA tests exit $tests in ${SECONDS} s" | tee -a "$OUT/cuda_tests.log"

"$PY" -m ndt.bench.gpu 2>&1 | tee "$OUT/bench_gpu.log"
bench=${PIPESTATUS[0]}
echo "gpu_check.sh: tests exit $tests, bench-gpu exit $bench, ${SECONDS} s in all"
[ "$tests" -ne 0 ] && exit "$tests"
exit "$bench"
