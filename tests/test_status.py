"""`ndt.status`: the state of every run of a sweep, from its files alone (hand-made sweeps, known answers)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from omegaconf import DictConfig, OmegaConf

from ndt.running.status import expected_runs, run_status, sweep_status
from ndt.status import main
from ndt.storage.layout import DONE_MARKER, HEARTBEAT, write_run_json

NOW = 1_800_000_000.0  # a fixed "now" (unix seconds): ages below are exact


def make_run(
    sweep: Path,
    name: str,
    status: str | None,
    *,
    beat_age_s: float | None = None,
    marker: bool = False,
    error: str | None = None,
    slurm: dict[str, str] | None = None,
) -> Path:
    """A run directory as the runner leaves it; status None: started, no run.json yet."""
    run = sweep / name
    (run / ".hydra").mkdir(parents=True)
    (run / "run.log").write_text("")
    if status is not None:
        record: dict[str, object] = {"status": status, "run_id": name}
        if error is not None:
            record["error"] = error
        if slurm is not None:
            record["slurm"] = slurm
        write_run_json(run, record)
    if beat_age_s is not None:
        (run / HEARTBEAT).write_text(f"{NOW - beat_age_s:.0f}\n")
    if marker:
        (run / DONE_MARKER).write_text(f"{status}\n")
    return run


def write_multirun_yaml(sweep: Path, params: dict[str, str], task: list[str], seed: int = 0) -> None:
    """The keys of Hydra's multirun.yaml that matter here (a real one is read in the next test)."""
    sweep.mkdir(parents=True, exist_ok=True)
    cfg = {
        "arch": {"name": "mlp_narrow"},
        "dataset": {"name": "digits"},
        "seed": seed,
        "hydra": {
            "sweeper": {
                "_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper",
                "params": params,
            },
            "overrides": {"task": task},
        },
    }
    OmegaConf.save(OmegaConf.create(cfg), sweep / "multirun.yaml")


def test_each_state_from_the_files(tmp_path: Path) -> None:
    sweep = tmp_path / "paper"
    make_run(sweep, "a__digits__s0", "complete", beat_age_s=9999, marker=True)
    make_run(sweep, "b__ag_news__s0", "skipped", marker=True, error="CNNs need images\n(details)")
    make_run(
        sweep, "c__digits__s0", "failed", beat_age_s=50, error="FloatingPointError: loss is nan\nTraceback"
    )
    make_run(sweep, "d__digits__s0", "running", beat_age_s=30, slurm={"slurm_job_id": "7"})
    make_run(sweep, "e__digits__s0", "running", beat_age_s=15 * 60, slurm={"slurm_job_id": "8"})
    make_run(sweep, "f__digits__s0", "complete", beat_age_s=5)  # finishing: marker not yet written
    (sweep / "tables").mkdir()  # ndt.tables output: not a run
    (sweep / ".submitit").mkdir()

    status = sweep_status(sweep, now=NOW)
    by_name = {r.name: r for r in status.runs}
    assert sorted(by_name) == [
        "a__digits__s0",
        "b__ag_news__s0",
        "c__digits__s0",
        "d__digits__s0",
        "e__digits__s0",
        "f__digits__s0",
    ]
    assert by_name["a__digits__s0"].state == "done"
    assert (by_name["b__ag_news__s0"].state, by_name["b__ag_news__s0"].reason) == (
        "skipped",
        "CNNs need images",
    )
    c = by_name["c__digits__s0"]
    assert (c.state, c.reason, c.stale) == ("failed", "FloatingPointError: loss is nan", False)
    d = by_name["d__digits__s0"]
    assert (d.state, d.heartbeat_age_s, d.slurm) == ("running", 30.0, {"slurm_job_id": "7"})
    e = by_name["e__digits__s0"]
    assert (e.state, e.reason, e.stale) == ("failed", "no heartbeat for 15 min: the process died", True)
    assert by_name["f__digits__s0"].state == "running"
    assert status.expected is None  # no multirun.yaml: nothing can be missing
    assert status.counts() == {"done": 1, "skipped": 1, "running": 2, "failed": 2, "missing": 0}


def test_stale_threshold_is_configurable(tmp_path: Path) -> None:
    run = make_run(tmp_path, "a__digits__s0", "running", beat_age_s=120)
    assert run_status(run, now=NOW).state == "running"  # default: 10 min
    quick = run_status(run, stale_after_s=60, now=NOW)
    assert (quick.state, quick.reason) == ("failed", "no heartbeat for 2 min: the process died")


def test_started_without_run_json_is_running_then_dead(tmp_path: Path) -> None:
    run = make_run(tmp_path, "a__digits__s0", None)  # Hydra made the directory; data still loading
    assert run_status(run).state == "running"  # judged by run.log's age (just written)
    dead = run_status(run, now=run.stat().st_mtime + 3600)
    assert dead.state == "failed" and dead.reason == "no heartbeat for 60 min: the process died"


