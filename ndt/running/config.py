"""Typed schemas for the core config groups, registered in Hydra's ConfigStore.

`conf/trainer/default.yaml` and `conf/tracker/default.yaml` list these schemas first in their
defaults, so a misspelt key (``trainer.max_step=10``) or a wrong type (``trainer.batch_size=big``)
fails at start-up with Hydra's message instead of being ignored.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from ndt.storage.layout import run_name
from ndt.storage.schema import METRIC_COLUMNS


@dataclass
class CheckpointConfig:
    """When to checkpoint: every `every` steps and at the end; `keep_last` None keeps all."""

    every: int = 100
    keep_last: int | None = None


@dataclass
class TrainerConfig:
    """The training protocol (units: optimizer steps, examples)."""

    max_steps: int = 2000
    batch_size: int = 32
    device: str = "auto"
    strategy: str = "single"
    log_every: int = 100
    progress: str = "auto"
    eval_batch_size: int = 1024
    num_threads: int | None = None
    # Values come from conf/trainer/default.yaml (one source); see ndt.running.numerics.
    tf32: bool = MISSING
    deterministic: bool = MISSING
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)


@dataclass
class TrackerConfig:
    """How dimensionality is measured (see `ndt.measure.tracker.HighFrequencyTracker`)."""

    sampling_frequency: int = 5
    probe_size: int = 160
    metrics: list[str] = field(default_factory=lambda: list(METRIC_COLUMNS))
    center: bool = False
    sequence_reduction: str = "token_mean"
    flush_every: int = 50
    # Values come from conf/tracker/default.yaml (one source); MISSING makes a schema without it fail.
    mask_padding: bool = MISSING
    conv_reduction: str = MISSING
    max_rows: int = MISSING
    hook_point: str = MISSING
    exact_max_size: int | None = MISSING
    loggers: list[str] = field(default_factory=list)  # ndt.integrations.loggers.LOGGERS


def register_configs() -> None:
    """Put the schemas in the ConfigStore and the ``ndt_run_name`` resolver in OmegaConf (idempotent)."""
    cs = ConfigStore.instance()
    cs.store(group="trainer", name="trainer_schema", node=TrainerConfig)
    cs.store(group="tracker", name="tracker_schema", node=TrackerConfig)
    # One definition of a run directory's name, used by conf/config.yaml's hydra.run/sweep dirs.
    OmegaConf.register_new_resolver("ndt_run_name", run_name, replace=True)
