"""Spectral dimensionality metrics: one decomposition per layer, every metric from that spectrum.

For an activation matrix A of shape (n samples, k features) with singular values s1 >= s2 >= ... >= s_m,
m = min(n, k), the metrics are (registry `METRICS`, in the schema's column order):

- ``stable_rank``          = ||A||_F^2 / s1^2 = sum s_i^2 / s1^2
- ``participation_ratio``  = (sum s_i)^2 / sum s_i^2         (the study's, on singular values)
- ``cumulative_energy_90`` = 1 + #{j : (s1^2 + ... + sj^2) / sum s_i^2 < 0.9 (1 - ENERGY_RTOL)}, at most m
- ``nuclear_norm_ratio``   = sum s_i / s1
- ``pr_eigen``             = (sum l_i)^2 / sum l_i^2, l = eigenvalues of the centred covariance
- ``effective_rank``       = exp(-sum p_i log p_i), p_i = s_i / sum s

How: the squared singular values are the eigenvalues of the smaller Gram matrix (A A^T when n <= k,
else A^T A), formed in float64 on A's device (`gram_stats`) and solved on the host with LAPACK
(`numpy.linalg.eigvalsh`, batched over layers, and over measurements, whose Gram has the same size;
`metrics_from_stats`). float64 matters: float32 Gram eigenvalues carry an
absolute error of about 1e-7 * s1^2, i.e. 3e-4 * s1 on every small singular value, which moves
participation ratio and nuclear norm ratio by 1e-3 on (near-)low-rank activations.

``pr_eigen`` needs no second decomposition: (sum l)^2 / sum l^2 = tr(C)^2 / ||C||_F^2, and the centred
Gram follows from the uncentred one by a rank-one correction (exact enough unless the mean dwarfs the
spread; then `centred_moments` forms the centred Gram). With ``center=True`` the columns are centred on
the activations themselves, on their device (`gram_stats`), before the Gram: the rank-one correction
G - n mu mu^T would cancel catastrophically when |mu| >> spread (a mean 1e6 times the spread leaves
about 4 of float64's 16 digits), the subtraction on the activations loses nothing.

A zero matrix gives 0 for every metric; a Gram with NaN/Inf gives NaN for every metric of that layer.

**Finite-sample bias of pr_eigen** (the extra column ``pr_eigen_corrected``, `pr_eigen_corrected`).
With n rows drawn from a population of covariance Sigma, the sample's pr_eigen estimates the
population's PR = tr(Sigma)^2 / tr(Sigma^2) with a bias that grows as rows run short: for Gaussian rows,
E tr(W^2) = N(N+1) tr(Sigma^2) + N tr(Sigma)^2 and E tr(W)^2 = N^2 tr(Sigma)^2 + 2N tr(Sigma^2) for the
scatter W of N = n - 1 centred rows, so to first order 1 / pr_eigen ~ 1 / PR + 1 / N: the sample can
never report more than N: an isotropic 256-feature activation (PR 256) measured on 128 rows reads
about 85 (measured over 30 Gaussian draws: 84.8), on 512 rows about 170.
Solving those two expectations for tr(Sigma)^2 and tr(Sigma^2) gives the moment estimate
PR_hat = ((N + 1) r - 2) / (N - r) with r = pr_eigen, a function of the row's pr_eigen and n_samples
alone (on the same 128-row draws: 255.0 +- 1.8; a power-law spectrum of PR 28.3: 28.6 +- 3.4, raw 23.1),
so it is derived when rows are read (`with_derived_columns`, `HighFrequencyTracker.get_results`)
and old runs have it too. It assumes independent rows with Gaussian-like fourth moments: rows that
are not independent (per-position conv rows, tokens of one sequence) or heavy-tailed make it
under-correct; it is capped at n_features (PR <= rank) and is NaN below 3 rows.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from threadpoolctl import ThreadpoolController

from ndt.storage.schema import METRIC_COLUMNS

FloatArray = np.ndarray

# Eigenvalues below LAMBDA_TOL * m * lambda_max are rounding noise of the Gram's eigensolve (its
# absolute error is about eps * lambda_max); treating them as exact zeros makes exact-rank matrices
# agree with a float64 SVD of A instead of contributing sqrt(noise) ~ 1e-8 * s1 per value.
LAMBDA_TOL = float(np.finfo(np.float64).eps)

# Relative tolerance of the 90% threshold of `cumulative_energy_90`. At exact ties (10 equal singular
# values: the 9th prefix holds exactly 90%) float rounding of the cumulative sum (~m * eps ~ 1e-13 for
# m <= 1024) would otherwise decide the count; 1e-9 is far above that rounding and far below any
# difference in energy a measurement can resolve.
ENERGY_RTOL = 1e-9


@functools.cache
def _blas_controller() -> ThreadpoolController:
    return ThreadpoolController()  # discovering the loaded BLAS libraries costs ~0.5 ms: do it once


def single_threaded_blas() -> AbstractContextManager[object]:
    """Run numpy's LAPACK on one thread for the block (8 us to enter).

    Right after torch work, torch's OpenMP threads still spin on the cores; a multi-threaded OpenBLAS
    eigensolve then fights them and a 128x128 solve goes from 0.5 ms to 7.8 ms (measured on 2 cores).
    These matrices are too small to gain from threads anyway.
    """
    blas = _blas_controller().select(user_api="blas")
    return blas.limit(limits=1) if blas.lib_controllers else contextlib.nullcontext()


# A batch is split across threads only when each thread gets at least this many matrices of at
# least this side: below it, handing work to a thread (~50 us) costs more than it saves.
_PARALLEL_MIN_SIDE = 32
_PARALLEL_MIN_PER_THREAD = 4

_pool_lock = threading.Lock()
_pools: dict[tuple[int, int], ThreadPoolExecutor] = {}  # (process id, threads) -> pool


def _eig_pool(threads: int) -> ThreadPoolExecutor:
    # Keyed by process too: a process forked from one that made a pool (a DataLoader worker, a
    # launcher) inherits the object but not its threads.
    key = (os.getpid(), threads)
    with _pool_lock:
        if key not in _pools:
            _pools[key] = ThreadPoolExecutor(threads, thread_name_prefix="ndt-eig")
        return _pools[key]


def eig_threads() -> int:
    """Threads a batch of eigensolves may use: as many as torch's intra-op pool has, within the
    cores this process may run on (torch's count follows ``OMP_NUM_THREADS``, which torchrun and
    joblib set per process, so processes sharing a machine do not oversubscribe it)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(torch.get_num_threads(), cores))


