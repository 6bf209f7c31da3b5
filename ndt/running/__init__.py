"""Running: training one experiment, sweeps, checkpoints and the run directory layout."""
