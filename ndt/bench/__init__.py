"""Benchmarks behind `make bench`: each prints ratios measured within one run on this machine.

Run ``python -m ndt.bench`` (all) or ``python -m ndt.bench kernel overhead`` (some).
"""
