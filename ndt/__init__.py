"""ndt: layer-wise representational dimensionality during training, and the jumps that say when to look.

Main entry points:

- `HighFrequencyTracker`: hooks a model, measures every layer every N steps, streams Parquet, finds jumps.
- `ActivationCapture`: forward hooks that turn layer outputs into (n, k) matrices.
- `JumpDetector`: the study's jump detector on a metric series.
- `compute_metrics`: all dimensionality metrics of a matrix from one spectrum.
- `read_metrics`: read a run's Parquet rows back.
"""

from ndt.detect import Jump, JumpDetector, JumpEvent, Jumps, detect_jumps
from ndt.measure.capture import ActivationCapture
from ndt.measure.spectrum import METRICS, compute_metrics
from ndt.measure.tracker import HighFrequencyTracker
from ndt.storage.parquet import MetricsWriter, read_metrics

__version__ = "0.1.0"

__all__ = [
    "METRICS",
    "ActivationCapture",
    "HighFrequencyTracker",
    "Jump",
    "JumpDetector",
    "JumpEvent",
    "Jumps",
    "MetricsWriter",
    "compute_metrics",
    "detect_jumps",
    "read_metrics",
]
