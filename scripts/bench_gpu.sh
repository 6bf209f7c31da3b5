#!/usr/bin/env bash
# The GPU benchmark on a bare CUDA machine: `scripts/bench_gpu.sh` from the repository root.
#
# Makes the environment (scripts/gpu_env.sh: $VENV with ndt[dev,integrations] under constraints.txt,
# or offline from the wheels in .whl on a CUDA image without a registry), then runs
# `python -m ndt.bench.gpu` (arguments are passed on: e.g. `scripts/bench_gpu.sh overhead`). It checks
# for a CUDA GPU before installing anything, and exits non-zero without one. `make bench-gpu` runs this
# script; scripts/gpu_check.sh runs it after the CUDA tests.
set -euo pipefail

cd "$(dirname "$0")/.."

if ! command -v nvidia-smi >/dev/null || ! nvidia-smi -L >/dev/null 2>&1; then
    echo "bench_gpu.sh: no NVIDIA GPU visible (nvidia-smi fails or is missing); run it on a CUDA machine" >&2
    exit 2
fi
nvidia-smi -L

# shellcheck source=scripts/gpu_env.sh
source scripts/gpu_env.sh

# Fails with a message (exit 2) when torch sees no CUDA device, e.g. a CPU-only torch wheel.
exec "$PY" -m ndt.bench.gpu "$@"
