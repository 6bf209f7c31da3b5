"""The validity benchmark: every detector, on every metric, against training runs with known transitions.

``python -m ndt.validate [--cases A,B,C] [--seeds 5] [--out results/validate] [--detectors ...]``

``python -m ndt.validate --investigate B [--seed S]`` writes instead the investigate report at case B's
transition for seed S (default: every seed) and checks its causal criterion (`ndt.validate.investigate`).

1. Runs (or reads from ``<out>/cache/``) `seeds` runs and `seeds` controls of each case
   (`ndt.validate.cases`).
2. Scores every (detector, metric) pair on each case's named layer (`ndt.validate.score`): hit rate,
   false alarms per run (runs and controls; also over all layers), the hit rate with the detector's
   threshold halved and doubled, and the same detector on the training loss (the loss-only baseline).
3. Prints one table, writes it as ``<out>/validate.csv`` and ``<out>/validate.md``, and one figure per
   case, ``<out>/case_<X>.png`` (seed 0: the named layer's series, truth windows shaded, events marked).

A pair **passes** a case when >= 80% of the runs are hit, there is <= 1 false alarm per run (runs and
controls), and the hit rate stays >= 80% at half and at double the threshold. The loss baseline is
judged by the same rule: dimensionality earns its keep on a case where it passes and the loss does not.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ndt.detect import DETECTORS
from ndt.measure.spectrum import METRICS
from ndt.validate import score as sc
from ndt.validate.cases import CASES, FAST_CASES, CaseRun, run_case

#: Table columns, in order (one row per case x detector x metric).
COLUMNS = (
    "case",
    "detector",
    "metric",
    "layer",
    "truth",
    "events",
    "init_escape",
    "hit_rate",
    "hit_rate_half",
    "hit_rate_double",
    "false_alarms",
    "fa_runs",
    "fa_controls",
    "fa_all_layers",
    "loss_hit_rate",
    "loss_false_alarms",
    "loss_pass",
    "pass",
)


def load_runs(
    cases: Sequence[str], seeds: int, cache_dir: Path | None, log: Any = None
) -> dict[str, list[CaseRun]]:
    """Runs and controls (seeds 0..seeds-1) of each case, trained or read from `cache_dir`."""
    out: dict[str, list[CaseRun]] = {}
    for case in cases:
        out[case] = []
        for seed in range(seeds):
            for control in (False, True):
                t0 = time.perf_counter()
                out[case].append(run_case(case, seed, control, cache_dir))
                if log is not None:
                    log(
                        f"case {case} seed {seed} {'control' if control else 'run'}: {time.perf_counter() - t0:.1f} s"
                    )
    return out


def truth_summary(runs: Sequence[CaseRun]) -> str:
    """The truth steps of a case's runs, as their median per truth index (e.g. "156/443/1194")."""
    main = [r.truth_steps for r in runs if not r.control]
    n = max((len(t) for t in main), default=0)
    meds = [np.median([t[i] for t in main if len(t) > i]) for i in range(n)]
    return "/".join(f"{m:.0f}" for m in meds) if meds else "-"


def score_pair(runs: Sequence[CaseRun], detector: str, metric: str) -> dict[str, Any]:
    """One table row's scores for (detector, metric) on one case's runs (without the loss columns)."""
    base = sc.score_case(runs, detector, metric)
    robust = sc.robustness(runs, detector, metric)
    return {
        "events": base["events"],
        "init_escape": base["init_escape"],
        "hit_rate": base["hit_rate"],
        "hit_rate_half": robust[0.5],
        "hit_rate_double": robust[2.0],
        "false_alarms": base["false_alarms"],
        "fa_runs": base["false_alarms_runs"],
        "fa_controls": base["false_alarms_controls"],
        "fa_all_layers": sc.false_alarms_all_layers(runs, detector, metric) if metric != "loss" else np.nan,
        "pass": sc.passes(base["hit_rate"], base["false_alarms"], [robust[0.5], robust[2.0]]),
    }


def benchmark_table(
    all_runs: dict[str, list[CaseRun]], detectors: Sequence[str], metrics: Sequence[str] = tuple(METRICS)
) -> pd.DataFrame:
    """The benchmark's table: one row per (case, detector, metric), columns `COLUMNS`."""
    rows = []
    for case, runs in all_runs.items():
        for det in detectors:
            loss = score_pair(runs, det, "loss")
            for metric in metrics:
                s = score_pair(runs, det, metric)
                rows.append(
                    {
                        "case": case,
                        "detector": det,
                        "metric": metric,
                        "layer": runs[0].layer,
                        "truth": truth_summary(runs),
                        **s,
                        "loss_hit_rate": loss["hit_rate"],
                        "loss_false_alarms": loss["false_alarms"],
                        "loss_pass": loss["pass"],
                    }
                )
    return pd.DataFrame(rows, columns=list(COLUMNS))


