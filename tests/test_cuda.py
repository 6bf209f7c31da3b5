"""The CUDA path: the worker and its pinned-buffer pool, equality with the CPU on every metric, no host
synchronisation in the training loop (also after a resume), a model on two GPUs, trainer.tf32/deterministic
applied.

Every test here needs a CUDA device and is skipped without one (the CPU side of the same logic is
tested in tests/test_gpu_path.py). Run them on a GPU machine: ``pytest -q tests/test_cuda.py``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import DictConfig
from torch import nn

import ndt.running.train as train
from ndt import HighFrequencyTracker
from ndt.data.sampler import EpochSampler
from ndt.measure.transfer import PINNED_BUFFERS
from ndt.models import build_model
from ndt.running.numerics import CUBLAS_WORKSPACE, numerics
from ndt.storage.schema import METRIC_COLUMNS

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

CUDA = torch.device("cuda")
#: The CPU and the GPU run the float32 forward with different kernels (TF32 off): activations agree
#: to ~1e-6 relative, the float64 Grams and spectra to about the same, and the metrics, smooth
#: functions of the spectrum, well within 1e-4. cumulative_energy_90 is a count: it may move by one
#: where the 90% threshold falls between two nearly equal prefixes.
RTOL = 1e-4
COUNT_ATOL = 1.0
SMOOTH_METRICS = [m for m in METRIC_COLUMNS if m != "cumulative_energy_90"]


def assert_metrics_close(got: pd.DataFrame, want: pd.DataFrame) -> None:
    got, want = got.reset_index(drop=True), want.reset_index(drop=True)
    assert got[["step", "layer"]].equals(want[["step", "layer"]])
    for m in SMOOTH_METRICS:
        np.testing.assert_allclose(got[m], want[m], rtol=RTOL, err_msg=m)
    np.testing.assert_allclose(got.cumulative_energy_90, want.cumulative_energy_90, atol=COUNT_ATOL)


def tracked(model: nn.Module, probe: torch.Tensor, device: torch.device, steps: int = 4) -> pd.DataFrame:
    """Rows of `steps` measurements of `model` on `device` (weights scaled between them)."""
    model = model.to(device)
    first = next(m for m in model.modules() if isinstance(m, nn.Linear | nn.Conv2d))
    with HighFrequencyTracker(model, sampling_frequency=1, probe=probe) as t:
        assert t.background == (device.type == "cuda")
        for step in range(steps):
            with torch.no_grad():
                first.weight.mul_(1.1)
            t.log(step, torch.tensor(1.0, device=device))
        return t.get_results()


@pytest.mark.parametrize("arch", ["mlp_narrow", "cnn_shallow", "transformer_shallow"])
def test_every_metric_on_cuda_equals_the_cpu(arch: str) -> None:
    with numerics(tf32=False, deterministic=True, device=CUDA):
        torch.manual_seed(0)
        model = build_model(arch, "mnist")
        probe = torch.rand(64, 1, 28, 28, generator=torch.Generator().manual_seed(1))
        state = {k: v.clone() for k, v in model.state_dict().items()}
        cpu = tracked(model, probe, torch.device("cpu"))
        model.load_state_dict(state)
        gpu = tracked(model, probe, CUDA)
    assert_metrics_close(gpu, cpu)


def test_worker_reuses_a_bounded_pool_of_pinned_buffers() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 8)).to(CUDA)
    probe = torch.randn(96, 20, device=CUDA)
    with HighFrequencyTracker(model, sampling_frequency=1, probe=probe, flush_every=10) as t:
        for step in range(60):
            t.log(step, 0.25)  # a Python float: written on the device, not copied there
        pool = t.pool
        assert pool is not None and pool.pin
        assert pool.size <= PINNED_BUFFERS and pool.allocations < 60  # reused, not one per measurement
        rows = t.get_results()
    assert sorted(rows.step.unique()) == list(range(60)) and (rows.loss == 0.25).all()
    assert all(b.is_pinned() for b in pool._free)


def test_sampler_moves_each_epoch_to_cuda_without_a_sync() -> None:
    cpu = EpochSampler(100, 32, seed=3)
    gpu = EpochSampler(100, 32, seed=3, device=CUDA)
    torch.cuda.set_sync_debug_mode("error")
    try:
        batches = [gpu.next_batch() for _ in range(9)]  # three epochs: three permutations copied
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert all(b.device.type == "cuda" for b in batches)
    assert [b.cpu().tolist() for b in batches] == [cpu.next_batch().tolist() for _ in range(9)]


def test_loss_monitor_reads_losses_without_a_sync() -> None:
    monitor = train.LossMonitor(CUDA)
    losses = [torch.tensor(float(i), device=CUDA) * 2 for i in range(5)]
    torch.cuda.set_sync_debug_mode("error")
    try:
        early = [pair for i, loss in enumerate(losses) for pair in monitor.record(i, loss)]
    finally:
        torch.cuda.set_sync_debug_mode(0)
    late = monitor.poll(wait=True)
    assert early + late == [(i, 2.0 * i) for i in range(5)]


@pytest.mark.parametrize("arch", ["mlp_narrow", "cnn_deep", "transformer_shallow"])
def test_training_loop_makes_no_host_sync_between_checkpoints(
    arch: str, compose_cfg: Callable[..., DictConfig], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`ndt.run`'s own loop under torch.cuda.set_sync_debug_mode("error"), checkpoint steps excepted.

    60 steps cross an epoch (digits: 45 batches of 32), measure every 5 steps on the probe, log every
    10 steps; only the steps that end in a checkpoint (every 30: its weights are copied to the host)
    run with the check off. A sync anywhere else raises, and the run is recorded as failed with it.
    """
    step_fn = train.training_step
    count = {"step": -1}

    def training_step(state: Any) -> torch.Tensor:
        count["step"] += 1
        checkpoint_step = (count["step"] + 1) % 30 == 0
        warm = count["step"] >= 5  # the first steps create cuBLAS/cuDNN handles and the first buffers
        torch.cuda.set_sync_debug_mode("error" if warm and not checkpoint_step else 0)
        return step_fn(state)

    monkeypatch.setattr(train, "training_step", training_step)
    cfg = compose_cfg(
        f"arch={arch}",
        "trainer.device=cuda",
        "trainer.max_steps=60",
        "trainer.checkpoint.every=30",
        "trainer.log_every=10",
        "trainer.progress=log",
    )
    try:
        record = train.run_experiment(cfg)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert record["status"] == "complete", record.get("error")
    assert record["n_measurements"] == 12


