"""Analysis: pure functions on metric series and activations (jump detection, ...)."""

from ndt.analysis.jumps import Jump, JumpDetector, JumpEvent, Jumps, detect_jumps

__all__ = ["Jump", "JumpDetector", "JumpEvent", "Jumps", "detect_jumps"]
