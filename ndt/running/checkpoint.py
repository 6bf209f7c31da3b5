"""Checkpoints: everything a run needs to continue exactly where it stopped.

A checkpoint ``checkpoints/step_000100.pt`` is taken after 100 optimizer steps (steps 0..99 done) and
holds the model and optimizer state dicts, the torch RNG states (CPU and CUDA: dropout), the data
sampler's position and the elapsed time. Files are written to a hidden name, fsynced and renamed
(`ndt.storage.durable`), so a kill or a power loss mid-write leaves the previous checkpoint intact.
They load with ``weights_only=True``: a results folder from elsewhere cannot run code.

A checkpoint is valid when it loads and holds every key of `REQUIRED_KEYS` with the step its name
says; `latest_valid_checkpoint` moves an invalid one to ``set_aside/checkpoints/`` with a warning
and falls back to the one before (a zip archive cut short fails to load: its directory is at the end).
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from collections.abc import Collection
from pathlib import Path
from typing import Any

import torch

from ndt.storage.durable import fsync_dir, replace_durably, unlink_durably
from ndt.storage.layout import CHECKPOINT_DIR, SET_ASIDE_DIR

log = logging.getLogger(__name__)

_NAME = re.compile(r"^step_(\d+)\.pt$")

#: Keys a checkpoint must hold to be resumed from.
REQUIRED_KEYS = ("model", "optimizer", "sampler", "rng_cpu", "step", "elapsed_s")


class InvalidCheckpointError(ValueError):
    """A checkpoint file that cannot be loaded or lacks what a resume needs."""


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
    """The newest checkpoint, or None (not validated: see `latest_valid_checkpoint`)."""
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def load_valid_checkpoint(
    path: str | os.PathLike[str], step: int, map_location: str | torch.device = "cpu"
) -> dict[str, Any]:
    """Load a checkpoint and check it is one a resume can use.

    Raises:
        InvalidCheckpointError: it does not load, lacks a key of `REQUIRED_KEYS`, or holds another step.
    """
    try:
        payload = load_checkpoint(path, map_location=map_location)
    except Exception as err:  # a damaged zip raises RuntimeError, EOFError, pickle errors, ...
        raise InvalidCheckpointError(f"{path} does not load ({type(err).__name__}: {err})") from err
    if not isinstance(payload, dict) or (missing := [k for k in REQUIRED_KEYS if k not in payload]):
        raise InvalidCheckpointError(
            f"{path} lacks {missing if isinstance(payload, dict) else REQUIRED_KEYS}"
        )
    if int(payload["step"]) != step:
        raise InvalidCheckpointError(f"{path} holds step {payload['step']}, not {step}")
    return payload


def set_aside(run_dir: str | os.PathLike[str], path: Path) -> Path:
    """Move a damaged file of the run under ``set_aside/`` (same relative path; never overwrites)."""
    rel = path.relative_to(Path(run_dir))
    dest = Path(run_dir) / SET_ASIDE_DIR / rel
    dest.parent.mkdir(parents=True, exist_ok=True)
    n = 1
    while dest.exists():
        dest = dest.with_name(f"{path.name}.{n}")
        n += 1
    os.replace(path, dest)
    fsync_dir(path.parent)
    fsync_dir(dest.parent)
    return dest


def latest_valid_checkpoint(
    run_dir: str | os.PathLike[str],
    map_location: str | torch.device = "cpu",
    at_most: int | None = None,
) -> tuple[int, Path, dict[str, Any]] | None:
    """The newest checkpoint that loads, with its payload; invalid newer ones are set aside.

    Args:
        run_dir: the run directory.
        map_location: where tensors load.
        at_most: consider only checkpoints of at most this many steps (newer ones are left alone).

    Returns:
        (steps done, path, payload), or None when no valid checkpoint remains.
    """
    for step, path in reversed(list_checkpoints(run_dir)):
        if at_most is not None and step > at_most:
            continue
        try:
            return step, path, load_valid_checkpoint(path, step, map_location)
        except InvalidCheckpointError as err:
            dest = set_aside(run_dir, path)
            msg = f"checkpoint {path.name} is invalid ({err}); moved to {dest} and using the one before"
            log.warning("%s", msg)
            warnings.warn(msg, RuntimeWarning, stacklevel=2)
    return None


def save_checkpoint(
    run_dir: str | os.PathLike[str],
    step: int,
    state: dict[str, Any],
    keep_last: int | None = None,
    keep: Collection[int] = (),
) -> Path:
    """Write `state` atomically and durably as the checkpoint after `step` steps; prune to `keep_last`.

    `keep`: steps whose checkpoints survive the pruning (see `prune_checkpoints`).
    """
    path = checkpoint_path(run_dir, step)
    path.parent.mkdir(parents=True, exist_ok=True)
    replace_durably(lambda tmp: torch.save(state, tmp), path)
    prune_checkpoints(run_dir, keep_last, keep)
    return path


def prune_checkpoints(
    run_dir: str | os.PathLike[str], keep_last: int | None, keep: Collection[int] = ()
) -> None:
    """Delete all but the `keep_last` newest checkpoints (None keeps all), and those of steps in `keep`.

    `keep` holds the checkpoint a resume would need while newer rows are still on their way to disk
    (`ndt.running.train._train`: the spectra worker writes them behind the checkpoints).
    """
    if keep_last is None:
        return
    for step, old in list_checkpoints(run_dir)[:-keep_last]:
        if step not in keep:
            unlink_durably(old)


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` (tensors and plain containers only)."""
    state: dict[str, Any] = torch.load(path, map_location=map_location, weights_only=True)
    return state
