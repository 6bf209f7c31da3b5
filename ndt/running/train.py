"""One experiment, top to bottom: data, model, tracked training, checkpoints, the run record.

`run_experiment(cfg)` is the whole job behind ``python -m ndt.run``. It is idempotent: a completed
run is skipped, an interrupted one resumes from its last checkpoint (its Parquet then ends with
exactly one row per (step, layer)), an incompatible architecture/dataset pair is recorded as
skipped, and a failure (exception, NaN loss) is recorded as failed in ``run.json``. Results are
files; the return value is only a convenience.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import platform
import socket
import subprocess
import sys
import time
import traceback
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

import ndt
from ndt.data import EpochSampler, load_dataset
from ndt.data.spec import dataset_spec
from ndt.integrations.loggers import make_loggers
from ndt.measure.tracker import HighFrequencyTracker
from ndt.models import IncompatiblePairError, build_model, check_compatible, describe
from ndt.models.objective import correct_and_count, task_loss
from ndt.running import distributed
from ndt.running.checkpoint import (
    checkpoint_path,
    latest_valid_checkpoint,
    list_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
)
from ndt.running.numerics import apply_numerics, nondeterministic_ops, numerics
from ndt.running.validation import validate_config
from ndt.storage.durable import unlink_durably
from ndt.storage.layout import (
    CHECKPOINT_DIR,
    DONE_MARKER,
    HEARTBEAT,
    LOG_FILE,
    METRICS_DIR,
    SET_ASIDE_DIR,
    is_complete,
    read_run_json,
    run_name,
    write_done_marker,
    write_run_json,
)
from ndt.storage.lock import run_lock
from ndt.storage.parquet import (
    MetricsWriter,
    list_parts,
    read_metrics,
    set_aside_unreadable_parts,
    unreadable_parts,
)

log = logging.getLogger("ndt.run")

# trainer.strategy=ddp: every process trains, only global rank 0 writes files (ndt.running.distributed).
write_run_json = distributed.main_only(write_run_json)
save_checkpoint = distributed.main_only(save_checkpoint)


class RunConflictError(RuntimeError):
    """The run directory holds a run of a different experiment (same arch/dataset/seed, other settings)."""


#: Config keys that change the numbers a run produces. Others (paths, logging, progress, device,
#: launcher) may differ between a run and its resumption.
EXPERIMENT_KEYS = (
    "arch",
    "dataset",
    "seed",
    "trainer.max_steps",
    "trainer.batch_size",
    "tracker",
    "optim",
    "protocol",
)
#: Keys under EXPERIMENT_KEYS that do not change the numbers (where else the rows are sent).
NOT_EXPERIMENT_KEYS = ("tracker.loggers",)


def _flatten(node: Any, prefix: str, out: dict[str, Any]) -> None:
    if isinstance(node, dict):
        for k, v in node.items():
            _flatten(v, f"{prefix}.{k}", out)
    else:
        out[prefix] = node


def experiment_signature(config: dict[str, Any]) -> dict[str, Any]:
    """The leaves of a resolved config that define the experiment, by dotted key (see `EXPERIMENT_KEYS`)."""
    out: dict[str, Any] = {}
    for key in EXPERIMENT_KEYS:
        node: Any = config
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        _flatten(node, key, out)
    return {k: v for k, v in out.items() if not k.startswith(NOT_EXPERIMENT_KEYS)}


def check_same_experiment(run_dir: Path, config: dict[str, Any]) -> None:
    """Refuse to skip or resume a run directory that holds another experiment.

    Raises:
        RunConflictError: naming the differing keys and the fix.
    """
    try:
        previous = read_run_json(run_dir).get("config")
    except (FileNotFoundError, ValueError):
        return
    if not isinstance(previous, dict):
        return
    old, new = experiment_signature(previous), experiment_signature(config)
    diff = [
        f"{k}: {old.get(k)!r} there, {new.get(k)!r} now"
        for k in sorted(old.keys() | new.keys())
        if old.get(k) != new.get(k)
    ]
    if diff:
        raise RunConflictError(
            f"{run_dir} holds a run of a different experiment ({'; '.join(diff)}). Run directories are "
            "named by arch, dataset and seed only: give this experiment its own sweep_name=... "
            "(or paths.results_dir=...), or delete that directory to redo it."
        )


def run_dir_for(cfg: DictConfig) -> Path:
    """``<paths.results_dir>/<sweep_name>/<arch>__<dataset>__s<seed>``."""
    return (
        Path(cfg.paths.results_dir)
        / str(cfg.sweep_name)
        / run_name(cfg.arch.name, cfg.dataset.name, cfg.seed)
    )


def resolve_device(name: str) -> torch.device:
    """``auto``: CUDA when present, else CPU (TF32 and cuDNN autotuning: `ndt.running.numerics`)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            f"trainer.device={name} but no CUDA device is visible; use trainer.device=auto or cpu"
        )
    return device


