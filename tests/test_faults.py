"""Fault injection: SIGKILLs at random moments, crash states, two processes, bad input.

The run under test is tiny (mlp_narrow on digits, 60 steps, a measurement every 2 steps, a part every
4 measurements, a checkpoint every 10 steps, one torch thread), so that its rows are bit-identical
across resumptions on the CPU and the whole file takes a few minutes on 2 cores. Faults are planted
by `tests/fault_inject.py`, which runs the real entry point with functions replaced.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import FAULT_RUN as RUN
from conftest import FAULT_TINY as TINY
from conftest import REPO, subprocess_env
from omegaconf import DictConfig

from ndt.running.checkpoint import (
    InvalidCheckpointError,
    latest_valid_checkpoint,
    list_checkpoints,
    load_valid_checkpoint,
    save_checkpoint,
)
from ndt.running.slurm_check import SlurmRequestError, check_request, parse_sinfo
from ndt.running.train import run_experiment
from ndt.storage.layout import DONE_MARKER, LOCK_FILE, RUN_KEYS, SET_ASIDE_DIR, read_run_json
from ndt.storage.lock import RunLockedError, lock_holder, run_lock
from ndt.storage.parquet import UnreadablePartError, list_parts, read_metrics

MEASURED_STEPS = list(range(0, 60, 2))
FAULT_RUNNER = str(Path(__file__).resolve().parent / "fault_inject.py")


def start(results: Path, *extra: str, fault: dict[str, object] | None = None) -> subprocess.Popen[str]:
    env = {**subprocess_env(), "OMP_NUM_THREADS": "1"}
    if fault is not None:
        env["NDT_FAULT"] = json.dumps(fault)
    return subprocess.Popen(
        [
            sys.executable,
            FAULT_RUNNER,
            *(a for a in extra if a.startswith("-")),  # flags (-m) before the overrides
            *TINY,
            f"paths.results_dir={results}",
            *(a for a in extra if not a.startswith("-")),
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run(
    results: Path, *extra: str, fault: dict[str, object] | None = None
) -> subprocess.CompletedProcess[str]:
    proc = start(results, *extra, fault=fault)
    out, err = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def comparable(df: pd.DataFrame) -> pd.DataFrame:
    return df.drop(columns=["wall_time"]).reset_index(drop=True)


def assert_reference_rows(run_dir: Path, reference: pd.DataFrame) -> None:
    rows = read_metrics(run_dir / "metrics")
    assert rows.groupby(["step", "layer"]).size().eq(1).all(), "a (step, layer) is doubled"
    assert sorted(rows.step.unique()) == MEASURED_STEPS
    pd.testing.assert_frame_equal(comparable(rows), comparable(reference), check_exact=True)


class ForkServer:
    """`tests/fault_inject.py --serve`: runs of the entry point in forked children (no start-up cost)."""

    def __init__(self, log: Path) -> None:
        self.log = log
        self.proc = subprocess.Popen(
            [sys.executable, FAULT_RUNNER, "--serve"],
            cwd=REPO,
            env={**subprocess_env(), "OMP_NUM_THREADS": "1"},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def run(self, results: Path, fault: dict[str, object] | None = None) -> int:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        args = [*TINY, f"paths.results_dir={results}"]
        self.proc.stdin.write(json.dumps({"args": args, "fault": fault, "log": str(self.log)}) + "\n")
        self.proc.stdin.flush()
        return int(json.loads(self.proc.stdout.readline())["rc"])

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ForkServer]:
    srv = ForkServer(tmp_path_factory.mktemp("server") / "runs.log")
    yield srv
    srv.close()


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, server: ForkServer) -> tuple[Path, pd.DataFrame]:
    """An uninterrupted run of the tiny protocol: its directory and its rows."""
    results = tmp_path_factory.mktemp("reference")
    assert server.run(results) == 0, server.log.read_text()[-3000:]
    run_dir = results / "single" / RUN
    return run_dir, read_metrics(run_dir / "metrics")


# ------------------------------------------------------------------ SIGKILL at 20 random moments


@pytest.mark.slow
def test_sigkill_at_20_random_moments_leaves_the_reference_rows(
    tmp_path: Path, server: ForkServer, reference: tuple[Path, pd.DataFrame]
) -> None:
    rng = np.random.default_rng(11)
    run_dir = tmp_path / "single" / RUN
    kills, killed_in = 0, set()
    phases = ["mid", "before_rename", "after_rename", "step"]
    while kills < 20:
        phase = phases[int(rng.integers(len(phases)))]
        if phase == "step":
            fault: dict[str, object] = {"kind": "step", "k": int(rng.integers(1, 25))}
        else:  # a run writes run.json, then ~2 parts and 1 checkpoint per 10 steps
            fault = {"kind": "write", "k": int(rng.integers(1, 8)), "phase": phase}
        rc = server.run(tmp_path, fault)
        if rc == -signal.SIGKILL:
            kills += 1
            killed_in.add(phase)
            assert not (run_dir / DONE_MARKER).exists()
            continue
        assert rc == 0, (fault, server.log.read_text()[-3000:])
        if (run_dir / DONE_MARKER).exists():  # finished before the fault: start the run over
            assert_reference_rows(run_dir, reference[1])
            shutil.rmtree(tmp_path / "single")
    assert killed_in == set(phases)  # during writes (three phases) and between them
    assert server.run(tmp_path) == 0, server.log.read_text()[-3000:]
    assert_reference_rows(run_dir, reference[1])
    record = read_run_json(run_dir)
    assert record["status"] == "complete" and set(RUN_KEYS) <= set(record)
    assert record["n_measurements"] == len(MEASURED_STEPS)
    assert record["final_accuracy"] == read_run_json(reference[0])["final_accuracy"]
    assert len(record["segments"]) >= 2 and all(s["device"] == "cpu" for s in record["segments"])
    assert not list((run_dir / "metrics").glob(".*.tmp")) and not list((run_dir / "checkpoints").glob(".*"))


# ------------------------------------------------------------------ crash states written here


def crash_copy(reference: Path, tmp_path: Path) -> Path:
    """The reference run as a crash would leave it mid-run: no marker, run.json saying running."""
    run_dir = tmp_path / "single" / RUN
    shutil.copytree(reference, run_dir, ignore=shutil.ignore_patterns(DONE_MARKER, ".hydra", "run.log"))
    record = read_run_json(run_dir)
    record["status"] = "running"
    (run_dir / "run.json").write_text(json.dumps(record))
    return run_dir


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_crash_states_resume_to_the_reference_rows(
    compose_cfg: Callable[..., DictConfig], tmp_path: Path, reference: tuple[Path, pd.DataFrame]
) -> None:
    ref_dir, ref_rows = reference

    def resume(case: str) -> Path:
        cfg = compose_cfg(*TINY, f"paths.results_dir={tmp_path / case}")
        record = run_experiment(cfg)
        assert record["status"] == "complete", record.get("error")
        return tmp_path / case / "single" / RUN

    # 1. Power loss after the newest checkpoint was renamed but before its data reached the disk.
    run_dir = crash_copy(ref_dir, tmp_path / "empty_ckpt")
    (run_dir / "checkpoints" / "step_000060.pt").write_bytes(b"")
    resume("empty_ckpt")
    assert_reference_rows(run_dir, ref_rows)
    assert (run_dir / SET_ASIDE_DIR / "checkpoints" / "step_000060.pt").stat().st_size == 0
    assert "resuming mlp_narrow__digits__s0 from step_000050.pt" in (run_dir / "run.log").read_text()

    # 2. A Parquet part cut short (a copy interrupted, a disk fault): set aside and recomputed.
    run_dir = crash_copy(ref_dir, tmp_path / "cut_part")
    parts = list_parts(run_dir / "metrics")
    victim = parts[len(parts) // 2]
    lost_steps = sorted(pd.read_parquet(victim).step.unique())
    os.truncate(victim, victim.stat().st_size // 2)
    with pytest.raises(UnreadablePartError, match=victim.name):
        read_metrics(run_dir / "metrics")  # a reader names the part instead of skipping it
    resume("cut_part")
    assert_reference_rows(run_dir, ref_rows)
    assert (run_dir / SET_ASIDE_DIR / "metrics" / victim.name).exists()
    resumed_from = int(read_run_json(run_dir)["segments"][-1]["start_step"])
    assert resumed_from <= lost_steps[0]  # from a checkpoint before the lost rows

    # 3. Parts newer than the newest checkpoint (killed after a part, before the next checkpoint).
    run_dir = crash_copy(ref_dir, tmp_path / "newer_part")
    for step, path in list_checkpoints(run_dir):
        if step > 30:
            path.unlink()
    resume("newer_part")
    assert_reference_rows(run_dir, ref_rows)
    assert read_run_json(run_dir)["segments"][-1]["start_step"] == 30

    # 5. A complete run whose part was damaged since: the rerun reopens it and recomputes the rows.
    run_dir = tmp_path / "damaged_done" / "single" / RUN
    shutil.copytree(ref_dir, run_dir)
    victim = list_parts(run_dir / "metrics")[-1]
    os.truncate(victim, 10)
    resume("damaged_done")
    assert_reference_rows(run_dir, ref_rows)
    assert (run_dir / DONE_MARKER).exists() and (run_dir / SET_ASIDE_DIR / "metrics" / victim.name).exists()

    # 4. A stale lock file of a dead process: taken over, nothing blocked.
    run_dir = crash_copy(ref_dir, tmp_path / "stale_lock")
    (run_dir / "checkpoints" / "step_000060.pt").unlink()
    (run_dir / LOCK_FILE).write_text(json.dumps({"pid": 2**22 + 17, "host": "gone", "since": 0}))
    assert lock_holder(run_dir) is None
    resume("stale_lock")
    assert_reference_rows(run_dir, ref_rows)


# ------------------------------------------------------------------ two processes, one run


@pytest.mark.slow
def test_two_processes_on_one_run_exactly_one_trains(
    tmp_path: Path, reference: tuple[Path, pd.DataFrame]
) -> None:
    release = tmp_path / "release"
    # Each pauses at its 5th step (if it gets that far) until released, so both are alive at once.
    procs = [start(tmp_path, fault={"kind": "pause", "k": 5, "until": str(release)}) for _ in range(2)]
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and all(p.poll() is None for p in procs):
        time.sleep(0.1)
    refused = [p for p in procs if p.poll() is not None]
    assert len(refused) == 1, "neither process was refused"
    out, err = refused[0].communicate()
    release.write_text("go")
    winner = next(p for p in procs if p is not refused[0])
    _, w_err = winner.communicate(timeout=240)
    assert winner.returncode == 0, w_err[-3000:]
    assert refused[0].returncode == 3, err[-3000:]
    said = out + err  # Hydra's console log handler writes to stdout
    assert f"PID {winner.pid} on host" in said and "is being run by another process" in said
    run_dir = tmp_path / "single" / RUN
    assert_reference_rows(run_dir, reference[1])
    assert len(read_run_json(run_dir)["segments"]) == 1  # the refused process wrote nothing


def test_lock_refuses_a_second_holder_and_names_it(tmp_path: Path) -> None:
    with run_lock(tmp_path):
        assert lock_holder(tmp_path) is not None and f"PID {os.getpid()}" in str(lock_holder(tmp_path))
        with pytest.raises(RunLockedError, match=f"PID {os.getpid()} on host"), run_lock(tmp_path):
            pass  # pragma: no cover - never entered
    assert lock_holder(tmp_path) is None
    with run_lock(tmp_path):  # released: taken again
        pass


# ------------------------------------------------------------------ checkpoints validated


def test_invalid_checkpoints_are_set_aside_and_the_one_before_is_used(tmp_path: Path) -> None:
    def payload(step: int) -> dict[str, object]:
        import torch

        return {
            "model": {},
            "optimizer": {},
            "sampler": {},
            "rng_cpu": torch.get_rng_state(),
            "step": step,
            "elapsed_s": 1.0,
        }

    for step in (10, 20, 30):
        save_checkpoint(tmp_path, step, payload(step))
    ckpts = dict(list_checkpoints(tmp_path))
    ckpts[30].write_bytes(ckpts[30].read_bytes()[:100])  # truncated zip
    ckpts[20].write_bytes(b"")  # renamed, never written
    with pytest.warns(RuntimeWarning, match="step_000030.pt is invalid"):
        found = latest_valid_checkpoint(tmp_path)
    assert found is not None and found[0] == 10 and found[2]["step"] == 10
    assert [s for s, _ in list_checkpoints(tmp_path)] == [10]
    assert sorted(p.name for p in (tmp_path / SET_ASIDE_DIR / "checkpoints").iterdir()) == [
        "step_000020.pt",
        "step_000030.pt",
    ]
    with pytest.raises(InvalidCheckpointError, match="holds step 10, not 40"):
        load_valid_checkpoint(ckpts[10], 40)


# ------------------------------------------------------------------ the tracker's last rows


TRACKER_SCRIPT = """
import sys, torch
from torch import nn
from ndt import HighFrequencyTracker
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
tracker = HighFrequencyTracker(model, sampling_frequency=1, probe=torch.randn(16, 4),
                               writer=sys.argv[1], flush_every=50, background=sys.argv[2] == "bg")
