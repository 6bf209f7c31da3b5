"""Figures of the appendix (PNG, matplotlib's Agg canvas; no display and no pyplot state).

- `plot_run`: one run's layer-mean series, its fitted TAP curve, and both detectors' jumps.
- `plot_families`: jumps per run by family (the study's count, events, robust) and R^2 by family.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from ndt.analysis.growth import GrowthFit
from ndt.detect.study import Jumps

DPI = 120


def plot_run(
    path: str | os.PathLike[str],
    steps: np.ndarray,
    values: np.ndarray,
    fit: GrowthFit,
    study: Jumps,
    robust: Jumps,
    *,
    title: str,
    metric: str,
) -> Path:
    """Write one run's figure.

    Args:
        path: PNG file to write.
        steps: (m,) training steps.
        values: (m,) layer-mean metric.
        fit: the TAP fit of the series (its curve is drawn when ok).
        study: the study detector's jumps (every flagged index drawn).
        robust: the robust detector's jumps.
        title: figure title (e.g. the run name).
        metric: metric name for the y axis.

    Returns:
        The path written.
    """
    from matplotlib.figure import Figure  # lazy: keeps matplotlib out of table-only imports

    fig = Figure(figsize=(7, 4), dpi=DPI)
    ax = fig.subplots()
    ax.plot(steps, values, color="0.2", lw=1.2, label=f"mean {metric} over layers")
    if fit.ok:
        label = f"TAP fit (R^2={fit.r2:.3f}, alpha={fit.alpha:.3g}/step)"
        ax.plot(steps, fit.predict(steps), color="tab:blue", ls="--", lw=1.2, label=label)
    flagged = np.array([j.index for j in study], dtype=np.int64)
    if flagged.size:
        ax.scatter(
            steps[flagged],
            values[flagged],
            s=14,
            color="tab:red",
            zorder=3,
            label=f"study jumps ({len(study)} indices, {len(study.events)} events)",
        )
    found = np.array([j.index for j in robust], dtype=np.int64)
    for i, idx in enumerate(found):
        ax.axvline(steps[idx], color="tab:green", lw=1, alpha=0.8, label="robust jumps" if i == 0 else None)
    ax.set_xlabel("training step")
    ax.set_ylabel(metric)
    ax.set_title(title)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out)
    return out


def plot_families(path: str | os.PathLike[str], per_run: pd.DataFrame, families: list[str]) -> Path:
    """Write the family comparison: mean jumps per run (three counts) and R^2 of each run, by family.

    Args:
        path: PNG file to write.
        per_run: complete runs of the per-run frame.
        families: family order on the x axis.

    Returns:
        The path written.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.8), dpi=DPI)
    ax_jumps, ax_r2 = fig.subplots(1, 2)
    x = np.arange(len(families))
    counts = (("jumps", "study: indices"), ("events", "study: events"), ("robust_events", "robust"))
    for k, (col, name) in enumerate(counts):
        means = [per_run.loc[per_run["family"] == f, col].astype(float).mean() for f in families]
        ax_jumps.bar(x + (k - 1) * 0.27, means, width=0.27, label=name)
    ax_jumps.set_xticks(x, families)
    ax_jumps.set_ylabel("mean per run")
    ax_jumps.set_title("jumps by family")
    ax_jumps.legend(fontsize=8)
    for i, f in enumerate(families):
        r2 = per_run.loc[per_run["family"] == f, "r2"].astype(float).dropna().to_numpy()
        jitter = np.linspace(-0.15, 0.15, r2.size) if r2.size > 1 else np.zeros(r2.size)
        ax_r2.scatter(i + jitter, r2, s=12, alpha=0.7)
    ax_r2.axhline(0.8, color="0.5", ls=":", lw=1)
    ax_r2.set_xticks(x, families)
    ax_r2.set_ylabel("R^2 of the TAP fit")
    ax_r2.set_title("growth fit by family")
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out)
    return out
