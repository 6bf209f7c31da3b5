"""Before/after comparison of two captures of one layer: linear CKA, principal angles, metric change.

Both captures must come from the same probe, in the same sample order (row i of each matrix is the
same input), as `ndt.measure.capture.ActivationCapture` produces for one probe batch at two
checkpoints.

- **Linear CKA** (Kornblith et al., 2019): with X, Y column-centred,
  CKA = ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F), in [0, 1]; 1 when Y = X Q c (Q orthogonal,
  c != 0). It compares the sample-by-sample geometry, so the two matrices may have different widths.
- **Principal angles** between the top-k principal subspaces, in **sample space** by default: the
  span of the top-k left singular vectors of each centred matrix, i.e. the directions in R^n of
  the top-k principal component scores over the probe. Why sample space: it is what CKA looks at
  (both are unchanged when the neurons are rotated or permuted), so the two numbers agree in kind;
  it needs only the shared probe, so it also compares layers of different widths; and for one layer
  the question "do the dominant modes sort the probe inputs as before?" is the one a jump raises.
  ``space="feature"`` gives the angles between the top-k principal directions in neuron space
  instead (same width required), for asking whether the same neurons carry the dominant modes.
- **Metric change**: every ndt metric (`ndt.measure.spectrum.compute_metrics`) before and after.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
from scipy.linalg import subspace_angles

from ndt.analysis.activations import ArrayLike, as_matrix
from ndt.measure.spectrum import compute_metrics
from ndt.storage.schema import METRIC_COLUMNS

AngleSpace = Literal["sample", "feature"]


def _centre(a: np.ndarray) -> np.ndarray:
    return a - a.mean(axis=0)


def _same_samples(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape[0] != b.shape[0]:
        raise ValueError(
            f"the captures hold {a.shape[0]} and {b.shape[0]} samples; compare captures of the same probe "
            "(row i of each must be the same input)"
        )


def linear_cka(x: ArrayLike, y: ArrayLike) -> float:
    """Linear centred kernel alignment of two representations of the same samples.

    Args:
        x: (n, k1) activations.
        y: (n, k2) activations of the same n samples, same order.

    Returns:
        CKA in [0, 1]; NaN when either matrix has no variance (every row equal).
    """
    a, b = _centre(as_matrix(x)), _centre(as_matrix(y))
    _same_samples(a, b)
    n, k1, k2 = a.shape[0], a.shape[1], b.shape[1]
    if n < max(k1, k2):
        # Fewer samples than features: the (n, n) Gram form is cheaper and equal, since
        # ||Y^T X||_F^2 = <X X^T, Y Y^T>_F and ||X^T X||_F = ||X X^T||_F.
        ka, kb = a @ a.T, b @ b.T
        cross, norm_a, norm_b = float(np.sum(ka * kb)), float(np.linalg.norm(ka)), float(np.linalg.norm(kb))
    else:
        cross = float(np.linalg.norm(b.T @ a) ** 2)
        norm_a, norm_b = float(np.linalg.norm(a.T @ a)), float(np.linalg.norm(b.T @ b))
    if norm_a == 0.0 or norm_b == 0.0:
        return float("nan")
    return cross / (norm_a * norm_b)


def _numerical_rank(s: np.ndarray, shape: tuple[int, ...]) -> int:
    """numpy.linalg.matrix_rank's rule: singular values above s1 * max(shape) * eps count."""
    if s.size == 0 or s[0] == 0.0:
        return 0
    return int(np.sum(s > s[0] * max(shape) * np.finfo(np.float64).eps))


def _principal_basis(a: np.ndarray, k: int, space: AngleSpace) -> tuple[np.ndarray, int]:
    """Orthonormal basis of the top-k principal subspace of centred `a`, and the rank of `a`.

    Returns:
        ((n, k) left or (features, k) right singular vectors, rank).
    """
    u, s, vt = np.linalg.svd(a, full_matrices=False)
    basis = u[:, :k] if space == "sample" else vt[:k].T
    return basis, _numerical_rank(s, a.shape)


