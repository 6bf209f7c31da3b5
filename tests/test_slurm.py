"""SLURM: the sbatch settings of the slurm preset, and sweeps on a real cluster.

The first tests build the sbatch script through hydra-submitit-launcher without a cluster, check the
config rule for several tasks per job, and a task's rank from SLURM's variables, so they run
everywhere. The others (a smoke sweep equal to a local one, ``scontrol requeue``, a hard kill, the
time-out requeue bound, DDP over two tasks) need a cluster answering ``sinfo`` (``scripts/local_slurm.sh
install`` then ``start`` stands up a one-node one, as CI does) and are skipped without one. They run
on the test cluster's partition ($NDT_TEST_SLURM_PARTITION, default ``debug``) without GPU, one CPU
per job, and every wait in them is bounded. About 2 min on 2 cores.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from conftest import REPO, ndt_run_cmd, run_ndt, subprocess_env
from omegaconf import DictConfig

from ndt.running.checkpoint import latest_checkpoint
from ndt.running.status import sweep_status
from ndt.storage.layout import DONE_MARKER, LOG_FILE, read_run_json
from ndt.storage.parquet import read_metrics

PARTITION = os.environ.get("NDT_TEST_SLURM_PARTITION", "debug")


# ---------------------------------------------------------------------------------------------------
# The sbatch script the preset generates (no cluster needed)


class _Submitted(Exception):
    """Raised in place of calling sbatch: the script has been captured."""


def _task(cfg: DictConfig) -> None:
    """A task function the launcher can pickle (never run here)."""


def sbatch_for(
    cfg: DictConfig, n_jobs: int, monkeypatch: pytest.MonkeyPatch
) -> tuple[dict[str, str], str, int]:
    """What hydra-submitit-launcher would hand to sbatch for `n_jobs` runs of `cfg`.

    Runs the real launcher (`SlurmLauncher.launch`, as Hydra instantiates it from ``hydra.launcher``)
    and submitit's `SlurmExecutor` up to the sbatch call, which is replaced by a capture.

    Returns:
        (flags, script, max_num_timeout): the ``#SBATCH --key=value`` lines as {key: value} (``""``
        for a bare ``--flag``), the whole script, and the executor's bound on time-out requeues.
    """
    from hydra.utils import instantiate
    from submitit.slurm.slurm import SlurmExecutor

    captured: dict[str, Any] = {}

    def capture(self: SlurmExecutor, command: str) -> None:
        captured["script"] = self._make_submission_file_text(command, "test")
        captured["max_num_timeout"] = self.max_num_timeout
        raise _Submitted

    monkeypatch.setattr(SlurmExecutor, "affinity", classmethod(lambda cls: 2))  # as if srun were on PATH
    monkeypatch.setattr(SlurmExecutor, "_submit_command", capture)
    launcher = instantiate(cfg.hydra.launcher)
    launcher.setup(hydra_context=None, task_function=_task, config=cfg)
    with pytest.raises(_Submitted):
        launcher.launch([[f"seed={i}"] for i in range(n_jobs)], initial_job_idx=0)
    script: str = captured["script"]
    flags = dict(
        (m.group(1), m.group(2) or "") for m in re.finditer(r"^#SBATCH --([\w-]+)(?:=(.*))?$", script, re.M)
    )
    return flags, script, int(captured["max_num_timeout"])


def test_preset_defaults_are_gpu_jobs_with_bounded_requeue(
    compose_cfg: Callable[..., DictConfig], monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = compose_cfg(
        "hydra/launcher=slurm", "slurm.partition=gpu", "slurm.account=lab", return_hydra_config=True
    )
    launcher = cfg.hydra.launcher
    flags, script, max_num_timeout = sbatch_for(cfg, 100, monkeypatch)
    assert launcher.gpus_per_node >= 1 and launcher.max_num_timeout > 0  # real clusters: GPU jobs, requeued
    assert flags["gpus-per-node"] == str(launcher.gpus_per_node)
    assert flags["time"] == str(launcher.timeout_min)
    assert flags["cpus-per-task"] == str(launcher.cpus_per_task)
    assert flags["mem"] == f"{launcher.mem_gb}GB"
    assert flags["array"] == f"0-99%{launcher.array_parallelism}"  # one array, at most N running at once
    assert (flags["partition"], flags["account"]) == ("gpu", "lab")  # from the top-level slurm node
    assert "qos" not in flags  # null: no line
    assert flags["requeue"] == ""  # preemption requeues the job instead of ending it
    assert flags["signal"] == f"USR2@{launcher.signal_delay_s}"  # submitit's time-out requeue signal
    assert flags["job-name"] == "ndt_single"
    assert max_num_timeout == launcher.max_num_timeout  # reaches submitit's executor
    setup_at, srun_at = script.index("export OMP_NUM_THREADS"), script.index("\nsrun ")
    assert setup_at < srun_at  # torch's threads held to the job's CPUs


def test_command_line_settings_reach_sbatch(
    compose_cfg: Callable[..., DictConfig], monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = compose_cfg(
        "hydra/launcher=slurm",
        "slurm.partition=gpu",
        "hydra.launcher.partition=debug",  # wins over slurm.partition
        "hydra.launcher.gpus_per_node=0",
        "hydra.launcher.timeout_min=7",
        "hydra.launcher.array_parallelism=2",
        "hydra.launcher.max_num_timeout=1",
        return_hydra_config=True,
    )
    flags, _, max_num_timeout = sbatch_for(cfg, 3, monkeypatch)
    assert flags["partition"] == "debug"
    assert (flags["gpus-per-node"], flags["time"], flags["array"]) == ("0", "7", "0-2%2")
    assert max_num_timeout == 1


def test_several_tasks_per_job_need_ddp(compose_cfg: Callable[..., DictConfig]) -> None:
    from ndt.running.validation import check_config

    base = ("hydra/launcher=slurm", "hydra.launcher.tasks_per_node=2")
    problems = check_config(compose_cfg(*base, return_hydra_config=True))
    assert any(
        p.startswith("hydra.launcher.tasks_per_node=2: SLURM starts 2 processes per job")
        and "set trainer.strategy=ddp" in p
        for p in problems
    ), problems
    assert check_config(compose_cfg(*base, "trainer.strategy=ddp", return_hydra_config=True)) == []
    assert check_config(compose_cfg("hydra/launcher=slurm", return_hydra_config=True)) == []


#: What srun sets in the second of two tasks of job 4242 on one node (of the job's two), as in a
#: plain ``srun`` (no SUBMITIT_EXECUTOR: not a submitit job).
SLURM_TASK_1_OF_2 = {"SLURM_JOB_ID": "4242", "SLURM_NTASKS": "2", "SLURM_PROCID": "1", "SLURM_LOCALID": "1",
                     "SLURM_NODEID": "0", "SLURM_JOB_NUM_NODES": "1", "SLURM_JOB_NODELIST": "node[7-8]"}  # fmt: skip
TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def test_a_slurm_task_knows_its_rank_before_the_run_lock(monkeypatch: pytest.MonkeyPatch) -> None:
    # Without RANK every task took itself for rank 0: one held the lock, the other was refused, and
    # rank 0 waited in init_process_group for it (a 2-task ddp job that never ended).
    from ndt.running import distributed

    clean = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_") and k not in TORCHRUN_VARS}
    monkeypatch.setattr(os, "environ", {**clean, **SLURM_TASK_1_OF_2})
    distributed.adopt_launcher_ranks("single")  # one process per run: nothing to set
    assert "RANK" not in os.environ and distributed.is_main()
    distributed.adopt_launcher_ranks("ddp")
    assert {k: os.environ[k] for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")} == {
        "RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "node7"
    }  # fmt: skip
    assert distributed.world() == (1, 2) and not distributed.is_main()
    distributed.adopt_launcher_ranks("ddp")  # again (init_strategy calls it too): no error, same values
    assert os.environ["RANK"] == "1"
    port = os.environ["MASTER_PORT"]
    monkeypatch.setattr(
        os, "environ", {**clean, **SLURM_TASK_1_OF_2, "SLURM_PROCID": "0", "SLURM_LOCALID": "0"}
    )
    distributed.adopt_launcher_ranks("ddp")  # task 0 of the same job: rank 0, the same rendezvous
    assert (os.environ["RANK"], os.environ["MASTER_PORT"], os.environ["MASTER_ADDR"]) == ("0", port, "node7")
    assert 20_000 <= int(port) <= 60_000


# ---------------------------------------------------------------------------------------------------
# On a real cluster


@pytest.fixture(scope="module")
def slurm_cluster() -> None:
    """Skip unless sbatch is on PATH and the cluster answers."""
    if shutil.which("sbatch") is None:
        pytest.skip("no sbatch on PATH: scripts/local_slurm.sh install && scripts/local_slurm.sh start")
    try:
        sinfo = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as e:
        pytest.skip(f"the SLURM cluster does not answer sinfo ({e}): scripts/local_slurm.sh start")
    if sinfo.returncode != 0:
        why = (sinfo.stderr.strip().splitlines() or ["no output"])[-1]
        pytest.skip(f"the SLURM cluster does not answer sinfo ({why}): scripts/local_slurm.sh start")


@pytest.fixture
def job_name() -> Iterator[str]:
    """A job name of this test's own; whatever still runs under it is cancelled afterwards."""
    name = f"ndt_test_{uuid.uuid4().hex[:8]}"
    yield name
    subprocess.run(["scancel", f"--name={name}"], capture_output=True, timeout=30)


