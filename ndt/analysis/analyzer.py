"""`ActivationAnalyzer`: the pure functions of `activations` and `compare`, over a dict of layers.

Input everywhere: ``{layer name: (n, k_layer) matrix}`` (torch tensors or numpy arrays) holding
one probe's activations, e.g. ``ActivationCapture(model).activations`` after one forward pass.

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> acts = {"hidden.0": rng.normal(size=(40, 8)), "fc": rng.normal(size=(40, 3))}
    >>> analyzer = ActivationAnalyzer(embed_method="pca")
    >>> layers = analyzer.analyze(acts)
    >>> layers["hidden.0"].pca.components.shape
    (8, 8)
    >>> list(analyzer.compare(acts, acts)["cka"].round(6))
    [1.0, 1.0]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import cast

import numpy as np
import pandas as pd

from ndt.analysis.activations import (
    DEFAULT_K_RANGE,
    ArrayLike,
    ClusterResult,
    EmbedMethod,
    PCAResult,
    RandomState,
    as_matrix,
    cluster,
    embed,
    pca,
    spectrum,
)
from ndt.analysis.comparison import AngleSpace, Comparison, compare
from ndt.measure.spectrum import compute_metrics
from ndt.storage.schema import METRIC_COLUMNS


@dataclass(frozen=True)
class LayerAnalysis:
    """Everything `ActivationAnalyzer` computes for one (n, k) activation matrix.

    Attributes:
        n_samples: n.
        n_features: k.
        singular_values: (min(n, k),) full spectrum, descending (uncentred unless the analyzer
            centres: the spectrum the metrics are computed from).
        metrics: {metric name: value}, every ndt metric.
        pca: principal components (always of the centred matrix).
        clusters: k-means result, or None when clustering was off or n < 3.
        embedding: (n, 2) embedding (one column for a single-feature layer), or None when off.
    """

    n_samples: int
    n_features: int
    singular_values: np.ndarray
    metrics: dict[str, float]
    pca: PCAResult
    clusters: ClusterResult | None
    embedding: np.ndarray | None

    def summary(self) -> dict[str, float]:
        """Flat row: n_samples, n_features, each metric, pc1_ratio (variance share of the first
        principal component), pcs_90 (components needed for 90% of the centred variance, counting
        only the ones kept), best_k and silhouette (NaN without clustering)."""
        cum = self.pca.cumulative_ratio
        row: dict[str, float] = {"n_samples": self.n_samples, "n_features": self.n_features}
        row.update(self.metrics)
        row["pc1_ratio"] = float(self.pca.explained_variance_ratio[0])
        row["pcs_90"] = float(min(int(np.searchsorted(cum, 0.9)) + 1, cum.size))
        row["best_k"] = float(self.clusters.best_k) if self.clusters else float("nan")
        row["silhouette"] = self.clusters.best_silhouette if self.clusters else float("nan")
        return row


@dataclass(frozen=True)
class ActivationAnalyzer:
    """PCA, clustering, embedding, spectrum and metrics per layer; before/after comparison.

    Attributes:
        n_components: principal components kept per layer (capped at min(n, k)); None keeps all.
        k_range: cluster counts tried by k-means (see `cluster`).
        clustering: run k-means (the slowest step after t-SNE).
        embed_method: "tsne", "isomap", "pca", or None for no embedding.
        angles_k: principal subspace dimension for `compare`.
        angle_space: "sample" or "feature" (see `ndt.analysis.comparison`).
        center: centre the columns for the spectrum and metrics (the study did not; PCA, CKA and
            angles always centre).
        metrics: metric names from `ndt.measure.spectrum.METRICS`.
        random_state: seed for k-means and t-SNE (the same for every layer).
    """

    n_components: int | None = None
    k_range: Sequence[int] = field(default_factory=lambda: DEFAULT_K_RANGE)
    clustering: bool = True
    embed_method: EmbedMethod | None = "tsne"
    angles_k: int = 10
    angle_space: AngleSpace = "sample"
    center: bool = False
    metrics: Sequence[str] = METRIC_COLUMNS
    random_state: RandomState = 0

    def analyze_layer(self, x: ArrayLike) -> LayerAnalysis:
        """Analyse one (n, k) activation matrix (n >= 2)."""
        a = as_matrix(x)
        n, k = a.shape
        # One matrix (not a dict) gives {metric: value}.
        metrics = cast(dict[str, float], compute_metrics(a, center=self.center, metrics=self.metrics))
        n_components = min(n, k) if self.n_components is None else min(self.n_components, n, k)
        # Clustering needs at least one k in 2..n-1, i.e. n >= 3; skip rather than fail tiny probes.
        do_cluster = self.clustering and any(2 <= kk <= n - 1 for kk in self.k_range)
        return LayerAnalysis(
            n_samples=n,
            n_features=k,
            singular_values=spectrum(a, center=self.center),
            metrics={name: float(v) for name, v in metrics.items()},
            pca=pca(a, n_components),
            clusters=cluster(a, self.k_range, self.random_state) if do_cluster else None,
            embedding=None
            if self.embed_method is None
            else embed(a, self.embed_method, self.random_state, n_components=min(2, n - 1, k)),
        )

    def analyze(self, activations: Mapping[str, ArrayLike]) -> dict[str, LayerAnalysis]:
        """Analyse every layer.

        Args:
            activations: {layer name: (n, k_layer) matrix}.

        Returns:
            {layer name: `LayerAnalysis`}, in the input's order.
        """
        return {name: self.analyze_layer(x) for name, x in activations.items()}

    @staticmethod
    def summary(analyses: Mapping[str, LayerAnalysis]) -> pd.DataFrame:
        """One row per layer: a `layer` column, then the columns of `LayerAnalysis.summary`."""
        return pd.DataFrame([{"layer": name, **a.summary()} for name, a in analyses.items()])

    def comparisons(
        self, before: Mapping[str, ArrayLike], after: Mapping[str, ArrayLike]
    ) -> dict[str, Comparison]:
        """Compare the layers present in both captures (in `before`'s order).

        Args:
            before: {layer: (n, k_layer)} at the earlier checkpoint.
            after: {layer: (n, k_layer)} of the same probe at the later one.

        Returns:
            {layer: `Comparison`}.

        Raises:
            ValueError: the captures share no layer.
        """
        shared = [name for name in before if name in after]
        if not shared:
            raise ValueError(
                f"the captures share no layer: before has {list(before)}, after has {list(after)}"
            )
        return {
            name: compare(
                before[name],
                after[name],
                self.angles_k,
                space=self.angle_space,
                center=self.center,
                metrics=self.metrics,
            )
            for name in shared
        }

    def compare(self, before: Mapping[str, ArrayLike], after: Mapping[str, ArrayLike]) -> pd.DataFrame:
        """One row per shared layer: `layer`, then the columns of `Comparison.to_row` (cka,
        n_angles, angle_mean, angle_max in radians, and ``<metric>_before/_after/_delta``)."""
        rows = [{"layer": name, **c.to_row()} for name, c in self.comparisons(before, after).items()]
        return pd.DataFrame(rows)
