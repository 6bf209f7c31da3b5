"""Matrix-free estimates of the six metrics for layers too wide to decompose exactly.

The exact path (`ndt.measure.spectrum`) forms the m x m Gram matrix, m = min(n, k), and solves it in
float64: O(n k m + m^3) time and O(m^2) memory, seconds per layer at m = 4,096. These metrics depend on
the whole spectrum (participation ratio, effective rank, nuclear norm), so subsampling rows or sketching
columns does not work (an 8,192 x 4,096 activation with column scales i^-0.7: a 1,024-row subsample is
off by -54% on PR and -69% on effective rank). Here the Gram G (A^T A or A A^T, whichever is smaller)
is only ever applied to blocks of vectors, G V = A^T (A V), in A's dtype on A's device:

1. **Deflation** (randomized subspace iteration, Halko, Martinsson & Tropp 2011): ``rank`` leading
   eigenpairs from a seeded Gaussian block of ``rank + oversample`` vectors, ``power_iters`` power
   iterations and a Rayleigh-Ritz step. They are kept exactly: the top of the spectrum dominates
   lambda_1 (stable rank), sum lambda^2 (pr_eigen) and the first components of cumulative energy, where
   stochastic trace estimates would have a large variance.
2. **Stochastic Lanczos quadrature** (Ubaru, Chen & Saad 2017) on the rest, P G P with P = I - U U^T:
   ``probes`` Rademacher vectors (seeded, projected by P), ``lanczos_steps`` Lanczos steps each (run as one
   block, with full reorthogonalisation), give nodes theta_j and weights w_j such that
   tr f(P G P) ~= sum_j w_j f(theta_j) for any f: sqrt (nuclear norm, participation ratio),
   sqrt(l) log sqrt(l) (effective rank) and l^2 (pr_eigen's ||C||_F^2). The same nodes and weights are a
   discrete spectral density: cumulative_energy_90 counts the (fractional) weight needed, from the largest
   node down, to reach 90% of the energy the deflated part must supply.
3. Exact where it is cheap: ||A||_F^2 = tr G (accumulated in float64), the column mean mu and
   mu^T G mu = |A mu|^2, so pr_eigen's centring uses the closed forms of `ndt.measure.spectrum`.

Weak case: a layer of rank well below min(n, k) (a Linear that widens its input: rank <= its input
width + 1) puts a cluster of zero eigenvalues next to small nonzero ones, which Gauss quadrature
resolves slowly: on a 500 x 400 rank-301 layer effective rank was +6% at 16 Lanczos steps, +1.3% at 24
(the default).

Cost: (power_iters + 2) block products with rank + oversample columns plus lanczos_steps with probes
columns, each 4 n k flops per column: linear in n x k. Memory: a few (n or k) x (rank + oversample)
blocks, never k x k. Error on the matrices of tests/test_estimate.py: within 3% on every metric at the
defaults (see `make bench` for time, memory and error at widths 1,024 to 8,192). The estimates are
random only through ``seed``: the same matrix and seed give the same numbers.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

#: Layers whose Gram side min(n, k) exceeds this are estimated (below: the exact decomposition).
EXACT_MAX_SIZE = 2048
#: Largest share of ||A||_F^2 the column mean may carry for pr_eigen's centring by closed forms; above
#: it ||C||_F^2 is a small difference of large estimated terms and the centred operator is used instead.
CENTRED_BY_ALGEBRA_MAX_SHARE = 0.5


@dataclass(frozen=True)
class EstimatorConfig:
    """Knobs of `estimate_metrics` (defaults chosen on the matrices of tests/test_estimate.py).

    Attributes:
        rank: leading eigenpairs deflated and kept exactly.
        oversample: extra vectors in the subspace iteration (accuracy of the rank-th pair).
        power_iters: power iterations of the subspace (1 suffices for decaying spectra).
        probes: Rademacher vectors of the stochastic Lanczos quadrature.
        lanczos_steps: Lanczos steps per probe (quadrature nodes per probe).
        seed: seed of every random draw (the estimate is a deterministic function of A and seed).
    """

    rank: int = 64
    oversample: int = 8
    power_iters: int = 1
    probes: int = 16
    lanczos_steps: int = 24
    seed: int = 0


#: G V for a block V (m, c) -> (m, c), never forming G.
Operator = Callable[[torch.Tensor], torch.Tensor]


#: Bytes of A per block of rows on the host (`_feature_side`, `_exact_moments`): small enough to stay in
#: cache between a block's two products, and to keep the moments' temporaries out of fresh pages (a
#: 32 MB temporary per block made the moments of 8,192 x 8,192 take 200 ms, 4 MB blocks 43 ms).
_HOST_BLOCK_BYTES = 4 << 20


def _rows_per_block(a: torch.Tensor) -> int:
    """Rows of A that make one `_HOST_BLOCK_BYTES` block (at least 1)."""
    return max(1, _HOST_BLOCK_BYTES // max(1, a.shape[1] * a.element_size()))


def _feature_side(a: torch.Tensor, mu: torch.Tensor | None) -> Operator:
    """V (k, c) -> A_c^T (A_c V), A_c = A - 1 mu^T (A itself when mu is None); mu (k, 1) in A's dtype.

    A_c V = A V - 1 (mu^T V) before the second product: the mean cancels at the size of one (n, c)
    block, not at the size of G V, so float32 keeps the centred part's digits. On the host, each block
    of rows is used for both products while it is still in cache (A^T A V = sum_b A_b^T (A_b V)), so A
    is read from memory once per product instead of twice: the whole estimate of 8,192 x 4,096 float32
    took 1.51 s against 1.86 s, of 8,192 x 8,192 3.35 s against 3.68 s (2 cores, medians of 4 runs
    alternated with the two plain products). Devices take the two plain products (one kernel
    each; a Python loop of blocks would only add launches).
    """
    if a.device.type != "cpu":

        def whole(v: torch.Tensor) -> torch.Tensor:
            if mu is None:
                return a.T @ (a @ v)
            w = a @ v - mu.T @ v
            return a.T @ w - mu @ w.sum(dim=0, keepdim=True)

        return whole
    rows = _rows_per_block(a)

    def blocked(v: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(a.shape[1], v.shape[1], dtype=v.dtype)
        shift = mu.T @ v if mu is not None else None  # (1, c): the mean's part of each row of A V
        w_sum = torch.zeros(1, v.shape[1], dtype=v.dtype)
        for lo in range(0, a.shape[0], rows):
            block = a[lo : lo + rows]
            w = block @ v
            if shift is not None:
                w -= shift
                w_sum += w.sum(dim=0, keepdim=True)
            out.addmm_(block.T, w)
        if mu is not None:
            out -= mu @ w_sum
        return out

    return blocked


def gram_operator(a: torch.Tensor, center: bool = False) -> tuple[Operator, int]:
    """(apply, m): G V without G, for the smaller Gram of A (or of the column-centred A), side m.

    Feature side (k <= n): G = A^T A, centred A_c^T A_c with A_c = A - 1 mu^T (`_feature_side`).
    Sample side (n < k): G = A A^T, centred H A A^T H with H = I - 1 1^T / n (H V subtracts each
    column's mean).
    """
    n, k = a.shape
    if k <= n:
        mu = a.mean(dim=0, dtype=torch.float64).to(a.dtype)[:, None] if center else None  # (k, 1)
        return _feature_side(a, mu), k
    if not center:
        return (lambda v: a @ (a.T @ v)), n

    def centred(v: torch.Tensor) -> torch.Tensor:
        w = a @ (a.T @ (v - v.mean(dim=0, keepdim=True)))
        return w - w.mean(dim=0, keepdim=True)

    return centred, n


def _top_eigenpairs(
    apply: Operator, m: int, like: torch.Tensor, cfg: EstimatorConfig, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """(lambda (r,) float64 descending, U (m, r) orthonormal in `like`'s dtype) of the operator's G."""
    width = min(cfg.rank + cfg.oversample, m)
    y = apply(torch.randn(m, width, generator=gen, device=like.device, dtype=like.dtype))
    for _ in range(cfg.power_iters):
        q, _ = torch.linalg.qr(y)
        y = apply(q)
    q, _ = torch.linalg.qr(y)
    small = q.T.double() @ apply(q).double()  # (width, width) Rayleigh quotient
    lam, vec = torch.linalg.eigh((small + small.T) / 2)
    r = min(cfg.rank, width)
    lam, vec = lam.flip(0)[:r], vec.flip(1)[:, :r]
    return lam.clamp_min(0.0), (q.double() @ vec).to(like.dtype)


def _lanczos_quadrature(
    apply: Operator, m: int, u: torch.Tensor, cfg: EstimatorConfig, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Nodes and weights of tr f(P G P) ~= sum w f(theta), P = I - U U^T; both (probes * steps,) float64."""
    steps = min(cfg.lanczos_steps, m - u.shape[1])
    if steps < 1:
        z = torch.zeros(0, dtype=torch.float64, device=u.device)
        return z, z
    z = torch.randint(0, 2, (m, cfg.probes), generator=gen, device=u.device).to(u.dtype) * 2 - 1
    z = z - u @ (u.T @ z)
    norms2 = (z.double() ** 2).sum(dim=0)  # (probes,) |P z|^2: E[z^T P f P z] = tr(P f P)
    tiny = torch.finfo(u.dtype).tiny
    v = z / z.norm(dim=0).clamp_min(tiny)
    basis = [v]
    alphas, betas = [], []
    v_prev, b_prev = torch.zeros_like(v), torch.zeros(cfg.probes, dtype=u.dtype, device=u.device)
    for _ in range(steps):
        w = apply(v)
        w = w - u @ (u.T @ w)  # stay in the deflated complement
        alpha = (w * v).sum(dim=0)
        w = w - alpha * v - b_prev * v_prev
        stacked = torch.stack(basis)  # (j, m, probes): full reorthogonalisation, each probe its own basis
        w = w - (stacked * (stacked * w).sum(dim=1, keepdim=True)).sum(dim=0)
        beta = w.norm(dim=0)
        alphas.append(alpha)
        betas.append(beta)
        v_prev, b_prev = v, beta
        v = w / beta.clamp_min(tiny)
        basis.append(v)
    al = torch.stack(alphas).double().T  # (probes, steps)
    be = torch.stack(betas).double().T[:, :-1]
    tri = torch.diag_embed(al) + torch.diag_embed(be, 1) + torch.diag_embed(be, -1)
    theta, vecs = torch.linalg.eigh(tri)  # (probes, steps), (probes, steps, steps)
    weights = vecs[:, 0, :] ** 2 * norms2[:, None] / cfg.probes
    return theta.clamp_min(0.0).reshape(-1), weights.reshape(-1)


def _sqrt_log_sqrt(x: torch.Tensor) -> torch.Tensor:
    """sqrt(x) log sqrt(x), 0 at 0: sum over eigenvalues = sum_i s_i log s_i."""
    return torch.where(
        x > 0, 0.5 * x.sqrt() * torch.log(x.clamp_min(torch.finfo(x.dtype).tiny)), torch.zeros_like(x)
    )


def _ce90(lam: torch.Tensor, theta: torch.Tensor, weights: torch.Tensor, energy: float) -> float:
    """Leading eigenvalues holding 90% of `energy`: exact within the deflated ones, else counted in the
    quadrature's spectral density (fractional: the last node is interpolated)."""
    need = 0.9 * energy
    cum = torch.cumsum(lam, dim=0)
    if lam.numel() and float(cum[-1]) >= need:
        return float(int((cum < need).sum()) + 1)
    rest = need - (float(cum[-1]) if lam.numel() else 0.0)
    order = torch.argsort(theta, descending=True)
    nodes, w = theta[order], weights[order]
    e_cum, c_cum = torch.cumsum(w * nodes, dim=0), torch.cumsum(w, dim=0)
    j = int(torch.searchsorted(e_cum, torch.tensor([rest], dtype=e_cum.dtype, device=e_cum.device))[0])
    if j >= nodes.numel():
        return float(lam.numel() + float(c_cum[-1]))
    e_before = float(e_cum[j - 1]) if j > 0 else 0.0
    c_before = float(c_cum[j - 1]) if j > 0 else 0.0
    return float(lam.numel() + c_before + (rest - e_before) / max(float(nodes[j]), 1e-300))


def _exact_moments(a: torch.Tensor) -> tuple[float, torch.Tensor]:
    """(||A||_F^2, (k,) column sums), accumulated in float64 over blocks of rows.

    A float32 reduction of the whole of A is not safe: `torch.linalg.vector_norm` in float32 moved the
    energy of 8,192 x 4,096 by 1% (stable rank and pr_eigen with it), and a plain sum's accuracy
    depends on the backend's reduction order; a float64 copy of A would double the memory. So each
    block of rows (`_rows_per_block`, <= 1,024) is reduced per column in A's dtype ((k,) partials,
    short sums) and only the partials are summed in float64: off the float64 reference by 3e-9 on that
    matrix, in 20 ms instead of the 370 ms of converting every block to float64 (2-core CPU). Where a
    float32 partial is not finite (squares above 3.4e38 from entries above 1.8e19, which float64 still
    holds), the sum is redone in float64 blocks, so non-finite means what it means in float64. Two host
    syncs, both at the end.
    """
    # Each column's float32 partial runs over <= 1,024 rows (relative error ~1e-7 * sqrt(rows)).
    rows = min(_rows_per_block(a), 1024)

    def sums(upcast: bool) -> tuple[torch.Tensor, torch.Tensor]:
        energy = torch.zeros((), dtype=torch.float64, device=a.device)
        col_sum = torch.zeros(a.shape[1], dtype=torch.float64, device=a.device)
        for lo in range(0, a.shape[0], rows):
            block = a[lo : lo + rows].double() if upcast else a[lo : lo + rows]
            energy += (block * block).sum(dim=0).sum(dtype=torch.float64)
            col_sum += block.sum(dim=0)
        return energy, col_sum

    energy, col_sum = sums(upcast=False)
    if a.dtype != torch.float64 and not bool(torch.isfinite(energy) & torch.isfinite(col_sum).all()):
        energy, col_sum = sums(upcast=True)
    return float(energy), col_sum


def estimate_metrics(a: torch.Tensor, config: EstimatorConfig | None = None) -> dict[str, float]:
    """The six metrics of one (n, k) activation matrix without forming its Gram (module docstring).

    Args:
        a: (n, k) activations on any device; float32 or float64 (other dtypes are cast to float32).
        config: estimator knobs; default `EstimatorConfig()`.

    Returns:
        {metric: value} as `ndt.measure.spectrum.compute_metrics` (cumulative_energy_90 may be
        fractional when it is counted in the density); NaN everywhere for non-finite input, 0 for a
        zero matrix.
    """
    from ndt.measure.spectrum import METRICS

    cfg = config or EstimatorConfig()
    if a.ndim != 2:
        raise ValueError(f"expected a (n_samples, n_features) matrix, got shape {tuple(a.shape)}")
    a = a.detach()
    if a.dtype not in (torch.float32, torch.float64):
        a = a.float()
    n, _ = a.shape
    energy, col_sum = _exact_moments(a)  # ||A||_F^2 = tr G, and the column sums
    if not math.isfinite(energy):
        return dict.fromkeys(METRICS, math.nan)
    if energy == 0.0:
        return dict.fromkeys(METRICS, 0.0)
    gen = torch.Generator(device=a.device).manual_seed(cfg.seed)
    apply, m = gram_operator(a)
    lam, u = _top_eigenpairs(apply, m, a, cfg, gen)
    theta, weights = _lanczos_quadrature(apply, m, u, cfg, gen)

    def trace_of(f: Callable[[torch.Tensor], torch.Tensor]) -> float:
        """tr f(G): the deflated eigenvalues exactly, the rest by quadrature."""
        return float(f(lam).sum() + (weights * f(theta)).sum())

    nuclear = trace_of(torch.sqrt)  # sum s_i
    s_log_s = trace_of(_sqrt_log_sqrt)
    # lambda_1: the top Ritz value, or a quadrature node above it (Lanczos finds the extreme
    # eigenvalue of the rest faster than the subspace iteration converges on flat spectra).
    lam1 = max(float(lam[0]), float(theta.max()) if theta.numel() else 0.0)
    mu = col_sum / n  # (k,) float64
    ctrace = max(energy - n * float(mu @ mu), 0.0)  # tr of the centred Gram, exact
    if n * float(mu @ mu) <= CENTRED_BY_ALGEBRA_MAX_SHARE * energy:
        # The mean carries little energy: ||C||_F^2 = ||G||_F^2 - 2 n |A mu|^2 + n^2 |mu|^4 (exact terms
        # but the first) loses no digits.
        a_mu = (a @ mu.to(a.dtype)).double()
        cfro2 = max(trace_of(lambda x: x**2) - 2 * n * float(a_mu @ a_mu) + n**2 * float(mu @ mu) ** 2, 0.0)
    else:
        # The mean dominates: the closed form would cancel; estimate ||C||_F^2 on the centred operator.
        c_apply, _ = gram_operator(a, center=True)
        c_lam, c_u = _top_eigenpairs(c_apply, m, a, cfg, gen)
        c_theta, c_w = _lanczos_quadrature(c_apply, m, c_u, cfg, gen)
        cfro2 = float((c_lam**2).sum() + (c_w * c_theta**2).sum())
    return {
        "stable_rank": energy / lam1,
        "participation_ratio": nuclear**2 / energy,
        "cumulative_energy_90": _ce90(lam, theta, weights, energy),
        "nuclear_norm_ratio": nuclear / math.sqrt(lam1),
        "pr_eigen": ctrace**2 / cfro2 if cfro2 > 0 else 0.0,
        "effective_rank": math.exp(math.log(nuclear) - s_log_s / nuclear),
    }
