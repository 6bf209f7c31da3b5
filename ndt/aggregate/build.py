"""The appendix tables as pure functions of the per-run DataFrame (`ndt.aggregate.summaries`).

Every builder takes the per-run frame (one row per run, `PER_RUN_COLUMNS`) and returns a new DataFrame;
nothing here reads or writes files. Only runs with status "complete" enter the statistics; the others
are what `incomplete_table` lists.

Several seeds per (arch, dataset) pair: wherever a table shows a mean over runs, a 95% bootstrap
interval (`bootstrap_ci`, seeded) is added beside it as ``<column>_ci_low`` and ``<column>_ci_high``.
With one run per pair (the study's design) those columns are left out.

The interval (`CI_NOTE`, printed under the tables):

- Family rows pool runs of several (architecture, dataset) pairs, and the seeds of one pair are not
  independent draws of the family: they share the pair. So family rows resample *pairs* (a cluster
  bootstrap: each resample draws pairs with replacement and averages all their runs); per-pair and
  target rows resample runs (seeds).
- The percentile interval is *expanded* for small samples (Hesterberg 2015, "What teachers should know
  about the bootstrap", section 3.2): the percentiles are taken at the level whose normal quantile is
  sqrt(k / (k - 1)) t_{k-1}, k resampled units, so that for normal data it is as wide as the t interval.
  Plain percentile intervals are too narrow at small k (with k = 2 the 95% interval is [min, max],
  covering about 50%).
- With fewer than `MIN_CI_UNITS` units (pairs, or runs) no interval is shown: the bootstrap
  distribution of so few values is too coarse to give 95%.

`tests/test_aggregate.py` checks the coverage on 2,000 simulated sweeps.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats

#: The study's target experiments (A.3), as "arch/dataset".
DEFAULT_TARGETS: tuple[str, ...] = ("cnn_deep/fashion_mnist", "transformer_shallow/mnist", "mlp_narrow/mnist")

#: Family order of the tables: the study's three, then issue 13's extended ones; others (imported runs)
#: follow alphabetically. The registry's `Family` in the same order (a test holds them equal); written
#: out so that the tables need not import torch through ndt.models.
FAMILY_ORDER: tuple[str, ...] = ("mlp", "cnn", "transformer", "resnet", "vit", "lm")

#: A run's fit counts as good above this R^2 (the study's threshold).
R2_GOOD = 0.8

#: Per-run numbers averaged over seeds in A.3 and the per-pair table.
PAIR_VALUES: tuple[str, ...] = (
    "final_accuracy",
    "jumps",
    "events",
    "robust_events",
    "max_jump_magnitude",
    "max_jump_z",
    "r2",
    "alpha",
    "t0",
    "d_max",
)

#: Columns of A.3 that get a bootstrap interval when a target has several seeds.
TARGET_CI_VALUES: tuple[str, ...] = ("jumps", "events", "robust_events", "r2", "final_accuracy")

N_RESAMPLES = 10_000
CONFIDENCE = 0.95
#: Fewest resampled units (pairs in family rows, runs elsewhere) for which an interval is shown.
MIN_CI_UNITS = 5

#: The footnote printed under tables with intervals.
CI_NOTE = (
    f"Intervals: {CONFIDENCE:.0%} bootstrap intervals of the mean ({N_RESAMPLES:,} resamples, expanded "
    "percentile). Family rows resample (architecture, dataset) pairs, other rows resample runs. No "
    f"interval is shown from fewer than {MIN_CI_UNITS} pairs or runs: a bootstrap of so few values cannot "
    f"reach {CONFIDENCE:.0%} coverage (with 2 it gives [min, max], about 50%)."
)


def expanded_tail(k: int, confidence: float = CONFIDENCE) -> float:
    """The tail probability at which the expanded percentile interval of k units takes its percentiles.

    Args:
        k: resampled units (>= 2).
        confidence: nominal coverage.

    Returns:
        alpha' / 2 with Phi^-1(1 - alpha' / 2) = sqrt(k / (k - 1)) t_{k-1}(1 - alpha / 2).
    """
    t = stats.t.ppf(1.0 - (1.0 - confidence) / 2.0, df=k - 1)
    return float(stats.norm.sf(math.sqrt(k / (k - 1)) * t))


def bootstrap_ci(
    values: np.ndarray | Sequence[float],
    *,
    clusters: np.ndarray | Sequence[object] | None = None,
    n_resamples: int = N_RESAMPLES,
    confidence: float = CONFIDENCE,
    min_units: int = MIN_CI_UNITS,
    random_state: int | np.random.Generator = 0,
) -> tuple[float, float]:
    """Expanded percentile bootstrap interval of the mean, optionally resampling clusters.

    Args:
        values: (n,) observations; NaNs are ignored.
        clusters: (n,) cluster label of each observation (e.g. its (arch, dataset) pair); a resample
            draws clusters with replacement and averages all their observations. None: every
            observation is its own cluster.
        n_resamples: bootstrap resamples.
        confidence: nominal coverage, e.g. 0.95.
        min_units: fewest clusters for an interval.
        random_state: seed or Generator; the same seed gives the same interval.

    Returns:
        (low, high); (NaN, NaN) with fewer than `min_units` clusters holding a finite observation.
    """
    x = np.asarray(values, dtype=np.float64)
    labels = np.arange(x.size) if clusters is None else np.asarray(clusters, dtype=object)
    if labels.shape != x.shape:
        raise ValueError(f"clusters must have one label per value: {labels.shape} != {x.shape}")
    finite = np.isfinite(x)
    x, labels = x[finite], labels[finite]
    _, group = np.unique(labels.astype(str), return_inverse=True)
    k = int(group.max()) + 1 if group.size else 0
    if k < max(min_units, 2):
        return math.nan, math.nan
    sums = np.bincount(group, weights=x, minlength=k)  # (k,) per-cluster sums and sizes
    sizes = np.bincount(group, minlength=k).astype(np.float64)
    rng = np.random.default_rng(random_state)
    draw = rng.integers(0, k, size=(n_resamples, k))  # (n_resamples, k) clusters of each resample
    means = sums[draw].sum(axis=1) / sizes[draw].sum(axis=1)
    tail = 100.0 * expanded_tail(k, confidence)
    low, high = np.percentile(means, [tail, 100.0 - tail])
    return float(low), float(high)


def complete_runs(per_run: pd.DataFrame) -> pd.DataFrame:
    """The analysed runs: status "complete"."""
    return per_run[per_run["status"] == "complete"]


def has_multiple_seeds(per_run: pd.DataFrame) -> bool:
    """Whether any (arch, dataset) pair has more than one complete run."""
    done = complete_runs(per_run)
    return bool(len(done)) and bool(done.groupby(["arch", "dataset"]).size().max() > 1)


def _mean(x: pd.Series) -> float:
    v = x.to_numpy(dtype=np.float64, na_value=np.nan)
    return float(np.nanmean(v)) if np.isfinite(v).any() else math.nan


def _add_mean_ci(
    out: dict[str, object],
    name: str,
    values: pd.Series,
    with_ci: bool,
    random_state: int,
    clusters: pd.Series | None = None,
) -> None:
    out[name] = _mean(values)
    if with_ci:
        low, high = bootstrap_ci(
            values.to_numpy(dtype=np.float64, na_value=np.nan),
            clusters=None if clusters is None else clusters.to_numpy(),
            random_state=random_state,
        )
        out[f"{name}_ci_low"], out[f"{name}_ci_high"] = low, high


def _pairs(runs: pd.DataFrame) -> pd.Series:
    """The (arch, dataset) pair of each run, as one label: the cluster of the family rows' bootstrap."""
    return runs["arch"].astype(str) + "/" + runs["dataset"].astype(str)