def seed_everything(seed: int) -> None:
    """The one seeding block: model init and dropout draw from torch's RNGs.

    Data subsets and order have their own generators seeded from the same seed (ndt.data), so
    nothing in a run reads numpy's or Python's global RNG.
    """
    torch.manual_seed(seed)  # also seeds every CUDA device


def make_optimizer(cfg: DictConfig, params: Iterator[nn.Parameter]) -> torch.optim.Optimizer:
    """The optimizer named by ``optim.name`` (adam, adamw, sgd)."""
    name = cfg.optim.name
    if name == "adam":
        return torch.optim.Adam(params, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    if name == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.optim.lr, momentum=cfg.optim.momentum, weight_decay=cfg.optim.weight_decay
        )
    raise ValueError(f"unknown optim.name {name!r}; choose adam, adamw or sgd")


def git_commit() -> str | None:
    """The commit of the ndt source tree (suffixed ``-dirty`` with local changes), or None."""
    root = Path(ndt.__file__).resolve().parent.parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10, check=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def versions() -> dict[str, str]:
    """Versions of what the numbers depend on."""
    import hydra
    import pandas
    import pyarrow

    return {
        "ndt": ndt.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "pandas": pandas.__version__,
        "pyarrow": pyarrow.__version__,
        "hydra": hydra.__version__,
        "cuda": torch.version.cuda or "none",
    }


