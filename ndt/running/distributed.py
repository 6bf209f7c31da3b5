"""``trainer.strategy=ddp``: the runner's training on several processes (torchrun, or SLURM tasks).

Launch::

    torchrun --nproc_per_node=2 -m ndt.run trainer.strategy=ddp                     # one machine
    python -m ndt.run -m hydra/launcher=slurm hydra.launcher.tasks_per_node=4 trainer.strategy=ddp

Every process runs the same job. The model is wrapped in ``DistributedDataParallel``; each optimizer
step takes the run's usual batch (``trainer.batch_size`` is the global batch, drawn by the same seeded
sampler on every rank) and gives each rank its contiguous share, so the averaged gradient is the one
of the whole batch and the run's numbers match a single process up to float rounding. The tracker
measures together (`ndt.measure.distributed`); only global rank 0 writes files (run.json, checkpoints,
heartbeat, Parquet, COMPLETE). Every rank resumes from the same checkpoint.
"""

from __future__ import annotations

import atexit
import functools
import os
import random
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch import nn

STRATEGIES = ("single", "ddp")

F = TypeVar("F", bound=Callable[..., Any])


def world() -> tuple[int, int]:
    """(global rank, world size) of this process: from the process group, or before it exists from
    torchrun's RANK / WORLD_SIZE (so that only rank 0 takes the run lock); (0, 1) otherwise."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def is_main() -> bool:
    """Whether this process writes the run's files (global rank 0, or the only process)."""
    return world()[0] == 0


def main_only(fn: F) -> F:
    """`fn` on global rank 0; a no-op returning None on the other ranks."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs) if is_main() else None

    return wrapper  # type: ignore[return-value]


def adopt_launcher_ranks(strategy: str) -> None:
    """Under ``trainer.strategy=ddp`` in SLURM tasks (no torchrun), set the variables torchrun would
    (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT); a no-op otherwise.

    Read from SLURM's own variables (submitit's `SlurmJobEnvironment` parses them), so this works in
    the Hydra SLURM launcher's jobs and under a plain ``srun`` alike. MASTER_ADDR is the job's first
    node; MASTER_PORT, unless set, one drawn from the job id (the same in every task of the job).
    Called before anything rank-dependent: `world` reads RANK before the process group exists, and
    without it every task took itself for rank 0, so one held the run lock and the others were
    refused while rank 0 waited for them in ``init_process_group``.
    """
    if strategy != "ddp" or "RANK" in os.environ or "SLURM_NTASKS" not in os.environ:
        return
    from submitit.slurm.slurm import SlurmJobEnvironment

    job = SlurmJobEnvironment()
    port = os.environ.get("MASTER_PORT") or str(random.Random(job.job_id).randint(20_000, 60_000))
    os.environ.update(
        RANK=str(job.global_rank),
        WORLD_SIZE=str(job.num_tasks),
        LOCAL_RANK=str(job.local_rank),
        LOCAL_WORLD_SIZE=str(job.num_tasks // job.num_nodes),
        MASTER_ADDR=job.hostnames[0],
        MASTER_PORT=port,
    )


def init_strategy(strategy: str, device_name: str) -> str:
    """Start the process group for ``trainer.strategy=ddp`` (idempotent); return the device to use.

    Args:
        strategy: ``single`` or ``ddp``.
        device_name: ``trainer.device``; under ddp on CUDA each process takes ``cuda:<LOCAL_RANK>``.

    Raises:
        ValueError: an unknown strategy, or ddp without torchrun/SLURM's environment.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown trainer.strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    if strategy == "single":
        return device_name
    adopt_launcher_ranks(strategy)
    missing = [k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise ValueError(
            f"trainer.strategy=ddp needs the environment torchrun sets ({', '.join(missing)} missing): launch "
            "with `torchrun --nproc_per_node=N -m ndt.run trainer.strategy=ddp`, or through SLURM with "
            "hydra.launcher.tasks_per_node=N"
        )
    cuda = device_name.startswith("cuda") or (device_name == "auto" and torch.cuda.is_available())
    if cuda:
        device_name = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
        # Each rank's current device its own GPU before NCCL starts: otherwise every rank opens a
        # context on GPU 0 and NCCL's barriers and object collectives run there.
        torch.cuda.set_device(torch.device(device_name))
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if cuda else "gloo")
        atexit.register(
            lambda: torch.distributed.is_initialized() and torch.distributed.destroy_process_group()
        )
    return device_name


def wrap(model: nn.Module) -> nn.Module:
    """``DistributedDataParallel(model)`` when a process group of several processes runs; else `model`."""
    if world()[1] == 1:
        return model
    device = next(model.parameters()).device
    return nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper (what checkpoints hold), or `model`."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def local_share(idx: torch.Tensor, model: nn.Module) -> torch.Tensor:
    """This rank's contiguous share of a global batch of indices (all of it without DDP)."""
    if not isinstance(model, nn.parallel.DistributedDataParallel):
        return idx
    rank, size = world()
    return idx.tensor_split(size)[rank]
