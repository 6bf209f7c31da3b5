"""Refuse a SLURM request that no node of the partition can satisfy, instead of waiting forever.

SLURM accepts a job asking for more CPUs, memory or GPUs than any node of the partition has and leaves
it pending (reason "Resources" or "ReqNodeNotAvail") with no word of why; a sweep then waits for
nothing. `check_request` reads the partition's nodes with ``sinfo`` and raises `SlurmRequestError`
naming the key to change when no node fits.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

#: ``sinfo`` line format: partition (default suffixed "*"), node, CPUs, memory (MB), GRES.
SINFO_FORMAT = "%P|%N|%c|%m|%G"
_GPU = re.compile(r"gpu(?::[^:(,]+)?:(\d+)")


class SlurmRequestError(ValueError):
    """The launcher asks for resources that no node of the partition has."""


@dataclass(frozen=True)
class Node:
    """One node of a partition as ``sinfo`` reports it."""

    partition: str
    name: str
    cpus: int
    mem_mb: int
    gpus: int

    def fits(self, cpus: int, mem_mb: int, gpus: int) -> bool:
        return self.cpus >= cpus and self.mem_mb >= mem_mb and self.gpus >= gpus


def parse_sinfo(text: str) -> list[Node]:
    """Nodes from ``sinfo -h -N -o '%P|%N|%c|%m|%G'`` output (GPU count summed over the GRES entries)."""
    nodes = []
    for line in text.splitlines():
        fields = line.strip().split("|")
        if len(fields) != 5:
            continue
        part, name, cpus, mem, gres = fields
        try:
            n_cpus, n_mem = int(cpus.rstrip("+")), int(mem.rstrip("+"))
        except ValueError:
            continue
        gpus = sum(int(m.group(1)) for m in _GPU.finditer(gres))
        nodes.append(Node(part, name, n_cpus, n_mem, gpus))
    return nodes


def _run_sinfo() -> str | None:
    exe = shutil.which("sinfo")
    if exe is None:
        return None
    try:
        out = subprocess.run(
            [exe, "-h", "-N", "-o", SINFO_FORMAT], capture_output=True, text=True, timeout=30, check=True
        )
    except (OSError, subprocess.SubprocessError) as err:
        log.warning("sinfo failed (%s): the SLURM request is not checked against the nodes", err)
        return None
    return out.stdout


def check_request(launcher: Mapping[str, Any], sinfo_output: str | None = None) -> None:
    """Raise unless some node of the requested partition has the CPUs, memory and GPUs asked for.

    Args:
        launcher: the ``hydra.launcher`` node (submitit_slurm keys: partition, cpus_per_task,
            tasks_per_node, mem_gb, gpus_per_node).
        sinfo_output: ``sinfo`` output to use; default: run ``sinfo`` (no check when it is absent).

    Raises:
        SlurmRequestError: the partition does not exist, or none of its nodes can run one job.
    """
    text = _run_sinfo() if sinfo_output is None else sinfo_output
    if text is None:
        log.warning("sinfo not found: the SLURM request is not checked against the nodes")
        return
    nodes = parse_sinfo(text)
    if not nodes:
        return  # nothing parseable: let sbatch judge
    partition = launcher.get("partition")
    if partition:
        chosen = [n for n in nodes if n.partition.rstrip("*") == partition]
    else:
        chosen = [n for n in nodes if n.partition.endswith("*")]
        partition = chosen[0].partition.rstrip("*") if chosen else None
    if not chosen:
        names = sorted({n.partition.rstrip("*") for n in nodes})
        raise SlurmRequestError(
            f"SLURM partition {launcher.get('partition') or '(default)'} not found; sinfo lists "
            f"{', '.join(names)}: set hydra.launcher.partition=... (or slurm.partition in conf/local/default.yaml)"
        )
    tasks = int(launcher.get("tasks_per_node") or 1)
    cpus = int(launcher.get("cpus_per_task") or 1) * tasks
    mem_gb = launcher.get("mem_gb")
    mem_mb = int(float(mem_gb) * 1024) if mem_gb else 0
    gpus = int(launcher.get("gpus_per_node") or 0)
    if any(n.fits(cpus, mem_mb, gpus) for n in chosen):
        return
    best_cpu = max(n.cpus for n in chosen)
    best_mem = max(n.mem_mb for n in chosen)
    best_gpu = max(n.gpus for n in chosen)
    fixes = []
    if cpus > best_cpu:
        fixes.append(f"hydra.launcher.cpus_per_task={max(best_cpu // tasks, 1)}")
    if mem_mb > best_mem:
        fixes.append(f"hydra.launcher.mem_gb={max(best_mem // 1024, 1)}")
    if gpus > best_gpu:
        fixes.append(f"hydra.launcher.gpus_per_node={best_gpu}")
    hint = (
        f"lower the request ({' '.join(fixes)})"
        if fixes
        else "no single node has all of them; lower the request or choose another partition"
    )
    raise SlurmRequestError(
        f"no node of SLURM partition {partition} can run a job asking for {cpus} CPUs, {mem_mb // 1024} GB "
        f"and {gpus} GPUs (its {len(chosen)} node(s) have at most {best_cpu} CPUs, {best_mem // 1024} GB, "
        f"{best_gpu} GPUs); SLURM would leave the jobs pending with no word of why: {hint}, or choose "
        "another partition with hydra.launcher.partition=..."
    )