def eigvalsh_batched(grams: np.ndarray, threads: int | None = None) -> np.ndarray:
    """Eigenvalues (ascending) of a (G, m, m) stack of symmetric matrices, split over threads.

    Each thread runs numpy's LAPACK (dsyevd, one thread inside: the caller holds
    `single_threaded_blas`) on a contiguous share of the stack; numpy releases the GIL, so the shares
    run at once. Measured on the 2-core VM after torch work, 100 Grams of 128 x 128: 56 ms on one
    thread, 38 ms on two. The matrices are independent, so the values are those of one
    `numpy.linalg.eigvalsh` call on the whole stack, bit for bit.

    Args:
        grams: (G, m, m) float64, symmetric (only the lower triangle is read).
        threads: at most this many threads; default `eig_threads()`.

    Returns:
        (G, m) float64, ascending per matrix.
    """
    threads = eig_threads() if threads is None else max(1, threads)
    g, m = grams.shape[0], grams.shape[-1]
    threads = min(threads, g // _PARALLEL_MIN_PER_THREAD) if m >= _PARALLEL_MIN_SIDE else 1
    if threads <= 1:
        return np.linalg.eigvalsh(grams)
    bounds = np.linspace(0, g, threads + 1).astype(int)
    pool = _eig_pool(threads)
    shares = [pool.submit(np.linalg.eigvalsh, grams[lo:hi]) for lo, hi in itertools.pairwise(bounds)]
    return np.concatenate([f.result() for f in shares])


@dataclass
class GramStats:
    """Sufficient statistics of one (n, k) activation matrix A for every metric, on A's device.

    Attributes:
        gram: (m, m) float64, m = min(n, k): A A^T if n <= k ("sample side"), else A^T A.
        mean: (k,) float64 column mean of A, kept only on the feature side (k < n), where the centred
            Gram A^T A - n mu mu^T needs it. On the sample side the centring needs nothing more:
            A mu = G 1 / n and |mu|^2 = 1^T G 1 / n^2. For centred statistics, the mean of the
            centred A (zero up to rounding).
        n_samples: n.
        n_features: k.
        centred: whether A's columns were centred before the Gram (`gram_stats(center=True)`).
        estimate: for a layer too wide to decompose exactly (`gram_stats`'s ``exact_max_size``): the
            (len(METRICS),) float64 metric values estimated matrix-free (`ndt.measure.estimate`), in
            registry order; `gram` is then empty and `size` 0.
    """

    gram: torch.Tensor
    mean: torch.Tensor | None
    n_samples: int
    n_features: int
    centred: bool = False
    estimate: torch.Tensor | None = None

    @property
    def size(self) -> int:
        """m, the Gram's side (0 for an estimated layer)."""
        return 0 if self.estimate is not None else int(self.gram.shape[0])

    @property
    def sample_side(self) -> bool:
        """Whether the Gram is A A^T (n <= k)."""
        return self.mean is None

    def pieces(self) -> list[torch.Tensor]:
        """The flat layout `unflatten` reads: gram (m*m,), then mean (m,) on the feature side; for an
        estimated layer its metric values."""
        if self.estimate is not None:
            return [self.estimate]
        g = self.gram.reshape(-1)
        return [g] if self.mean is None else [g, self.mean]


def flat_size(size: int, sample_side: bool) -> int:
    """Length of a layer's flat statistics (size 0: an estimated layer's metric values)."""
    if size == 0:
        return len(METRIC_COLUMNS)
    return size * size + (0 if sample_side else size)


def gram_stats(
    activations: torch.Tensor, center: bool = False, exact_max_size: int | None = None
) -> GramStats:
    """Form the float64 Gram statistics of a (n, k) activation matrix on its own device.

    Two to four tensor ops and no host synchronisation: cheap enough for a forward hook, safe on CUDA.
    A matrix whose smaller side exceeds `exact_max_size` is estimated instead (`ndt.measure.estimate`:
    bounded time and memory, a few host synchronisations); its metric values travel in ``estimate``.

    Args:
        activations: (n, k) tensor, any float dtype.
        center: subtract the column means from A (in float64, on its device) before the Gram; the
            statistics are then those of the centred matrix (`metrics_from_stats(center=True)`).
        exact_max_size: largest min(n, k) decomposed exactly; None: always exact.
    """
    if activations.ndim != 2:
        raise ValueError(f"expected a (n_samples, n_features) matrix, got shape {tuple(activations.shape)}")
    if exact_max_size is not None and min(activations.shape) > exact_max_size:
        from ndt.measure.estimate import estimate_metrics

        x = activations.detach()
        x = x - x.mean(dim=0) if center else x
        values = estimate_metrics(x)
        est = torch.tensor([values[m] for m in METRIC_COLUMNS], dtype=torch.float64, device=x.device)
        empty = torch.zeros(0, 0, dtype=torch.float64, device=x.device)
        n, k = x.shape
        return GramStats(gram=empty, mean=None, n_samples=n, n_features=k, centred=center, estimate=est)
    a = activations.detach().to(torch.float64)
    if center:
        a = a - a.mean(dim=0)
    n, k = a.shape
    if n <= k:
        return GramStats(gram=a @ a.T, mean=None, n_samples=n, n_features=k, centred=center)  # (n, n)
    return GramStats(gram=a.T @ a, mean=a.mean(dim=0), n_samples=n, n_features=k, centred=center)


def unflatten(flat: np.ndarray, size: int, sample_side: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Inverse of `GramStats.pieces` on the host: (gram (m, m), mean (m,) or None)."""
    mm = size * size
    return flat[:mm].reshape(size, size), None if sample_side else flat[mm : mm + size]


def centred_grams(gram: np.ndarray, mean: np.ndarray | None, n_samples: np.ndarray) -> np.ndarray:
    """Gram matrices of the column-centred activations, from the uncentred statistics.

    Args:
        gram: (L, m, m) uncentred Grams.
        mean: (L, m) column means for feature-side Grams (A^T A); None for sample-side ones (A A^T).
        n_samples: (L,) n of each layer.

    Returns:
        (L, m, m): sample side, (A - 1 mu^T)(A - 1 mu^T)^T = G - v 1^T - 1 v^T + |mu|^2 1 1^T with
        v = A mu = G 1 / n and |mu|^2 = 1^T G 1 / n^2; feature side, G - n mu mu^T.
    """
    n = n_samples.astype(np.float64)
    if mean is None:
        v = gram.sum(axis=2) / n[:, None]  # (L, m)
        mu2 = v.sum(axis=1) / n  # (L,)
        return gram - v[:, :, None] - v[:, None, :] + mu2[:, None, None]
    return gram - n[:, None, None] * mean[:, :, None] * mean[:, None, :]


# When the centred energy is below this share of the uncentred one, the closed forms below lose
# digits to cancellation (relative error ~ eps / share); form the centred Gram instead.
_CANCELLATION_SHARE = 1e-6


def centred_moments(
    gram: np.ndarray, mean: np.ndarray | None, n_samples: np.ndarray, fro2: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """tr(Gc) and ||Gc||_F^2 of the centred Grams without forming them (one pass over G).

    With Gc as in `centred_grams`:
    sample side, v = G 1 / n, s = 1^T G 1 / n: tr(Gc) = tr(G) - s, ||Gc||^2 = ||G||^2 - 2 n |v|^2 + s^2;
    feature side: tr(Gc) = tr(G) - n |mu|^2, ||Gc||^2 = ||G||^2 - 2 n mu^T G mu + n^2 |mu|^4.

    Args: as `centred_grams`; fro2: (L,) ||G||_F^2 when the caller has it (`solve_spectra` does).
    Returns: ((L,) traces, (L,) squared Frobenius norms).
    """
    n = n_samples.astype(np.float64)
    trace = np.trace(gram, axis1=1, axis2=2)
    if fro2 is None:
        fro2 = np.einsum("lij,lij->l", gram, gram)
    if mean is None:
        v = gram.sum(axis=2) / n[:, None]
        s = v.sum(axis=1)
        ctrace, cfro2 = trace - s, fro2 - 2 * n * np.einsum("li,li->l", v, v) + s**2
    else:
        mu2 = np.einsum("li,li->l", mean, mean)
        quad = np.einsum("li,lij,lj->l", mean, gram, mean)
        ctrace, cfro2 = trace - n * mu2, fro2 - 2 * n * quad + n**2 * mu2**2
    risky = cfro2 < _CANCELLATION_SHARE * fro2
    if risky.any():
        gc = centred_grams(gram[risky], None if mean is None else mean[risky], n_samples[risky])
        ctrace[risky] = np.trace(gc, axis1=1, axis2=2)
        cfro2[risky] = np.einsum("lij,lij->l", gc, gc)
    return ctrace, np.maximum(cfro2, 0.0)


@dataclass
class Spectrum:
    """Spectra of L layers (of one Gram size m in `metrics_from_solved`); the input of every metric.

    Attributes:
        eigenvalues: (L, m) squared singular values, descending, >= 0, rounding noise set to 0.
        singular_values: (L, m) their square roots.
        centred_trace: (L,) tr of the centred Gram, ||A - mean||_F^2 (see `centred_moments`).
        centred_fro2: (L,) squared Frobenius norm of the centred Gram.
    """

    eigenvalues: FloatArray
    singular_values: FloatArray
    centred_trace: FloatArray
    centred_fro2: FloatArray

    @functools.cached_property
    def energy(self) -> FloatArray:
        """(L,) sum of squared singular values, ||A||_F^2 (computed once; three metrics use it)."""
        return self.eigenvalues.sum(axis=1)


def _ratio(num: FloatArray, den: FloatArray) -> FloatArray:
    """num / den with 0 where den == 0 (the zero matrix's convention)."""
    out = np.zeros(np.broadcast(num, den).shape)
    np.divide(num, den, out=out, where=den > 0)
    return out


def stable_rank(sp: Spectrum) -> FloatArray:
    """||A||_F^2 / s1^2 (s1 the true spectral norm, not the Frobenius norm)."""
    return _ratio(sp.energy, sp.eigenvalues[:, 0])


def participation_ratio(sp: Spectrum) -> FloatArray:
    """(sum s_i)^2 / sum s_i^2, on singular values (the study's definition)."""
    return _ratio(sp.singular_values.sum(axis=1) ** 2, sp.energy)


def cumulative_energy_90(sp: Spectrum) -> FloatArray:
    """1 + number of leading prefixes holding < 90% of sum s_i^2, capped at m; 0 for a zero matrix.

    A prefix within `ENERGY_RTOL` of 90% counts as holding 90% (10 equal values give 9, not 10).
    """
    energy = sp.energy
    cum = _ratio(np.cumsum(sp.eigenvalues, axis=1), energy[:, None])
    below = cum < 0.9 * (1.0 - ENERGY_RTOL)
    count = np.minimum(below.sum(axis=1) + 1, sp.eigenvalues.shape[1]).astype(np.float64)
    return np.where(energy > 0, count, 0.0)


def nuclear_norm_ratio(sp: Spectrum) -> FloatArray:
    """sum s_i / s1."""
    return _ratio(sp.singular_values.sum(axis=1), sp.singular_values[:, 0])


def pr_eigen(sp: Spectrum) -> FloatArray:
    """Textbook participation ratio (sum l)^2 / sum l^2 of the centred covariance eigenvalues l."""
    return _ratio(sp.centred_trace**2, sp.centred_fro2)


def effective_rank(sp: Spectrum) -> FloatArray:
    """exp of the Shannon entropy (nats) of p_i = s_i / sum s (Roy & Vetterli, 2007)."""
    total = sp.singular_values.sum(axis=1, keepdims=True)
    p = _ratio(sp.singular_values, total)
    plogp = np.zeros_like(p)
    np.multiply(p, np.log(p, out=np.zeros_like(p), where=p > 0), out=plogp, where=p > 0)
    return np.where(total[:, 0] > 0, np.exp(-plogp.sum(axis=1)), 0.0)


MetricFn = Callable[[Spectrum], FloatArray]

#: The registry: metric name -> function of a `Spectrum` returning (L,) values. One definition each.
METRICS: dict[str, MetricFn] = {
    "stable_rank": stable_rank,
    "participation_ratio": participation_ratio,
    "cumulative_energy_90": cumulative_energy_90,
    "nuclear_norm_ratio": nuclear_norm_ratio,
    "pr_eigen": pr_eigen,
    "effective_rank": effective_rank,
}
assert tuple(METRICS) == METRIC_COLUMNS, "registry and schema must list the same metrics in order"


#: Columns derived from the stored ones when rows are read (not stored: old runs get them too).
DERIVED_COLUMNS: tuple[str, ...] = ("pr_eigen_corrected",)


def pr_eigen_corrected(pr_eigen: np.ndarray, n_samples: np.ndarray, n_features: np.ndarray) -> FloatArray:
    """The finite-sample bias-corrected pr_eigen (module docstring): ((N + 1) r - 2) / (N - r).

    Args:
        pr_eigen: (L,) the sample's pr_eigen r (tr C)^2 / ||C||_F^2, NaN where not computed.
        n_samples: (L,) rows n of each activation matrix; N = n - 1 centred degrees of freedom.
        n_features: (L,) columns k: the estimate is capped at k (a PR cannot exceed the rank).

    Returns:
        (L,) float64: the estimate; 0 where pr_eigen is 0 (a zero matrix), NaN where pr_eigen is NaN
        or n < 3 (too few rows to estimate a fourth moment), k where r = N (the estimate is unbounded).
    """
    r = np.asarray(pr_eigen, dtype=np.float64)
    dof = np.asarray(n_samples, dtype=np.float64) - 1.0
    cap = np.asarray(n_features, dtype=np.float64)
    den = dof - r  # >= 0: a centred matrix of N degrees of freedom has rank <= N, so r <= N
    with np.errstate(divide="ignore", invalid="ignore"):
        est = np.where(den > 0, ((dof + 1.0) * r - 2.0) / np.where(den > 0, den, 1.0), cap)
    out = np.minimum(np.maximum(est, 1.0), cap)  # r >= 1 gives est >= 1 already; clip rounding only
    out = np.where(r == 0, 0.0, out)
    return np.where(np.isfinite(r) & (dof >= 2), out, np.nan)


def with_derived_columns(rows: pd.DataFrame) -> pd.DataFrame:
    """`rows` (metric rows as `ndt.storage.parquet.read_metrics` returns them) with `DERIVED_COLUMNS` added.

    Rows that lack pr_eigen (imported legacy runs store it as null) get NaN.
    """
    out = rows.copy()
    if {"pr_eigen", "n_samples", "n_features"} <= set(rows.columns):
        out["pr_eigen_corrected"] = pr_eigen_corrected(
            rows["pr_eigen"].to_numpy(dtype=np.float64, na_value=np.nan),
            rows["n_samples"].to_numpy(),
            rows["n_features"].to_numpy(),
        )
    return out


def validate_metric_names(names: Iterable[str]) -> tuple[str, ...]:
    """Return `names` as a tuple, or raise ValueError naming the unknown ones and the valid choices."""
    names = tuple(names)
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; valid metrics: {', '.join(METRICS)}")
    return names


@dataclass
class SolvedLayers:
    """The spectra of L layers, solved, before any metric: what `metrics_from_solved` needs.

    Attributes:
        eigenvalues: (L, m) descending, rounding noise set to 0, zero-padded to the widest Gram.
        centred_trace, centred_fro2: (L,) as in `Spectrum`.
        sizes: (L,) Gram side of each layer (0: estimated).
        finite: (L,) False where the statistics held NaN/Inf.
        estimates: (L, len(METRIC_COLUMNS)) the estimated layers' metric values (NaN elsewhere).
    """

    eigenvalues: FloatArray
    centred_trace: FloatArray
    centred_fro2: FloatArray
    sizes: np.ndarray
    finite: np.ndarray
    estimates: FloatArray

    @staticmethod
    def concat(parts: Sequence[SolvedLayers]) -> SolvedLayers:
        """The layers of several solves, in order (eigenvalues zero-padded to the widest)."""
        width = max(p.eigenvalues.shape[1] for p in parts)
        lam = np.zeros((sum(len(p.sizes) for p in parts), width))
        row = 0
        for p in parts:
            lam[row : row + len(p.sizes), : p.eigenvalues.shape[1]] = p.eigenvalues
            row += len(p.sizes)
        return SolvedLayers(
            eigenvalues=lam,
            centred_trace=np.concatenate([p.centred_trace for p in parts]),
            centred_fro2=np.concatenate([p.centred_fro2 for p in parts]),
            sizes=np.concatenate([p.sizes for p in parts]),
            finite=np.concatenate([p.finite for p in parts]),
            estimates=np.concatenate([p.estimates for p in parts]),
        )


def solve_spectra(
    flats: Sequence[np.ndarray],
    sizes: Sequence[int],
    n_samples: np.ndarray,
    n_features: np.ndarray,
    *,
    center: bool = False,
    sample_sides: Sequence[bool] | None = None,
) -> SolvedLayers:
    """Eigen-decompose L layers' Grams (batched by shape): the first half of `metrics_from_stats`.

    Layers solved apart (say, one measurement at a time) join with `SolvedLayers.concat` before
    `metrics_from_solved` evaluates every metric once for all. Arguments as `metrics_from_stats`.
    """
    n_layers = len(flats)
    # Estimated layers (size 0) bring their metric values; NaN values mean non-finite activations.
    estimated = np.array([s == 0 for s in sizes], dtype=bool)
    finite = np.ones(n_layers, dtype=bool)
    estimates = np.full((n_layers, len(METRIC_COLUMNS)), np.nan)
    for i in np.flatnonzero(estimated):
        finite[i] = bool(np.isfinite(flats[int(i)]).all())
        estimates[i] = flats[int(i)][: len(METRIC_COLUMNS)]
    groups: dict[tuple[int, bool], list[int]] = {}
    for i in np.flatnonzero(~estimated):
        side = bool(n_samples[i] <= n_features[i]) if sample_sides is None else bool(sample_sides[int(i)])
        groups.setdefault((sizes[int(i)], side), []).append(int(i))
    m_max = max([*sizes, 1])  # 1: a batch of estimated layers only still has a (L, 1) spectrum
    # Eigenvalues zero-padded to m_max: zero singular values change no metric, and one (L, m_max)
    # array lets every metric run once for the whole batch.
    lam = np.zeros((n_layers, m_max))
    ctrace = np.zeros(n_layers)
    cfro2 = np.zeros(n_layers)
    with single_threaded_blas():
        for (m, sample_side), members in groups.items():
            parts = [unflatten(flats[i], m, sample_side) for i in members]
            # (G, m, m): the one copy the batched solve needs (a view for a single layer)
            g = parts[0][0][None] if len(parts) == 1 else np.stack([p[0] for p in parts])
            mean = None if sample_side else np.stack([p[1] for p in parts if p[1] is not None])
            # ||G||_F^2 is needed anyway and is finite exactly when every entry is, unless squares
            # overflow (entries > 1e154): those few are checked entry by entry. One pass instead of
            # a pass for finiteness and one for the norm (~50 us per MLP measurement).
            fro2 = np.einsum("lij,lij->l", g, g)
            ok = np.isfinite(fro2)
            for j in np.flatnonzero(~ok):
                ok[j] = bool(np.isfinite(g[j]).all())
            if mean is not None:
                ok &= np.isfinite(mean).all(axis=1)
            idx = np.asarray(members)
            if not ok.all():
                finite[idx[~ok]] = False
                idx, g, fro2 = idx[ok], g[ok], fro2[ok]
                mean = None if mean is None else mean[ok]
                if not idx.size:
                    continue
            if center:  # already centred on the activations: no correction to apply
                ctrace[idx] = np.trace(g, axis1=1, axis2=2)
                cfro2[idx] = fro2
            else:
                ctrace[idx], cfro2[idx] = centred_moments(g, mean, n_samples[idx], fro2=fro2)
            lam[idx, :m] = eigvalsh_batched(g)[:, ::-1]  # descending
    size_arr = np.asarray(sizes, dtype=np.int64)
    tol = LAMBDA_TOL * size_arr.astype(np.float64)[:, None] * lam[:, :1]
    lam = np.where(lam > tol, lam, 0.0)
    return SolvedLayers(lam, ctrace, cfro2, size_arr, finite, estimates)


def metrics_from_solved(
    solved: SolvedLayers, metrics: Sequence[str] = METRIC_COLUMNS
) -> tuple[dict[str, FloatArray], np.ndarray]:
    """The chosen metrics of solved layers, each vectorised over the layers of one Gram size: the
    second half of `metrics_from_stats` (same returns).

    Each size is evaluated on its own width, not on the batch's zero-padded one: a sum over m values
    and one over m values and zeros round differently (numpy's pairwise summation blocks by length),
    so a layer's value would otherwise move by an ulp with the widest layer measured beside it.
    """
    n_layers = len(solved.sizes)
    out = {name: np.empty(n_layers) for name in metrics}
    for size in np.unique(solved.sizes):
        rows = np.flatnonzero(solved.sizes == size)
        lam = solved.eigenvalues[rows, : max(int(size), 1)]  # size 0 (estimated): overwritten below
        sp = Spectrum(
            eigenvalues=lam,
            singular_values=np.sqrt(lam),
            centred_trace=solved.centred_trace[rows],
            centred_fro2=solved.centred_fro2[rows],
        )
        for name in metrics:
            out[name][rows] = METRICS[name](sp)
    estimated = np.flatnonzero(solved.sizes == 0)
    for name in metrics:
        values = out[name]
        values[estimated] = solved.estimates[estimated, METRIC_COLUMNS.index(name)]
        values[~solved.finite] = np.nan
    return out, solved.finite


def metrics_from_stats(
    flats: Sequence[np.ndarray],
    sizes: Sequence[int],
    n_samples: np.ndarray,
    n_features: np.ndarray,
    *,
    center: bool = False,
    metrics: Sequence[str] = METRIC_COLUMNS,
    sample_sides: Sequence[bool] | None = None,
) -> tuple[dict[str, FloatArray], np.ndarray]:
    """Eigen-decompose L layers' Grams (batched by shape) and evaluate the chosen metrics on all at once.

    Args:
        flats: L host float64 vectors in the `GramStats.pieces` layout.
        sizes: (L,) Gram side m of each.
        n_samples, n_features: (L,) n and k of each activation matrix.
        center: the statistics are of column-centred activations (`gram_stats(center=True)`): their
            Gram is decomposed as it is and is its own centred Gram for ``pr_eigen``.
        metrics: names from `METRICS`.
        sample_sides: (L,) whether each Gram is A A^T; default: n <= k, as `gram_stats` forms them
            (statistics summed across ranks are feature-side whatever n; see `ndt.measure.distributed`).

    Returns:
        ({metric: (L,) float64}, finite) where finite is an (L,) bool mask; layers whose statistics
        hold NaN/Inf get NaN for every metric.
    """
    solved = solve_spectra(flats, sizes, n_samples, n_features, center=center, sample_sides=sample_sides)
    return metrics_from_solved(solved, metrics)


def compute_metrics(
    activations: torch.Tensor | np.ndarray | Mapping[str, torch.Tensor | np.ndarray],
    *,
    center: bool = False,
    metrics: Sequence[str] = METRIC_COLUMNS,
    exact_max_size: int | None = None,
) -> dict[str, float] | dict[str, dict[str, float]]:
    """All metrics of one (n, k) activation matrix, or of a dict of them, from one spectrum each.

    Args:
        activations: a (n, k) tensor/array, or {layer name: (n, k)}.
        center: centre the columns first.
        metrics: which metrics (names from `METRICS`).
        exact_max_size: estimate a matrix whose min(n, k) exceeds this, as the tracker does
            (`gram_stats`); None (the default): every matrix decomposed exactly.

    Returns:
        {metric: value} for one matrix; {layer: {metric: value}} for a dict.

    Example:
        >>> compute_metrics(torch.eye(3))["stable_rank"]
        3.0
    """
    metrics = validate_metric_names(metrics)
    single = not isinstance(activations, Mapping)
    mats = {"_": activations} if single else dict(activations)
    stats = [
        gram_stats(torch.as_tensor(a), center=center, exact_max_size=exact_max_size) for a in mats.values()
    ]
    values, _ = metrics_from_stats(
        [torch.cat(s.pieces()).cpu().numpy() for s in stats],
        [s.size for s in stats],
        np.array([s.n_samples for s in stats]),
        np.array([s.n_features for s in stats]),
        center=center,
        metrics=metrics,
    )
    per_layer = {name: {m: float(values[m][i]) for m in metrics} for i, name in enumerate(mats)}
    return per_layer["_"] if single else per_layer