for step in range(7):
    tracker.log(step, 1.0)
{ending}
"""


@pytest.mark.slow
@pytest.mark.parametrize("path", ["bg", "inline"])
@pytest.mark.parametrize(
    "ending", ["pass  # alive at interpreter exit", "del tracker; import gc; gc.collect()"]
)
def test_tracker_rows_reach_disk_without_close(tmp_path: Path, path: str, ending: str) -> None:
    # 7 measurements, flush_every 50: nothing is written before the end, and close() is never called.
    script = TRACKER_SCRIPT.replace("{ending}", ending)
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "m"), path],
        cwd=REPO,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = read_metrics(tmp_path / "m")
    assert sorted(rows.step.unique()) == list(range(7)) and len(rows) == 7 * 2


def test_background_tracker_is_collected_and_flushed_in_process(tmp_path: Path) -> None:
    import gc
    import weakref

    import torch
    from torch import nn

    from ndt import HighFrequencyTracker

    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    tracker = HighFrequencyTracker(
        model, sampling_frequency=1, probe=torch.randn(16, 4), writer=tmp_path / "m", background=True
    )
    for step in range(5):
        tracker.log(step, 1.0)
    alive = weakref.ref(tracker)
    del tracker
    gc.collect()
    assert alive() is None, "the worker thread keeps the tracker alive"
    assert sorted(read_metrics(tmp_path / "m").step.unique()) == list(range(5))


# ------------------------------------------------------------------ bad input refused up front


BAD_VALUES = [
    ("trainer.max_steps=-5", "trainer.max_steps"),
    ("optim.lr=abc", "optim.lr"),
    ("optim.lr=0", "optim.lr"),
    ("tracker.sampling_frequency=0", "tracker.sampling_frequency"),
    ("trainer.batch_size=0", "trainer.batch_size"),
    ("tracker.probe_size=100000", "tracker.probe_size"),
    ("optim.name=lbfgs", "optim.name"),
    ("dataset.test_subset=0", "dataset.test_subset"),
    ("sweep_name=a/b", "sweep_name"),
]


@pytest.mark.parametrize(("override", "key"), BAD_VALUES)
def test_each_bad_value_is_refused_before_hydra_makes_a_directory(
    compose_cfg: Callable[..., DictConfig],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    override: str,
    key: str,
) -> None:
    from ndt.running.hydra_callbacks import StartupChecks
    from ndt.running.validation import ConfigError

    cfg = compose_cfg(*TINY, override, return_hydra_config=True)
    with pytest.raises(SystemExit) as stopped:
        StartupChecks().on_run_start(config=cfg)  # what Hydra calls before creating hydra.run.dir
    assert stopped.value.code == 2
    assert f"{key}=" in capsys.readouterr().err
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):  # the library path refuses too
        run_experiment(compose_cfg(*TINY, override))
    assert not (tmp_path / "results").exists()


@pytest.mark.slow
def test_ndt_run_exits_nonzero_for_a_bad_value_and_writes_nothing(tmp_path: Path) -> None:
    done = run(tmp_path / "results", "trainer.max_steps=-5", "optim.lr=abc")
    assert done.returncode == 2, done.stderr[-3000:]
    assert "trainer.max_steps=-5: must be an integer >= 1" in done.stderr
    assert "optim.lr='abc': must be a number > 0" in done.stderr  # every problem at once
    assert not (tmp_path / "results").exists()


@pytest.mark.slow
def test_a_bad_value_in_one_job_of_a_sweep_stops_it_before_any_job(tmp_path: Path) -> None:
    done = run(tmp_path / "results", "-m", "tracker.probe_size=100,400")
    assert done.returncode == 2, done.stderr[-3000:]
    assert "tracker.probe_size=400" in done.stderr and "no job was started" in done.stderr
    assert not (tmp_path / "results").exists()


SINFO = "debug*|node1|2|7900|(null)\ngpu|g1|64|128000|gpu:a100:4(S:0-1)\ngpu|g2|32|257000|gpu:2\n"


def test_sinfo_parse_and_request_checks_by_hand() -> None:
    nodes = parse_sinfo(SINFO + "garbage line\n")
    assert [(n.partition, n.cpus, n.mem_mb, n.gpus) for n in nodes] == [
        ("debug*", 2, 7900, 0),
        ("gpu", 64, 128000, 4),
        ("gpu", 32, 257000, 2),
    ]
    ok = {"cpus_per_task": 2, "tasks_per_node": 1, "mem_gb": 7, "gpus_per_node": 0}
    check_request(ok, SINFO)  # the default partition (debug) fits: 2 CPUs, 7 GB <= 7900 MB
    with pytest.raises(SlurmRequestError, match=r"4 CPUs.*at most 2 CPUs.*cpus_per_task=2"):
        check_request({**ok, "cpus_per_task": 4}, SINFO)
    with pytest.raises(SlurmRequestError, match="gpus_per_node=0"):
        check_request({**ok, "gpus_per_node": 1}, SINFO)
    gpu = {**ok, "partition": "gpu", "cpus_per_task": 64, "gpus_per_node": 4, "mem_gb": 100}
    check_request(gpu, SINFO)  # g1
    with pytest.raises(SlurmRequestError, match="no single node has all of them"):
        check_request({**gpu, "mem_gb": 200}, SINFO)  # g1 has the CPUs, g2 the memory
    with pytest.raises(SlurmRequestError, match="partition nope not found; sinfo lists debug, gpu"):
        check_request({**ok, "partition": "nope"}, SINFO)


@pytest.mark.slow
def test_slurm_launcher_refuses_a_request_no_node_can_satisfy(tmp_path: Path) -> None:
    stub = tmp_path / "bin"
    stub.mkdir()
    (stub / "sinfo").write_text(f"#!/bin/sh\nprintf '{SINFO}'\n")
    (stub / "sinfo").chmod(0o755)
    env = {**subprocess_env(), "PATH": f"{stub}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "ndt.run",
            "-m",
            "hydra/launcher=slurm",
            *TINY,
            f"paths.results_dir={tmp_path / 'r'}",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2, done.stderr[-3000:]
    assert (
        "no node of SLURM partition debug" in done.stderr and "hydra.launcher.cpus_per_task=2" in done.stderr
    )
    assert not (tmp_path / "r").exists()


def test_durability_bench_runs_and_reports(tmp_path: Path) -> None:
    from ndt.bench.durability import bench_durability, report_durability

    rows = bench_durability(repeats=1, where=tmp_path)
    assert [r.kind for r in rows] == ["part", "checkpoint"] and all(r.bytes > 0 for r in rows)
    assert "per study-protocol run (48 parts and checkpoints)" in report_durability(rows)
    assert list(tmp_path.iterdir()) == []  # its files are removed
