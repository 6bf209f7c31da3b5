"""ActivationAnalyzer and its pure functions against hand facts and independent computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ndt.analysis.activations import as_matrix, cluster, embed, pca, spectrum, tsne_perplexity
from ndt.analysis.analyzer import ActivationAnalyzer
from ndt.analysis.comparison import compare, linear_cka, principal_angles
from ndt.measure.capture import ActivationCapture
from ndt.models import build_model
from ndt.storage.schema import METRIC_COLUMNS


def random_orthogonal(k: int, rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(k, k)))
    return q * np.sign(np.diag(r))


def hsic_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA in its HSIC form with the centring matrix H (Kornblith et al., eq. 3), no shortcuts."""
    n = x.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    kx, ky = h @ x @ x.T @ h, h @ y @ y.T @ h

    def hsic(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.trace(a @ b))

    return hsic(kx, ky) / math.sqrt(hsic(kx, kx) * hsic(ky, ky))


def orthonormal_columns(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """(n, k) orthonormal columns, all orthogonal to the ones vector (so already centred)."""
    q, _ = np.linalg.qr(np.column_stack([np.ones(n), rng.normal(size=(n, k))]))
    return q[:, 1:]


# -- linear CKA -------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(160, 12), (20, 50)])  # feature form and Gram form
def test_cka_of_a_matrix_with_itself_is_one(shape: tuple[int, int]) -> None:
    x = np.random.default_rng(0).normal(size=shape)
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(torch.as_tensor(x, dtype=torch.float32), x) == pytest.approx(1.0, abs=1e-6)


def test_cka_invariant_to_orthogonal_transform_isotropic_scaling_and_offsets() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(60, 8))
    y = 3.7 * x @ random_orthogonal(8, rng) + rng.normal(size=8)  # rotate, scale, shift each column
    assert linear_cka(x, y) == pytest.approx(1.0, abs=1e-12)


def test_cka_hand_value_one_over_sqrt_two() -> None:
    # X = [a, b] with a, b centred, orthogonal, equal norm; Y = a. Then ||Y^T X||^2 = |a|^4,
    # ||X^T X||_F = sqrt(2) |a|^2, ||Y^T Y||_F = |a|^2, so CKA = 1 / sqrt(2).
    a = np.array([1.0, -1.0, 1.0, -1.0])
    b = np.array([1.0, 1.0, -1.0, -1.0])
    assert linear_cka(np.column_stack([a, b]), a[:, None]) == pytest.approx(1 / math.sqrt(2), abs=1e-12)


@pytest.mark.parametrize(("n", "k1", "k2"), [(40, 5, 7), (15, 30, 20)])
def test_cka_matches_hsic_form(n: int, k1: int, k2: int) -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(size=(n, k1)) + 5.0
    y = x[:, :3] @ rng.normal(size=(3, k2)) + rng.normal(size=(n, k2))  # partly related
    assert linear_cka(x, y) == pytest.approx(hsic_cka(x, y), rel=1e-10)


def test_cka_of_a_capture_with_itself_is_one_and_with_random_matrix_is_low() -> None:
    torch.manual_seed(0)
    model = build_model("cnn_shallow", "mnist").eval()
    # spatial means: one row per example, so that a (160, 3) matrix is a capture of the same probe
    with ActivationCapture(model, ["conv.1", "fc"], conv_reduction="spatial_mean") as cap, torch.no_grad():
        model(torch.randn(160, 1, 28, 28))
    unrelated = np.random.default_rng(3).normal(size=(160, 3))
    for name in ("conv.1", "fc"):
        act = cap.activations[name]
        assert linear_cka(act, act) == pytest.approx(1.0, abs=1e-9)
        # For independent data CKA ~ sqrt(PR(X) * k_Y) / n <= sqrt(64 * 3) / 160 = 0.09.
        assert linear_cka(act, unrelated) < 0.2


def test_cka_rejects_different_probes_and_is_nan_without_variance() -> None:
    with pytest.raises(ValueError, match="same probe"):
        linear_cka(np.ones((5, 2)), np.ones((6, 2)))
    assert math.isnan(linear_cka(np.ones((5, 2)), np.arange(10.0).reshape(5, 2)))


# -- principal angles ---------------------------------------------------------------------------------


@pytest.mark.parametrize("space", ["sample", "feature"])
def test_principal_angles_of_a_subspace_with_itself_are_zero(space: str) -> None:
    x = np.random.default_rng(4).normal(size=(50, 12))
    angles = principal_angles(x, x, k=5, space=space)  # type: ignore[arg-type]
    assert angles.shape == (5,)
    np.testing.assert_allclose(angles, 0.0, atol=1e-7)


def test_sample_space_angles_ignore_a_rotation_of_the_features() -> None:
    rng = np.random.default_rng(5)
    x = rng.normal(size=(50, 12))
    # x Q has the same left singular vectors as x: same sample-space subspaces.
    np.testing.assert_allclose(principal_angles(x, 2.0 * x @ random_orthogonal(12, rng), k=6), 0.0, atol=1e-7)


