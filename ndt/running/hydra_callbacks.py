"""Hydra callbacks that refuse a bad config before anything is written (see conf/config.yaml).

`StartupChecks` runs before Hydra creates a directory: for a single run, `validate_config` on the run's
config; for a sweep, on every job's config (composed as the basic sweeper will compose it) and, under
the SLURM launcher, `ndt.running.slurm_check.check_request` against the partition's nodes. A problem
stops ``ndt.run`` with exit status 2 and a message naming the key, the value and the allowed range.

Hydra turns an exception raised in a callback into a warning and carries on, so a problem is reported
on stderr and ends the process with `SystemExit` (which Hydra lets through).
"""

from __future__ import annotations

import sys
from typing import Any, NoReturn

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from ndt.running.validation import check_config

_BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"


def sweep_job_overrides(config: DictConfig) -> list[list[str]] | None:
    """Override lists covering every value of every swept key, or None for another sweeper.

    The first job of the basic sweeper's grid, then for each swept key each of its other values with
    the rest as in the first job: every value is composed and checked once (18 configs for the paper
    grid of 60 jobs, not 60); a bad *combination* of two swept values is caught when its job starts.
    """
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if OmegaConf.select(config, "hydra.sweeper._target_") != _BASIC_SWEEPER:
        return None
    params = OmegaConf.select(config, "hydra.sweeper.params") or {}
    args = [f"{k}={v}" for k, v in params.items()]
    args += list(config.hydra.overrides.task)
    parser = OverridesParser.create(config_loader=GlobalHydra.instance().config_loader())
    # One "job" per key: [each of its key=value strings], in the sweeper's order.
    axes = [
        [job[0] for job in BasicSweeper.split_arguments([o], None)[0]] for o in parser.parse_overrides(args)
    ]
    first = [values[0] for values in axes]
    jobs = [first]
    for i, values in enumerate(axes):
        jobs += [[*first[:i], v, *first[i + 1 :]] for v in values[1:]]
    return jobs


#: Exit status of ``ndt.run`` for a refused config or SLURM request.
EXIT_BAD_CONFIG = 2


def refuse(message: str) -> NoReturn:
    """Print `message` as an error and end the process before anything is written."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(EXIT_BAD_CONFIG)


class StartupChecks(Callback):
    """Validate every run's config (and a SLURM request) before any directory is created."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        problems = check_config(config)
        if problems:
            refuse("invalid config value(s); nothing was written:\n  " + "\n  ".join(problems))

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from hydra.core.global_hydra import GlobalHydra

        jobs = sweep_job_overrides(config)
        found: dict[str, list[str]] = {}
        if jobs is None:  # another sweeper: each job is checked when it starts (run_experiment)
            for line in check_config(config):
                found.setdefault(line, [])
        else:
            loader = GlobalHydra.instance().config_loader()
            for job in jobs:
                for line in check_config(loader.load_sweep_config(config, job)):
                    found.setdefault(line, []).append(" ".join(job))
        if found:
            lines = []
            for line, where in found.items():
                if jobs is not None and len(where) == len(jobs):
                    lines.append(f"{line} (in every job)")
                elif where:
                    more = f", and {len(where) - 1} other(s) checked" if len(where) > 1 else ""
                    lines.append(f"{line} (in the job {where[0]}{more})")
                else:
                    lines.append(line)
            refuse("invalid config value(s); no job was started:\n  " + "\n  ".join(lines))
        target = str(OmegaConf.select(config, "hydra.launcher._target_") or "")
        if target.endswith("SlurmLauncher"):
            from ndt.running.slurm_check import SlurmRequestError, check_request

            keys = ("partition", "cpus_per_task", "tasks_per_node", "mem_gb", "gpus_per_node")
            try:
                check_request({k: OmegaConf.select(config, f"hydra.launcher.{k}") for k in keys})
            except SlurmRequestError as err:
                refuse(str(err))
