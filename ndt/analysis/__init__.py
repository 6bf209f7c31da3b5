"""Analysis: pure functions on metric series and activations.

- jumps: re-exported from `ndt.detect` (the detectors live there, below every other package).
- growth: the TAP growth-model fit of a dimensionality series.
- activations / comparison / analyzer: PCA, clustering, embeddings, spectra, CKA and principal
  angles between two captures (`ActivationAnalyzer` bundles them per layer).
- visualize: Grad-CAM, saliency, integrated gradients, attention maps, feature maps (`FeatureVisualizer`).
"""

from ndt.analysis.activations import ClusterResult, PCAResult, cluster, embed, pca, spectrum, tsne_perplexity
from ndt.analysis.analyzer import ActivationAnalyzer, LayerAnalysis
from ndt.analysis.comparison import Comparison, compare, linear_cka, metric_change, principal_angles
from ndt.analysis.growth import GrowthFit, fit_tap
from ndt.analysis.visualize import (
    FeatureVisualizer,
    save_attention,
    save_feature_maps,
    save_image_grid,
    save_overlay,
)
from ndt.detect import (
    Jump,
    JumpDetector,
    JumpEvent,
    Jumps,
    RobustJumpDetector,
    detect_jumps,
    detect_jumps_robust,
)

__all__ = [
    "ActivationAnalyzer",
    "ClusterResult",
    "Comparison",
    "FeatureVisualizer",
    "GrowthFit",
    "Jump",
    "JumpDetector",
    "JumpEvent",
    "Jumps",
    "LayerAnalysis",
    "PCAResult",
    "RobustJumpDetector",
    "cluster",
    "compare",
    "detect_jumps",
    "detect_jumps_robust",
    "embed",
    "fit_tap",
    "linear_cka",
    "metric_change",
    "pca",
    "principal_angles",
    "save_attention",
    "save_feature_maps",
    "save_image_grid",
    "save_overlay",
    "spectrum",
    "tsne_perplexity",
]