def _range_text(values: pd.Series) -> str:
    lo, hi = int(values.min()), int(values.max())
    return str(lo) if lo == hi else f"{lo}-{hi}"


def summary_table(per_run: pd.DataFrame, metric: str) -> pd.DataFrame:
    """A.1: the sweep in numbers.

    Args:
        per_run: per-run frame.
        metric: the series metric (reported in the table).

    Returns:
        Two text columns, ``quantity`` and ``value``, one row per quantity.
    """
    done = complete_runs(per_run)
    n = len(done)
    ok = done[done["fit_ok"].fillna(False).astype(bool)]
    good = int((ok["r2"] > R2_GOOD).sum())
    per_pair = done.groupby(["arch", "dataset"]).size()

    def num(v: float, digits: int = 4) -> str:
        return "-" if not math.isfinite(v) else f"{v:.{digits}f}"

    rows = [
        ("Experiments (complete runs)", str(n)),
        ("Runs not complete (listed separately)", str(len(per_run) - n)),
        ("Unique architectures", str(done["arch"].nunique())),
        ("Datasets", str(done["dataset"].nunique())),
        ("Runs per (architecture, dataset)", _range_text(per_pair) if n else "-"),
        ("Measurements per run", _range_text(done["n_measurements"]) if n else "-"),
        ("Total measurements (runs x measurements)", str(int(done["n_measurements"].sum()))),
        ("Per-layer snapshots (metric rows)", str(int(done["n_rows"].sum()))),
        ("Series metric (mean over layers)", metric),
        ("Growth fits failed", str(n - len(ok))),
        ("Mean R^2 of the growth fit", num(_mean(ok["r2"]))),
        (f"Experiments with R^2 > {R2_GOOD}", str(good)),
        (f"Experiments with R^2 > {R2_GOOD} (%)", num(100.0 * good / n if n else math.nan, 1)),
        ("Fits with a parameter on a bound", str(int((ok["bound_flags"] != "").sum()))),
        ("Mean jumps per experiment (study: flagged indices)", num(_mean(done["jumps"]), 2)),
        ("Mean jump events per experiment (study)", num(_mean(done["events"]), 2)),
        ("Mean jumps per experiment (robust)", num(_mean(done["robust_events"]), 2)),
    ]
    return pd.DataFrame(rows, columns=["quantity", "value"])


