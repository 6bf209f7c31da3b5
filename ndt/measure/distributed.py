"""The tracker under torchrun: DistributedDataParallel and FSDP2 (`fully_shard`) models.

Every rank builds its `HighFrequencyTracker` and calls ``log(step, loss)`` at the same steps (the
training loop is the same program on every rank). At a measured step, and only there, the ranks
exchange one float64 buffer with one ``all_reduce(SUM)``; rank 0 then solves the spectra and writes.

- Layer names are the inner module's: a DDP wrapper is looked through (no ``module.`` prefix);
  FSDP2 shards modules in place, so their names do not change.
- Without a probe each rank reduces its own batch's activations A_r (n_r, k) to the feature-side
  statistics A_r^T A_r (k, k), column sums and n_r. Summed over ranks they are exactly the statistics
  of the global batch A = [A_1; ...; A_R] (A^T A = sum_r A_r^T A_r), so the measured matrix is the
  global batch. (The sample-side Gram A A^T would need every cross-rank product, so it is never used
  here; for N <= k the nonzero eigenvalues are the same.)
- With a probe rank 0 runs it on the inner module; the other ranks run it too only when the wrapper
  needs collectives in the forward (FSDP gathers the parameters), with their hooks off.
- Loss and gradient norm travel in the same buffer: the loss recorded is the mean of the ranks'
  losses (the global batch's loss when the ranks' batches have equal sizes), the gradient norm the
  global one (FSDP2's sharded gradients are summed as squares; DDP's replicated ones counted once).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ndt.measure.spectrum import GramStats, gram_stats


def _dist_ready() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _is_fsdp2(model: nn.Module) -> bool:
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # a torch without FSDP2
        return False
    return any(isinstance(m, FSDPModule) for m in model.modules())


def _is_fsdp1(model: nn.Module) -> bool:
    try:
        from torch.distributed.fsdp import FullyShardedDataParallel
    except ImportError:
        return False
    return any(isinstance(m, FullyShardedDataParallel) for m in model.modules())


def unwrap(model: nn.Module) -> nn.Module:
    """The module a DDP (or DataParallel) wrapper holds; any other model as it is."""
    while isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel):
        model = model.module
    return model


def feature_gram_stats(activations: torch.Tensor) -> GramStats:
    """Feature-side statistics of a (n, k) matrix whatever n: A^T A (k, k) and the column mean (k,).

    These sum across ranks (see the module docstring); `gram_stats` picks the smaller side instead.
    """
    if activations.ndim != 2:
        raise ValueError(f"expected a (n_samples, n_features) matrix, got shape {tuple(activations.shape)}")
    a = activations.detach().to(torch.float64)
    n, k = a.shape
    return GramStats(gram=a.T @ a, mean=a.mean(dim=0), n_samples=n, n_features=k)


@dataclass
class DistributedContext:
    """How this process takes part in a measurement.

    Attributes:
        active: several processes measure together (torch.distributed initialised, world size > 1).
        rank, world_size: this process's global rank and the number of processes.
        inner: the model the hooks go on (a DDP wrapper looked through).
        collective_forward: the inner model's forward needs every rank (FSDP2).
    """

    active: bool
    rank: int
    world_size: int
    inner: nn.Module
    collective_forward: bool

    @classmethod
    def detect(cls, model: nn.Module, enabled: bool | None = None) -> DistributedContext:
        """The context of `model` in this process.

        Args:
            model: the (possibly wrapped) network.
            enabled: True: measure together (torch.distributed must be initialised); False: this
                process measures alone, with no collectives (a callback measuring on rank 0 only);
                None: together when torch.distributed is initialised with more than one process.

        Raises:
            RuntimeError: enabled=True without an initialised process group.
            NotImplementedError: a model wrapped by FSDP1 (`FullyShardedDataParallel`).
        """
        inner = unwrap(model)
        if _is_fsdp1(inner):
            raise NotImplementedError(
                "FSDP1 (FullyShardedDataParallel) flattens parameters and renames modules; shard the model "
                "with FSDP2 instead (torch.distributed.fsdp.fully_shard), which the tracker supports"
            )
        ready = _dist_ready()
        if enabled and not ready:
            raise RuntimeError(
                "distributed=True but torch.distributed is not initialised: call "
                "torch.distributed.init_process_group() first (torchrun sets its environment)"
            )
        rank = torch.distributed.get_rank() if ready else 0
        world = torch.distributed.get_world_size() if ready else 1
        active = ready and world > 1 if enabled is None else bool(enabled) and world > 1
        return cls(
            active=active,
            rank=rank if active else 0,
            world_size=world if active else 1,
            inner=inner,
            collective_forward=active and _is_fsdp2(inner),
        )

    @property
    def is_writer(self) -> bool:
        """Whether this process solves spectra and writes rows (global rank 0)."""
        return self.rank == 0

    def runs_probe(self) -> bool:
        """Whether this process runs the probe forward at a measured step."""
        return self.is_writer or self.collective_forward

    def transform(self, probe: bool, center: bool = False, exact_max_size: int | None = None) -> Any:
        """The statistics the hooks form: summable (uncentred, feature-side) ones when batches are
        reduced across ranks (`reduce` centres them once summed); else `gram_stats`, centred on the
        activations when `center`, estimated above `exact_max_size`."""
        if self.active and not probe:
            return feature_gram_stats
        return functools.partial(gram_stats, center=center, exact_max_size=exact_max_size)

    def grad_sq_contribution(self, model: nn.Module) -> torch.Tensor | None:
        """This rank's share of the squared global gradient norm (summed over ranks it is the total).

        DTensor (FSDP2) gradients are shards: each rank adds its local part. Plain gradients are
        replicated (DDP has averaged them): each rank adds 1/world of them.
        """
        sharded, replicated = [], []
        for p in model.parameters():
            g = p.grad
            if g is None:
                continue
            if hasattr(g, "to_local"):  # a DTensor
                sharded.append(g.to_local().detach())
            else:
                replicated.append(g.detach())
        if not sharded and not replicated:
            return None
        total: torch.Tensor | None = None
        for grads, weight in ((sharded, 1.0), (replicated, 1.0 / self.world_size)):
            if grads:
                norms = torch._foreach_norm(grads)
                sq = (
                    torch.stack([n.to(norms[0].device, torch.float64) for n in norms]).square().sum() * weight
                )
                total = sq if total is None else total + sq.to(total.device)
        return total

    def reduce(
        self,
        stats: dict[str, GramStats],
        names: list[str],
        loss: Any,
        grad_sq: float | torch.Tensor | None,
        device: torch.device,
        with_stats: bool,
        center: bool = False,
    ) -> tuple[dict[str, GramStats], Any, Any]:
        """One all-reduce: the ranks' statistics (without a probe), loss and squared gradient norm.

        Args:
            stats: this rank's {layer: feature-side statistics} (ignored when `with_stats` is False).
            names: the layers to reduce, in model order (the same on every rank).
            loss: this rank's loss (a number, a tensor, or None).
            grad_sq: this rank's share of the squared gradient norm (`grad_sq_contribution`, or the
                caller's norm squared over the world size), a number or a tensor; or None.
            device: where the buffer lives (the model's device: NCCL needs CUDA tensors).
            with_stats: reduce the statistics too (no probe); False: only loss and gradient norm.
            center: return the global batch's column-centred statistics (A^T A - N mu mu^T, the rank-one
                correction applied once, to the sums).

        Returns:
            (global statistics by layer, or `stats` unchanged; mean loss; global gradient norm).
        """

        def scalar(v: Any) -> torch.Tensor:
            v = math.nan if v is None else v
            if isinstance(v, torch.Tensor):
                return v.detach().to(device=device, dtype=torch.float64).reshape(1)
            # A fill on the device, not torch.tensor(..., device=): that copies from pageable host
            # memory and blocks, once per layer.
            return torch.full((1,), float(v), dtype=torch.float64, device=device)

        # Layout: each layer's gram (k*k,) and column sums (k,), then every layer's row count (L,),
        # then loss and grad_sq: the counts sit together, read with one host sync per measurement.
        pieces: list[torch.Tensor] = []
        counts: list[torch.Tensor] = []
        if with_stats:
            for name in names:
                s = stats[name]
                assert s.mean is not None, "distributed statistics are feature-side"
                n = float(s.n_samples)
                pieces += [s.gram.reshape(-1), s.mean * n]
                counts.append(scalar(n))
        pieces += [*counts, scalar(loss) / self.world_size, scalar(grad_sq)]
        buf = torch.cat(pieces)
        torch.distributed.all_reduce(
            buf, op=torch.distributed.ReduceOp.SUM
        )  # the measurement's one collective
        out = stats
        offset = 0
        if with_stats:
            totals = buf[len(buf) - 2 - len(counts) : len(buf) - 2].tolist() if counts else []
            out = {}
            for name, total in zip(names, totals, strict=True):
                k = stats[name].n_features
                gram = buf[offset : offset + k * k].reshape(k, k)
                colsum = buf[offset + k * k : offset + k * k + k]
                n_total = round(total)
                offset += k * k + k
                mean = colsum / max(n_total, 1)
                if center:
                    gram = gram - n_total * torch.outer(mean, mean)
                    mean = torch.zeros_like(mean)
                out[name] = GramStats(gram=gram, mean=mean, n_samples=n_total, n_features=k, centred=center)
            offset += len(counts)
        loss_mean, grad_sq_total = buf[offset], buf[offset + 1]
        return out, loss_mean, grad_sq_total.clamp(min=0).sqrt()
