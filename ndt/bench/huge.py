"""Very wide layers: the matrix-free estimate (`ndt.measure.estimate`) against the exact decomposition.

The activation of the issue that asked for it: 8,192 rows (tokens) x k features whose column scales
decay as i^-0.7 (a Gaussian matrix times diag(i^-0.7), seeded), at k = 1,024 ... 8,192. For each width:
the estimate's wall time and extra peak memory (resident set size in a fresh subprocess, above the
matrix itself), and each metric's error against the exact float64 eigendecomposition of the Gram
(computed here; at k = 8,192 that alone takes minutes, so it is optional: ``--exact-up-to``). Target at
k = 4,096: <= 2 s, <= 512 MB, every metric within 5%.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np
import torch

from ndt.measure.estimate import estimate_metrics
from ndt.measure.spectrum import METRICS

ROWS = 8192
WIDTHS = (1024, 2048, 4096, 8192)


def activation(n: int, k: int, seed: int = 0) -> torch.Tensor:
    """(n, k) float32 Gaussian matrix times diag(i^-0.7), i = 1..k."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, k, generator=g)
    return a.mul_(torch.arange(1, k + 1, dtype=torch.float32) ** -0.7)  # in place: no second copy


def exact_metrics(a: torch.Tensor) -> dict[str, float]:
    """The six metrics from a float64 eigendecomposition of the smaller Gram (the reference)."""
    x = a.double()
    g = x.T @ x if x.shape[1] <= x.shape[0] else x @ x.T
    lam = np.linalg.eigvalsh(g.numpy())[::-1].clip(min=0.0)
    s = np.sqrt(lam)
    p = s / s.sum()
    p = p[p > 0]
    xc = x - x.mean(dim=0)
    gc = xc.T @ xc if x.shape[1] <= x.shape[0] else xc @ xc.T
    ctrace, cfro2 = float(torch.trace(gc)), float((gc * gc).sum())
    cum = np.cumsum(lam) / lam.sum()
    return {
        "stable_rank": lam.sum() / lam[0],
        "participation_ratio": s.sum() ** 2 / lam.sum(),
        "cumulative_energy_90": float((cum < 0.9).sum() + 1),
        "nuclear_norm_ratio": s.sum() / s[0],
        "pr_eigen": ctrace**2 / cfro2,
        "effective_rank": float(np.exp(-(p * np.log(p)).sum())),
    }


def _proc_status_kib(key: str) -> int | None:
    """A ``/proc/self/status`` field in KiB (VmRSS: resident now, VmHWM: peak resident), None off Linux."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Reset the process's peak resident set size (VmHWM) to its current size; False if unsupported.

    Without a reset, the peak is the whole process's: building the activation itself (randn's
    buffer, the scaling) already peaks above what the estimate adds, and the difference of two
    ``ru_maxrss`` readings then says 0 MB whatever the estimate allocates.
    """
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # Linux >= 4.0: "5" resets the peak RSS counter
    except OSError:
        return False
    return True


def _measure_one(k: int) -> dict[str, float]:
    """In this process: time and extra peak RSS of one estimate (called in a fresh subprocess).

    Extra peak memory: peak resident size during the estimate minus the resident size just before
    it (the activation already in memory), from Linux's VmHWM after resetting it; where that is not
    available, the difference of ``ru_maxrss`` (a lower bound).
    """
    a = activation(ROWS, k)
    estimate_metrics(activation(256, min(k, 512)))  # warm-up: LAPACK and allocator initialised
    reset = _reset_peak_rss()
    before = _proc_status_kib("VmRSS") if reset else None
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    t = time.perf_counter()
    values = estimate_metrics(a)
    seconds = time.perf_counter() - t
    hwm = _proc_status_kib("VmHWM") if reset else None
    if before is not None and hwm is not None:
        extra_kib = hwm - before
    else:
        extra_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base
    return {"seconds": seconds, "extra_mb": extra_kib / 1024, "rss_reset": float(reset), **values}


def bench_huge(widths: tuple[int, ...] = WIDTHS, exact_up_to: int = 4096) -> list[dict[str, float]]:
    """One row per width: seconds, extra_mb, and each metric's relative error (NaN where not computed)."""
    rows = []
    for k in widths:
        out = subprocess.run(
            [sys.executable, "-m", "ndt.bench.huge", "--one", str(k)],
            capture_output=True,
            text=True,
            check=True,
        )
        got = json.loads(out.stdout.strip().splitlines()[-1])
        row = {"width": k, "seconds": got["seconds"], "extra_mb": got["extra_mb"]}
        ref = exact_metrics(activation(ROWS, k)) if k <= exact_up_to else None
        for m in METRICS:
            row[f"{m}_err"] = float("nan") if ref is None else got[m] / ref[m] - 1.0
        rows.append(row)
    return rows


def report_huge(rows: list[dict[str, float]]) -> str:
    """The table `make bench` prints."""
    lines = [
        f"huge layers: {ROWS:,} rows x k features (column scales i^-0.7), matrix-free estimate vs exact float64",
        "  k      time    extra peak   max |error| over the six metrics (worst metric)",
    ]
    for r in rows:
        errs = {m: abs(r[f"{m}_err"]) for m in METRICS}
        worst = max(errs, key=lambda m: errs[m])
        err = "exact not computed" if np.isnan(errs[worst]) else f"{100 * errs[worst]:.2f}% ({worst})"
        lines.append(f"  {int(r['width']):>5}  {r['seconds']:5.2f} s  {r['extra_mb']:7.0f} MB   {err}")
    lines.append("  targets at k = 4,096: <= 2 s, <= 512 MB, every metric within 5%")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m ndt.bench.huge", description=__doc__.split("\n")[0])
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    parser.add_argument(
        "--exact-up-to", type=int, default=4096, help="widest k checked against the exact spectrum"
    )
    args = parser.parse_args()
    if args.one:
        print(json.dumps(_measure_one(args.one)))
        return
    print(report_huge(bench_huge(exact_up_to=args.exact_up_to)))


if __name__ == "__main__":
    main()
