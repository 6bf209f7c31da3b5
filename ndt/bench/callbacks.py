"""Callback overhead: the Lightning callback's tracking cost beside the manual loop's, same model and data.

Four timings, each the best of `repeats` (alternating, on a shared machine single timings vary by +-5%):
the manual loop without and with `HighFrequencyTracker`, and ``lightning.Trainer.fit`` without and with
`ndt.integrations.lightning.DimensionalityCallback`. What is compared is the time tracking adds in
each (tracked - untracked): the callback should add what the tracker adds in the manual loop, so their
ratio should be close to 1. Lightning's own per-step cost is in the untracked fit's time.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass

import torch
from torch import nn

from ndt.bench.overhead import SAMPLING_FREQUENCY, _train, mlp_784_256_128_10


@dataclass
class CallbackRow:
    batch: int
    steps: int
    manual_s: float
    manual_tracked_s: float
    fit_s: float
    fit_tracked_s: float

    @property
    def manual_added(self) -> float:
        return self.manual_tracked_s - self.manual_s

    @property
    def callback_added(self) -> float:
        return self.fit_tracked_s - self.fit_s


def _fit(x: torch.Tensor, y: torch.Tensor, batch: int, steps: int, tracked: bool) -> float:
    import lightning.pytorch as pl

    from ndt.integrations.lightning import DimensionalityCallback

    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.net = mlp_784_256_128_10()

        def forward(self, inputs: torch.Tensor) -> torch.Tensor:
            return self.net(inputs)

        def training_step(self, b: tuple[torch.Tensor, torch.Tensor], _i: int) -> torch.Tensor:
            return nn.functional.cross_entropy(self(b[0]), b[1])

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.Adam(self.parameters(), lr=1e-3)

    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, y), batch_size=batch, shuffle=False
    )
    with tempfile.TemporaryDirectory() as tmp:
        callbacks: list[pl.Callback] = (
            [DimensionalityCallback(SAMPLING_FREQUENCY, writer=f"{tmp}/m")] if tracked else []
        )
        trainer = pl.Trainer(
            accelerator="cpu",
            devices=1,
            max_steps=steps,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=callbacks,
        )
        t0 = time.perf_counter()
        trainer.fit(Module(), loader)  # the callback closes (flushes) in on_train_end: included
        return time.perf_counter() - t0


def bench_callbacks(batch: int = 128, steps: int = 400, repeats: int = 5) -> list[CallbackRow]:
    """Time the four variants on the 784-256-128-10 MLP (`ndt.bench.overhead`'s), CPU."""
    import logging

    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # no banner per fit
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch * steps, 1, 28, 28, generator=gen)
    y = torch.randint(0, 10, (batch * steps,), generator=gen)
    best = dict.fromkeys(("manual", "manual_tracked", "fit", "fit_tracked"), float("inf"))
    torch.manual_seed(0)
    model = mlp_784_256_128_10()
    _train(model, x, y, batch, 20, tracked=False)  # warm-up
    _fit(x, y, batch, 20, tracked=True)
    for _ in range(repeats):
        best["manual"] = min(best["manual"], _train(model, x, y, batch, steps, tracked=False))
        best["manual_tracked"] = min(best["manual_tracked"], _train(model, x, y, batch, steps, tracked=True))
        best["fit"] = min(best["fit"], _fit(x, y, batch, steps, tracked=False))
        best["fit_tracked"] = min(best["fit_tracked"], _fit(x, y, batch, steps, tracked=True))
    return [
        CallbackRow(batch, steps, best["manual"], best["manual_tracked"], best["fit"], best["fit_tracked"])
    ]


def report_callbacks(rows: list[CallbackRow]) -> str:
    lines = [
        f"callback overhead (mlp 784-256-128-10, cpu, sampling_frequency={SAMPLING_FREQUENCY}; time tracking "
        "adds in Trainer.fit vs in the manual loop, target ~1x):"
    ]
    for r in rows:
        lines.append(
            f"  batch {r.batch}, {r.steps} steps: manual {r.manual_s:5.2f} s -> tracked {r.manual_tracked_s:5.2f} s "
            f"(+{r.manual_added:5.2f} s, {100 * r.manual_added / r.manual_s:4.1f}%); Lightning fit {r.fit_s:5.2f} s "
            f"-> with callback {r.fit_tracked_s:5.2f} s (+{r.callback_added:5.2f} s, "
            f"{100 * r.callback_added / r.fit_s:4.1f}%); added callback/manual "
            f"{r.callback_added / r.manual_added if r.manual_added > 0 else float('nan'):4.2f}x"
        )
    return "\n".join(lines)
