"""`python -m ndt.run`: train one experiment, or a sweep with `-m` / `+sweep=...` (see conf/)."""

from __future__ import annotations

import logging
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from ndt.running.config import register_configs

register_configs()


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    """Run the experiment `cfg` describes.

    Exit status of a single run: 1 failed (recorded in run.json), 2 a bad config value or a directory
    holding another experiment, 3 another process runs that directory. In a sweep these are logged and
    the other runs go on.
    """
    from ndt.running.distributed import is_main
    from ndt.running.train import RunConflictError, run_dir_for, run_experiment  # heavy: after CLI parsing
    from ndt.running.validation import ConfigError
    from ndt.storage.lock import RunLockedError

    single = HydraConfig.get().mode == RunMode.RUN
    try:
        record = run_experiment(cfg)
    except (ConfigError, RunConflictError, RunLockedError) as e:
        logging.getLogger("ndt.run").error("%s", e)
        if single:
            sys.exit(3 if isinstance(e, RunLockedError) else 2)
        return  # the other runs of the sweep go on
    # One line per run: under torchrun or srun every rank gets here; rank 0 speaks for a run that
    # completed, and any rank whose part failed says so itself.
    if record["status"] != "complete" or is_main():
        print(f"{record['status']}: {run_dir_for(cfg).resolve()}", flush=True)
    if record["status"] == "failed" and single:
        sys.exit(1)


if __name__ == "__main__":
    main()