def on_cluster(job_name: str, timeout_min: int = 10) -> tuple[str, ...]:
    """Overrides for the test cluster: no GPU, one CPU, little memory, a short time limit."""
    return (
        "hydra/launcher=slurm",
        f"hydra.launcher.partition={PARTITION}",
        "hydra.launcher.gpus_per_node=0",
        "hydra.launcher.cpus_per_task=1",
        "hydra.launcher.mem_gb=1",
        f"hydra.launcher.timeout_min={timeout_min}",
        f"hydra.launcher.name={job_name}",
        "trainer.progress=log",
    )


def training(sweep_name: str, max_steps: int = 1_000_000) -> tuple[str, ...]:
    """Overrides for one mlp_narrow run that checkpoints and logs every 500 steps (the default never ends)."""
    return (
        "arch=mlp_narrow",
        f"trainer.max_steps={max_steps}",
        "trainer.checkpoint.every=500",
        "trainer.log_every=500",
        f"sweep_name={sweep_name}",
    )


def run_module(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """``python -m ARGS`` from the repo root; output captured."""
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout
    )


def wait_for(
    what: str, condition: Callable[[], bool], timeout: float, proc: subprocess.Popen[Any] | None = None
) -> None:
    """Poll `condition` every 0.1 s until it holds; fail after `timeout` s or if `proc` ended first."""
    deadline = time.monotonic() + timeout
    while not condition():
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the launcher exited ({proc.returncode}) while waiting for {what}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} after {timeout:.0f} s")
        time.sleep(0.1)