@contextlib.contextmanager
def run_log_file(run_dir: Path) -> Iterator[None]:
    """Log to ``run.log`` in the run directory unless Hydra already does."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        yield
        return
    handler = logging.FileHandler(run_dir / LOG_FILE)
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    old_level = root.level
    root.setLevel(min(old_level, logging.INFO) if old_level else logging.INFO)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
        handler.close()


@dataclass
class Timings:
    """Wall-clock seconds spent in each phase (measure: inside the tracker; on CUDA its host side)."""

    data_s: float = 0.0
    train_s: float = 0.0
    measure_s: float = 0.0
    checkpoint_s: float = 0.0
    eval_s: float = 0.0
    total_s: float = 0.0
    start: float = field(default_factory=time.perf_counter, repr=False)

    def as_dict(self) -> dict[str, float]:
        return {k: round(v, 4) for k, v in self.__dict__.items() if k != "start"}


class Progress:
    """A tqdm bar on an interactive terminal, plain log lines every `log_every` steps otherwise."""

    def __init__(self, mode: str, total: int, initial: int, log_every: int, desc: str) -> None:
        use_bar = mode == "bar" or (mode == "auto" and sys.stderr.isatty())
        self.log_every = log_every
        self.total = total
        self.t0 = time.perf_counter()
        self.initial = initial
        self.bar = None
        if use_bar:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True)

    def update(self, step: int, loss: float | None) -> None:
        """Called after step `step` (0-based); `loss`: on log steps, the newest loss on the host (on CUDA
        one of an earlier log step: see `LossMonitor`), else None."""
        if self.bar is not None:
            self.bar.update(1)
            if loss is not None:
                self.bar.set_postfix(loss=f"{loss:.4f}")
        elif loss is not None:
            done = step + 1 - self.initial
            elapsed = time.perf_counter() - self.t0
            eta = elapsed / max(done, 1) * (self.total - step - 1)
            log.info(
                "step %d/%d  loss %.4f  %.1f steps/s  eta %.0fs",
                step + 1,
                self.total,
                loss,
                done / elapsed,
                eta,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class LossMonitor:
    """The loss of log steps on the host, read without making the training thread wait for a GPU.

    On the CPU `record` reads the value at once. On CUDA it queues a non-blocking copy of the loss
    into a small pinned buffer with an event behind it, and returns the values whose copies have
    landed (an event query, never a wait): a log line, and the check for a non-finite loss, come a
    log interval late. `poll(wait=True)` waits for every copy; `_train` calls it before each
    checkpoint (which synchronises anyway, copying the weights to the host), so no checkpoint is
    taken after a non-finite logged loss.
    """

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self._in_flight: list[tuple[int, torch.Tensor, torch.cuda.Event]] = []
        self._free: list[torch.Tensor] = []  # landed pinned scalars, reused

    def record(self, step: int, loss: torch.Tensor) -> list[tuple[int, float]]:
        """Start reading `loss` (of step `step`); return the (step, value) pairs that have landed."""
        if not self.cuda:
            return [(step, loss.item())]  # the CPU: no device to wait for
        landed = self.poll()
        buf = self._free.pop() if self._free else torch.empty(1, dtype=torch.float64, pin_memory=True)
        buf.copy_(loss.detach().reshape(1).to(torch.float64), non_blocking=True)  # cast on the device
        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream(loss.device))
        self._in_flight.append((step, buf, event))
        return landed

    def poll(self, wait: bool = False) -> list[tuple[int, float]]:
        """The (step, value) pairs whose copies have landed, oldest first; all of them when `wait`."""
        landed = []
        while self._in_flight:
            step, buf, event = self._in_flight[0]
            if not event.query():  # a query never waits
                if not wait:
                    break
                event.synchronize()
            self._in_flight.pop(0)
            landed.append((step, float(buf[0])))  # buf is host memory: no device involved
            self._free.append(buf)
        return landed


def check_loss(step: int, value: float) -> None:
    """Raise FloatingPointError for a non-finite loss (the run is then recorded as failed)."""
    if not math.isfinite(value):
        raise FloatingPointError(f"loss is {value} at step {step}; lower optim.lr or check the data")


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> float:
    """Top-1 accuracy in eval mode (mode restored afterwards): the share of examples whose argmax is
    the label, or for a language model the share of non-padding positions whose argmax is the next
    token (`ndt.models.objective.correct_and_count`)."""
    was_training = model.training
    model.eval()
    correct, count = 0, 0
    for lo in range(0, len(y), batch_size):
        c, n = correct_and_count(model(x[lo : lo + batch_size]), y[lo : lo + batch_size])
        correct, count = correct + int(c), count + int(n)
    model.train(was_training)
    return correct / max(count, 1)


def base_record(cfg: DictConfig, config: dict[str, Any]) -> dict[str, Any]:
    """The run record's identity and provenance fields; `config` is `cfg` resolved to plain containers."""
    return {
        "status": "running",
        "arch": cfg.arch.name,
        "dataset": cfg.dataset.name,
        "seed": int(cfg.seed),
        "run_id": run_name(cfg.arch.name, cfg.dataset.name, cfg.seed),
        "git_commit": git_commit(),
        "versions": versions(),
        "config": config,
    }


