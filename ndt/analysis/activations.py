"""Pure functions on one activation matrix: PCA, k-means, 2-D embeddings, singular-value spectrum.

Every function takes a (n samples, k features) matrix, as a torch tensor or a numpy array, and
computes in float64 numpy (a probe of 160 samples makes this cheap; float64 keeps small singular
values and near-ties in silhouette scores out of rounding noise). Randomised methods take a
``random_state`` (an int seed, a `numpy.random.RandomState` or None) so results reproduce.

The dimensionality metrics themselves are not computed here: `ndt.measure.spectrum.compute_metrics`
is their one definition (see `ActivationAnalyzer` for both together).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
import torch

#: What the functions accept as an activation matrix.
ArrayLike = torch.Tensor | np.ndarray

#: A seed for scikit-learn's randomised estimators.
RandomState = int | np.random.RandomState | None

EmbedMethod = Literal["tsne", "isomap", "pca"]

#: Default k-means range: 2 (the fewest clusters a silhouette is defined for) to 8 (a probe of 160
#: samples over 10 classes rarely supports more clusters with 20 samples each).
DEFAULT_K_RANGE = range(2, 9)


def as_matrix(x: ArrayLike) -> np.ndarray:
    """Return `x` as a float64 numpy matrix.

    Args:
        x: (n, k) tensor (any device or dtype; detached) or array.

    Returns:
        (n, k) float64 array (a copy when a conversion was needed).

    Raises:
        ValueError: `x` is not 2-D, or has no samples or no features.
    """
    arr = x.detach().cpu().to(torch.float64).numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    arr = arr.astype(np.float64, copy=False)
    if arr.ndim != 2 or 0 in arr.shape:
        raise ValueError(f"expected a non-empty (n_samples, n_features) matrix, got shape {arr.shape}")
    return arr


@dataclass(frozen=True)
class PCAResult:
    """Principal components of an (n, k) matrix, c of them.

    Attributes:
        mean: (k,) column means that were subtracted.
        components: (c, k) orthonormal principal directions (rows), by decreasing variance. The
            sign of each is scikit-learn's deterministic convention (an SVD fixes it only up to sign).
        explained_variance: (c,) variance along each direction, s_i^2 / (n - 1).
        explained_variance_ratio: (c,) share of the total variance (all min(n, k) directions)
            along each direction; sums to 1 when c = min(n, k).
        singular_values: (c,) singular values s_i of the centred matrix.
        scores: (n, c) coordinates of the samples, (x - mean) @ components.T.
    """

    mean: np.ndarray
    components: np.ndarray
    explained_variance: np.ndarray
    explained_variance_ratio: np.ndarray
    singular_values: np.ndarray
    scores: np.ndarray

    @property
    def cumulative_ratio(self) -> np.ndarray:
        """(c,) cumulative share of the total variance held by the first 1..c directions."""
        return np.cumsum(self.explained_variance_ratio)

    def to_frame(self) -> pd.DataFrame:
        """One row per component: component (0-based), explained_variance, explained_variance_ratio,
        cumulative_ratio, singular_value."""
        return pd.DataFrame(
            {
                "component": np.arange(len(self.explained_variance)),
                "explained_variance": self.explained_variance,
                "explained_variance_ratio": self.explained_variance_ratio,
                "cumulative_ratio": self.cumulative_ratio,
                "singular_value": self.singular_values,
            }
        )


def pca(x: ArrayLike, n_components: int | None = None) -> PCAResult:
    """Exact PCA (full LAPACK SVD of the column-centred matrix, via scikit-learn).

    Args:
        x: (n, k) activations.
        n_components: number c of leading components to keep; None keeps all min(n, k).

    Returns:
        `PCAResult` with c components.

    Raises:
        ValueError: n_components is not in 1..min(n, k), or n < 2 (no variance).
    """
    from sklearn.decomposition import PCA  # lazy: scikit-learn costs ~1 s to import

    a = as_matrix(x)
    n, k = a.shape
    m = min(n, k)
    c = m if n_components is None else int(n_components)
    if n < 2 or not 1 <= c <= m:
        raise ValueError(
            f"n_components must be in 1..min(n, k) = {m} with n >= 2; got {c} for shape {a.shape}"
        )
    model = PCA(n_components=c, svd_solver="full").fit(a)
    return PCAResult(
        mean=model.mean_,
        components=model.components_,
        explained_variance=model.explained_variance_,
        explained_variance_ratio=model.explained_variance_ratio_,
        singular_values=model.singular_values_,
        scores=model.transform(a),
    )


def spectrum(x: ArrayLike, *, center: bool = False) -> np.ndarray:
    """The full singular-value spectrum.

    Uncentred by default, like the dimensionality metrics (the study did not centre), so that
    the metrics are functions of exactly this spectrum.

    Args:
        x: (n, k) activations.
        center: subtract the column means first.

    Returns:
        (min(n, k),) singular values, descending, >= 0.
    """
    a = as_matrix(x)
    if center:
        a = a - a.mean(axis=0)
    return np.linalg.svd(a, compute_uv=False)


@dataclass(frozen=True)
class ClusterResult:
    """k-means clustering with the number of clusters chosen by silhouette.

    Attributes:
        best_k: the k with the highest silhouette (the smallest such k on ties); 1 when no k in the
            range produced two distinct clusters (e.g. all samples identical).
        labels: (n,) int cluster of each sample under best_k, in 0..best_k-1.
        centers: (best_k, k) cluster centres in feature space.
        scores: one row per k tried: k, silhouette (NaN when undefined), inertia (sum of squared
            distances to the nearest centre).
    """

    best_k: int
    labels: np.ndarray
    centers: np.ndarray
    scores: pd.DataFrame

    @property
    def best_silhouette(self) -> float:
        """Silhouette of best_k (NaN when best_k is 1)."""
        row = self.scores.loc[self.scores["k"] == self.best_k, "silhouette"]
        return float(row.iloc[0]) if len(row) else float("nan")


def cluster(
    x: ArrayLike,
    k_range: Iterable[int] = DEFAULT_K_RANGE,
    random_state: RandomState = 0,
    *,
    n_init: int = 4,
) -> ClusterResult:
    """k-means for every k in `k_range`; keep the k with the best mean silhouette (Euclidean).

    Args:
        x: (n, k) activations, clustered as they are (not standardised: the scale of each
            direction is part of the representation).
        k_range: numbers of clusters to try; values outside 2..n-1 (where a silhouette is
            undefined) are skipped.
        random_state: seed of the k-means++ initialisation.
        n_init: k-means restarts per k (the best inertia is kept).

    Returns:
        `ClusterResult`.

    Raises:
        ValueError: no k of `k_range` lies in 2..n-1.
    """
    from sklearn.cluster import KMeans
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.metrics import silhouette_score

    a = as_matrix(x)
    n = a.shape[0]
    ks = sorted({int(k) for k in k_range if 2 <= int(k) <= n - 1})
    if not ks:
        raise ValueError(f"k_range has no k in 2..n-1 = 2..{n - 1}; a silhouette needs 2 <= k < n")
    rows, fits = [], {}
    for k in ks:
        with warnings.catch_warnings():
            # Duplicate samples can leave fewer distinct clusters than k (scikit-learn warns); that
            # case is handled below: with one label the silhouette is undefined.
            warnings.simplefilter("ignore", ConvergenceWarning)
            km = KMeans(n_clusters=k, n_init=n_init, random_state=random_state).fit(a)
        distinct = len(np.unique(km.labels_))
        sil = float(silhouette_score(a, km.labels_)) if 2 <= distinct <= n - 1 else float("nan")
        rows.append({"k": k, "silhouette": sil, "inertia": float(km.inertia_)})
        fits[k] = km
    scores = pd.DataFrame(rows, columns=["k", "silhouette", "inertia"])
    sil = scores["silhouette"].to_numpy()
    if np.isnan(sil).all():
        return ClusterResult(
            best_k=1, labels=np.zeros(n, dtype=np.int64), centers=a.mean(axis=0, keepdims=True), scores=scores
        )
    best = ks[int(np.nanargmax(sil))]  # nanargmax returns the first maximum: the smallest k on ties
    return ClusterResult(
        best_k=best,
        labels=fits[best].labels_.astype(np.int64),
        centers=fits[best].cluster_centers_,
        scores=scores,
    )


def tsne_perplexity(n_samples: int, perplexity: float = 30.0) -> float:
    """The perplexity t-SNE can use on n samples: `perplexity` capped at (n - 1) / 3, at least 1.

    A perplexity P asks each point for about P effective neighbours, and scikit-learn's
    Barnes-Hut t-SNE looks at the 3P + 1 nearest ones; capping at (n - 1) / 3 keeps those within the
    other n - 1 samples (so it also satisfies scikit-learn's P < n). For the 160-sample probe the
    default 30 is unchanged.
    """
    return float(max(1.0, min(perplexity, (n_samples - 1) / 3)))


def embed(
    x: ArrayLike,
    method: EmbedMethod = "tsne",
    random_state: RandomState = 0,
    *,
    n_components: int = 2,
    perplexity: float = 30.0,
    n_neighbors: int = 10,
) -> np.ndarray:
    """A low-dimensional embedding of the samples, for scatter plots.

    Args:
        x: (n, k) activations.
        method: "tsne" (scikit-learn's Barnes-Hut t-SNE, PCA initialisation,
            automatic learning rate, perplexity via `tsne_perplexity`), "isomap" (geodesic
            distances on a k-nearest-neighbour graph) or "pca" (the leading principal scores;
            deterministic and instant).
        random_state: seed (t-SNE only; Isomap and PCA are deterministic).
        n_components: output dimension.
        perplexity: t-SNE perplexity before the small-n cap.
        n_neighbors: Isomap neighbourhood size, capped at n - 1.

    Returns:
        (n, n_components) float64 coordinates.

    Raises:
        ValueError: unknown method, or n_components larger than the data allow.
    """
    a = as_matrix(x)
    n = a.shape[0]
    if method == "pca":
        return pca(a, n_components).scores
    if method == "tsne":
        from sklearn.manifold import TSNE

        if n_components >= n:
            raise ValueError(f"t-SNE needs more samples than output dimensions; got n={n}")
        # PCA initialisation keeps the global layout stable across seeds and runs (scikit-learn's default
        # since 1.2, spelled out so the choice does not move with versions).
        tsne = TSNE(
            n_components=n_components,
            perplexity=tsne_perplexity(n, perplexity),
            init="pca",
            learning_rate="auto",
            random_state=random_state,
        )
        return np.asarray(tsne.fit_transform(a), dtype=np.float64)
    if method == "isomap":
        from sklearn.manifold import Isomap

        iso = Isomap(n_neighbors=max(1, min(n_neighbors, n - 1)), n_components=n_components)
        return np.asarray(iso.fit_transform(a), dtype=np.float64)
    raise ValueError(f"unknown embedding method {method!r}; choose 'tsne', 'isomap' or 'pca'")
