"""Per-position conv measurement vs spatial means: training time tracked each way, beside untracked.

For cnn_shallow and cnn_deep at batch 32 and 128, the same training loop runs untracked and tracked
with ``conv_reduction="spatial_mean"`` (the study's (B, C) matrices) and ``"positions"`` (every
(sample, position) a row, at most `ndt.measure.capture.MAX_ROWS`), measuring the training forward
every `SAMPLING_FREQUENCY` steps (no probe). Printed: each overhead, the cost per measurement (tracked
minus untracked, divided by the measurements) and the ratio of that cost, positions / spatial_mean.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ndt.bench.overhead import SAMPLING_FREQUENCY, _train
from ndt.models import build_model

ARCHS = ("cnn_shallow", "cnn_deep")
REDUCTIONS = ("spatial_mean", "positions")


@dataclass
class ConvRow:
    arch: str
    batch: int
    steps: int
    base_s: float
    tracked_s: dict[str, float]  # by conv_reduction

    @property
    def measurements(self) -> int:
        return len(range(0, self.steps, SAMPLING_FREQUENCY))

    def per_measurement_ms(self, reduction: str) -> float:
        return 1e3 * max(self.tracked_s[reduction] - self.base_s, 0.0) / self.measurements

    @property
    def ratio(self) -> float:
        spatial = self.per_measurement_ms("spatial_mean")
        return self.per_measurement_ms("positions") / spatial if spatial > 0 else float("nan")


def bench_conv(
    batches: tuple[int, ...] = (32, 128), steps: int = 60, repeats: int = 3, device: str = "cpu"
) -> list[ConvRow]:
    """Time untracked and both tracked variants for each architecture and batch (best of `repeats`,
    interleaved, so that a slow spell of a shared machine hits every variant alike)."""
    gen = torch.Generator().manual_seed(0)
    x_all = torch.randn(2048, 1, 28, 28, generator=gen).to(device)
    y_all = torch.randint(0, 10, (2048,), generator=gen).to(device)
    rows = []
    for arch in ARCHS:
        for batch in batches:
            torch.manual_seed(0)
            model = build_model(arch, "mnist").to(device)
            _train(model, x_all, y_all, batch, 10, tracked=False)  # warm-up
            base = float("inf")
            tracked = dict.fromkeys(REDUCTIONS, float("inf"))
            for _ in range(repeats):
                base = min(base, _train(model, x_all, y_all, batch, steps, tracked=False))
                for r in REDUCTIONS:
                    t = _train(model, x_all, y_all, batch, steps, tracked=True, conv_reduction=r)
                    tracked[r] = min(tracked[r], t)
            rows.append(ConvRow(arch, batch, steps, base, tracked))
    return rows


def report_conv(rows: list[ConvRow]) -> str:
    lines = [
        f"per-position conv measurement vs spatial means (training forward every {SAMPLING_FREQUENCY} steps, "
        "no probe; cost per measurement = (tracked - untracked) / measurements):"
    ]
    for r in rows:
        sm, pos = r.per_measurement_ms("spatial_mean"), r.per_measurement_ms("positions")
        lines.append(
            f"  {r.arch:11s} batch {r.batch:4d}: untracked {r.base_s:6.2f} s; spatial_mean {r.tracked_s['spatial_mean']:6.2f} s "
            f"({sm:6.1f} ms/measurement), positions {r.tracked_s['positions']:6.2f} s ({pos:6.1f} ms/measurement) "
            f"-> positions / spatial_mean {r.ratio:4.1f}x"
        )
    return "\n".join(lines)