@contextlib.contextmanager
def launched(args: tuple[str, ...], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``python -m ndt.run ARGS`` in the background, output to `log`; killed if still running at exit."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            ndt_run_cmd(*args), cwd=REPO, env=subprocess_env(), stdout=out, stderr=subprocess.STDOUT
        )
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)


def wait_releasing_holds(proc: subprocess.Popen[Any], job: str, timeout: float, log: Path) -> int:
    """Wait for the launcher to exit; meanwhile start the job at once whenever SLURM holds it.

    SLURM holds a requeued job about 2 min (reason BeginTime) before it may start again; on a
    cluster of one idle node that is only waiting, so the test releases it.
    """
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        if time.monotonic() > deadline:
            pytest.fail(f"the launcher still runs after {timeout:.0f} s: {log.read_text()[-2000:]}")
        release_if_held(job)
        time.sleep(0.5)
    return proc.returncode


def job_at_first_checkpoint(run_dir: Path, proc: subprocess.Popen[Any]) -> str:
    """Wait (bounded) for the run's first checkpoint; the SLURM job id its run.json then records."""
    wait_for("first checkpoint", lambda: latest_checkpoint(run_dir) is not None, 180, proc)
    return str(read_run_json(run_dir)["slurm"]["slurm_job_id"])


def release_if_held(job: str) -> None:
    """Start `job` now if SLURM holds it after a requeue (pending, reason BeginTime)."""
    out = subprocess.run(
        ["squeue", "-h", "-j", job, "-o", "%T %r"], capture_output=True, text=True, timeout=30
    )
    if out.stdout.split() == ["PENDING", "BeginTime"]:
        subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], timeout=30)


