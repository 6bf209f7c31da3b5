"""Measurement: activation capture, the spectral metrics and the tracker."""