def test_a_resumed_run_keeps_adams_step_counters_on_the_host(
    compose_cfg: Callable[..., DictConfig], tmp_path: Any
) -> None:
    """A checkpoint restored on CUDA trains on without host syncs (Adam reads a CUDA step counter with
    .item() every step: `restore` must leave the counters where a fresh Adam keeps them)."""
    from ndt.running.checkpoint import load_checkpoint, save_checkpoint

    cfg = compose_cfg("arch=mlp_narrow", "trainer.device=cuda")
    with numerics(tf32=False, deterministic=True, device=CUDA):
        state = train.build_training(cfg, CUDA)
        for _ in range(3):
            train.training_step(state)
        path = save_checkpoint(tmp_path, 3, train.checkpoint_payload(state, 3, 0.0))
        resumed = train.build_training(cfg, CUDA)
        train.restore(resumed, load_checkpoint(path))
        counters = [s["step"] for s in resumed.optimizer.state.values()]
        assert counters and all(c.device.type == "cpu" for c in counters)
        assert all(p.device.type == "cuda" for p in resumed.model.parameters())
        train.training_step(resumed)  # warm: the first step after a restore allocates
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            for _ in range(3):
                train.training_step(resumed)
        finally:
            torch.cuda.set_sync_debug_mode(0)