def comparable(df: pd.DataFrame) -> pd.DataFrame:
    """Metric rows without the only column that depends on the clock."""
    return df.drop(columns=["wall_time"]).sort_values(["step", "layer"]).reset_index(drop=True)


SMOKE_RUNS = ["cnn_shallow__digits__s0", "mlp_narrow__digits__s0", "transformer_shallow__digits__s0"]


@pytest.mark.slow
def test_smoke_sweep_on_slurm_equals_local(tmp_path: Path, slurm_cluster: None, job_name: str) -> None:
    # Jobs run one torch thread each (cpus_per_task=1); so does the local run: same floating-point sums.
    local_sweep = tmp_path / "local" / "smoke"
    local = run_ndt(
        "+sweep=smoke", f"paths.results_dir={tmp_path / 'local'}", "trainer.num_threads=1", timeout=300
    )
    assert local.returncode == 0, local.stderr[-3000:]
    slurm = run_ndt(
        "+sweep=smoke", *on_cluster(job_name), f"paths.results_dir={tmp_path / 'slurm'}", timeout=300
    )
    assert slurm.returncode == 0, slurm.stdout[-2000:] + slurm.stderr[-3000:]

    sweep = tmp_path / "slurm" / "smoke"
    status = sweep_status(sweep)
    assert status.expected is not None and sorted(status.expected) == SMOKE_RUNS
    assert status.counts() == {"done": 3, "skipped": 0, "running": 0, "failed": 0, "missing": 0}
    for name in SMOKE_RUNS:
        a, b = read_run_json(sweep / name), read_run_json(local_sweep / name)
        assert a["slurm"]["slurm_array_job_id"]  # it really ran as an array task
        assert a["final_accuracy"] == b["final_accuracy"]
        pd.testing.assert_frame_equal(
            comparable(read_metrics(sweep / name / "metrics")),
            comparable(read_metrics(local_sweep / name / "metrics")),
            check_exact=True,
        )

    # The submission file submitit really gave sbatch carries the command line's settings.
    (submission,) = sweep.glob(".submitit/*/*_submission.sh")
    text = submission.read_text()
    for line in ("--array=0-2%3", "--gpus-per-node=0", "--time=10", f"--partition={PARTITION}", "--requeue"):
        assert f"#SBATCH {line}\n" in text, line

    for side in (local_sweep, sweep):
        tables = run_module("ndt.tables", str(side), "--no-figures", "--workers", "1", timeout=300)
        assert tables.returncode == 0, tables.stderr[-3000:]
    # Every table (CSV, Markdown, LaTeX) byte for byte.
    local_tables, slurm_tables = local_sweep / "tables", sweep / "tables"
    names = sorted(p.name for p in local_tables.iterdir())
    assert "per_run.csv" in names and names == sorted(p.name for p in slurm_tables.iterdir())
    for name in names:
        assert (slurm_tables / name).read_bytes() == (local_tables / name).read_bytes(), name


@pytest.mark.slow
def test_requeued_job_resumes_from_its_checkpoint(tmp_path: Path, slurm_cluster: None, job_name: str) -> None:
    """``scontrol requeue`` mid-run: the job starts again, resumes, and its Parquet equals a straight run."""
    # 20000 steps: long enough to be mid-run after SLURM's 5 s SIGTERM-to-SIGKILL wait.
    common = training("requeue", max_steps=20000)
    # The uninterrupted reference runs alongside (the job takes one of the two cores).
    with (
        launched(
            (*common, "trainer.num_threads=1", f"paths.results_dir={tmp_path / 'straight'}"),
            tmp_path / "straight.log",
        ) as straight,
        launched(
            ("-m", *common, *on_cluster(job_name), f"paths.results_dir={tmp_path / 'slurm'}"),
            tmp_path / "launcher.log",
        ) as proc,
    ):
        run_dir = tmp_path / "slurm" / "requeue" / "mlp_narrow__digits__s0"
        job = job_at_first_checkpoint(run_dir, proc)
        subprocess.run(["scontrol", "requeue", job], check=True, timeout=30)
        log = tmp_path / "launcher.log"
        assert wait_releasing_holds(proc, job, 240, log) == 0, log.read_text()[-3000:]
        assert straight.wait(timeout=240) == 0, (tmp_path / "straight.log").read_text()[-3000:]

    record = read_run_json(run_dir)
    assert record["status"] == "complete" and (run_dir / DONE_MARKER).is_file()
    assert record["slurm"]["slurm_restart_count"] == "1"  # the second life of the same job
    log = (run_dir / LOG_FILE).read_text()
    assert re.search(r"resuming mlp_narrow__digits__s0 from step_\d+\.pt", log), log[-2000:]

    a = read_metrics(run_dir / "metrics")
    assert a.groupby(["step", "layer"]).size().eq(1).all()  # none doubled
    assert sorted(a.step.unique()) == list(range(0, 20000, 5))  # none lost
    straight_dir = tmp_path / "straight" / "requeue" / "mlp_narrow__digits__s0"
    pd.testing.assert_frame_equal(
        comparable(a), comparable(read_metrics(straight_dir / "metrics")), check_exact=True
    )
    assert record["final_accuracy"] == read_run_json(straight_dir)["final_accuracy"]


