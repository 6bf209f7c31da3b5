#!/usr/bin/env bash
# Run here, where a package registry is reachable, before a GPU check on an offline CUDA machine:
# writes into $WHEELS (default .whl, git-ignored) the wheels of ndt's pure-Python requirements that a
# CUDA image with torch, transformers and the scientific stack typically lacks (Hydra and its launchers,
# OmegaConf and its parser, submitit, Captum), at the versions installed in $VENV (default .venv, so
# the GPU runs what the tests here ran), plus any NAME given as an argument. About 2 MB. Then
# scripts/gpu_check.sh (or bench_gpu.sh) on the GPU machine installs them offline: carry $WHEELS with
# the working tree.
set -euo pipefail

cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
WHEELS=${WHEELS:-.whl}
PACKAGES=(hydra-core omegaconf antlr4-python3-runtime hydra-joblib-launcher hydra-submitit-launcher submitit captum "$@")

mkdir -p "$WHEELS"
pins=()
for name in "${PACKAGES[@]}"; do
    version=$("$VENV/bin/python" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name")
    pins+=("$name==$version")
done
# pip wheel takes a published wheel as it is and builds one from an sdist (antlr4-python3-runtime 4.9.3
# has no wheel); all of these are pure Python (py3-none-any), so they install on any platform.
"$VENV/bin/python" -m pip wheel -q --no-deps -w "$WHEELS" "${pins[@]}"
ls -l "$WHEELS"
