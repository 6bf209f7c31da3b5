"""Validation of the jump detectors: do their events mean something?

- `ndt.validate.battery`: synthetic series with planted steps and null series (noise, drift).
"""
