"""The GPU path's logic, on the CPU: the host-buffer pool, staging, the worker path, non-blocking
checkpoints and their resume, no host-sync calls on the hot path, trainer.tf32/deterministic, and the
GPU scripts' set-up (scripts/gpu_env.sh's offline install, the refusal without a GPU).

The CUDA side of the same things is in tests/test_cuda.py (skipped without a GPU).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import FAULT_RUN as RUN
from conftest import FAULT_TINY as TINY
from omegaconf import DictConfig, OmegaConf
from torch import nn

import ndt.running.train as train
from ndt import HighFrequencyTracker
from ndt.bench import gpu as bench_gpu
from ndt.measure.transfer import PINNED_BUFFERS, BufferPool, device_runs, stage
from ndt.running.checkpoint import list_checkpoints
from ndt.running.validation import check_config
from ndt.storage.layout import LOCK_FILE, read_run_json
from ndt.storage.parquet import read_metrics
from ndt.storage.schema import METRIC_COLUMNS

# ------------------------------------------------------------------ the pool


def test_pool_reuses_one_buffer_for_same_sized_measurements() -> None:
    pool = BufferPool(max_buffers=4, pin=False)
    first = pool.acquire(100)
    pool.release(first)
    for _ in range(10):
        buf = pool.acquire(100)
        assert buf is first and buf.numel() >= 100 and buf.dtype == torch.float64
        pool.release(buf)
    assert pool.allocations == 1 and pool.size == 1 and pool.in_use == 0
    with pytest.raises(ValueError, match="did not hand out"):
        pool.release(first)  # released twice


def test_pool_never_holds_more_than_its_cap() -> None:
    pool = BufferPool(max_buffers=3, pin=False)
    held = [pool.acquire(10) for _ in range(3)]
    assert pool.size == 3 and len({id(b) for b in held}) == 3
    with pytest.raises(RuntimeError, match="none could be reclaimed"):
        pool.acquire(10, reclaim=lambda: 0)

    def reclaim() -> int:
        pool.release(held.pop())
        return 1

    again = pool.acquire(10, reclaim=reclaim)  # the reclaimed one, not a fourth
    assert pool.size == 3 and pool.allocations == 3 and any(again is b for b in [*held, again])
    # A larger measurement at the cap replaces a free buffer that is too small: still 3 buffers.
    pool.release(again)
    big = pool.acquire(10_000)
    assert big.numel() >= 10_000 and pool.size == 3 and pool.allocations == 4


def test_pool_waits_for_another_threads_release_and_stops_when_told() -> None:
    pool = BufferPool(max_buffers=1, pin=False)
    buf = pool.acquire(8)
    threading.Timer(0.3, pool.release, args=(buf,)).start()
    t0 = time.perf_counter()
    assert pool.acquire(8) is buf  # blocked until the release
    assert time.perf_counter() - t0 >= 0.25

    def dead() -> None:
        raise RuntimeError("worker is gone")

    with pytest.raises(RuntimeError, match="worker is gone"):
        pool.acquire(8, on_wait=dead)  # nobody will release: on_wait ends the wait


def test_stage_concatenates_pieces_in_order_into_a_pool_buffer() -> None:
    pieces = [torch.arange(3, dtype=torch.float64), torch.full((1,), 7.0, dtype=torch.float64)]
    pool = BufferPool(2, pin=False)
    staged = stage(pieces, pool)
    assert staged.buffer is not None and pool.in_use == 1
    np.testing.assert_array_equal(staged.land(), [0.0, 1.0, 2.0, 7.0])
    assert pool.in_use == 0  # landed: the buffer is back


def test_device_runs_group_consecutive_pieces_by_device() -> None:
    # "meta" stands for a second device: only the grouping is under test.
    a, b, c, d = torch.zeros(2), torch.zeros(3, device="meta"), torch.zeros(1, device="meta"), torch.zeros(1)
    runs = device_runs([a, b, c, d])
    assert [(dev.type, [p.numel() for p in ps]) for dev, ps in runs] == [
        ("cpu", [2]),
        ("meta", [3, 1]),
        ("cpu", [1]),
    ]


# ------------------------------------------------------------------ the worker path on the CPU


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))


def tracked_rows(background: bool, steps: int = 12) -> tuple[pd.DataFrame, HighFrequencyTracker]:
    model = make_model()
    probe = torch.randn(48, 20, generator=torch.Generator().manual_seed(3))
    with HighFrequencyTracker(model, sampling_frequency=1, probe=probe, background=background) as t:
        for step in range(steps):
            with torch.no_grad():
                model[0].weight.mul_(1.05)  # the spectrum moves from step to step
            t.log(step, 0.5 + step)  # a Python-float loss
        rows = t.get_results()
    return rows, t


def test_worker_path_rows_equal_the_inline_path_on_every_metric() -> None:
    inline, _ = tracked_rows(background=False)
    worker, t = tracked_rows(background=True)
    assert t.pool is not None and 1 <= t.pool.allocations <= PINNED_BUFFERS
    pd.testing.assert_frame_equal(
        worker.drop(columns=["wall_time", "run_id"]), inline.drop(columns=["wall_time", "run_id"])
    )
    assert worker.loss.tolist() == [0.5 + s for s in worker.step]  # Python floats, via fill kernels
    assert np.isfinite(worker[list(METRIC_COLUMNS)].to_numpy(dtype=float)).all()


class GatedTracker(HighFrequencyTracker):
    """A tracker whose worker stops in `_solve_pending` while `gate` is closed (and `hold` says so)."""

    gate: threading.Event
    hold: Callable[[GatedTracker], bool] = staticmethod(lambda t: True)  # type: ignore[assignment]

    def _solve_pending(self) -> None:
        w = self._worker
        if w is not None and threading.current_thread() is w.thread and type(self).hold(self):
            assert type(self).gate.wait(timeout=120), "the test never opened the gate"
        super()._solve_pending()


def test_a_stuck_worker_bounds_the_buffers_and_flush_without_wait_does_not_block() -> None:
    GatedTracker.gate = threading.Event()
    GatedTracker.hold = staticmethod(lambda t: True)  # type: ignore[assignment]
    model = make_model()
    probe = torch.randn(32, 20, generator=torch.Generator().manual_seed(3))
    t = GatedTracker(model, sampling_frequency=1, probe=probe, background=True, flush_every=2)
    logged = []

    def train_loop() -> None:
        for step in range(40):
            t.log(step, 1.0)
            logged.append(step)
            if step == 1:
                t.flush(wait=False)  # returns although the worker cannot do it yet

    thread = threading.Thread(target=train_loop)
    thread.start()
    time.sleep(1.5)
    # The worker holds 2 measurements in its first solve; the pool's buffers hold the rest: then
    # training waits (back-pressure) instead of pinning a buffer per queued measurement.
    assert thread.is_alive() and t.pool is not None
    assert t.pool.size <= PINNED_BUFFERS and len(logged) <= 2 + PINNED_BUFFERS + 1
    assert t.durable_step == 0  # the flush asked for at step 1 has not happened
    GatedTracker.gate.set()
    thread.join(timeout=60)
    assert not thread.is_alive() and logged == list(range(40))
    t.flush()
    assert t.durable_step == 40
    t.close()
    rows = read_rows(t)
    assert sorted(rows.step.unique()) == list(range(40)) and t.pool.size <= PINNED_BUFFERS


def read_rows(t: HighFrequencyTracker) -> pd.DataFrame:
    return t.writer.read()


def test_flush_without_wait_on_the_worker_writes_a_part_and_advances_durable_step(tmp_path: Path) -> None:
    model = make_model()
    probe = torch.randn(32, 20, generator=torch.Generator().manual_seed(3))
    with HighFrequencyTracker(
        model, sampling_frequency=2, probe=probe, writer=tmp_path / "m", background=True, flush_every=50
    ) as t:
        for step in range(7):
            t.log(step)
        t.flush(wait=False)
        deadline = time.monotonic() + 30
        while t.durable_step < 7 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert t.durable_step == 7  # every step logged before the flush: 0..6
        assert sorted(read_metrics(tmp_path / "m").step.unique()) == [0, 2, 4, 6]  # on disk, not buffered


# ------------------------------------------------------------------ checkpoints behind the worker


def test_resume_after_a_crash_while_the_worker_is_behind_the_checkpoints(
    compose_cfg: Callable[..., DictConfig], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Checkpoints do not wait for the worker; a crash then leaves checkpoints newer than the rows.

    The worker is held after its first flush (steps 0..8 on disk) while training goes on to take
    checkpoints 20 and 30 (keep_last=1). A copy of the run directory at that moment is what a SIGKILL
    would leave. Resumed, it must start from checkpoint 10 (kept although keep_last=1: the newest one
    whose rows are all on disk) and end with exactly the rows of an uninterrupted inline run.
    """
    keep = "trainer.checkpoint.keep_last=1"
    ref = train.run_experiment(compose_cfg(*TINY, keep, f"paths.results_dir={tmp_path / 'ref'}"))
    assert ref["status"] == "complete", ref.get("error")
    reference = read_metrics(tmp_path / "ref" / "single" / RUN / "metrics")

    gate = threading.Event()
    trackers: list[HighFrequencyTracker] = []

    class Worker(GatedTracker):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **{**kwargs, "background": True})
            trackers.append(self)

    Worker.gate = gate
    Worker.hold = staticmethod(lambda t: t.durable_step >= 10 and not gate.is_set())  # type: ignore[assignment]
    monkeypatch.setattr(train, "HighFrequencyTracker", Worker)
    crash = tmp_path / "crash"
    saved: list[list[int]] = []
    original = train.save_checkpoint

    def save_checkpoint(run_dir: Path, step: int, *args: Any, **kwargs: Any) -> Path:
        if step == 20:  # the worker's flush of checkpoint 10 is done before checkpoint 20 (timing fixed)
            deadline = time.monotonic() + 60
            while trackers[-1].durable_step < 10 and time.monotonic() < deadline:
                time.sleep(0.01)
        path = original(run_dir, step, *args, **kwargs)
        saved.append([s for s, _ in list_checkpoints(run_dir)])
        if (
            step == 30 and not gate.is_set()
        ):  # the moment of the "crash": the worker is held, rows stop at step 8
            shutil.copytree(run_dir, crash / "single" / RUN)
            (crash / "single" / RUN / LOCK_FILE).unlink(missing_ok=True)
            gate.set()
        return path

    monkeypatch.setattr(train, "save_checkpoint", save_checkpoint)
    full = train.run_experiment(compose_cfg(*TINY, keep, f"paths.results_dir={tmp_path / 'full'}"))
    assert full["status"] == "complete", full.get("error")
    assert saved[:3] == [[10], [10, 20], [10, 30]]  # 10 spared by keep_last=1 while rows lag
    assert [s for s, _ in list_checkpoints(tmp_path / "full" / "single" / RUN)] == [60]  # pruned at the end
    crashed = crash / "single" / RUN
    assert sorted(read_metrics(crashed / "metrics").step.unique()) == [0, 2, 4, 6, 8]

    def comparable(df: pd.DataFrame) -> pd.DataFrame:
        return df.drop(columns=["wall_time"]).reset_index(drop=True)

    pd.testing.assert_frame_equal(
        comparable(read_metrics(tmp_path / "full" / "single" / RUN / "metrics")), comparable(reference)
    )
    resumed = train.run_experiment(compose_cfg(*TINY, keep, f"paths.results_dir={crash}"))
    assert resumed["status"] == "complete", resumed.get("error")
    assert f"resuming {RUN} from step_000010.pt" in (crashed / "run.log").read_text()
    rows = read_metrics(crashed / "metrics")
    assert rows.groupby(["step", "layer"]).size().eq(1).all()
    pd.testing.assert_frame_equal(comparable(rows), comparable(reference))


