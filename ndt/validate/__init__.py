"""Validation of the jump detectors: do their events mean something?

- `ndt.validate.cases`: small real training runs with a transition known in the run (deep-linear
  staircase, sparse parity, in-context copying, grokking) and matched controls.
- `ndt.validate.truth`: their ground truth, as first crossings of quantities recorded in the run.
- `ndt.validate.score`: hits, false alarms and the pass rule.
- `ndt.validate.benchmark`: ``python -m ndt.validate``, every detector x metric, table and figures.
- `ndt.validate.investigate`: ``python -m ndt.validate --investigate B``, the investigate report at a
  case's transition (replayed from its seed) and its causal check.
- `ndt.validate.battery`: synthetic series with planted steps and null series (noise, drift).
"""