def python_pid_of(job: str) -> int | None:
    """PID of the job's training process (step 0), from ``scontrol listpids`` on this node."""
    out = subprocess.run(["scontrol", "listpids", job], capture_output=True, text=True, timeout=30).stdout
    for line in out.splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 3 and fields[2] == "0":  # PID JOBID STEPID ...: the srun step, not the batch shell
            with contextlib.suppress(OSError):
                if Path(f"/proc/{fields[0]}/comm").read_text().startswith("python"):
                    return int(fields[0])
    return None


@pytest.mark.slow
def test_hard_killed_job_is_reported_failed_and_does_not_hang(
    tmp_path: Path, slurm_cluster: None, job_name: str
) -> None:
    """SIGKILL to the training process (as the OOM killer does): the launcher exits, ndt.status says failed."""
    args = ("-m", *training("killed"), *on_cluster(job_name), f"paths.results_dir={tmp_path}")
    sweep = tmp_path / "killed"
    with launched(args, tmp_path / "launcher.log") as proc:
        run_dir = sweep / "mlp_narrow__digits__s0"
        job = job_at_first_checkpoint(run_dir, proc)
        assert sweep_status(sweep).counts()["running"] == 1  # a sweep in progress
        pid: list[int | None] = [None]

        def found() -> bool:
            pid[0] = python_pid_of(job)
            return pid[0] is not None

        wait_for("the job's python process", found, 30)
        assert pid[0] is not None
        os.kill(pid[0], signal.SIGKILL)
        killed_at = time.monotonic()
        returncode = proc.wait(timeout=150)  # sacct reports FAILED; the launcher raises and exits
    log = (tmp_path / "launcher.log").read_text()
    assert returncode != 0, log[-3000:]
    assert "state: FAILED" in log, log[-3000:]

    # The heartbeat is at least as old as the kill; --stale-after 0.05 min (3 s) calls it dead.
    wait_for("3 s since the kill", lambda: time.monotonic() - killed_at > 3.5, 10)

    report = run_module("ndt.status", str(sweep), "--stale-after", "0.05", "--json", timeout=60)
    assert report.returncode == 0, report.stderr
    data = json.loads(report.stdout)
    assert data["counts"] == {"done": 0, "skipped": 0, "running": 0, "failed": 1, "missing": 0}
    (run,) = data["runs"]
    assert (
        run["stale"]
        and run["reason"].startswith("no heartbeat for ")
        and run["reason"].endswith("the process died")
    )
    assert run["slurm"]["slurm_job_id"] == job


