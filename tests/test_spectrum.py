"""Metric formulas on matrices whose spectra are known by hand, and against numpy's float64 SVD."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ndt.measure.spectrum import METRICS, compute_metrics, metrics_from_stats
from ndt.storage.schema import METRIC_COLUMNS


def svd_reference(a: np.ndarray) -> dict[str, float]:
    """The definitions, written directly on numpy's float64 SVD (independent of ndt's Gram path)."""
    s = np.linalg.svd(a.astype(np.float64), compute_uv=False)
    e = s**2
    cum = np.cumsum(e) / e.sum()
    p = s / s.sum()
    p = p[p > 0]
    cov = np.cov(a.astype(np.float64), rowvar=False)
    lam = np.linalg.eigvalsh(np.atleast_2d(cov))
    return {
        "stable_rank": e.sum() / e[0],
        "participation_ratio": s.sum() ** 2 / e.sum(),
        "cumulative_energy_90": min(1 + int((cum < 0.9).sum()), len(s)),
        "nuclear_norm_ratio": s.sum() / s[0],
        "pr_eigen": lam.sum() ** 2 / (lam**2).sum(),
        "effective_rank": math.exp(-(p * np.log(p)).sum()),
    }


def test_registry_matches_schema() -> None:
    assert tuple(METRICS) == METRIC_COLUMNS


def test_rank_one_matrix() -> None:
    # A = u v^T: a single singular value |u||v|, so every ratio is 1 and 90% energy needs 1 value.
    u = torch.tensor([1.0, 2.0, 2.0])  # |u| = 3
    v = torch.tensor([0.0, 3.0, 4.0, 0.0])  # |v| = 5
    m = compute_metrics(torch.outer(u, v))
    assert m["stable_rank"] == pytest.approx(1.0, rel=1e-12)
    assert m["participation_ratio"] == pytest.approx(1.0, rel=1e-12)
    assert m["cumulative_energy_90"] == 1
    assert m["nuclear_norm_ratio"] == pytest.approx(1.0, rel=1e-12)
    assert m["effective_rank"] == pytest.approx(1.0, rel=1e-12)


@pytest.mark.parametrize(("n", "k"), [(10, 4), (64, 7), (5, 5)])
def test_orthonormal_columns(n: int, k: int) -> None:
    # Q^T Q = I_k: k singular values equal to 1.
    q, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((n, k)))
    m = compute_metrics(torch.from_numpy(q))
    for name in ("stable_rank", "participation_ratio", "nuclear_norm_ratio", "effective_rank"):
        assert m[name] == pytest.approx(k, rel=1e-10), name
    # cumulative energies j/k: the count of j/k < 0.9 plus one
    assert m["cumulative_energy_90"] == sum(j / k < 0.9 for j in range(1, k + 1)) + 1


def test_diagonal_with_chosen_values() -> None:
    # s = (3, 2, 1): energy 14, nuclear norm 6.
    a = torch.zeros(5, 3, dtype=torch.float64)
    a[0, 0], a[1, 1], a[2, 2] = 3.0, 2.0, 1.0
    m = compute_metrics(a)
    assert m["stable_rank"] == pytest.approx(14 / 9, rel=1e-12)
    assert m["participation_ratio"] == pytest.approx(36 / 14, rel=1e-12)
    assert m["cumulative_energy_90"] == 2  # 9/14 = 0.64 < 0.9, 13/14 = 0.93 >= 0.9
    assert m["nuclear_norm_ratio"] == pytest.approx(2.0, rel=1e-12)
    h = -(1 / 2 * math.log(1 / 2) + 1 / 3 * math.log(1 / 3) + 1 / 6 * math.log(1 / 6))
    assert m["effective_rank"] == pytest.approx(math.exp(h), rel=1e-12)


def test_pr_eigen_is_the_centred_covariance_participation_ratio() -> None:
    # Rows +-a e1 and +-b e2: zero mean, covariance eigenvalues proportional to (a^2, b^2).
    a_, b_ = 3.0, 1.0
    a = torch.tensor([[a_, 0], [-a_, 0], [0, b_], [0, -b_]], dtype=torch.float64)
    expected = (a_**2 + b_**2) ** 2 / (a_**4 + b_**4)
    assert compute_metrics(a)["pr_eigen"] == pytest.approx(expected, rel=1e-12)
    # A constant offset changes the uncentred spectrum but not the centred covariance.
    shifted = compute_metrics(a + 10.0)
    assert shifted["pr_eigen"] == pytest.approx(expected, rel=1e-9)
    assert shifted["stable_rank"] != pytest.approx(compute_metrics(a)["stable_rank"], rel=1e-3)


def test_center_option_equals_centring_by_hand() -> None:
    a = torch.randn(40, 12, dtype=torch.float64) + 3.0
    got = compute_metrics(a, center=True)
    want = compute_metrics(a - a.mean(dim=0))
    for name in METRIC_COLUMNS:
        assert got[name] == pytest.approx(want[name], rel=1e-9), name


@pytest.mark.parametrize(("n", "k"), [(160, 16), (160, 128), (160, 512), (160, 1024), (30, 200)])
def test_well_conditioned_matches_numpy_svd(n: int, k: int) -> None:
    a = np.random.default_rng(k).standard_normal((n, k)).astype(np.float32)
    got, want = compute_metrics(torch.from_numpy(a)), svd_reference(a)
    for name in METRIC_COLUMNS:
        assert got[name] == pytest.approx(want[name], rel=1e-6), name


@pytest.mark.parametrize(("n", "k", "rank"), [(160, 1024, 1), (160, 1024, 5), (160, 16, 3), (64, 48, 20)])
def test_exact_rank_matches_numpy_svd(n: int, k: int, rank: int) -> None:
    rng = np.random.default_rng(rank)
    a = rng.standard_normal((n, rank)) @ rng.standard_normal((rank, k))  # exact rank in float64
    got, want = compute_metrics(torch.from_numpy(a)), svd_reference(a)
    for name in METRIC_COLUMNS:
        assert got[name] == pytest.approx(want[name], rel=1e-6), name


def test_zero_matrix_gives_zero() -> None:
    assert compute_metrics(torch.zeros(8, 5)) == dict.fromkeys(METRIC_COLUMNS, 0.0)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_gives_nan(bad: float) -> None:
    a = torch.randn(6, 4)
    a[2, 1] = bad
    assert all(math.isnan(v) for v in compute_metrics(a).values())


def test_a_batch_flags_exactly_its_non_finite_layers() -> None:
    """Finiteness is read off ||G||_F^2 with an entry-by-entry check where the squares overflow: a
    Gram of finite entries ~1e200 (squares overflow float64) is finite, NaN/Inf ones are not, and a
    bad layer changes nothing for the others solved in the same stack."""
    grams = [np.diag([4.0, 1.0]), np.diag([np.nan, 1.0]), np.diag([1e200, 1e200]), np.diag([np.inf, 1.0])]
    flats = [g.reshape(-1) for g in grams]  # sample-side layout: the Gram alone
    n_samples, n_features = np.full(4, 2), np.full(4, 3)
    values, finite = metrics_from_stats(flats, [2] * 4, n_samples, n_features)
    assert finite.tolist() == [True, False, True, False]
    # singular values (2, 1): stable rank (4 + 1) / 4, PR (2 + 1)^2 / 5, nuclear norm ratio 3 / 2
    assert values["stable_rank"][0] == pytest.approx(1.25, rel=1e-12)
    assert values["participation_ratio"][0] == pytest.approx(1.8, rel=1e-12)
    assert values["nuclear_norm_ratio"][0] == pytest.approx(1.5, rel=1e-12)
    # singular values (1e100, 1e100): 2, 2, 2 with no overflow on the way
    for name in ("stable_rank", "participation_ratio", "nuclear_norm_ratio"):
        assert values[name][2] == pytest.approx(2.0, rel=1e-12), name
        assert math.isnan(values[name][1]) and math.isnan(values[name][3]), name


def test_dict_input_and_metric_subset() -> None:
    out = compute_metrics({"x": torch.eye(4), "y": 2 * torch.eye(2)}, metrics=["stable_rank"])
    assert out == {"x": {"stable_rank": pytest.approx(4.0)}, "y": {"stable_rank": pytest.approx(2.0)}}
    with pytest.raises(ValueError, match="unknown metric"):
        compute_metrics(torch.eye(3), metrics=["stable_rnk"])


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize(("n", "scale"), [(10, 0.1), (30, 7.3), (100, 1.0)])
def test_cumulative_energy_at_an_exact_tie(seed: int, n: int, scale: float) -> None:
    # 10 equal singular values: the 9th prefix holds exactly 9/10 of the energy, so 9 values hold 90%.
    # Without a tolerance float rounding decides between 9 and 10 (about a third of these cases).
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((n, 10)))
    assert compute_metrics(torch.from_numpy(scale * q))["cumulative_energy_90"] == 9


@pytest.mark.parametrize(("n", "k"), [(200, 12), (20, 50)])
def test_centring_survives_a_mean_a_million_times_the_spread(n: int, k: int) -> None:
    # Column means ~1e6, spread ~1: the Gram's rank-one correction would keep ~4 digits; centring on
    # the activations keeps them all. Reference: numpy's float64 SVD of the centred matrix.
    rng = np.random.default_rng(7)
    a = rng.standard_normal((n, k)) + 1e6 * (1.0 + rng.random(k))
    centred = a - a.mean(axis=0)
    got, want = compute_metrics(torch.from_numpy(a), center=True), svd_reference(centred)
    for name in METRIC_COLUMNS:
        assert got[name] == pytest.approx(want[name], rel=1e-8), name


# --- pr_eigen_corrected: the finite-sample bias correction (expected values from the population) ---


def _population_pr(variances: np.ndarray) -> float:
    return float(variances.sum() ** 2 / (variances**2).sum())


@pytest.mark.parametrize(("p", "alpha", "n"), [(256, 0.0, 64), (256, 0.0, 128), (512, 0.5, 128)])
def test_pr_eigen_corrected_recovers_the_population_pr(p: int, alpha: float, n: int) -> None:
    """Gaussian rows of known covariance diag(i^-2 alpha): the raw pr_eigen sits near the first-order
    prediction 1 / (1/PR + 1/(n-1)), far below PR when n < p; the corrected mean is within 3% of PR."""
    from ndt.measure.spectrum import pr_eigen_corrected

    rng = np.random.default_rng(7)
    variances = np.arange(1, p + 1, dtype=np.float64) ** (-2 * alpha)
    true_pr = _population_pr(variances)
    raw, corrected = [], []
    for _ in range(30):
        x = rng.standard_normal((n, p)) * np.sqrt(variances)
        values = compute_metrics(torch.from_numpy(x))  # the tracker's own path: pr_eigen of the rows
        r = values["pr_eigen"]
        raw.append(r)
        corrected.append(float(pr_eigen_corrected(np.array([r]), np.array([n]), np.array([p]))[0]))
    predicted = 1 / (1 / true_pr + 1 / (n - 1))
    assert np.mean(raw) == pytest.approx(predicted, rel=0.05)
    assert np.mean(corrected) == pytest.approx(true_pr, rel=0.03)
    if alpha == 0.0:
        assert np.mean(raw) < 0.7 * true_pr  # the bias the correction removes is large here


def test_pr_eigen_corrected_edge_cases() -> None:
    from ndt.measure.spectrum import pr_eigen_corrected

    # r = 1 (rank one) stays 1 whatever n: ((N + 1) - 2) / (N - 1) = 1.
    # r = 0 (zero matrix) -> 0; r = N (flat in N dims: unbounded) -> capped at k; n = 2 -> NaN.
    out = pr_eigen_corrected(
        np.array([1.0, 0.0, 9.0, 1.5, np.nan, 3.0]),
        np.array([10, 10, 10, 2, 10, 10]),
        np.array([50, 50, 50, 50, 50, 4]),
    )
    # ((9 + 1) * 3 - 2) / (9 - 3) = 28 / 6 for r = 3, N = 9, capped at k = 4
    np.testing.assert_allclose(out[:3], [1.0, 0.0, 50.0])
    assert np.isnan(out[3]) and np.isnan(out[4])
    assert out[5] == 4.0
    assert pr_eigen_corrected(np.array([3.0]), np.array([10]), np.array([50]))[0] == pytest.approx(28 / 6)


def test_tracker_results_carry_pr_eigen_corrected(tmp_path) -> None:
    from ndt.measure.spectrum import pr_eigen_corrected
    from ndt.measure.tracker import HighFrequencyTracker

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    probe = torch.randn(12, 8)
    with HighFrequencyTracker(model, 1, probe=probe, writer=tmp_path / "m") as tracker:
        tracker.log(0)
        df = tracker.get_results()
        series = tracker.series("pr_eigen_corrected")
    expected = pr_eigen_corrected(
        df["pr_eigen"].to_numpy(), df["n_samples"].to_numpy(), df["n_features"].to_numpy()
    )
    np.testing.assert_allclose(df["pr_eigen_corrected"].to_numpy(), expected)
    assert (df["pr_eigen_corrected"] >= df["pr_eigen"]).all()  # the correction only raises it
    assert series.iloc[0] == pytest.approx(float(np.mean(expected)))


def test_eigvalsh_batched_recovers_chosen_spectra_on_every_thread_count() -> None:
    """Matrices Q diag(l) Q^T with spectra chosen by hand: split over threads or not, each matrix
    gives back its own l (so the shares are put back in order)."""
    from ndt.measure.spectrum import eigvalsh_batched

    rng = np.random.default_rng(0)
    m, g = 40, 12  # m >= 32 and >= 4 matrices per thread: the split is taken
    spectra = np.sort(rng.uniform(0.0, 10.0, size=(g, m)), axis=1)
    spectra[:, :5] = 0.0  # exact zeros, as a low-rank Gram has
    spectra[3] = np.arange(m)  # one matrix easy to recognise
    grams = np.empty((g, m, m))
    for i in range(g):
        q, _ = np.linalg.qr(rng.standard_normal((m, m)))
        grams[i] = (q * spectra[i]) @ q.T
    for threads in (1, 2, 3):
        got = eigvalsh_batched(grams, threads=threads)
        assert got.shape == (g, m)
        np.testing.assert_allclose(got, spectra, atol=1e-12 * 10.0 * m)
    # Too few or too small matrices to split: the same values from one call.
    np.testing.assert_allclose(eigvalsh_batched(grams[:3], threads=2), spectra[:3], atol=1e-12 * 10.0 * m)
    small = np.stack([np.diag([3.0, 1.0, 2.0])] * 9)
    np.testing.assert_array_equal(eigvalsh_batched(small, threads=2), np.tile([1.0, 2.0, 3.0], (9, 1)))