def case_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per (case, detector), its best metric on that case: passing first, then hit rate, then fewer false alarms."""
    order = table.sort_values(
        ["case", "detector", "pass", "hit_rate", "false_alarms"], ascending=[True, True, False, False, True]
    )
    return order.groupby(["case", "detector"], sort=False).head(1).reset_index(drop=True)


def runs_table(all_runs: dict[str, list[CaseRun]]) -> pd.DataFrame:
    """One row per run and control: its truth steps, windows and the scalars it reported (`CaseRun.info`),
    e.g. the final prefix-matching score of the layer-2 heads (case C) or the final test accuracy."""
    rows = []
    for case, runs in all_runs.items():
        for r in runs:
            info = {k: v for k, v in r.info.items() if not isinstance(v, list)}
            rows.append(
                {
                    "case": case,
                    "seed": r.seed,
                    "control": r.control,
                    "layer": r.layer,
                    "truth_steps": "/".join(map(str, r.truth_steps)) or "-",
                    "windows": " ".join(f"[{a},{b}]" for a, b in r.windows) or "-",
                    **info,
                }
            )
    return pd.DataFrame(rows)


def best_metrics(table: pd.DataFrame) -> pd.DataFrame:
    """Per detector, the metric passing the most cases (ties: higher mean hit rate, then fewer false alarms)."""
    g = (
        table.groupby(["detector", "metric"])
        .agg(
            cases_passed=("pass", "sum"),
            mean_hit_rate=("hit_rate", "mean"),
            mean_false_alarms=("false_alarms", "mean"),
        )
        .reset_index()
    )
    g = g.sort_values(
        ["detector", "cases_passed", "mean_hit_rate", "mean_false_alarms"],
        ascending=[True, False, False, True],
    )
    return g.groupby("detector", sort=False).head(1).reset_index(drop=True)


def to_markdown(df: pd.DataFrame) -> str:
    """A GitHub Markdown table of `df` (numbers to 2 decimals), without the tabulate package."""

    def cell(v: Any) -> str:
        if isinstance(v, bool | np.bool_):
            return "PASS" if v else "fail"
        if isinstance(v, float | np.floating):
            return "-" if np.isnan(v) else f"{v:.2f}"
        return str(v)

    head = "| " + " | ".join(df.columns) + " |"
    sep = "|" + "|".join("---" for _ in df.columns) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([head, sep, *body])


def case_figure(
    runs: Sequence[CaseRun], detectors: Sequence[str], metric_of: dict[str, str], path: Path
) -> None:
    """One figure per case: seed 0's truth curves, then per detector its metric's series with its events.

    Truth windows are shaded; transition events are red solid lines at their peak, init-escape events
    grey dashed lines; the burn-in (first 10% of steps, where unmatched events are not false alarms) is
    hatched.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run = next(r for r in runs if not r.control)
    n = len(detectors) + 1
    fig, axes = plt.subplots(n, 1, figsize=(9, 1.9 * n + 0.6), sharex=True)
    axes = np.atleast_1d(axes)

    def shade(ax: Any) -> None:
        for a, b in run.windows:
            ax.axvspan(a, b, color="tab:green", alpha=0.2, lw=0)
        ax.axvspan(0, sc.BURN_IN * run.n_steps, color="0.85", alpha=0.5, lw=0, hatch="//")

    ax = axes[0]
    shade(ax)
    for col in run.curves.columns:
        ax.plot(run.curves.index, run.curves[col], lw=1, label=col)
    for t in run.truth_steps:
        ax.axvline(t, color="tab:green", lw=1)
    ax.legend(fontsize=7, loc="upper right")
    twin = ax.twinx()  # the loss has its own scale
    twin.plot(run.loss.index, run.loss.to_numpy(), lw=0.6, color="0.4", alpha=0.6)
    twin.set_ylabel("training loss (grey)", fontsize=7)
    ax.set_title(
        f"case {run.case}, seed {run.seed}: truth curves and windows (green); events "
        "(red: transition peak, grey dashed: init escape)",
        fontsize=8,
    )
    for ax, det in zip(axes[1:], detectors, strict=True):
        metric = metric_of[det]
        s = run.series(metric)
        shade(ax)
        ax.plot(s.index, s.to_numpy(), lw=1, color="k")
        jumps = sc.detect(sc.get_detector(det), s)
        for e in jumps.events:
            ax.axvline(e.peak_step, color="tab:red", lw=1.2)
        for e in jumps.init_escape:
            ax.axvline(e.peak_step, color="0.5", lw=1.2, ls="--")
        ax.set_ylabel(f"{det}\n{metric}", fontsize=8)
    axes[-1].set_xlabel(f"step (layer {run.layer})")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m ndt.validate``; returns the exit status (0 unless the input is bad)."""
    p = argparse.ArgumentParser(prog="python -m ndt.validate", description=__doc__.split("\n")[0])
    p.add_argument("--cases", default=",".join(FAST_CASES), help=f"comma-separated, from {','.join(CASES)}")
    p.add_argument("--seeds", type=int, default=5, help="runs (and as many controls) per case")
    p.add_argument("--out", type=Path, default=Path("results/validate"), help="table, figures and cache/")
    p.add_argument("--detectors", default=",".join(DETECTORS), help="comma-separated names from ndt.detect")
    p.add_argument("--metrics", default=",".join(METRICS), help="comma-separated metric columns")
    p.add_argument("--no-cache", action="store_true", help="train every run again (nothing is cached)")
    p.add_argument("--no-figures", action="store_true", help="skip the PNG figures")
    p.add_argument(
        "--investigate",
        metavar="CASE",
        help="write the investigate report at CASE's transition (B) and check its causal criterion",
    )
    p.add_argument("--seed", type=int, help="with --investigate: this seed only (default: seeds 0..seeds-1)")
    a = p.parse_args(argv)
    if a.investigate is not None:
        return investigate_main(a.investigate.strip().upper(), a, p)
    cases = [c.strip().upper() for c in a.cases.split(",") if c.strip()]
    detectors = [d.strip() for d in a.detectors.split(",") if d.strip()]
    metrics = [m.strip() for m in a.metrics.split(",") if m.strip()]
    bad = [c for c in cases if c not in CASES]
    if bad:
        p.error(f"unknown case(s) {bad}; choose from {','.join(CASES)}")
    bad = [d for d in detectors if d not in DETECTORS]
    if bad:
        p.error(f"unknown detector(s) {bad}; registered: {','.join(DETECTORS)}")
    bad = [m for m in metrics if m not in METRICS]
    if bad:
        p.error(f"unknown metric(s) {bad}; choose from {','.join(METRICS)}")
    if a.seeds < 1:
        p.error("--seeds must be at least 1")

    t0 = time.perf_counter()
    cache = None if a.no_cache else a.out / "cache"
    all_runs = load_runs(cases, a.seeds, cache, log=lambda m: print(m, file=sys.stderr, flush=True))
    t_runs = time.perf_counter() - t0
    table = benchmark_table(all_runs, detectors, metrics)
    best = best_metrics(table)
    per_run = runs_table(all_runs)
    summary = case_summary(table)
    a.out.mkdir(parents=True, exist_ok=True)
    summary.to_csv(a.out / "summary.csv", index=False)
    table.to_csv(a.out / "validate.csv", index=False)
    per_run.to_csv(a.out / "runs.csv", index=False)
    md = [
        f"# Validity benchmark ({a.seeds} seeds, cases {','.join(cases)})",
        "",
        "## Per case and detector, its best metric",
        "",
        to_markdown(summary),
        "",
        "## Every (case, detector, metric)",
        "",
        to_markdown(table),
        "",
        "## Best metric per detector",
        "",
        to_markdown(best),
        "",
        "## Runs and controls",
        "",
        to_markdown(per_run),
        "",
    ]
    (a.out / "validate.md").write_text("\n".join(md))
    if not a.no_figures:
        metric_of = dict(zip(best["detector"], best["metric"], strict=True))
        for case, runs in all_runs.items():
            case_figure(runs, detectors, metric_of, a.out / f"case_{case}.png")
    with pd.option_context("display.width", 250, "display.max_rows", 500, "display.max_columns", 30):
        print("runs and controls (truth from each run; info it reported):")
        print(per_run.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
        print("\nbenchmark (hit rates over runs; false alarms per run over runs and controls):")
        print(table.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
        print("\nper case and detector, its best metric:")
        print(summary.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
        print("\nbest metric per detector:")
        print(best.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    print(
        f"\nruns {t_runs:.0f} s (cached runs are read, not trained), total {time.perf_counter() - t0:.0f} s; "
        f"written {a.out / 'validate.csv'}, {a.out / 'validate.md'}, {a.out / 'runs.csv'}"
        + ("" if a.no_figures else ", case_*.png")
    )
    return 0


def investigate_main(case: str, a: argparse.Namespace, p: argparse.ArgumentParser) -> int:
    """``--investigate CASE``: one report per seed, a table of the criterion; exit 1 if a seed fails it."""
    from ndt.validate.investigate import PAIRS, investigate_table

    if case not in PAIRS:
        p.error(f"--investigate {case}: only case(s) {','.join(PAIRS)} can be investigated")
    if a.seeds < 1:
        p.error("--seeds must be at least 1")
    seeds = [a.seed] if a.seed is not None else list(range(a.seeds))
    cache = None if a.no_cache else a.out / "cache"
    table = investigate_table(case, seeds, a.out, cache, log=lambda m: print(m, file=sys.stderr, flush=True))
    with pd.option_context("display.width", 250, "display.max_columns", 40, "display.max_colwidth", 200):
        print(
            table.drop(columns=["verdict"], errors="ignore").to_string(
                index=False, float_format=lambda v: f"{v:.3g}"
            )
        )
        if "verdict" in table:
            for seed, verdict in zip(table["seed"], table["verdict"], strict=True):
                print(f"seed {seed}: {verdict}")
    print(
        f"reports: {a.out / 'investigate'}/{case}_s<seed>/report.html; table {a.out / 'investigate' / (case + '.csv')}; "
        f"{int(table['passes'].sum())} of {len(table)} seed(s) meet the criterion"
    )
    return 0 if bool(table["passes"].all()) else 1