def principal_angles(x: ArrayLike, y: ArrayLike, k: int = 10, *, space: AngleSpace = "sample") -> np.ndarray:
    """Principal angles between the top-k principal subspaces of two column-centred matrices.

    Args:
        x: (n, k1) activations.
        y: (n, k2) activations of the same samples (space="sample"), or (n2, k1) activations
            over the same features (space="feature").
        k: subspace dimension; lowered to the smaller numerical rank of the two centred matrices
            (beyond the rank, singular vectors span an arbitrary part of the null space).
        space: "sample" (subspaces of R^n spanned by the top-k principal scores; the default, see
            the module docstring) or "feature" (subspaces of R^k1 spanned by the top-k principal
            directions).

    Returns:
        (k_eff,) angles in radians, ascending, in [0, pi/2]: 0 for a shared direction, pi/2 for
        an orthogonal one. Computed by `scipy.linalg.subspace_angles`, which stays accurate for
        small angles (arccos of the cosines would lose half the digits there).
    """
    a, b = _centre(as_matrix(x)), _centre(as_matrix(y))
    if space == "sample":
        _same_samples(a, b)
    elif space == "feature":
        if a.shape[1] != b.shape[1]:
            raise ValueError(
                f"feature-space angles need the same features; got widths {a.shape[1]} and {b.shape[1]}"
            )
    else:
        raise ValueError(f"unknown space {space!r}; choose 'sample' or 'feature'")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    qa, rank_a = _principal_basis(a, k, space)
    qb, rank_b = _principal_basis(b, k, space)
    k_eff = min(k, rank_a, rank_b)
    if k_eff == 0:
        return np.zeros(0)
    return np.sort(subspace_angles(qa[:, :k_eff], qb[:, :k_eff]))


@dataclass(frozen=True)
class Comparison:
    """Two captures of one layer, compared.

    Attributes:
        cka: linear CKA of before and after (1: same geometry up to rotation and scale).
        angles: (k_eff,) principal angles in radians, ascending (see `principal_angles`).
        space: the space the angles were measured in, "sample" or "feature".
        metrics: one row per metric (index: metric name), columns before, after, delta
            (after - before).
    """

    cka: float
    angles: np.ndarray
    space: AngleSpace
    metrics: pd.DataFrame

    @property
    def mean_angle(self) -> float:
        """Mean principal angle in radians (NaN when there are none)."""
        return float(self.angles.mean()) if self.angles.size else float("nan")

    @property
    def max_angle(self) -> float:
        """Largest principal angle in radians (NaN when there are none)."""
        return float(self.angles.max()) if self.angles.size else float("nan")

    def to_row(self) -> dict[str, float]:
        """Flat summary: cka, n_angles, angle_mean, angle_max (radians), then for each metric m
        ``m_before``, ``m_after``, ``m_delta``."""
        row: dict[str, float] = {
            "cka": self.cka,
            "n_angles": float(self.angles.size),
            "angle_mean": self.mean_angle,
            "angle_max": self.max_angle,
        }
        for metric, vals in self.metrics.iterrows():
            for col in ("before", "after", "delta"):
                row[f"{metric}_{col}"] = float(vals[col])
        return row


def metric_change(
    before: ArrayLike, after: ArrayLike, *, center: bool = False, metrics: Sequence[str] = METRIC_COLUMNS
) -> pd.DataFrame:
    """Every ndt metric of two activation matrices.

    Args:
        before: (n, k) activations.
        after: (n2, k2) activations (any shape: metrics compare spectra, not samples).
        center: centre the columns first (the study did not).
        metrics: metric names from `ndt.measure.spectrum.METRICS`.

    Returns:
        One row per metric (index named "metric"), columns before, after, delta = after - before.
    """
    values = compute_metrics(
        {"before": as_matrix(before), "after": as_matrix(after)}, center=center, metrics=metrics
    )
    assert isinstance(values["before"], dict) and isinstance(
        values["after"], dict
    )  # {layer: {metric: value}}
    return metric_frame(values["before"], values["after"], metrics)


def metric_frame(
    before: Mapping[str, float], after: Mapping[str, float], metrics: Sequence[str] = METRIC_COLUMNS
) -> pd.DataFrame:
    """The `metric_change` frame of metrics already computed (e.g. `LayerAnalysis.metrics`).

    Args:
        before, after: {metric name: value} with every name of `metrics`.
        metrics: the rows, in order.

    Returns:
        One row per metric (index named "metric"), columns before, after, delta = after - before.
    """
    frame = pd.DataFrame({"before": before, "after": after}).loc[list(metrics)]
    frame["delta"] = frame["after"] - frame["before"]
    frame.index.name = "metric"
    return frame


def compare(
    before: ArrayLike,
    after: ArrayLike,
    k: int = 10,
    *,
    space: AngleSpace = "sample",
    center: bool = False,
    metrics: Sequence[str] = METRIC_COLUMNS,
) -> Comparison:
    """Compare two captures of the same layer on the same probe.

    Args:
        before: (n, k1) activations at the earlier checkpoint.
        after: (n, k2) activations of the same n samples at the later one (k2 = k1 for
            space="feature").
        k: principal subspace dimension for the angles.
        space: where the angles are measured (see `principal_angles`).
        center: centre before computing the metrics (CKA and angles always centre).
        metrics: metric names.

    Returns:
        `Comparison`.
    """
    a, b = as_matrix(before), as_matrix(after)
    return Comparison(
        cka=linear_cka(a, b),
        angles=principal_angles(a, b, k, space=space),
        space=space,
        metrics=metric_change(a, b, center=center, metrics=metrics),
    )