def test_missing_runs_from_the_multirun_yaml(tmp_path: Path) -> None:
    sweep = tmp_path / "grid"
    # As `python -m ndt.run -m arch=mlp_narrow,cnn_shallow seed=0,1 +sweep=...` with a dataset param:
    write_multirun_yaml(sweep, {"dataset": "digits,mnist"}, ["arch=mlp_narrow,cnn_shallow", "++seed=0,1"])
    assert expected_runs(sweep) == [
        f"{a}__{d}__s{s}" for d in ("digits", "mnist") for a in ("mlp_narrow", "cnn_shallow") for s in (0, 1)
    ]
    make_run(sweep, "mlp_narrow__digits__s0", "complete", beat_age_s=1, marker=True)
    make_run(sweep, "old__digits__s5", "complete", beat_age_s=1, marker=True)  # an earlier multirun's run
    status = sweep_status(sweep, now=NOW)
    assert status.counts() == {"done": 2, "skipped": 0, "running": 0, "failed": 0, "missing": 7}
    assert "cnn_shallow__mnist__s1" in {r.name for r in status.in_state("missing")}


def test_defaults_fill_axes_the_sweep_does_not_set(tmp_path: Path) -> None:
    write_multirun_yaml(tmp_path, {}, ["arch=cnn_deep,mlp_wide", "trainer.max_steps=50"], seed=3)
    assert expected_runs(tmp_path) == ["cnn_deep__digits__s3", "mlp_wide__digits__s3"]


def test_expected_runs_of_the_real_smoke_config(
    tmp_path: Path, compose_cfg: Callable[..., DictConfig]
) -> None:
    """Hydra's own config for `+sweep=smoke seed=4` (saved as the sweeper saves multirun.yaml)."""
    cfg = compose_cfg("+sweep=smoke", "seed=4", return_hydra_config=True)
    OmegaConf.save(cfg, tmp_path / "multirun.yaml")
    assert expected_runs(tmp_path) == [
        "mlp_narrow__digits__s4",
        "cnn_shallow__digits__s4",
        "transformer_shallow__digits__s4",
    ]


def test_other_sweepers_and_no_yaml_expect_nothing(tmp_path: Path) -> None:
    assert expected_runs(tmp_path) is None
    write_multirun_yaml(tmp_path, {"arch": "a,b"}, [])
    cfg = OmegaConf.load(tmp_path / "multirun.yaml")
    cfg.hydra.sweeper._target_ = "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"
    OmegaConf.save(cfg, tmp_path / "multirun.yaml")
    assert expected_runs(tmp_path) is None


def test_cli_prints_counts_and_failed_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sweep = tmp_path / "smoke"
    write_multirun_yaml(sweep, {"arch": "mlp_narrow,cnn_shallow,transformer_shallow"}, [])
    make_run(sweep, "mlp_narrow__digits__s0", "complete", beat_age_s=1, marker=True)
    make_run(
        sweep,
        "cnn_shallow__digits__s0",
        "failed",
        error="RuntimeError: CUDA out of memory\nmore",
        slurm={"slurm_job_id": "12", "slurm_array_job_id": "10", "slurm_array_task_id": "1"},
    )
    assert main([str(sweep)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert (
        out[0]
        == f"{sweep}: 3 runs (3 expected by multirun.yaml): 1 done, 0 skipped, 0 running, 1 failed, 1 missing"
    )
    assert "  cnn_shallow__digits__s0: RuntimeError: CUDA out of memory  [SLURM job 10_1]" in out
    assert out[-2:] == ["missing:", "  transformer_shallow__digits__s0"]

    assert main([str(sweep), "--json", "--stale-after", "0.5"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["counts"] == {"done": 1, "skipped": 0, "running": 0, "failed": 1, "missing": 1}
    assert [r["state"] for r in data["runs"]] == ["failed", "done", "missing"]  # sorted by name

    assert main([str(tmp_path / "nope")]) == 2
    assert "no sweep directory" in capsys.readouterr().err


def test_a_held_lock_means_running_and_set_aside_files_are_listed(tmp_path: Path) -> None:
    import os

    from ndt.running.status import format_report
    from ndt.storage.lock import run_lock

    sweep = tmp_path / "sweep"
    run = make_run(sweep, "a__b__s0", "running", beat_age_s=3600)  # silent for an hour...
    (run / "set_aside" / "metrics").mkdir(parents=True)
    (run / "set_aside" / "metrics" / "part-00003.parquet").write_bytes(b"")
    assert run_status(run, now=NOW).state == "failed"  # ...and nobody holds its lock: dead
    with run_lock(run):  # ...but a live process holds its lock: running (perhaps stuck)
        status = run_status(run, now=NOW)
        assert status.state == "running" and f"PID {os.getpid()}" in str(status.holder)
        report = format_report(sweep_status(sweep, now=NOW))
    assert f"locked by PID {os.getpid()}" in report
    assert "a__b__s0: metrics/part-00003.parquet" in report
    assert run_status(run, now=NOW).set_aside == ("metrics/part-00003.parquet",)