# ------------------------------------------------------------------ no host syncs on the hot path

#: Tensor methods that make the host wait for a device (on CUDA) when called on a device tensor.
SYNC_METHODS = ("item", "tolist", "cpu", "__bool__", "__float__", "__int__", "__index__")


def test_no_sync_calls_from_ndt_on_hot_steps(
    compose_cfg: Callable[..., DictConfig], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Spy on the methods that synchronise, called from ndt's code on the main thread, per step.

    Hot steps (not a log step, not a checkpoint step; measured ones included) must make none; log
    steps make some (the CPU reads its loss with .item()), which shows that the spy sees ndt's calls.
    """
    main = threading.main_thread()
    current = {"step": -1}
    calls: list[tuple[int, str, str]] = []

    def spy(name: str) -> Any:
        original = getattr(torch.Tensor, name)

        def wrapper(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            caller = __import__("sys")._getframe(1).f_globals.get("__name__", "")
            if threading.current_thread() is main and caller.startswith("ndt"):
                calls.append((current["step"], name, caller))
            return original(self, *args, **kwargs)

        return wrapper

    step_fn = train.training_step

    def training_step(state: Any) -> torch.Tensor:
        current["step"] += 1
        return step_fn(state)

    for name in SYNC_METHODS:
        monkeypatch.setattr(torch.Tensor, name, spy(name))
    monkeypatch.setattr(train, "training_step", training_step)
    cfg = compose_cfg(*TINY[:-2], "tracker.sampling_frequency=5", "arch=cnn_shallow")
    record = train.run_experiment(cfg)
    monkeypatch.undo()
    assert record["status"] == "complete", record.get("error")
    # Every call after the last step is the run's end (close, accuracy): not the hot path.
    in_loop = [c for c in calls if 0 <= c[0] < 60]
    hot = [c for c in in_loop if (c[0] + 1) % 10 != 0]
    assert hot == [], f"host-sync calls on hot steps: {hot[:10]}"
    assert any(c[1] == "item" and c[2] == "ndt.running.train" for c in in_loop)


# ------------------------------------------------------------------ trainer.tf32 / trainer.deterministic


def test_numerics_are_applied_recorded_and_restored(
    compose_cfg: Callable[..., DictConfig], monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, Any] = {}
    build = train.build_training

    def build_training(cfg: DictConfig, device: torch.device) -> Any:
        seen.update(
            tf32=torch.backends.cuda.matmul.allow_tf32,
            cudnn_tf32=torch.backends.cudnn.allow_tf32,
            benchmark=torch.backends.cudnn.benchmark,
        )
        return build(cfg, device)

    monkeypatch.setattr(train, "build_training", build_training)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)  # a previous value to put back
    short = ("trainer.max_steps=10", "trainer.checkpoint.every=10", "trainer.log_every=10")

    record = train.run_experiment(compose_cfg(*short))  # the defaults: tf32 false, deterministic true
    n = record["numerics"]
    assert (n["tf32_matmul"], n["tf32_cudnn"], n["cudnn_benchmark"], n["cudnn_deterministic"]) == (
        False,
        False,
        False,
        True,
    )
    assert n["deterministic_algorithms"] is False  # the CPU: deterministic already, nothing to switch
    assert n["float32_matmul_precision"] == "highest"
    assert seen == {"tf32": False, "cudnn_tf32": False, "benchmark": False}  # set before the model
    assert read_run_json(train.run_dir_for(compose_cfg(*short)))["segments"][-1]["numerics"] == n
    assert torch.backends.cudnn.benchmark is True  # the previous value is back

    fast = train.run_experiment(
        compose_cfg(*short, "trainer.tf32=true", "trainer.deterministic=false", "sweep_name=fast")
    )["numerics"]
    assert (
        fast["tf32_matmul"],
        fast["tf32_cudnn"],
        fast["cudnn_benchmark"],
        fast["cudnn_deterministic"],
    ) == (
        True,
        True,
        True,
        False,
    )
    assert fast["float32_matmul_precision"] == "high"
    assert seen == {"tf32": True, "cudnn_tf32": True, "benchmark": True}
    assert torch.backends.cuda.matmul.allow_tf32 is False


def _put_alert() -> None:
    """One op that torch alerts about under deterministic algorithms, on the CPU too (put_)."""
    torch.zeros(5).put_(torch.tensor([0, 0]), torch.tensor([1.0, 2.0]))


def test_nondeterministic_ops_are_collected_and_shown_once_per_block() -> None:
    from ndt.running.numerics import nondeterministic_ops

    before = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    try:
        for _ in range(2):  # a second block sees the alert again (no once-per-process registry)
            with warnings.catch_warnings(record=True) as shown, nondeterministic_ops() as seen:
                torch.use_deterministic_algorithms(True, warn_only=True)
                for _ in range(3):
                    _put_alert()
                warnings.warn("an unrelated warning", UserWarning, stacklevel=1)
            assert seen == {"put_"}
            texts = [str(w.message) for w in shown]
            assert sum("put_ does not have a deterministic" in t for t in texts) == 1
            assert "an unrelated warning" in texts
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])


def test_run_json_lists_the_ops_torch_alerted_about(
    compose_cfg: Callable[..., DictConfig], monkeypatch: pytest.MonkeyPatch
) -> None:
    step_fn = train.training_step

    def training_step(state: Any) -> torch.Tensor:
        # torch checks determinism only where ndt turns it on (CUDA): turned on here for the one op
        torch.use_deterministic_algorithms(True, warn_only=True)
        try:
            _put_alert()
        finally:
            torch.use_deterministic_algorithms(False)
        return step_fn(state)

    short = ("trainer.max_steps=10", "trainer.checkpoint.every=10", "trainer.log_every=10")
    assert train.run_experiment(compose_cfg(*short, "sweep_name=quiet"))["nondeterministic_ops"] == []
    monkeypatch.setattr(train, "training_step", training_step)
    with pytest.warns(UserWarning, match="put_ does not have a deterministic"):
        record = train.run_experiment(compose_cfg(*short))
    assert record["status"] == "complete" and record["nondeterministic_ops"] == ["put_"]
    on_disk = read_run_json(train.run_dir_for(compose_cfg(*short)))
    assert on_disk["nondeterministic_ops"] == ["put_"]
    assert on_disk["segments"][-1]["nondeterministic_ops"] == ["put_"]
    assert "nondeterministic_ops" not in on_disk["numerics"]  # segments compare numerics on resume


def test_numerics_options_are_validated_and_not_in_the_signature(
    compose_cfg: Callable[..., DictConfig],
) -> None:
    cfg = OmegaConf.create(OmegaConf.to_container(compose_cfg(), resolve=True))
    cfg.trainer.tf32 = "yes"
    cfg.trainer.deterministic = None
    problems = check_config(cfg)
    assert any(p.startswith("trainer.tf32='yes'") for p in problems)
    assert any(p.startswith("trainer.deterministic=None") for p in problems)
    config: dict[str, Any] = OmegaConf.to_container(compose_cfg(), resolve=True)  # type: ignore[assignment]
    assert not any(
        k.startswith(("trainer.tf32", "trainer.deterministic")) for k in train.experiment_signature(config)
    )


# ------------------------------------------------------------------ bench-gpu's CPU-side parts


def test_bench_gpu_refuses_without_cuda(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as e:
        bench_gpu.main([])
    assert e.value.code == 2 and "needs a CUDA GPU" in capsys.readouterr().err


def test_sweep_projection_and_median_overhead_by_hand() -> None:
    # 57 runs, 6 at once: ceil(57 / 6) = 10 waves of 40 s.
    assert bench_gpu.project_sweep(40.0, 6) == 400.0
    assert bench_gpu.project_sweep(30.0, 57) == 30.0
    # Pairs (untracked, tracked): ratios - 1 = 0.10, 0.00, 0.05 -> median 0.05.
    assert bench_gpu.median_overhead([(1.0, 1.1), (2.0, 2.0), (4.0, 4.2)]) == pytest.approx(0.05)


def test_bench_gpu_overhead_section_runs_on_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    # A dry run of section 1 on the CPU (2 pairs of 10 steps of mlp_narrow, as composed from conf/),
    # so that a lent GPU's few minutes are not spent finding a bug in the benchmark itself.
    monkeypatch.setitem(bench_gpu.OVERHEAD_PLAN, "mlp_narrow", (10, 2))
    rows = bench_gpu.bench_overhead(torch.device("cpu"), names=("mlp_narrow",))
    assert [(r["model"], r["probe"], r["steps"], r["pairs"]) for r in rows] == [
        ("mlp_narrow", True, 10, 2),
        ("mlp_narrow", False, 10, 2),
    ]
    assert all(r["step_ms"] > 0 and np.isfinite(r["overhead"]) for r in rows)
    report = bench_gpu.report_overhead(rows)
    assert report.count("mlp_narrow") == 2 and "2 pairs of 10 steps" in report


def test_bench_gpu_gpt2_workload_is_tracked_at_its_sites_on_the_cpu(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # The GPT-2 workload with a 2-block, 64-wide GPT-2 in place of GPT-2 small: 10 steps, a measurement
    # every 5 (steps 0 and 5), one row per site and measurement: 2 blocks x (attn, mlp.c_fc, mlp.c_proj).
    pytest.importorskip("transformers")
    from ndt.models.gpt import gpt2_small

    monkeypatch.setattr(bench_gpu, "gpt2_model", lambda: gpt2_small(n_layer=2, n_embd=64, n_head=2))
    work = bench_gpu.gpt2_workload(torch.device("cpu"), batch=2, seq=16)
    assert bench_gpu.timed_run(work, 10, tracked=True, with_probe=False) > 0
    tracker = work.tracker(str(tmp_path / "metrics"), True)
    for step in range(10):
        tracker.log(step, work.step().detach())
    tracker.close()
    rows = read_metrics(tmp_path / "metrics")
    sites = [f"transformer.h.{i}.{s}" for i in range(2) for s in ("attn", "mlp.c_fc", "mlp.c_proj")]
    assert sorted(rows["layer"].unique()) == sorted(sites)
    assert sorted(rows["step"].unique()) == [0, 5]


@pytest.mark.slow
def test_bench_gpu_concurrency_batch_runs_through_the_joblib_launcher_on_the_cpu(tmp_path: Path) -> None:
    # Section 3's real sweep command, 3 runs at once, cut to 20 steps on the CPU: it must finish with
    # 3 complete runs (concurrent_batch raises otherwise) and a positive wall time.
    wall = bench_gpu.concurrent_batch(3, tmp_path, cores=2, device="cpu", overrides=["trainer.max_steps=20"])
    assert wall > 0
    assert len(list((tmp_path / "k3").glob("*/run.json"))) == 3


# ------------------------------------------------------------------ scripts/gpu_check.sh, gpu_env.sh

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="a GPU machine: the scripts would run")
@pytest.mark.parametrize("script", ["gpu_check.sh", "bench_gpu.sh"])
def test_gpu_scripts_refuse_without_a_gpu_before_installing(script: str, tmp_path: Path) -> None:
    env = {**os.environ, "VENV": str(tmp_path / "venv"), "OUT": str(tmp_path / "out")}
    done = subprocess.run(
        ["bash", str(SCRIPTS / script)], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2, done.stderr
    assert "no NVIDIA GPU visible" in done.stderr
    assert not (tmp_path / "venv").exists() and not (tmp_path / "out").exists()


def _source_gpu_env(tmp_path: Path, python: str, wheels: Path) -> subprocess.CompletedProcess[str]:
    """Source scripts/gpu_env.sh as the GPU scripts do (no venv: the offline branch), then import."""
    script = 'source scripts/gpu_env.sh || exit $?; echo "PY=$PY"; "$PY" -c "import ndt_offline_probe, ndt; print(ndt_offline_probe.WHERE, ndt.__file__)"'
    env = {
        **os.environ,
        "VENV": str(tmp_path / "no-venv"),
        "PYTHON": python,
        "WHEELS": str(wheels),
        "SITE": str(tmp_path / "site"),
        "PYTHONPATH": "",
    }
    return subprocess.run(
        ["bash", "-c", script], cwd=SCRIPTS.parent, env=env, capture_output=True, text=True, timeout=120
    )


def test_gpu_env_installs_the_carried_wheels_offline(tmp_path: Path) -> None:
    """The offline branch: wheels from $WHEELS into $SITE (no index), the repository on PYTHONPATH."""
    src = tmp_path / "src"
    (src / "ndt_offline_probe").mkdir(parents=True)
    (src / "ndt_offline_probe" / "__init__.py").write_text("WHERE = 'installed from the carried wheel'\n")
    (src / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n'
        '[project]\nname = "ndt-offline-probe"\nversion = "0.0.1"\n'
    )
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
         "-w", str(wheels), str(src)],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    done = _source_gpu_env(tmp_path, sys.executable, wheels)
    assert done.returncode == 0, done.stderr
    assert f"PY={sys.executable}" in done.stdout
    assert "installed from the carried wheel" in done.stdout
    assert str(SCRIPTS.parent / "ndt" / "__init__.py") in done.stdout  # ndt from this source tree
    assert (tmp_path / "site" / "ndt_offline_probe").is_dir() and not (tmp_path / "no-venv").exists()


@pytest.mark.skipif(shutil.which("python3") is None, reason="no system python3")
def test_gpu_env_names_what_the_image_lacks(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "placeholder-0-py3-none-any.whl").write_bytes(b"")  # the offline branch is taken
    bare = tmp_path / "bare"  # a Python without torch: a venv that sees no site packages
    subprocess.run(["python3", "-m", "venv", "--without-pip", str(bare)], check=True, timeout=60)
    done = _source_gpu_env(tmp_path, str(bare / "bin" / "python"), wheels)
    assert done.returncode == 2
    assert "lacks a package ndt needs" in done.stderr and "No module named" in done.stderr
    assert "scripts/gpu_wheels.sh NAME" in done.stderr
