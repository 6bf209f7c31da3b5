"""Checkpoints: everything a run needs to continue exactly where it stopped.

A checkpoint ``checkpoints/step_000100.pt`` is taken after 100 optimizer steps (steps 0..99 done) and
holds the model and optimizer state dicts, the torch RNG states (CPU and CUDA: dropout), the data
sampler's position and the elapsed time. Files are written to a hidden name and renamed, so a kill
mid-write leaves the previous checkpoint intact. They load with ``weights_only=True``: a results
folder from elsewhere cannot run code.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch

from ndt.storage.layout import CHECKPOINT_DIR

_NAME = re.compile(r"^step_(\d+)\.pt$")


def checkpoint_path(run_dir: str | os.PathLike[str], step: int) -> Path:
    """Path of the checkpoint taken after `step` optimizer steps."""
    return Path(run_dir) / CHECKPOINT_DIR / f"step_{step:06d}.pt"


def list_checkpoints(run_dir: str | os.PathLike[str]) -> list[tuple[int, Path]]:
    """(steps done, path) of every checkpoint of a run, oldest first."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return sorted(found)


def latest_checkpoint(run_dir: str | os.PathLike[str]) -> tuple[int, Path] | None:
    """The newest checkpoint, or None."""
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def save_checkpoint(
    run_dir: str | os.PathLike[str], step: int, state: dict[str, Any], keep_last: int | None = None
) -> Path:
    """Write `state` atomically as the checkpoint after `step` steps; prune to `keep_last` if set."""
    path = checkpoint_path(run_dir, step)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    if keep_last is not None:
        for _, old in list_checkpoints(run_dir)[:-keep_last]:
            old.unlink()
    return path


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` (tensors and plain containers only)."""
    state: dict[str, Any] = torch.load(path, map_location=map_location, weights_only=True)
    return state