class TwoDevices(nn.Module):
    """Two Linear layers on two GPUs: the activations move between them in forward."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(20, 16).to("cuda:0")
        self.b = nn.Linear(16, 4).to("cuda:1")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x.to("cuda:0"))).to("cuda:1"))


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_a_model_on_two_gpus_is_measured_like_on_the_cpu() -> None:
    torch.manual_seed(0)
    model = TwoDevices()
    probe = torch.randn(48, 20, generator=torch.Generator().manual_seed(2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    cpu_model = nn.Sequential(nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 4))
    cpu_model[0].load_state_dict(model.a.state_dict())
    cpu_model[2].load_state_dict(model.b.state_dict())
    cpu_opt = torch.optim.SGD(cpu_model.parameters(), lr=0.1)
    x = torch.randn(32, 20, generator=torch.Generator().manual_seed(4))
    y = torch.randint(0, 4, (32,), generator=torch.Generator().manual_seed(5))
    rows = {}
    for name, m, o in (("gpu", model, opt), ("cpu", cpu_model, cpu_opt)):
        with HighFrequencyTracker(m, sampling_frequency=1, probe=probe, background=True) as t:
            for step in range(3):
                out = m(x)
                loss = nn.functional.cross_entropy(out, y.to(out.device))  # on cuda:1 for the GPU model
                o.zero_grad()
                loss.backward()
                o.step()
                t.log(step, loss.detach())  # grad norm from grads on both devices
            rows[name] = t.get_results()
    gpu, cpu = (rows[k].sort_values(["step", "layer_index"]) for k in ("gpu", "cpu"))
    assert list(gpu.layer.unique()) == ["a", "b"] and list(cpu.layer.unique()) == ["0", "2"]
    for col in [*SMOOTH_METRICS, "loss", "grad_norm"]:
        np.testing.assert_allclose(gpu[col], cpu[col], rtol=RTOL, err_msg=col)


def test_tf32_and_deterministic_are_applied_on_cuda(
    compose_cfg: Callable[..., DictConfig], monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[bool, bool, bool]] = []
    build = train.build_training

    def build_training(cfg: DictConfig, device: torch.device) -> Any:
        seen.append(
            (
                torch.are_deterministic_algorithms_enabled(),
                torch.backends.cudnn.benchmark,
                torch.backends.cuda.matmul.allow_tf32,
            )
        )
        return build(cfg, device)

    monkeypatch.setattr(train, "build_training", build_training)
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    short = ("trainer.device=cuda", "trainer.max_steps=10", "trainer.checkpoint.every=10")
    n = train.run_experiment(compose_cfg(*short))["numerics"]
    assert seen[-1] == (True, False, False)
    assert n["deterministic_algorithms"] and n["cudnn_deterministic"] and not n["cudnn_benchmark"]
    assert not n["tf32_matmul"] and not n["tf32_cudnn"] and n["cublas_workspace_config"] == CUBLAS_WORKSPACE
    assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ and not torch.are_deterministic_algorithms_enabled()

    fast = train.run_experiment(
        compose_cfg(*short, "trainer.tf32=true", "trainer.deterministic=false", "sweep_name=fast")
    )["numerics"]
    assert seen[-1] == (False, True, True)
    assert fast["tf32_matmul"] and fast["tf32_cudnn"] and fast["cudnn_benchmark"]
    assert fast["float32_matmul_precision"] == "high" and fast["cublas_workspace_config"] is None


def test_estimate_on_cuda_matches_the_exact_spectrum() -> None:
    # The device takes the two plain products where the host sums row blocks; its random draws come
    # from the device's generator, so the two estimates differ by estimator noise: each is checked
    # against the exact metrics of a matrix whose singular values are known (tests/test_estimate.py).
    from test_estimate import TOLERANCE, exact, with_spectrum

    from ndt.measure.estimate import estimate_metrics

    s = np.sort(np.arange(1, 1001) ** -0.7)[::-1]
    a = with_spectrum(s, n=1400, k=1000)
    want = exact(s)
    for device in ("cpu", "cuda"):
        got = estimate_metrics(a.to(device))
        for metric, value in want.items():
            assert got[metric] == pytest.approx(value, rel=TOLERANCE), (device, metric)