def test_principal_angles_of_orthogonal_subspaces_are_right_angles() -> None:
    rng = np.random.default_rng(6)
    # Sample space: scores spanning orthogonal column spaces (both orthogonal to the ones vector).
    u = orthonormal_columns(40, 6, rng)
    x = u[:, :3] @ np.diag([3.0, 2.0, 1.0]) @ rng.normal(size=(3, 10))
    y = u[:, 3:] @ np.diag([3.0, 2.0, 1.0]) @ rng.normal(size=(3, 7))
    np.testing.assert_allclose(principal_angles(x, y, k=3), np.pi / 2, atol=1e-9)
    # Feature space: x varies only along features 0-2, y only along features 3-5.
    a, b = np.zeros((40, 6)), np.zeros((40, 6))
    a[:, :3], b[:, 3:] = rng.normal(size=(40, 3)), rng.normal(size=(40, 3))
    np.testing.assert_allclose(principal_angles(a, b, k=3, space="feature"), np.pi / 2, atol=1e-9)


def test_feature_space_angle_hand_value_and_rank_cap() -> None:
    # x varies along e1, y along (e1 + e2) / sqrt(2): one angle of 45 degrees. Both have rank 1,
    # so k = 10 is lowered to 1.
    s = np.random.default_rng(7).normal(size=30)
    x = np.column_stack([s, np.zeros(30)])
    y = np.column_stack([s, s])
    np.testing.assert_allclose(principal_angles(x, y, k=10, space="feature"), [np.pi / 4], atol=1e-12)
    with pytest.raises(ValueError, match="same features"):
        principal_angles(x, np.ones((30, 3)), space="feature")


# -- compare ------------------------------------------------------------------------------------------


def test_compare_hand_metrics_and_deltas() -> None:
    before = np.diag([3.0, 2.0, 1.0])  # stable rank (9 + 4 + 1) / 9
    after = np.eye(3)  # stable rank 3
    res = compare(before, after, k=2)
    assert list(res.metrics.index) == list(METRIC_COLUMNS)
    sr = res.metrics.loc["stable_rank"]
    assert sr["before"] == pytest.approx(14 / 9) and sr["after"] == pytest.approx(3.0)
    assert sr["delta"] == pytest.approx(3.0 - 14 / 9)
    nn_ratio = res.metrics.loc["nuclear_norm_ratio"]
    assert (nn_ratio["before"], nn_ratio["after"]) == pytest.approx((6 / 3, 3.0))
    row = res.to_row()
    assert row["stable_rank_delta"] == pytest.approx(3.0 - 14 / 9) and row["n_angles"] == 2


def test_compare_of_a_rescaled_capture_changes_nothing_scale_free() -> None:
    x = np.random.default_rng(8).normal(size=(60, 10))
    res = compare(x, 2.5 * x, k=4)
    assert res.cka == pytest.approx(1.0, abs=1e-12)
    assert res.max_angle == pytest.approx(0.0, abs=1e-7)
    # Every ndt metric is a ratio of singular values: scale-free.
    np.testing.assert_allclose(res.metrics["delta"], 0.0, atol=1e-9)


# -- single-matrix analyses ---------------------------------------------------------------------------


def test_pca_matches_numpy_svd_of_the_centred_matrix() -> None:
    rng = np.random.default_rng(9)
    x = rng.normal(size=(50, 6)) * np.array([5.0, 3.0, 2.0, 1.0, 0.5, 0.1]) + 10.0
    xc = x - x.mean(axis=0)
    _, s, vt = np.linalg.svd(xc, full_matrices=False)
    res = pca(torch.as_tensor(x), n_components=4)
    np.testing.assert_allclose(res.mean, x.mean(axis=0), atol=1e-12)
    np.testing.assert_allclose(res.singular_values, s[:4], rtol=1e-10)
    np.testing.assert_allclose(res.explained_variance, s[:4] ** 2 / 49, rtol=1e-10)
    # Ratios are shares of the total variance, including the dropped components.
    np.testing.assert_allclose(res.explained_variance_ratio, s[:4] ** 2 / np.sum(s**2), rtol=1e-10)
    # Directions agree up to sign (an SVD fixes nothing more).
    np.testing.assert_allclose(np.abs(np.sum(res.components * vt[:4], axis=1)), 1.0, atol=1e-10)
    np.testing.assert_allclose(res.scores, xc @ res.components.T, atol=1e-10)
    assert res.to_frame()["cumulative_ratio"].iloc[-1] == pytest.approx(np.sum(s[:4] ** 2) / np.sum(s**2))
    with pytest.raises(ValueError, match="n_components"):
        pca(x, n_components=7)


