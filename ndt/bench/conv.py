"""Per-position conv measurement vs spatial means: the cost of one measurement, each way.

For cnn_shallow and cnn_deep at batch 32 and 128, one measurement is what the tracker adds to a measured
training step: the work its capture hooks do on every layer's output (the reduction to a matrix and its
float64 Gram statistics) plus solving the spectra on the host. Timed directly on the layer outputs of one
recorded forward, best of `repeats`, in CPU time of one thread (torch set to one thread for the bench: on
a shared machine wall time mostly measures the neighbours). Not as (hooked forward) - (bare forward): at
batch 128 a spatial-mean measurement is ~1% of the forward, below the two timings' noise, and the
difference came out as 0 or negative. The hooks' own dispatch (microseconds a layer) is left out.
With ``conv_reduction="spatial_mean"`` (the study's (B, C) matrices) and ``"positions"`` (every
(sample, position) a row, at most `ndt.measure.capture.MAX_ROWS`). Printed beside a bare training
step (forward, backward, Adam update), with the ratio positions / spatial_mean.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ndt.bench.timing import best_of
from ndt.measure.capture import reduce_output, select_layers
from ndt.measure.spectrum import gram_stats, metrics_from_stats

ARCHS = ("cnn_shallow", "cnn_deep")
REDUCTIONS = ("spatial_mean", "positions")


@dataclass
class ConvRow:
    arch: str
    batch: int
    step_ms: float  # a bare training step
    measurement_ms: dict[str, float]  # by conv_reduction

    @property
    def ratio(self) -> float:
        spatial = self.measurement_ms["spatial_mean"]
        return self.measurement_ms["positions"] / spatial if spatial > 0 else float("nan")


def _layer_outputs(model: nn.Module, x: torch.Tensor) -> list[tuple[nn.Module, torch.Tensor]]:
    """(module, raw output) of every layer the tracker measures by default, from one forward."""
    recorded: list[tuple[nn.Module, torch.Tensor]] = []
    handles = [
        m.register_forward_hook(lambda mod, _i, out: recorded.append((mod, out.detach())))
        for m in select_layers(model).values()
    ]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return recorded


def _measurement(outputs: list[tuple[nn.Module, torch.Tensor]], reduction: str) -> None:
    """The capture hooks' work on these outputs (as `ActivationCapture` does it) plus the host solve."""
    stats = []
    for module, out in outputs:
        mat = reduce_output(out, module, conv_reduction=reduction)
        assert mat is not None  # every default layer of these CNNs returns one tensor
        stats.append(gram_stats(mat))
    metrics_from_stats(
        [torch.cat(s.pieces()).cpu().numpy() for s in stats],
        [s.size for s in stats],
        np.array([s.n_samples for s in stats]),
        np.array([s.n_features for s in stats]),
    )


def _training_step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> None:
    loss = nn.functional.cross_entropy(model(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def bench_conv(batches: tuple[int, ...] = (32, 128), repeats: int = 7) -> list[ConvRow]:
    """Time one measurement each way, and a bare training step, for each architecture and batch (CPU)."""
    from ndt.models import build_model

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _bench(build_model, batches, repeats)
    finally:
        torch.set_num_threads(threads)


def _bench(
    build_model: Callable[[str, str], nn.Module], batches: tuple[int, ...], repeats: int
) -> list[ConvRow]:
    timed = functools.partial(best_of, repeats=repeats, clock=time.thread_time)
    gen = torch.Generator().manual_seed(0)
    rows = []
    for arch in ARCHS:
        torch.manual_seed(0)
        model = build_model(arch, "mnist")
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        for batch in batches:
            x = torch.randn(batch, 1, 28, 28, generator=gen)
            y = torch.randint(0, 10, (batch,), generator=gen)
            outputs = _layer_outputs(model, x)
            cost = {r: 1e3 * timed(functools.partial(_measurement, outputs, r)) for r in REDUCTIONS}
            step = timed(functools.partial(_training_step, model, opt, x, y))
            rows.append(ConvRow(arch, batch, 1e3 * step, cost))
    return rows


def report_conv(rows: list[ConvRow]) -> str:
    lines = [
        "per-position conv measurement vs spatial means (one measurement of the training batch, no probe; "
        "CPU ms of one thread):"
    ]
    for r in rows:
        sm, pos = r.measurement_ms["spatial_mean"], r.measurement_ms["positions"]
        lines.append(
            f"  {r.arch:11s} batch {r.batch:4d}: training step {r.step_ms:7.1f} ms; measurement: spatial_mean "
            f"{sm:6.1f} ms, positions {pos:6.1f} ms -> positions / spatial_mean {r.ratio:4.1f}x"
        )
    return "\n".join(lines)
