"""The layer-mean series (the study's): one value per measurement, the mean over the measured layers.

A step where some layer's metric is NaN (its activations were not finite) or missing (no row) is
dropped from the series, with one warning naming the dropped steps: a mean over fewer layers would be
a different quantity, and a detector would read the change of composition as a jump. A metric that
was not computed at all (every value null) gives an empty series without a warning.
"""

from __future__ import annotations

import warnings

import numpy as np

#: Dropped steps named in the warning (the rest are counted).
_NAMED = 10


def layer_mean_series(
    steps: np.ndarray, values: np.ndarray, layers: np.ndarray | None = None, *, what: str = "metric"
) -> tuple[np.ndarray, np.ndarray]:
    """Per measurement (step), the mean of the metric over all measured layers.

    Args:
        steps: (n,) step of each metric row.
        values: (n,) metric value of each row.
        layers: (n,) layer of each row; the layers measured are the distinct values. None: every step
            is expected to have as many rows as the step with the most.
        what: what the values are, for the warning (e.g. "participation_ratio").

    Returns:
        (steps, means): (m,) sorted distinct steps at which every layer has a finite value, and their
        (m,) layer means.

    Warns:
        RuntimeWarning: once, naming the steps dropped because a layer was NaN or missing there.
    """
    uniq, inverse = np.unique(np.asarray(steps), return_inverse=True)
    v = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(v)
    if uniq.size == 0 or not finite.any():
        return uniq[:0], np.zeros(0)
    counts = np.bincount(inverse, weights=finite, minlength=uniq.size)
    sums = np.bincount(inverse, weights=np.where(finite, v, 0.0), minlength=uniq.size)
    if layers is not None:
        expected = float(np.unique(np.asarray(layers, dtype=object).astype(str)).size)
    else:
        expected = float(np.bincount(inverse, minlength=uniq.size).max())
    keep = counts >= expected
    if not keep.all():
        dropped = uniq[~keep]
        named = ", ".join(str(int(s)) for s in dropped[:_NAMED])
        more = f" and {dropped.size - _NAMED} more" if dropped.size > _NAMED else ""
        warnings.warn(
            f"layer-mean {what}: {dropped.size} step(s) dropped because a layer's value is NaN or missing "
            f"there (steps {named}{more}); the mean keeps the same {int(expected)} layers at every step",
            RuntimeWarning,
            stacklevel=2,
        )
    return uniq[keep], sums[keep] / counts[keep]
