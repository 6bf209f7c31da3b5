"""Metric kernel: ndt's all-metrics call vs the straightforward way, on (160 x k) activations.

The straightforward way (what the study's code did, with the spectral norm fixed): three full
``torch.svd`` per layer (one per SVD-based metric) plus two ``torch.norm`` calls, with the results
copied to the CPU as Python floats.
"""

from __future__ import annotations

import functools

import torch

from ndt.bench.timing import best_of
from ndt.measure.spectrum import compute_metrics

SIZES = (16, 128, 512, 1024)
N_SAMPLES = 160  # the study's probe


def straightforward_metrics(a: torch.Tensor) -> dict[str, float]:
    """Four metrics the naive way: one full SVD each for three of them, two norms."""
    s1 = torch.svd(a).S  # stable rank needs s1
    fro = torch.norm(a)  # ||A||_F
    stable = float(fro**2) / float(s1[0] ** 2)
    s2 = torch.svd(a).S  # participation ratio
    pr = float(s2.sum() ** 2) / float((s2**2).sum())
    s3 = torch.svd(a).S  # cumulative energy
    energy = (s3**2).cumsum(0) / (s3**2).sum()
    ce90 = int((energy < 0.9).sum()) + 1
    nuc = float(torch.norm(a, p="nuc")) / float(s3[0])
    return {
        "stable_rank": stable,
        "participation_ratio": pr,
        "cumulative_energy_90": ce90,
        "nuclear_norm_ratio": nuc,
    }


def bench_kernel(sizes: tuple[int, ...] = SIZES, repeats: int = 5) -> list[dict[str, float]]:
    """Time both ways per k; returns rows {k, ndt_ms, naive_ms, speedup}."""
    rows = []
    gen = torch.Generator().manual_seed(0)
    for k in sizes:
        a = torch.randn(N_SAMPLES, k, generator=gen)
        ours = best_of(functools.partial(compute_metrics, a), repeats, number=5)
        naive = best_of(functools.partial(straightforward_metrics, a), repeats, number=2)
        rows.append({"k": k, "ndt_ms": ours * 1e3, "naive_ms": naive * 1e3, "speedup": naive / ours})
    return rows


def report_kernel(rows: list[dict[str, float]]) -> str:
    lines = ["metric kernel (160 x k, all metrics, CPU; target >= 5x):"]
    lines += [
        f"  k={int(r['k']):5d}: ndt {r['ndt_ms']:8.2f} ms   naive {r['naive_ms']:8.2f} ms   speedup {r['speedup']:6.1f}x"
        for r in rows
    ]
    return "\n".join(lines)
