"""The one definition of a metrics row, shared by the writer, the reader and the importers.

A row is one (step, layer) measurement. Columns, in order:

=====================  ==========================  ===================================================
column                 Arrow type                  meaning
=====================  ==========================  ===================================================
run_id                 dictionary<int32, string>   run identifier (`<arch>__<dataset>__s<seed>` in sweeps)
arch                   dictionary<int32, string>   architecture name (config option name)
dataset                dictionary<int32, string>   dataset name (config option name)
seed                   int64, nullable             run seed; null when unknown (imported legacy runs)
step                   int64                       optimizer step the measurement belongs to
epoch                  int32                       epoch of that step (0 unless the caller says)
layer                  string                      qualified module name, e.g. ``encoder.layers.0.linear1``
layer_index            int16                       position of the layer in the model (0 = first measured)
n_samples              int32                       rows of the measured matrix: examples (probe or
                                                   batch), times positions (conv_reduction=positions,
                                                   <= max_rows) or tokens (sequence_reduction=tokens)
n_features             int32                       columns of the activation matrix (after reduction)
loss                   float64                     training loss at that step (NaN if not given)
grad_norm              float64                     global L2 norm of the gradients at that step
stable_rank            float64                     ||A||_F^2 / s1^2
participation_ratio    float64                     (sum s_i)^2 / sum s_i^2 (the study's, on singular values)
cumulative_energy_90   float64                     singular values needed for 90% of sum s_i^2
nuclear_norm_ratio     float64                     sum s_i / s1
pr_eigen               float64                     (sum l)^2 / sum l^2, l = eigenvalues of the centred covariance
effective_rank         float64                     exp(entropy of s_i / sum s)
wall_time              float64                     seconds since the tracker started, at the step's log()
=====================  ==========================  ===================================================

The string identifiers are Arrow dictionary columns (pandas categoricals): a sweep repeats them on
every row. `seed` is a plain nullable int64 (Parquet still dictionary-encodes it on disk) so that
``df.seed == 0`` and arithmetic work as expected.
"""

from __future__ import annotations

import pyarrow as pa

#: The measurement columns, in schema order. `ndt.measure.spectrum.METRICS` computes exactly these.
METRIC_COLUMNS: tuple[str, ...] = (
    "stable_rank",
    "participation_ratio",
    "cumulative_energy_90",
    "nuclear_norm_ratio",
    "pr_eigen",
    "effective_rank",
)

#: The metric whose layer-mean series the tables, ndt.investigate, ndt.view and the tracker's
#: `series` / `detect_jumps` use when none is named (the study's series metric).
DEFAULT_METRIC = "participation_ratio"

#: Columns that identify the run; constant within one run.
RUN_COLUMNS: tuple[str, ...] = ("run_id", "arch", "dataset", "seed")

_DICT_STRING = pa.dictionary(pa.int32(), pa.string())

METRICS_SCHEMA = pa.schema(
    [
        pa.field("run_id", _DICT_STRING, nullable=False),
        pa.field("arch", _DICT_STRING, nullable=False),
        pa.field("dataset", _DICT_STRING, nullable=False),
        pa.field("seed", pa.int64(), nullable=True),
        pa.field("step", pa.int64(), nullable=False),
        pa.field("epoch", pa.int32(), nullable=False),
        pa.field("layer", pa.string(), nullable=False),
        pa.field("layer_index", pa.int16(), nullable=False),
        pa.field("n_samples", pa.int32(), nullable=False),
        pa.field("n_features", pa.int32(), nullable=False),
        pa.field("loss", pa.float64()),
        pa.field("grad_norm", pa.float64()),
        *[pa.field(name, pa.float64()) for name in METRIC_COLUMNS],
        pa.field("wall_time", pa.float64(), nullable=False),
    ],
    metadata={"ndt.schema_version": "1"},
)

#: Column names in schema order.
COLUMNS: tuple[str, ...] = tuple(METRICS_SCHEMA.names)
