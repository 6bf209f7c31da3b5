"""Run by tests/test_distributed.py under ``torchrun --nproc_per_node=2`` (gloo, CPU); not a test module.

Usage: ``dist_tracker_script.py OUT_DIR``. For each of DDP and FSDP2, with a probe and without, each rank
trains a fresh model on its half of the same global batch; the tracker (rank 0 writes) stores its rows
in OUT_DIR/<mode>_<probe>/metrics. One launch for the four cases: starting processes is the slow part.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from ndt.measure.tracker import HighFrequencyTracker

STEPS, GLOBAL_BATCH, LR = 15, 16, 0.1


def make_model() -> nn.Module:
    torch.manual_seed(0)
    # Layer 0 is wider (24) than the global batch (16), layer 2 narrower (3): both Gram sides occur.
    return nn.Sequential(nn.Linear(6, 24), nn.ReLU(), nn.Linear(24, 3))


def data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(GLOBAL_BATCH * STEPS, 6, generator=g), torch.randint(
        0, 3, (GLOBAL_BATCH * STEPS,), generator=g
    )


def probe() -> torch.Tensor:
    return torch.randn(10, 6, generator=torch.Generator().manual_seed(2))


def train(mode: str, with_probe: bool, out: Path) -> None:
    rank, world = dist.get_rank(), dist.get_world_size()
    model = make_model()
    if mode == "ddp":
        wrapped: nn.Module = nn.parallel.DistributedDataParallel(model)
    else:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh("cpu", (world,))
        for layer in (model[0], model[2]):
            fully_shard(layer, mesh=mesh)
        wrapped = fully_shard(model, mesh=mesh)
    opt = torch.optim.SGD(wrapped.parameters(), lr=LR)
    x, y = data()
    local = GLOBAL_BATCH // world
    tracker = HighFrequencyTracker(wrapped, 5, probe=probe() if with_probe else None, writer=out / "metrics")
    for step in range(STEPS):
        lo = step * GLOBAL_BATCH + rank * local
        loss = nn.functional.cross_entropy(wrapped(x[lo : lo + local]), y[lo : lo + local])
        opt.zero_grad()
        loss.backward()
        opt.step()
        tracker.log(step, loss.detach())
    tracker.close()
    if rank != 0:
        assert tracker.get_results().empty  # only rank 0 keeps rows
    out.mkdir(parents=True, exist_ok=True)
    (out / f"layers_rank{rank}.txt").write_text("\n".join(tracker.layer_names))


def main() -> None:
    dist.init_process_group("gloo")
    for mode in ("ddp", "fsdp"):
        for probe in ("probe", "batch"):
            train(mode, probe == "probe", Path(sys.argv[1]) / f"{mode}_{probe}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