def _pct(mask: pd.Series) -> float:
    """Percentage of True in a boolean column (NaN when empty)."""
    return 100.0 * float(mask.astype(bool).mean()) if len(mask) else math.nan


def ordered_families(families: Sequence[str] | pd.Series) -> list[str]:
    """Distinct families in the tables' order (`FAMILY_ORDER`), then the others alphabetically."""

    def key(family: str) -> tuple[int, str]:
        return (FAMILY_ORDER.index(family), "") if family in FAMILY_ORDER else (len(FAMILY_ORDER), family)

    return sorted(set(families), key=key)


def family_table(per_run: pd.DataFrame, *, random_state: int = 0) -> pd.DataFrame:
    """A.2: jumps by family (from the run's metadata), the study's count and events side by side.

    Args:
        per_run: per-run frame.
        random_state: bootstrap seed (used with several seeds per pair).

    Returns:
        One row per family present (mlp, cnn, transformer, then others), then "all", with columns
        family, runs, jumps_mean, jumps_max, events_mean, events_max, pct_runs_with_jumps, robust_mean,
        robust_max, pct_runs_with_robust (and ``*_ci_low``/``*_ci_high`` beside the means with several
        seeds per pair: a cluster bootstrap over the row's (arch, dataset) pairs, NaN with fewer than
        `MIN_CI_UNITS` pairs). A run "with jumps" has at least one flagged index (equivalently one event).
    """
    done = complete_runs(per_run)
    with_ci = has_multiple_seeds(per_run)
    groups = [(f, done[done["family"] == f]) for f in ordered_families(done["family"])]
    rows = []
    for family, g in [*groups, ("all", done)]:
        row: dict[str, object] = {"family": family, "runs": len(g)}
        pairs = _pairs(g)
        _add_mean_ci(row, "jumps_mean", g["jumps"], with_ci, random_state, pairs)
        row["jumps_max"] = g["jumps"].max() if len(g) else pd.NA
        _add_mean_ci(row, "events_mean", g["events"], with_ci, random_state, pairs)
        row["events_max"] = g["events"].max() if len(g) else pd.NA
        row["pct_runs_with_jumps"] = _pct(g["jumps"] > 0)
        _add_mean_ci(row, "robust_mean", g["robust_events"], with_ci, random_state, pairs)
        row["robust_max"] = g["robust_events"].max() if len(g) else pd.NA
        row["pct_runs_with_robust"] = _pct(g["robust_events"] > 0)
        rows.append(row)
    out = pd.DataFrame(rows)
    for col in ("runs", "jumps_max", "events_max", "robust_max"):
        out[col] = out[col].astype("Int64")
    return out


def transition_table(per_run: pd.DataFrame, *, random_state: int = 0) -> pd.DataFrame:
    """A.2c: the default detector's transitions by family, beside the study's events (the corrected A.2).

    Args:
        per_run: per-run frame.
        random_state: bootstrap seed (used with several seeds per pair).

    Returns:
        One row per family present, then "all": family, runs, protocols (the runs' protocols, joined),
        transitions_mean, transitions_max, pct_runs_with_transitions (layer-mean series),
        layer_transitions_mean and layers_with_transitions_mean (every layer's own series),
        pct_runs_with_init_escape (an escape from initialisation recognised on the layer-mean series),
        study_events_mean (the study's events, for comparison); intervals beside the means as in
        `family_table`.
    """
    done = complete_runs(per_run)
    with_ci = has_multiple_seeds(per_run)
    groups = [(f, done[done["family"] == f]) for f in ordered_families(done["family"])]
    rows = []
    for family, g in [*groups, ("all", done)]:
        pairs = _pairs(g)
        row: dict[str, object] = {
            "family": family,
            "runs": len(g),
            "protocols": "+".join(sorted(set(g["protocol"].astype(str)))) if len(g) else "",
        }
        _add_mean_ci(row, "transitions_mean", g["transitions"], with_ci, random_state, pairs)
        row["transitions_max"] = g["transitions"].max() if len(g) else pd.NA
        row["pct_runs_with_transitions"] = _pct(g["transitions"] > 0)
        _add_mean_ci(row, "layer_transitions_mean", g["layer_transitions"], with_ci, random_state, pairs)
        row["layers_with_transitions_mean"] = _mean(g["layers_with_transitions"])
        row["pct_runs_with_init_escape"] = _pct(g["init_escape_step"].notna())
        _add_mean_ci(row, "study_events_mean", g["events"], with_ci, random_state, pairs)
        rows.append(row)
    out = pd.DataFrame(rows)
    for col in ("runs", "transitions_max"):
        out[col] = out[col].astype("Int64")
    return out


