#!/usr/bin/env bash
# The GPU benchmark on a bare CUDA machine: `scripts/bench_gpu.sh` from the repository root.
#
# Creates $VENV (default .venv) and installs ndt with its dev and integrations extras (transformers for
# GPT-2 small) under constraints.txt, unless that is done already, then runs `python -m ndt.bench.gpu`
# (arguments are passed on: e.g. `scripts/bench_gpu.sh overhead`). It checks for a CUDA GPU before
# installing anything, and exits non-zero without one. `make bench-gpu` runs this script.
set -euo pipefail

cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}

if ! command -v nvidia-smi >/dev/null || ! nvidia-smi -L >/dev/null 2>&1; then
    echo "bench_gpu.sh: no NVIDIA GPU visible (nvidia-smi fails or is missing); run it on a CUDA machine" >&2
    exit 2
fi
nvidia-smi -L

if [ ! -f "$VENV/.integrations" ]; then
    [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --upgrade pip
    "$VENV/bin/python" -m pip install -c constraints.txt -e ".[dev,integrations]"
    touch "$VENV/.integrations"
fi

# Fails with a message (exit 2) when torch sees no CUDA device, e.g. a CPU-only torch wheel.
exec "$VENV/bin/python" -m ndt.bench.gpu "$@"