def run_experiment(cfg: DictConfig) -> dict[str, Any]:
    """Run (or skip, or resume) one experiment; return its run record (also in ``run.json``).

    Raises:
        ndt.running.validation.ConfigError: a config value out of range (before anything is written).
        ndt.storage.lock.RunLockedError: another live process runs this directory.
        RunConflictError: the directory holds another experiment.
    """
    validate_config(cfg)
    distributed.adopt_launcher_ranks(cfg.trainer.get("strategy", "single"))  # before the rank-0 lock
    run_dir = run_dir_for(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    # One process per run directory; under trainer.strategy=ddp the ranks are one run: rank 0 holds it.
    lock = run_lock(run_dir) if distributed.is_main() else contextlib.nullcontext()
    with lock, run_log_file(run_dir):
        config: dict[str, Any] = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
        check_same_experiment(run_dir, config)
        if is_complete(run_dir) and (damaged := unreadable_parts(run_dir / METRICS_DIR)):
            # A finished run whose rows were damaged on disk since: reopen it, so that the resume
            # sets the parts aside and recomputes their rows (from the checkpoint before them).
            log.warning(
                "%s is complete but its part(s) %s cannot be read: resuming it to recompute them",
                run_dir.name,
                ", ".join(p.name for p in damaged),
            )
            unlink_durably(run_dir / DONE_MARKER)
        if is_complete(run_dir):
            record = read_run_json(run_dir)
            log.info(
                "%s is already %s: skipping (delete %s to redo it)",
                run_dir,
                record.get("status"),
                DONE_MARKER,
            )
            return record
        record = base_record(cfg, config)
        try:
            check_compatible(cfg.arch.name, dataset_spec(cfg.dataset.name, cfg.dataset.encoding))
        except IncompatiblePairError as e:
            record.update(status="skipped", error=str(e))
            write_run_json(run_dir, record)
            if distributed.is_main():
                write_done_marker(run_dir, "skipped")
            log.warning("skipped %s: %s", run_dir.name, e)
            return record
        try:
            record = _train(cfg, run_dir, record)
        except Exception as e:  # recorded, so that the other runs of a sweep go on
            log.error("run %s failed:\n%s", run_dir.name, traceback.format_exc())
            record.update(status="failed", error=f"{type(e).__name__}: {e}")
            write_run_json(run_dir, record)
            return record
        write_run_json(run_dir, record)
        if distributed.is_main():
            write_done_marker(run_dir, "complete")  # written last, after everything it vouches for is durable
        log.info("results: %s", run_dir.resolve())
        return record


@dataclass
class TrainingState:
    """Everything one training step touches; built the same way for a run and for its replay.

    Attributes:
        model, optimizer, sampler: the trained network, its optimizer, the data order.
        train_x, train_y, test_x, test_y: the run's subsets, on `device` (labels (N,), or (N, S)
            next-token targets for a language model).
        probe: (probe_size, ...) the first test-subset examples, or None (measure the training batch).
        device: where everything lives.
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    sampler: EpochSampler
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    probe: torch.Tensor | None
    device: torch.device


def build_training(cfg: DictConfig, device: torch.device) -> TrainingState:
    """Data on `device`, a freshly seeded model, its optimizer and the data sampler (step 0)."""
    seed = int(cfg.seed)
    data = load_dataset(
        cfg.dataset.name,
        data_dir=cfg.paths.data_dir,
        seed=seed,
        train_subset=cfg.dataset.train_subset,
        test_subset=cfg.dataset.test_subset,
        encoding=cfg.dataset.encoding,
    )
    # The study's data are small: keep them on the run's device and batch by index.
    test_x = data.test_x.to(device)
    seed_everything(seed)
    model = distributed.wrap(
        build_model(cfg.arch.name, data.spec).to(device)
    )  # DDP under trainer.strategy=ddp
    return TrainingState(
        model=model,
        optimizer=make_optimizer(cfg, model.parameters()),
        sampler=EpochSampler(len(data.train_y), cfg.trainer.batch_size, seed, device=device),
        train_x=data.train_x.to(device),
        train_y=data.train_y.to(device),
        test_x=test_x,
        test_y=data.test_y.to(device),
        probe=test_x[: cfg.tracker.probe_size] if cfg.tracker.probe_size > 0 else None,
        device=device,
    )


def training_step(state: TrainingState) -> torch.Tensor:
    """One optimizer step on the sampler's next batch; returns the (device) loss.

    The loss is `ndt.models.objective.task_loss`: cross-entropy over the examples, or over the
    non-padding positions of a language model's (B, S, V) logits.
    """
    idx = distributed.local_share(state.sampler.next_batch(), state.model)  # already on state.device
    loss = task_loss(state.model(state.train_x[idx]), state.train_y[idx])
    state.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    state.optimizer.step()
    return loss


def checkpoint_payload(state: TrainingState, steps_done: int, elapsed_s: float) -> dict[str, Any]:
    """What a checkpoint holds (see `ndt.running.checkpoint`)."""
    cuda = state.device.type == "cuda"
    return {
        "model": distributed.unwrap(state.model).state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "sampler": state.sampler.state_dict(),
        "rng_cpu": torch.get_rng_state(),
        "rng_cuda": torch.cuda.get_rng_state(state.device) if cuda else None,
        "step": steps_done,
        "elapsed_s": elapsed_s,
    }


def cuda_reseed(seed: int, steps_done: int) -> int:
    """The CUDA RNG seed of a run resumed on CUDA from a checkpoint without CUDA RNG state.

    A function of (seed, step) only, so that two resumptions of the same checkpoint draw the same
    dropout masks; it differs from the seed itself, so the stream is not the one of step 0 again.
    """
    return (int(seed) * 1_000_003 + int(steps_done) + 1) % 2**63


def restore(state: TrainingState, payload: dict[str, Any], seed: int = 0) -> None:
    """Load a checkpoint payload into `state` (model, optimizer, data position, RNG).

    Load the payload to host memory (`load_checkpoint`'s default): the model's and the optimizer's
    `load_state_dict` copy each tensor to its parameter's device, except the optimizer's ``step``
    counters, which stay where they were loaded. On the GPU, Adam (not capturable, not fused) reads
    a counter it finds there with ``.item()`` every step: two host syncs per parameter and step.
    Counters loaded to the host stay where a fresh Adam keeps them.

    On CUDA the checkpoint's CUDA RNG state is restored; a checkpoint taken on the CPU has none, and
    the CUDA generator is then seeded with `cuda_reseed` (deterministic, with a warning: dropout
    draws differ from those of an uninterrupted CUDA run).
    """
    distributed.unwrap(state.model).load_state_dict(payload["model"])
    state.optimizer.load_state_dict(payload["optimizer"])
    state.sampler.load_state_dict(payload["sampler"])
    torch.set_rng_state(payload["rng_cpu"].cpu())
    if state.device.type == "cuda":
        if payload.get("rng_cuda") is not None:
            torch.cuda.set_rng_state(payload["rng_cuda"].cpu(), state.device)
        else:
            cuda_seed = cuda_reseed(seed, int(payload["step"]))
            msg = (
                f"checkpoint of step {payload['step']} has no CUDA RNG state (taken on the CPU); the CUDA "
                f"generator is seeded with {cuda_seed} (from seed {seed} and the step), so random draws on "
                "the GPU differ from an uninterrupted run's"
            )
            log.warning("%s", msg)
            warnings.warn(msg, RuntimeWarning, stacklevel=2)
            torch.cuda.manual_seed(cuda_seed)


def restore_at(run_dir: str | Path, steps_done: int, device: str | torch.device = "cpu") -> TrainingState:
    """The run's training state after exactly `steps_done` optimizer steps.

    Loads the nearest checkpoint at or before `steps_done` and replays the remaining steps with the
    run's own `training_step` (same seed, same data order); on CPU the result equals the weights an
    uninterrupted run had at that step.

    Raises:
        FileNotFoundError: not an ndt run directory.
        ValueError: `steps_done` outside 0..max_steps.
    """
    run_dir = Path(run_dir)
    record = read_run_json(run_dir)
    cfg = OmegaConf.create(record["config"])
    if not 0 <= steps_done <= int(cfg.trainer.max_steps):
        raise ValueError(
            f"step {steps_done} is outside this run's 0..{cfg.trainer.max_steps} optimizer steps"
        )
    device = torch.device(device)
    if device.type == "cuda":
        # Replay with the run's arithmetic. Runs recorded before these options existed ran on CUDA with
        # TF32 and cuDNN autotuning on. Left set: the replay goes on after this returns.
        apply_numerics(cfg.trainer.get("tf32", True), cfg.trainer.get("deterministic", False), device)
    state = build_training(cfg, device)
    usable = [(s, p) for s, p in list_checkpoints(run_dir) if s <= steps_done]
    start = 0
    if usable:
        start, path = usable[-1]
        restore(state, load_checkpoint(path), seed=int(cfg.seed))
    state.model.train()
    for _ in range(start, steps_done):
        training_step(state)
    return state


def segment_record(start_step: int, device: torch.device, record: dict[str, Any]) -> dict[str, Any]:
    """One entry of run.json's ``segments``: what one process that trained the run ran on.

    Keys: start_step (steps done when it started), started_at (UTC, ISO 8601), host, pid, device,
    numerics (`ndt.running.numerics.current_numerics`), git_commit, versions, and slurm (job ids)
    under SLURM.
    """
    seg: dict[str, Any] = {
        "start_step": int(start_step),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "device": str(device),
        "numerics": record.get("numerics"),
        "git_commit": record.get("git_commit"),
        "versions": record.get("versions"),
    }
    if job_ids():
        seg["slurm"] = job_ids()
    return seg


def previous_segments(run_dir: Path) -> list[dict[str, Any]]:
    """The ``segments`` of the run record already in `run_dir` (empty for a new run)."""
    try:
        old = read_run_json(run_dir).get("segments")
    except (FileNotFoundError, ValueError):
        return []
    return [s for s in old if isinstance(s, dict)] if isinstance(old, list) else []


def warn_if_mixed(run_name_: str, segments: list[dict[str, Any]]) -> None:
    """Log a warning when the segments of a run ran on different devices, numerics, commits or versions."""
    for key in ("device", "numerics", "git_commit", "versions"):
        values = {json_key(s.get(key)) for s in segments}
        if len(values) > 1:
            log.warning(
                "%s was trained in %d segments that differ in %s (see run.json's segments): its numbers "
                "mix them",
                run_name_,
                len(segments),
                key,
            )


def record_nondeterminism(record: dict[str, Any], alerts: set[str]) -> None:
    """Put the ops that raised determinism alerts (`ndt.running.numerics.nondeterministic_ops`) in the
    record: this process's in its segment, every segment's together in ``nondeterministic_ops``
    (empty: nothing was reported; on the CPU torch's checks are off and nothing is)."""
    segments = record.get("segments") or []
    if segments:
        segments[-1]["nondeterministic_ops"] = sorted(alerts)
    earlier = {op for seg in segments for op in seg.get("nondeterministic_ops", ())}
    record["nondeterministic_ops"] = sorted(earlier | alerts)


def json_key(value: Any) -> str:
    """A hashable, order-independent text of a JSON value (to compare segment fields)."""
    return json.dumps(value, sort_keys=True, default=str)


def find_resume_point(run_dir: Path, cfg: DictConfig) -> tuple[int, dict[str, Any] | None, int | None]:
    """Where an interrupted run continues, after setting aside what a crash damaged.

    1. Metric parts that do not read are moved to ``set_aside/metrics/`` (warned, by name).
    2. The first measured step (a multiple of ``tracker.sampling_frequency``) missing from the rows left.
    3. The newest valid checkpoint at or before that step (`latest_valid_checkpoint`: invalid newer
       ones are set aside); the run continues from it and the rows after it are redone.

    Returns:
        (start step, checkpoint payload or None, ``resume_after_step`` for `MetricsWriter`: rows of
        steps after it are dropped; None for a fresh run).
    """
    metrics_dir = run_dir / METRICS_DIR
    for stray in (run_dir / CHECKPOINT_DIR).glob(".step_*.tmp"):  # a crash during a checkpoint write
        stray.unlink(missing_ok=True)
    started = metrics_dir.is_dir() or bool(list_checkpoints(run_dir))
    on_disk: set[int] = set()
    if metrics_dir.is_dir():
        for moved in set_aside_unreadable_parts(metrics_dir, run_dir / SET_ASIDE_DIR / METRICS_DIR):
            msg = f"metric part {moved.name} of {run_dir.name} cannot be read: moved to {moved}; its rows are recomputed"
            log.warning("%s", msg)
            warnings.warn(msg, RuntimeWarning, stacklevel=2)
        on_disk = set(read_metrics(metrics_dir, columns=["step"])["step"].unique().tolist())
    freq, max_steps = int(cfg.tracker.sampling_frequency), int(cfg.trainer.max_steps)
    first_missing = next((s for s in range(0, max_steps, freq) if s not in on_disk), max_steps)
    # Host memory: `restore` moves each tensor where it belongs (see there).
    found = latest_valid_checkpoint(run_dir, map_location="cpu", at_most=first_missing)
    if found is None:
        return 0, None, -1 if started else None  # nothing usable: start over, dropping any rows
    step, path, payload = found
    if step < max((s for s, _ in list_checkpoints(run_dir)), default=0):
        log.warning(
            "%s: rows of measured step %d are missing, so the run resumes from %s, before it",
            run_dir.name,
            first_missing,
            path.name,
        )
    return step, payload, step - 1  # rows of steps < step are final; later ones are redone


@distributed.main_only
def heartbeat(run_dir: Path) -> None:
    """Touch the heartbeat file: `ndt.status` tells a live run from a dead one by its age."""
    (run_dir / HEARTBEAT).write_text(f"{time.time():.0f}\n")


def job_ids() -> dict[str, str]:
    """The SLURM job identifiers of this process, if any (for `ndt.status` and sacct look-ups)."""
    keys = ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_RESTART_COUNT")
    return {k.lower(): os.environ[k] for k in keys if k in os.environ}


def make_tracker(
    cfg: DictConfig,
    state: TrainingState,
    writer: MetricsWriter | None,
    run_id: str,
    elapsed: float = 0.0,
    loggers: list[Any] | None = None,
) -> HighFrequencyTracker:
    """The tracker of a run, configured by ``cfg.tracker`` (also used by `ndt.bench.gpu`)."""
    return HighFrequencyTracker(
        state.model,
        sampling_frequency=cfg.tracker.sampling_frequency,
        probe=state.probe,
        metrics=list(cfg.tracker.metrics),
        writer=writer,
        run_id=run_id,
        arch=cfg.arch.name,
        dataset=cfg.dataset.name,
        seed=int(cfg.seed),
        center=cfg.tracker.center,
        sequence_reduction=cfg.tracker.sequence_reduction,
        conv_reduction=cfg.tracker.conv_reduction,
        max_rows=cfg.tracker.max_rows,
        exact_max_size=cfg.tracker.exact_max_size,
        hook_point=cfg.tracker.hook_point,
        padding_mask="auto" if cfg.tracker.mask_padding else None,  # the model declares its mask
        flush_every=cfg.tracker.flush_every,
        elapsed=elapsed,
        loggers=loggers or [],
    )


def _train(cfg: DictConfig, run_dir: Path, record: dict[str, Any]) -> dict[str, Any]:
    t = Timings()
    if cfg.trainer.num_threads:
        torch.set_num_threads(int(cfg.trainer.num_threads))
    device = resolve_device(
        distributed.init_strategy(cfg.trainer.get("strategy", "single"), cfg.trainer.device)
    )
    # Set before the model is built (its init runs under them too); the previous values come back after.
    with (
        numerics(bool(cfg.trainer.tf32), bool(cfg.trainer.deterministic), device) as applied,
        nondeterministic_ops() as alerts,
    ):
        record["numerics"] = applied
        try:
            return _train_on(cfg, run_dir, record, device, t)
        finally:  # in run.json's last write, also when the run fails
            record_nondeterminism(record, alerts)


def _train_on(
    cfg: DictConfig, run_dir: Path, record: dict[str, Any], device: torch.device, t: Timings
) -> dict[str, Any]:
    state = build_training(cfg, device)
    t.data_s = time.perf_counter() - t.start
    info = describe(distributed.unwrap(state.model))
    record.update(
        family=info.family, depth=info.depth, width=info.width, params=info.params, device=str(device)
    )
    if job_ids():
        record["slurm"] = job_ids()

    elapsed = 0.0
    metrics_dir = run_dir / METRICS_DIR
    start_step, payload, resume_after = find_resume_point(run_dir, cfg)
    if payload is not None:
        restore(state, payload, seed=int(cfg.seed))
        elapsed = float(payload["elapsed_s"])
        log.info(
            "resuming %s from %s (step %d)",
            run_dir.name,
            checkpoint_path(run_dir, start_step).name,
            start_step,
        )
    elif resume_after is not None and list_parts(metrics_dir):
        log.info("restarting %s from step 0 (no usable checkpoint)", run_dir.name)
    record["segments"] = [*previous_segments(run_dir), segment_record(start_step, device, record)]
    warn_if_mixed(run_dir.name, record["segments"])
    record["status"] = "running"
    write_run_json(run_dir, record)
    heartbeat(run_dir)

    main = distributed.is_main()  # the other ranks measure with rank 0 but write nothing
    writer = (
        MetricsWriter(metrics_dir, cfg.tracker.flush_every, resume_after_step=resume_after) if main else None
    )
    tracker = make_tracker(
        cfg,
        state,
        writer,
        record["run_id"],
        elapsed=elapsed,
        loggers=make_loggers(
            list(cfg.tracker.get("loggers") or []),
            run_dir,
            group=str(cfg.sweep_name),
            resume_step=start_step if payload is not None else None,
        ),
    )
    max_steps, every = int(cfg.trainer.max_steps), int(cfg.trainer.checkpoint.every)
    keep_last = cfg.trainer.checkpoint.keep_last
    progress = Progress(cfg.trainer.progress, max_steps, start_step, cfg.trainer.log_every, run_dir.name)
    losses = LossMonitor(device)
    # Checkpoints a resume can start from without redoing more than one interval: the newest one at
    # or before `tracker.durable_step` (see the checkpoint block below); the resumed-from one to begin.
    safe_step = start_step
    t_loop = time.perf_counter()
    try:
        state.model.train()
        # The hot path: nothing below waits for the device except at a checkpoint (its weights are
        # copied to the host). On CUDA the loss reaches the host through LossMonitor, the tracker's
        # measurements through its worker, and the data order once per epoch from pinned memory.
        for step in range(start_step, max_steps):
            epoch = state.sampler.epoch  # the epoch this batch belongs to
            loss = training_step(state)

            t_m = time.perf_counter()
            # with a probe, measures after this update; without, it measured this step's forward
            tracker.log(step, loss.detach(), epoch=epoch)
            t.measure_s += time.perf_counter() - t_m

            is_log_step = (step + 1) % cfg.trainer.log_every == 0 or step + 1 == max_steps
            landed = losses.record(step, loss) if is_log_step else []  # CPU: this step's; CUDA: earlier ones
            for s, value in landed:
                check_loss(s, value)
            progress.update(step, landed[-1][1] if landed else None)

            if (step + 1) % every == 0 or step + 1 == max_steps:
                t_c = time.perf_counter()
                for s, value in losses.poll(wait=True):  # no checkpoint after a non-finite logged loss
                    check_loss(s, value)
                # The rows measured before this checkpoint are written behind it, by the spectra
                # worker (on the inline path, now): training does not wait for them. A resume stays
                # exact without that wait: `find_resume_point` takes the first measured step missing
                # from disk and resumes from the newest checkpoint at or before it, redoing the rows
                # after that checkpoint, so a checkpoint whose rows never arrived is skipped, never
                # trusted. What must not happen is that the checkpoint such a resume needs is pruned:
                # `keep_last` spares the newest checkpoint whose rows are all on disk (`safe_step`),
                # so a crash costs at most the steps since it, and rows are never lost or doubled
                # (with no usable checkpoint at all the resume starts over and drops every row).
                tracker.flush(wait=False)
                durable = tracker.durable_step  # inline: step + 1 already; worker: a moment ago's
                steps = [*(s for s, _ in list_checkpoints(run_dir)), step + 1]
                safe_step = max([safe_step, *(s for s in steps if s <= durable)])
                payload = checkpoint_payload(state, step + 1, elapsed + time.perf_counter() - t.start)
                save_checkpoint(run_dir, step + 1, payload, keep_last=keep_last, keep={safe_step})
                heartbeat(run_dir)
                t.checkpoint_s += time.perf_counter() - t_c
            elif is_log_step:
                heartbeat(run_dir)
    finally:
        progress.close()
        t_m = time.perf_counter()
        tracker.close()
        t.measure_s += time.perf_counter() - t_m
    if distributed.is_main():
        prune_checkpoints(run_dir, keep_last)  # every row is on disk now: the spared one can go
    t.train_s = time.perf_counter() - t_loop - t.measure_s - t.checkpoint_s

    t_e = time.perf_counter()
    final_accuracy = accuracy(
        distributed.unwrap(state.model), state.test_x, state.test_y, cfg.trainer.eval_batch_size
    )
    t.eval_s = time.perf_counter() - t_e
    rows = read_metrics(metrics_dir, columns=["step", "layer"])  # counted from what is on disk
    t.total_s = time.perf_counter() - t.start
    record.update(
        status="complete",
        final_accuracy=final_accuracy,
        n_measurements=int(rows["step"].nunique()),
        n_layers=int(rows["layer"].nunique()),
        layers=list(tracker.layer_names),
        timings=t.as_dict(),
    )
    log.info(
        "%s: test accuracy %.1f%%, %d measurements, %.1fs (measuring %.1fs)",
        run_dir.name,
        100 * final_accuracy,
        record["n_measurements"],
        t.total_s,
        t.measure_s,
    )
    return record
