"""How a device does its arithmetic: ``trainer.tf32`` and ``trainer.deterministic``, set and recorded.

`numerics(tf32, deterministic, device)` sets torch's process-wide flags for one run (before its model
is built), yields what it set for ``run.json``, and puts the previous values back afterwards, so that
runs sharing a process (tests, benchmarks, a reused launcher worker) do not inherit each other's.

- ``tf32``: TF32 tensor cores for float32 matmuls (cuBLAS) and convolutions (cuDNN) on Ampere and
  later GPUs: a 10-bit mantissa in the products, ~1e-3 relative error, several times faster. Off by
  default (torch leaves cuDNN's TF32 on unless told otherwise: it is turned off explicitly).
- ``deterministic``: cuDNN autotuning off (``cudnn.benchmark``: it times candidate algorithms at the
  first call of each shape and may pick different ones in different processes) and deterministic
  algorithms on (``cudnn.deterministic``, ``torch.use_deterministic_algorithms(warn_only=True)``: an op
  without a deterministic CUDA kernel warns instead of failing the run), with
  ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` when it is unset (cuBLAS needs it for reproducible results; it
  takes effect for cuBLAS handles created after it, so set it in the environment when one process
  runs several CUDA runs). ``false`` lets cuDNN pick the fastest algorithm per shape.

With ``warn_only`` such an op runs its non-deterministic kernel: `nondeterministic_ops` collects the
alerts of a run, and ``run.json`` lists them (``nondeterministic_ops``, and each segment its own), so that a run
recorded as deterministic says where it was not (memory-efficient attention's backward, for one,
keeps its non-deterministic split-key path unless ``warn_only`` is off; failing the run instead would
refuse models whose ops have no deterministic CUDA kernel, such as adaptive average pooling's backward).

On the CPU neither changes anything: torch's CPU kernels are deterministic for a given thread count,
so `use_deterministic_algorithms` (which also fills every new tensor, a cost for nothing there) is left
off and only the (inert) backend flags are set and recorded.

Neither is part of the experiment signature (`ndt.running.train.EXPERIMENT_KEYS`): like
``trainer.device`` they choose how a device rounds, not what is computed, and they are inert on the
CPU, where a resume must not be refused for them. Each segment of ``run.json`` records them, and a run
resumed under other settings is warned about (`ndt.running.train.warn_if_mixed`), as one resumed on
another device is.
"""

from __future__ import annotations

import contextlib
import os
import re
import warnings
from collections.abc import Iterator
from typing import Any

import torch

#: The cuBLAS workspace setting that makes its results reproducible (CUDA docs, "Results reproducibility").
CUBLAS_WORKSPACE = ":4096:8"


def current_numerics() -> dict[str, Any]:
    """The process-wide settings that decide how float32 arithmetic is done now (for ``run.json``).

    Keys: tf32_matmul, tf32_cudnn, cudnn_benchmark, cudnn_deterministic, deterministic_algorithms,
    deterministic_warn_only, float32_matmul_precision, cublas_workspace_config (None when unset).
    """
    return {
        "tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32),
        "tf32_cudnn": bool(torch.backends.cudnn.allow_tf32),
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
        "cudnn_deterministic": bool(torch.backends.cudnn.deterministic),
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "deterministic_warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
        # torch's newer spelling of the TF32 switches (absent from older releases)
        "fp32_precision_matmul": getattr(torch.backends.cuda.matmul, "fp32_precision", None),
        "fp32_precision_cudnn": getattr(torch.backends.cudnn, "fp32_precision", None),
    }


def apply_numerics(tf32: bool, deterministic: bool, device: torch.device) -> dict[str, Any]:
    """Set the flags for a run on `device`; return what is in effect afterwards (`current_numerics`)."""
    torch.backends.cuda.matmul.allow_tf32 = bool(tf32)
    torch.backends.cudnn.allow_tf32 = bool(tf32)
    torch.backends.cudnn.benchmark = not deterministic
    torch.backends.cudnn.deterministic = bool(deterministic)
    on_cuda = device.type == "cuda"
    if on_cuda and deterministic and "CUBLAS_WORKSPACE_CONFIG" not in os.environ:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = CUBLAS_WORKSPACE
    enable = on_cuda and bool(deterministic)
    torch.use_deterministic_algorithms(enable, warn_only=enable)
    return current_numerics()


#: How torch words a determinism alert in warn_only mode: "<op> does not have a deterministic
#: implementation, but you set ..." (ATen's alertNotDeterministic), or an op's own notice that it
#: "defaults to a non-deterministic algorithm" (memory-efficient attention).
_ALERT = re.compile(r"^(?P<op>.+?) does not have a deterministic implementation|non-deterministic algorithm")


@contextlib.contextmanager
def nondeterministic_ops() -> Iterator[set[str]]:
    """The ops that raised a determinism alert in the block (a set, filled as they happen).

    Each alert is recorded (the op's name, or the notice's first sentence) and shown once per block;
    other warnings pass through unchanged. Warnings torch itself issues only once per process are
    seen by the first block they occur in.
    """
    seen: set[str] = set()
    with warnings.catch_warnings():
        previous = warnings.showwarning
        # "always": Python's once-per-location registry would hide an alert already shown by an
        # earlier run in this process; the set below shows each one once per block instead.
        warnings.filterwarnings("always", message=".*deterministic", category=UserWarning)

        def show(
            message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None
        ) -> None:
            text = str(message)
            match = _ALERT.search(text)
            if match is None:
                previous(message, category, filename, lineno, file, line)
                return
            key = match.group("op") or text.split(".")[0]
            if key not in seen:
                seen.add(key)
                previous(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        yield seen


@contextlib.contextmanager
def numerics(tf32: bool, deterministic: bool, device: torch.device) -> Iterator[dict[str, Any]]:
    """`apply_numerics` for the block, then the previous settings back (the environment variable too)."""
    before = current_numerics()
    env_before = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    try:
        yield apply_numerics(tf32, deterministic, device)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before["tf32_matmul"]
        torch.backends.cudnn.allow_tf32 = before["tf32_cudnn"]
        torch.backends.cudnn.benchmark = before["cudnn_benchmark"]
        torch.backends.cudnn.deterministic = before["cudnn_deterministic"]
        torch.use_deterministic_algorithms(
            before["deterministic_algorithms"], warn_only=before["deterministic_warn_only"]
        )
        torch.set_float32_matmul_precision(before["float32_matmul_precision"])
        if env_before is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
        else:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = env_before