def test_spectrum_and_metrics_of_a_diagonal_matrix() -> None:
    x = np.diag([1.0, 3.0, 2.0])
    np.testing.assert_allclose(spectrum(x), [3.0, 2.0, 1.0], atol=1e-12)
    layer = ActivationAnalyzer(clustering=False, embed_method=None).analyze_layer(x)
    assert layer.metrics["stable_rank"] == pytest.approx(14 / 9)
    assert layer.metrics["participation_ratio"] == pytest.approx(36 / 14)


def test_kmeans_finds_three_separated_blobs() -> None:
    rng = np.random.default_rng(10)
    centres = np.array([[0.0, 0.0, 0.0], [10.0, 0.0, 0.0], [0.0, 10.0, 0.0]])
    truth = np.repeat(np.arange(3), 30)
    x = centres[truth] + rng.normal(scale=0.5, size=(90, 3))
    res = cluster(x, range(2, 7), random_state=0)
    assert res.best_k == 3
    assert list(res.scores["k"]) == [2, 3, 4, 5, 6]
    # Same partition as the truth, whatever the label names.
    pairs = set(zip(truth.tolist(), res.labels.tolist(), strict=True))
    assert len(pairs) == 3 and len({b for _, b in pairs}) == 3
    assert res.best_silhouette > 0.8
    assert res.centers.shape == (3, 3)


def test_cluster_of_identical_samples_is_one_cluster() -> None:
    res = cluster(np.ones((10, 2)), range(2, 4))
    assert res.best_k == 1 and (res.labels == 0).all() and res.scores["silhouette"].isna().all()
    with pytest.raises(ValueError, match="k_range"):
        cluster(np.ones((3, 2)), [5, 6])


def test_tsne_perplexity_is_capped_for_small_probes() -> None:
    assert tsne_perplexity(160) == 30.0  # the probe: unchanged
    assert tsne_perplexity(10) == 3.0  # (10 - 1) / 3
    assert tsne_perplexity(2) == 1.0


@pytest.mark.parametrize("method", ["tsne", "isomap", "pca"])
def test_embeddings_have_two_columns_and_reproduce(method: str) -> None:
    x = np.random.default_rng(11).normal(size=(12, 5))  # small n: t-SNE's default perplexity would fail
    first = embed(x, method, random_state=0)  # type: ignore[arg-type]
    assert first.shape == (12, 2) and np.isfinite(first).all()
    np.testing.assert_array_equal(first, embed(x, method, random_state=0))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown embedding"):
        embed(x, "umap")  # type: ignore[arg-type]


# -- the analyzer over layers ---------------------------------------------------------------------------


def test_analyzer_over_a_dict_of_layers() -> None:
    rng = np.random.default_rng(12)
    acts: dict[str, np.ndarray | torch.Tensor] = {
        "hidden.0": rng.normal(size=(40, 16)),
        "fc": torch.randn(40, 3, generator=torch.Generator().manual_seed(0)),
    }
    analyzer = ActivationAnalyzer(n_components=5, k_range=range(2, 4), embed_method="pca")
    layers = analyzer.analyze(acts)
    assert list(layers) == ["hidden.0", "fc"]
    assert layers["hidden.0"].pca.components.shape == (5, 16)
    assert layers["fc"].pca.components.shape == (3, 3)  # capped at min(n, k)
    assert layers["fc"].singular_values.shape == (3,)
    assert layers["hidden.0"].embedding is not None and layers["hidden.0"].embedding.shape == (40, 2)
    assert set(layers["fc"].metrics) == set(METRIC_COLUMNS)
    table = analyzer.summary(layers)
    assert list(table["layer"]) == ["hidden.0", "fc"]
    assert {"pc1_ratio", "pcs_90", "best_k", "silhouette", *METRIC_COLUMNS} <= set(table.columns)


def test_analyzer_compare_one_row_per_shared_layer() -> None:
    rng = np.random.default_rng(13)
    before = {"a": rng.normal(size=(30, 6)), "b": rng.normal(size=(30, 4)), "only_before": np.ones((30, 2))}
    after = {"b": before["b"] * 3.0, "a": rng.normal(size=(30, 6))}
    table = ActivationAnalyzer(angles_k=3).compare(before, after)
    assert list(table["layer"]) == ["a", "b"]  # before's order; unshared layers skipped
    b = table.set_index("layer").loc["b"]
    assert b["cka"] == pytest.approx(1.0) and b["angle_max"] == pytest.approx(0.0, abs=1e-7)
    assert b["n_angles"] == 3 and b["stable_rank_delta"] == pytest.approx(0.0, abs=1e-9)
    assert table.set_index("layer").loc["a", "cka"] < 0.9
    with pytest.raises(ValueError, match="share no layer"):
        ActivationAnalyzer().compare({"x": np.ones((3, 2))}, {"y": np.ones((3, 2))})


def test_as_matrix_rejects_non_matrices() -> None:
    assert as_matrix(torch.ones(2, 3, dtype=torch.float16)).dtype == np.float64
    with pytest.raises(ValueError, match="n_samples, n_features"):
        as_matrix(np.ones(4))
