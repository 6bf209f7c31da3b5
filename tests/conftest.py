"""Shared fixtures: Hydra composition of the real config, shrunk for speed."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from ndt.running.config import register_configs

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")
REPO = Path(__file__).resolve().parent.parent

register_configs()


@pytest.fixture
def compose_cfg(tmp_path: Path) -> Callable[..., DictConfig]:
    """Compose the real config with overrides; results and data go under tmp_path."""

    def _compose(*overrides: str, return_hydra_config: bool = False) -> DictConfig:
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            return compose(
                "config",
                overrides=[
                    f"paths.results_dir={tmp_path / 'results'}",
                    f"paths.data_dir={tmp_path / 'data'}",
                    *overrides,
                ],
                return_hydra_config=return_hydra_config,
            )

    return _compose


def ndt_run_cmd(*args: str) -> list[str]:
    """The real entry point, as a user runs it."""
    return [sys.executable, "-m", "ndt.run", *args]


def subprocess_env() -> dict[str, str]:
    """Environment for entry-point subprocesses: unbuffered, full Hydra tracebacks."""
    return {**os.environ, "PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "1"}


def run_ndt(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run ``python -m ndt.run ARGS`` from the repo root, as a user would; output captured."""
    return subprocess.run(
        ndt_run_cmd(*args), cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=timeout
    )


def import_extra(name: str, extra: str) -> Any:
    """Import an optional framework for its tests; skip them without it.

    CI sets ``NDT_REQUIRE_EXTRAS=1`` (it installs every extra): a missing one then fails instead of
    skipping quietly.
    """
    if os.environ.get("NDT_REQUIRE_EXTRAS") == "1":
        return importlib.import_module(name)
    return pytest.importorskip(name, reason=f"the {extra} extra is not installed: pip install 'ndt[{extra}]'")


#: The short run the fault and GPU-path tests kill, resume and compare: 60 steps of mlp_narrow on
#: digits, a checkpoint every 10, a measurement every 2, a Parquet part every 4 measurements.
FAULT_TINY = (
    "trainer.max_steps=60",
    "trainer.checkpoint.every=10",
    "trainer.log_every=10",
    "trainer.num_threads=1",
    "trainer.progress=log",
    "trainer.device=cpu",
    "tracker.sampling_frequency=2",
    "tracker.flush_every=4",
)
FAULT_RUN = "mlp_narrow__digits__s0"
