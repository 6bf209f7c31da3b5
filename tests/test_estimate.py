"""Matrix-free metric estimates (ndt.measure.estimate) on matrices whose spectra are known by construction.

Each test matrix is A = U diag(s) V^T with U (n x m) and V (k x m) random orthonormal and U's columns
orthogonal to the all-ones vector, so A's columns have mean zero: its singular values are exactly s and
its centred covariance eigenvalues exactly s^2. The expected metrics are computed from s by hand (the
definitions in ndt.measure.spectrum's docstring), never by the code under test.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ndt.measure.estimate import EstimatorConfig, estimate_metrics

#: The error the estimator is documented to stay within at its defaults.
TOLERANCE = 0.05


def with_spectrum(s: np.ndarray, n: int, k: int, seed: int = 0) -> torch.Tensor:
    """(n, k) float32 matrix with singular values exactly `s` (len m <= min(n, k)) and zero column mean."""
    rng = np.random.default_rng(seed)
    m = s.size
    g = rng.standard_normal((n, m))
    g -= g.mean(axis=0)  # columns orthogonal to 1 -> U^T 1 = 0 -> A^T 1 = 0: zero column mean
    u, _ = np.linalg.qr(g)
    v, _ = np.linalg.qr(rng.standard_normal((k, m)))
    return torch.from_numpy((u * s) @ v.T).float()


def exact(s: np.ndarray) -> dict[str, float]:
    """The six metrics from the singular values (zero mean: centred eigenvalues = s^2)."""
    lam = s**2
    p = s / s.sum()
    p = p[p > 0]
    cum = np.cumsum(lam) / lam.sum()
    return {
        "stable_rank": lam.sum() / lam.max(),
        "participation_ratio": s.sum() ** 2 / lam.sum(),
        "cumulative_energy_90": float((cum < 0.9).sum() + 1),
        "nuclear_norm_ratio": s.sum() / s.max(),
        "pr_eigen": lam.sum() ** 2 / (lam**2).sum(),
        "effective_rank": math.exp(-(p * np.log(p)).sum()),
    }


SPECTRA = {
    # the case in small: column scales decaying as a power law
    "power_0.7": lambda m: np.arange(1, m + 1) ** -0.7,
    "steep_power_2": lambda m: np.arange(1, m + 1) ** -2.0,
    "flat": lambda m: np.linspace(1.0, 2.0, m)[::-1],
    "low_rank_plus_tail": lambda m: np.r_[np.full(5, 10.0), np.full(m - 5, 0.05)],
    # exact rank 300 of 1,000: the zero singular values must contribute nothing
    "exact_rank": lambda m: np.r_[np.arange(1, 301) ** -0.5, np.zeros(m - 300)],
}


@pytest.mark.parametrize("name", list(SPECTRA))
def test_estimates_within_tolerance_of_the_known_spectrum(name: str) -> None:
    s = np.sort(SPECTRA[name](1000).astype(np.float64))[::-1]
    a = with_spectrum(s, n=1400, k=1000)
    want = exact(s)
    got = estimate_metrics(a)
    for metric, value in want.items():
        assert got[metric] == pytest.approx(value, rel=TOLERANCE), metric


def test_wide_matrix_uses_the_sample_side() -> None:
    # n < k: the Gram is A A^T (n x n); singular values are the same.
    s = np.arange(1, 601) ** -0.7
    a = with_spectrum(s, n=700, k=1500)
    got, want = estimate_metrics(a), exact(s)
    for metric in ("participation_ratio", "effective_rank", "stable_rank"):
        assert got[metric] == pytest.approx(want[metric], rel=TOLERANCE), metric


def test_nonzero_mean_pr_eigen_uses_the_centred_covariance() -> None:
    s = np.arange(1, 501) ** -0.5
    a = with_spectrum(s, n=900, k=500)
    shifted = a + 3.0  # the mean dominates A^T A; pr_eigen must not see it
    got = estimate_metrics(shifted)
    assert got["pr_eigen"] == pytest.approx(exact(s)["pr_eigen"], rel=TOLERANCE)


def test_seeded_and_deterministic() -> None:
    a = with_spectrum(np.arange(1, 401) ** -0.7, n=600, k=400)
    assert estimate_metrics(a, EstimatorConfig(seed=3)) == estimate_metrics(a, EstimatorConfig(seed=3))


def test_degenerate_input() -> None:
    assert set(estimate_metrics(torch.zeros(50, 40)).values()) == {0.0}
    bad = torch.ones(50, 40)
    bad[3, 4] = float("nan")
    assert all(math.isnan(v) for v in estimate_metrics(bad).values())
    with pytest.raises(ValueError, match="expected a"):
        estimate_metrics(torch.zeros(3, 4, 5))


def test_tracker_estimates_layers_above_the_exact_size() -> None:
    # A 500-sample probe through a 300 -> 400 linear layer: min(n, k) = 400 > exact_max_size = 100, so the
    # layer is estimated; the same tracker with exact_max_size=None decomposes it exactly.
    from torch import nn

    from ndt import HighFrequencyTracker

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(300, 400), nn.ReLU(), nn.Linear(400, 10))
    probe = torch.randn(500, 300) * torch.arange(1, 301) ** -0.5
    rows = {}
    for cap in (100, None):
        with HighFrequencyTracker(model, probe=probe, exact_max_size=cap) as tracker:
            tracker.log(0, 1.0)
            rows[cap] = tracker.get_results().set_index("layer")
    est, ex = rows[100], rows[None]
    for metric in ("stable_rank", "participation_ratio", "effective_rank", "pr_eigen", "nuclear_norm_ratio"):
        assert est.loc["0", metric] == pytest.approx(ex.loc["0", metric], rel=TOLERANCE), metric
    assert est.loc["0", "cumulative_energy_90"] == pytest.approx(ex.loc["0", "cumulative_energy_90"], rel=0.1)
    # the 10-wide readout is below the cap: decomposed exactly either way
    assert est.loc["2", "participation_ratio"] == ex.loc["2", "participation_ratio"]


@pytest.mark.parametrize("center", [False, True])
def test_gram_operator_blocked_on_the_host_equals_the_two_products(
    center: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The host path sums A_b^T (A_b V) over row blocks; 7-row blocks (plus a 3-row rest) of a
    # 45 x 12 matrix with a large column mean, against numpy's two float64 products.
    import ndt.measure.estimate as estimate

    monkeypatch.setattr(estimate, "_HOST_BLOCK_BYTES", 7 * 12 * 8)
    rng = np.random.default_rng(1)
    a = rng.standard_normal((45, 12)) + 5.0
    v = rng.standard_normal((12, 3))
    ac = a - a.mean(axis=0) if center else a
    apply, m = estimate.gram_operator(torch.from_numpy(a), center=center)
    assert m == 12
    np.testing.assert_allclose(apply(torch.from_numpy(v)).numpy(), ac.T @ (ac @ v), rtol=1e-12, atol=1e-9)


def test_exact_moments_match_float64_sums() -> None:
    # 2,500 rows: three row blocks of float32 partials; the mean (3) dominates the energy.
    from ndt.measure.estimate import _exact_moments

    rng = np.random.default_rng(2)
    a = (rng.standard_normal((2500, 64)) + 3.0).astype(np.float32)
    energy, col_sum = _exact_moments(torch.from_numpy(a))
    ref = a.astype(np.float64)
    assert energy == pytest.approx(float((ref * ref).sum()), rel=1e-7)
    np.testing.assert_allclose(col_sum.numpy(), ref.sum(axis=0), rtol=1e-6)


def test_exact_moments_keep_float64_range_for_float32_input() -> None:
    # An entry of 1e20 squares to 1e40: infinite in float32, finite in float64, so the energy is
    # 1e40 plus 49 ones (float32(1e20) = 100000002004087734272 exactly), not a NaN result.
    from ndt.measure.estimate import _exact_moments

    a = torch.ones(10, 5)
    a[2, 3] = 1e20
    energy, col_sum = _exact_moments(a)
    big = float(np.float32(1e20))
    assert energy == pytest.approx(big**2 + 49, rel=1e-12)
    assert col_sum[3].item() == pytest.approx(big + 9, rel=1e-12)
    a[2, 3] = float("inf")
    assert math.isinf(_exact_moments(a)[0])