def pair_table(per_run: pd.DataFrame, *, random_state: int = 0) -> pd.DataFrame:
    """Per (arch, dataset): number of seeds, and the mean of `PAIR_VALUES` over them with a 95% interval.

    Returns:
        One row per pair of complete runs, sorted by arch then dataset; columns arch, dataset, family,
        seeds, runs, then ``<value>``, ``<value>_ci_low``, ``<value>_ci_high`` for each of `PAIR_VALUES`
        (the interval is NaN for a pair with fewer than `MIN_CI_UNITS` runs).
    """
    done = complete_runs(per_run)
    rows = []
    for (arch, dataset), g in done.groupby(["arch", "dataset"], sort=True):
        seeds = ",".join("-" if pd.isna(s) else str(int(s)) for s in g["seed"])
        row: dict[str, object] = {
            "arch": arch,
            "dataset": dataset,
            "family": g["family"].iloc[0],
            "seeds": seeds,
            "runs": len(g),
        }
        for col in PAIR_VALUES:
            _add_mean_ci(row, col, g[col], True, random_state)
        rows.append(row)
    cols = ["arch", "dataset", "family", "seeds", "runs"] + [
        c for v in PAIR_VALUES for c in (v, f"{v}_ci_low", f"{v}_ci_high")
    ]
    out = pd.DataFrame(rows, columns=cols)
    out["runs"] = out["runs"].astype("Int64")
    return out


def parse_targets(targets: Sequence[str]) -> list[tuple[str, str]]:
    """["arch/dataset", ...] -> [(arch, dataset), ...].

    Raises:
        ValueError: an entry is not of the form arch/dataset.
    """
    pairs = []
    for t in targets:
        arch, sep, dataset = t.strip().partition("/")
        if not sep or not arch or not dataset or "/" in dataset:
            raise ValueError(f"target {t!r} must be of the form arch/dataset, e.g. cnn_deep/fashion_mnist")
        pairs.append((arch, dataset))
    return pairs


def target_table(
    per_run: pd.DataFrame, targets: Sequence[str] = DEFAULT_TARGETS, *, random_state: int = 0
) -> pd.DataFrame:
    """A.3: the target experiments.

    Args:
        per_run: per-run frame.
        targets: "arch/dataset" entries, in the order of the table.
        random_state: bootstrap seed (targets with several seeds).

    Returns:
        One row per target with columns arch, dataset, runs, depth, width, params, jumps, events,
        robust_events, r2, alpha, final_accuracy, max_jump_magnitude, max_jump_z, status ("ok";
        "not complete" when its runs are all incomplete; "missing" when the sweep has none); values are means over seeds, and with
        several seeds for any target ``*_ci_low``/``*_ci_high`` follow `TARGET_CI_VALUES`.
    """
    done = complete_runs(per_run)
    with_ci = has_multiple_seeds(per_run)
    rows = []
    for arch, dataset in parse_targets(targets):
        g = done[(done["arch"] == arch) & (done["dataset"] == dataset)]
        row: dict[str, object] = {"arch": arch, "dataset": dataset, "runs": len(g)}
        for col in ("depth", "width", "params"):  # properties of the architecture: equal across seeds
            row[col] = g[col].iloc[0] if len(g) else (math.nan if col == "width" else pd.NA)
        for col in (
            "jumps",
            "events",
            "robust_events",
            "r2",
            "alpha",
            "final_accuracy",
            "max_jump_magnitude",
            "max_jump_z",
        ):
            _add_mean_ci(row, col, g[col], with_ci and col in TARGET_CI_VALUES, random_state)
        if len(g):
            row["status"] = "ok"
        else:
            listed = (
                (per_run["arch"] == arch) & (per_run["dataset"] == dataset) & (per_run["status"] != "missing")
            )
            row["status"] = "not complete" if listed.any() else "missing"
        rows.append(row)
    out = pd.DataFrame(rows)
    for col in ("runs", "depth", "params"):
        out[col] = out[col].astype("Int64")
    out["width"] = out["width"].astype("float64")
    return out


def incomplete_table(per_run: pd.DataFrame) -> pd.DataFrame:
    """Runs that are not analysed, with their status and error (never dropped silently).

    Returns:
        Columns run, arch, dataset, seed, family, status, error; sorted by run.
    """
    rest = per_run[per_run["status"] != "complete"]
    return rest[["run", "arch", "dataset", "seed", "family", "status", "error"]].reset_index(drop=True)
