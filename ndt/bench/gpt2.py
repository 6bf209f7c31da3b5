"""GPT-2 small (124M parameters, random init) on the CPU: what tracking every 5 steps costs.

One training run of GPT-2 small (Hugging Face ``GPT2LMHeadModel`` from the default ``GPT2Config``, no
download) on random token ids, next-token loss, AdamW, tracked by a default `HighFrequencyTracker`
(sampling every 5 steps, default caps: ``max_rows``, ``exact_max_size``). Its steps that are not
measured have the hooks disarmed and cost what an untracked step costs, so the untracked step time is
their median, taken in the same run (a shared machine's slow stretches hit both alike); a few steps
without any tracker check that. The cost of one measurement is the median measured step minus that
median; the overhead is every measurement's extra time plus `close()` over the untracked time of
the run's steps. Both sequence reductions are run: ``token_mean`` (the default: each site a (B, F)
matrix) and ``tokens`` (every token a row: (B * S, F), what a language-model researcher measures).
Target: <= 10% of training time.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import dataclass

import torch
from torch import nn

from ndt.measure.tracker import HighFrequencyTracker

SAMPLING_FREQUENCY = 5


def gpt2_small() -> nn.Module:
    """GPT-2 small with random weights: 12 layers, d 768, 12 heads, vocabulary 50,257 (124M parameters)."""
    try:
        from ndt.models.gpt import gpt2_small as build  # the registry's builder, when present
    except ImportError:
        from transformers import GPT2Config, GPT2LMHeadModel

        return GPT2LMHeadModel(GPT2Config())
    return build()


@dataclass
class GPT2Row:
    """One tracked run: step times in seconds."""

    reduction: str
    batch: int
    seq: int
    params: int
    layers: int
    untracked_step_s: float  # median of the run's unmeasured steps
    bare_step_s: float  # median of steps with no tracker at all (the check)
    measurement_s: float  # median measured step - untracked_step_s (the hooks' part of a measurement)
    close_s: float
    overhead: float  # (extra time of all measurements + close) / untracked time of all steps
    steps: int
    measurements: int
    overhead_vs_bare: float  # (tracked run's time + close) / (steps x bare step) - 1


def _batches(vocab: int, batch: int, seq: int, n: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return [torch.randint(0, vocab, (batch, seq), generator=gen) for _ in range(n)]


def _step(model: nn.Module, opt: torch.optim.Optimizer, ids: torch.Tensor) -> torch.Tensor:
    logits = model(input_ids=ids).logits  # (B, S, V)
    loss = nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach()


def bench_gpt2(
    batch: int = 4, seq: int = 128, steps: int = 15, reductions: tuple[str, ...] = ("token_mean", "tokens")
) -> list[GPT2Row]:
    """Train GPT-2 small for `steps` tracked steps per reduction (plus 2 warm-up and 3 bare steps)."""
    torch.manual_seed(0)
    model = gpt2_small()
    model.train()
    vocab = int(getattr(model, "config").vocab_size)  # noqa: B009 - a Hugging Face model
    params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    data = _batches(vocab, batch, seq, steps)
    for ids in data[:2]:  # warm-up: allocator, AdamW state
        _step(model, opt, ids)
    bare = []
    for ids in data[:3]:
        t = time.perf_counter()
        _step(model, opt, ids)
        bare.append(time.perf_counter() - t)
    rows = []
    for reduction in reductions:
        with tempfile.TemporaryDirectory() as tmp:
            tracker = HighFrequencyTracker(
                model, SAMPLING_FREQUENCY, writer=f"{tmp}/m", sequence_reduction=reduction
            )
            times = []
            for step, ids in enumerate(data):
                t = time.perf_counter()
                loss = _step(model, opt, ids)
                tracker.log(step, loss)
                times.append(time.perf_counter() - t)
            t = time.perf_counter()
            tracker.close()
            close_s = time.perf_counter() - t
            layers = len(tracker.layer_names)
        measured = [s for s in range(steps) if s % SAMPLING_FREQUENCY == 0]
        plain = statistics.median(times[s] for s in range(steps) if s not in measured)
        per = statistics.median(times[s] for s in measured) - plain
        extra = sum(times[s] - plain for s in measured) + close_s
        rows.append(
            GPT2Row(
                reduction=reduction,
                batch=batch,
                seq=seq,
                params=params,
                layers=layers,
                untracked_step_s=plain,
                bare_step_s=statistics.median(bare),
                measurement_s=per,
                close_s=close_s,
                overhead=extra / (plain * steps),
                steps=steps,
                measurements=len(measured),
                overhead_vs_bare=(sum(times) + close_s) / (statistics.median(bare) * steps) - 1,
            )
        )
    return rows


def report_gpt2(rows: list[GPT2Row]) -> str:
    """The lines `make bench` prints."""
    if not rows:
        return "GPT-2 small: no rows"
    r0 = rows[0]
    lines = [
        f"GPT-2 small on CPU ({r0.params / 1e6:.1f}M parameters, random init), batch {r0.batch} x {r0.seq} "
        f"tokens, tracked every {SAMPLING_FREQUENCY} steps with the default caps (target <= 10%):"
    ]
    for r in rows:
        per = (r.overhead * r.untracked_step_s * r.steps) / r.measurements  # all in: hooks + spectra
        lines.append(
            f"  {r.reduction:10s}: {r.layers} layers measured; step {r.untracked_step_s:5.2f} s (no tracker "
            f"{r.bare_step_s:5.2f} s); one measurement {per:5.2f} s all in ({1000 * r.measurement_s:4.0f} ms "
            f"in the step, the rest solved at flush/close) -> overhead {100 * r.overhead:4.1f}% "
            f"({100 * r.overhead_vs_bare:+.1f}% against the bare steps) over {r.steps} steps"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    print(report_gpt2(bench_gpt2()))
