# shellcheck shell=bash
# Sourced by scripts/bench_gpu.sh and scripts/gpu_check.sh (from the repository root): sets PY to a Python
# that imports ndt, torch with CUDA, and everything the GPU checks need. Three cases, in this order:
#
# 1. $VENV (default .venv) made by this script or `make install-integrations`: used as it is.
# 2. Offline, on a CUDA image that has torch but no package registry (the lent GPU machines): $WHEELS
#    (default .whl, made beforehand by scripts/gpu_wheels.sh on a machine with one) holds the pure-Python
#    packages the image lacks. They are installed with --no-index --no-deps into $SITE, and the
#    repository and $SITE go on PYTHONPATH: ndt runs from this source tree under the image's $PYTHON,
#    with the image's torch, not the pinned one.
# 3. Online: creates $VENV and installs ndt[dev,integrations] under constraints.txt.
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
WHEELS=${WHEELS:-.whl}
SITE=${SITE:-/tmp/ndt-site}

if [ -f "$VENV/.integrations" ]; then
    PY="$VENV/bin/python"
elif compgen -G "$WHEELS/*.whl" >/dev/null; then
    PY=$PYTHON
    # What the image must already hold (ndt's requirements that are not in the wheels, and GPT-2's).
    if ! "$PY" -c "import torch, torchvision, numpy, scipy, pandas, pyarrow, sklearn, threadpoolctl, matplotlib, tqdm, joblib, yaml, transformers, pytest" 2>/dev/null; then
        echo "gpu_env.sh: $PY lacks a package ndt needs:" >&2
        "$PY" -c "import torch, torchvision, numpy, scipy, pandas, pyarrow, sklearn, threadpoolctl, matplotlib, tqdm, joblib, yaml, transformers, pytest" >&2 || true
        echo "gpu_env.sh: add its wheel to $WHEELS (scripts/gpu_wheels.sh NAME), or set PYTHON to a Python that has it" >&2
        return 2
    fi
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$WHEELS"/*.whl || return 2
    export PYTHONPATH="$PWD:$SITE${PYTHONPATH:+:$PYTHONPATH}"
else
    { [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"; } || return 2
    "$VENV/bin/python" -m pip install --upgrade pip || return 2
    "$VENV/bin/python" -m pip install -c constraints.txt -e ".[dev,integrations]" || return 2
    touch "$VENV/.integrations"
    PY="$VENV/bin/python"
fi
export PY
