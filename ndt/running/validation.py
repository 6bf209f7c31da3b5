"""Every config value checked at start-up, before any directory is created.

`check_config(cfg)` returns one line per bad value, naming the key, the value and what is allowed;
`validate_config(cfg)` raises `ConfigError` with all of them. Hydra's schemas (`ndt.running.config`)
already refuse misspelt keys and wrong types in ``trainer`` and ``tracker``; the checks here add the
ranges, and the types of the groups without a schema (``optim``, ``dataset``, ``arch``, top level).

`ndt.running.hydra_callbacks.StartupChecks` runs them before Hydra creates a run directory (a single
run) or before the first job of a sweep starts (every job's config); `run_experiment` runs them again
for library callers.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ndt.detect import DETECTORS
from ndt.measure.capture import CONV_REDUCTIONS, HOOK_POINTS, SEQUENCE_REDUCTIONS
from ndt.storage.schema import METRIC_COLUMNS

#: Test-split sizes of the standard datasets (the probe is cut from the test subset, so it cannot be
#: larger); a dataset read from files of another size is checked again when it loads.
STANDARD_TEST_SIZES = {
    "mnist": 10_000,
    "fashion_mnist": 10_000,
    "qmnist": 60_000,
    "ag_news": 7_600,
    "cifar10": 10_000,
    "ag_news_lm": 7_600,  # the ag_news test file, one text per sequence
}

OPTIMIZERS = ("adam", "adamw", "sgd")
PROGRESS_MODES = ("auto", "bar", "log")
PROTOCOLS = ("study", "corrected")
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


class ConfigError(ValueError):
    """One or more config values are out of range or of the wrong type (the message lists each)."""


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (isinstance(v, int | float) and not isinstance(v, bool)) and math.isfinite(v)


def _get(cfg: Any, key: str) -> Any:
    return OmegaConf.select(cfg, key, default=None, throw_on_missing=False)


def check_config(cfg: DictConfig) -> list[str]:
    """Every problem of a composed run config, one line each ("key=value: what is allowed").

    Args:
        cfg: the composed config of one run (``conf/config.yaml`` with its overrides).

    Returns:
        Problem lines; empty when the config is good.
    """
    problems: list[str] = []

    def need(key: str, ok: Callable[[Any], bool], allowed: str) -> Any:
        value = _get(cfg, key)
        if not ok(value):
            problems.append(f"{key}={value!r}: {allowed}")
        return value

    def int_at_least(key: str, low: int, what: str, optional: bool = False) -> Any:
        none_ok = " or null" if optional else ""
        return need(
            key,
            lambda v: (optional and v is None) or (_is_int(v) and v >= low),
            f"must be an integer >= {low}{none_ok} ({what})",
        )

    from ndt.data.images import DIGITS_TEST_SIZE
    from ndt.data.spec import DATASET_NAMES
    from ndt.models.registry import is_known_arch, known_arch_names

    need("seed", lambda v: _is_int(v) and v >= 0, "must be an integer >= 0 (the run's seed)")
    need(
        "sweep_name",
        lambda v: isinstance(v, str) and v.strip() != "" and "/" not in v and v not in (".", ".."),
        "must be a non-empty name without '/' (it names a directory under paths.results_dir)",
    )
    need("arch.name", is_known_arch, f"must be one of {', '.join(known_arch_names())}")
    dataset = need("dataset.name", lambda v: v in DATASET_NAMES, f"must be one of {', '.join(DATASET_NAMES)}")
    need(
        "dataset.encoding",
        lambda v: v is None or v in ("pixels", "embedding", "raw_ids"),
        "must be null, pixels, embedding or raw_ids",
    )
    int_at_least("dataset.train_subset", 1, "training examples; null = all", optional=True)
    test_subset = int_at_least("dataset.test_subset", 1, "test examples; null = all", optional=True)

    int_at_least("trainer.max_steps", 1, "optimizer steps")
    int_at_least("trainer.batch_size", 1, "examples per step")
    int_at_least("trainer.log_every", 1, "steps between log lines")
    int_at_least("trainer.eval_batch_size", 1, "examples per evaluation forward")
    int_at_least("trainer.num_threads", 1, "torch CPU threads; null = torch's default", optional=True)
    int_at_least("trainer.checkpoint.every", 1, "steps between checkpoints")
    int_at_least("trainer.checkpoint.keep_last", 1, "checkpoints kept; null keeps all", optional=True)
    need(
        "trainer.device",
        lambda v: isinstance(v, str) and bool(_DEVICE.match(v)),
        "must be auto, cpu, cuda, cuda:N or mps",
    )
    need("trainer.progress", lambda v: v in PROGRESS_MODES, f"must be one of {', '.join(PROGRESS_MODES)}")
    need("trainer.tf32", lambda v: isinstance(v, bool), "must be true or false (TF32 matmuls on the GPU)")
    need(
        "trainer.deterministic",
        lambda v: isinstance(v, bool),
        "must be true or false (deterministic GPU algorithms, no cuDNN autotuning)",
    )

    int_at_least("tracker.sampling_frequency", 1, "steps between measurements")
    int_at_least("tracker.flush_every", 1, "measurements per Parquet part")
    probe = int_at_least("tracker.probe_size", 0, "probe examples; 0 measures the training batch")
    need(
        "tracker.metrics",
        lambda v: OmegaConf.is_list(v) and len(v) > 0 and all(m in METRIC_COLUMNS for m in v),
        f"must be a non-empty list drawn from {', '.join(METRIC_COLUMNS)}",
    )
    need(
        "tracker.sequence_reduction",
        lambda v: v in SEQUENCE_REDUCTIONS,
        f"must be one of {', '.join(SEQUENCE_REDUCTIONS)}",
    )
    need("tracker.center", lambda v: isinstance(v, bool), "must be true or false")
    need("tracker.mask_padding", lambda v: isinstance(v, bool), "must be true or false")
    need(
        "tracker.conv_reduction",
        lambda v: v in CONV_REDUCTIONS,
        f"must be one of {', '.join(CONV_REDUCTIONS)}",
    )
    need("tracker.hook_point", lambda v: v in HOOK_POINTS, f"must be one of {', '.join(HOOK_POINTS)}")
    int_at_least("tracker.max_rows", 1, "rows kept per conv measurement")
    int_at_least(
        "tracker.exact_max_size", 1, "largest Gram side decomposed exactly; null = always", optional=True
    )
    need("protocol.name", lambda v: v in PROTOCOLS, f"must be one of {', '.join(PROTOCOLS)}")
    need(
        "protocol.detector",
        lambda v: v is None or v in DETECTORS,
        f"must be null (the default detector) or one of {', '.join(DETECTORS)}",
    )
    split = DIGITS_TEST_SIZE if dataset == "digits" else STANDARD_TEST_SIZES.get(str(dataset))
    sizes = [s for s in (test_subset if _is_int(test_subset) else None, split) if s is not None]
    if _is_int(probe) and probe > 0 and sizes and probe > min(sizes):
        problems.append(
            f"tracker.probe_size={probe}: must be <= the test subset it is cut from ({min(sizes)} examples "
            f"of {dataset}: dataset.test_subset={test_subset!r}"
            + (f", test split {split}" if split is not None else "")
            + "); lower it or raise dataset.test_subset"
        )

    optim = need("optim.name", lambda v: v in OPTIMIZERS, f"must be one of {', '.join(OPTIMIZERS)}")
    need("optim.lr", lambda v: _is_number(v) and v > 0, "must be a number > 0 (the learning rate)")
    need(
        "optim.weight_decay",
        lambda v: _is_number(v) and v >= 0,
        "must be a number >= 0 (L2 / decoupled weight decay)",
    )
    if optim == "sgd" or _get(cfg, "optim.momentum") is not None:
        need("optim.momentum", lambda v: _is_number(v) and 0 <= v < 1, "must be a number in [0, 1)")
    tasks, strategy = _get(cfg, "hydra.launcher.tasks_per_node"), _get(cfg, "trainer.strategy")
    slurm = str(_get(cfg, "hydra.launcher._target_") or "").endswith("SlurmLauncher")
    if slurm and _is_int(tasks) and tasks > 1 and strategy != "ddp":
        # Every SLURM task runs the job: without DDP they would be that many copies of one run, on one
        # run directory (all but one refused by its lock), not one run over the tasks.
        problems.append(
            f"hydra.launcher.tasks_per_node={tasks}: SLURM starts {tasks} processes per job, and "
            f"trainer.strategy={strategy!r} trains each on its own, on one run directory; set "
            f"trainer.strategy=ddp (one run over the {tasks} processes) or hydra.launcher.tasks_per_node=1"
        )
    return problems


def validate_config(cfg: DictConfig) -> None:
    """Raise `ConfigError` listing every bad value of `cfg` (see `check_config`)."""
    problems = check_config(cfg)
    if problems:
        raise ConfigError("invalid config value(s):\n  " + "\n  ".join(problems))