@pytest.mark.slow
def test_time_out_requeues_at_most_max_num_timeout_times(
    tmp_path: Path, slurm_cluster: None, job_name: str
) -> None:
    """The time-limit warning (SIGUSR2) requeues the job once and resumes it; the second fails the run.

    The test sends the signal SLURM sends `signal_delay_s` before the time limit (as submitit's own
    tests do), rather than waiting for a limit: SLURM times such signals only to within a minute.
    With ``timeout_min`` <= 10 submitit counts every SIGUSR2 as a time-out, not a preemption.
    """
    args = (
        "-m",
        *training("timeout"),
        *on_cluster(job_name),
        "hydra.launcher.max_num_timeout=1",
        f"paths.results_dir={tmp_path}",
    )
    run_dir = tmp_path / "timeout" / "mlp_narrow__digits__s0"
    log = tmp_path / "launcher.log"
    time_out = ["scancel", "--signal=USR2"]
    with launched(args, log) as proc:
        job = job_at_first_checkpoint(run_dir, proc)
        subprocess.run([*time_out, job], check=True, timeout=30)  # 1st time-out: requeued

        def resumed() -> bool:
            release_if_held(job)
            return "resuming mlp_narrow__digits__s0" in (run_dir / LOG_FILE).read_text()

        wait_for("the requeued job to resume", resumed, 180, proc)
        subprocess.run([*time_out, job], check=True, timeout=30)  # 2nd: over max_num_timeout
        assert wait_releasing_holds(proc, job, 120, log) == 0, log.read_text()[-3000:]

    record = read_run_json(run_dir)
    assert record["slurm"]["slurm_restart_count"] == "1"  # requeued once
    assert record["status"] == "failed" and "timed-out too many times" in record["error"]
    (run,) = sweep_status(tmp_path / "timeout").runs
    assert run.state == "failed" and run.reason is not None and "timed-out too many times" in run.reason


@pytest.mark.slow
def test_a_request_no_node_can_satisfy_is_refused_at_once(
    tmp_path: Path, slurm_cluster: None, job_name: str
) -> None:
    # The test node has every CPU of the machine: one more cannot be granted, and SLURM would only wait.
    too_many = (os.cpu_count() or 1) + 1
    overrides = [a for a in on_cluster(job_name) if not a.startswith("hydra.launcher.cpus_per_task=")]
    done = run_ndt(
        "-m",
        *overrides,
        f"hydra.launcher.cpus_per_task={too_many}",
        *training("refused", max_steps=10),
        f"paths.results_dir={tmp_path}",
        timeout=180,
    )
    assert done.returncode == 2, done.stderr[-3000:]
    assert f"no node of SLURM partition {PARTITION} can run a job asking for {too_many} CPUs" in done.stderr
    assert not (tmp_path / "refused").exists()  # nothing submitted, nothing written


@pytest.mark.slow
def test_ddp_over_two_slurm_tasks_trains_like_one_process(
    tmp_path: Path, slurm_cluster: None, job_name: str, compose_cfg: Callable[..., DictConfig]
) -> None:
    from ndt.running.train import run_dir_for, run_experiment

    tiny = ("trainer.max_steps=20", "trainer.checkpoint.every=10", "trainer.progress=log")
    two_tasks = tuple(o for o in on_cluster(job_name) if not o.startswith("hydra.launcher.mem_gb"))
    done = run_ndt(
        "-m", *tiny, *two_tasks, "hydra.launcher.tasks_per_node=2", "hydra.launcher.mem_gb=2",
        "trainer.strategy=ddp", f"paths.results_dir={tmp_path / 'slurm'}", timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    cfg = compose_cfg(*tiny, "trainer.num_threads=1")  # the same experiment in one process, one thread
    assert run_experiment(cfg)["status"] == "complete"

    run_dir = tmp_path / "slurm" / "single" / run_dir_for(cfg).name
    (task_logs,) = {p.parent for p in (tmp_path / "slurm" / "single").glob(".submitit/*/*_log.out")}
    assert sorted(p.name.split("_")[1] for p in task_logs.glob("*_log.out")) == ["0", "1"]  # two tasks ran
    assert "being run by another process" not in "".join(p.read_text() for p in task_logs.glob("*_log.*"))
    record = read_run_json(run_dir)
    assert record["status"] == "complete" and record["slurm"]["slurm_job_id"]
    assert (run_dir / DONE_MARKER).exists()
    got, want = read_metrics(run_dir / "metrics"), read_metrics(run_dir_for(cfg) / "metrics")
    assert (got.groupby(["step", "layer"]).size() == 1).all()  # rank 0 alone wrote the rows
    # The global batch split over the 2 tasks, gradients averaged: one process's numbers up to rounding.
    pd.testing.assert_frame_equal(comparable(got), comparable(want), check_exact=False, rtol=1e-5, atol=1e-7)
