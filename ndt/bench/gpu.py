"""`python -m ndt.bench.gpu` (`make bench-gpu`, `scripts/bench_gpu.sh`): the GPU figures, in under 5 minutes.

It needs CUDA and refuses to start without it (exit status 2, with a message). It is no part of
`make bench` nor of the test suite. What it prints, in this order:

1. **Tracking overhead** at a measurement every 5 steps, on CUDA, for mlp_narrow, cnn_deep and
   transformer_shallow (the run's own config: digits, batch 32, the tracker's defaults) and GPT-2 small
   (124M parameters, random init, batch 8 x 256 random tokens, its attn / mlp.c_fc / mlp.c_proj sites,
   the tracker's defaults: ``token_mean``, one row per sequence).
   Two tracker settings each: the default probe (160 test examples; GPT-2: 8 sequences), and the
   training forward (no probe: no extra forward, only the Gram products). A pair is one untracked and
   one tracked run of the same steps (the tracked one includes ``close()``: every row on disk), in
   alternating order; the overhead is the median over the pairs of tracked / untracked - 1.
   Target: <= 1% of training time.
2. **The study protocol per run** on the GPU: ``protocol=study`` (2,000 steps, 400 measurements)
   through the real runner (`ndt.bench.runs.bench_runs`), for the three study models.
3. **Several runs at once on the one GPU**: the real entry point as a sweep,
   ``python -m ndt.run -m hydra/launcher=joblib hydra.launcher.n_jobs=k`` with k runs (the three study
   models, each for k/3 seeds), all started together, for a few k; the wall time of each batch and the
   projected wall time of the 57-run paper sweep at that k (`project_sweep`), then the fastest k as the
   ``n_jobs`` to use. Target: <= 15 minutes on one H100-class GPU.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

#: A measurement every this many steps (the study's).
SAMPLING_FREQUENCY = 5
#: Runs of the paper sweep (`conf/sweep/paper.yaml`: 60 pairs less the 3 skipped CNN x ag_news).
PAPER_RUNS = 57
STUDY_ARCHS = ("mlp_narrow", "cnn_deep", "transformer_shallow")
#: (steps per timed run, pairs) per model: each timed run takes ~0.3-3 s on a current GPU.
OVERHEAD_PLAN = {
    "mlp_narrow": (400, 5),
    "cnn_deep": (300, 5),
    "transformer_shallow": (300, 5),
    "gpt2_small": (60, 3),
}
#: Runs started at once in the concurrency test (multiples of the 3 study models).
CONCURRENCY = (3, 6, 12)
TARGET_OVERHEAD = 0.01
TARGET_SWEEP_S = 15 * 60
#: Seconds the whole benchmark may take (the concurrency section leaves out a k that would pass it).
BUDGET_S = 290


def require_cuda() -> None:
    """Exit with status 2 and a message when no CUDA device is visible."""
    if not torch.cuda.is_available():
        print(
            "ndt.bench.gpu needs a CUDA GPU and none is visible (torch.cuda.is_available() is False; "
            f"torch {torch.__version__}, built for CUDA {torch.version.cuda or 'none'}). Run it on a GPU "
            "machine: make bench-gpu, or scripts/bench_gpu.sh on a bare one.",
            file=sys.stderr,
        )
        raise SystemExit(2)


# ------------------------------------------------------------------ 1. tracking overhead


@dataclass
class Workload:
    """One model's training step and how the tracker is made for it (with or without its probe)."""

    name: str
    step: Callable[[], torch.Tensor]  # one optimizer step; returns the (device) loss
    tracker: Callable[[str, bool], Any]  # (writer dir, probe) -> a HighFrequencyTracker
    device: torch.device  # where it trains: timed runs drain its queue at both ends


def _drain(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); nothing to wait for on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def study_workload(arch: str, device: torch.device) -> Workload:
    """A study model exactly as `ndt.run` trains and tracks it (config composed from conf/)."""
    from hydra import compose, initialize_config_dir

    from ndt.bench.runs import CONF_DIR
    from ndt.running.config import register_configs
    from ndt.running.train import build_training, make_tracker, training_step

    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[f"arch={arch}", "dataset=digits", f"trainer.device={device}"])
    state = build_training(cfg, device)
    probe = state.probe

    def tracker(writer: str, with_probe: bool) -> Any:
        from ndt.storage.parquet import MetricsWriter

        state.probe = probe if with_probe else None
        try:
            return make_tracker(cfg, state, MetricsWriter(writer, cfg.tracker.flush_every), f"{arch}__bench")
        finally:
            state.probe = probe

    state.model.train()
    return Workload(arch, lambda: training_step(state), tracker, device)


def gpt2_model() -> nn.Module:
    """GPT-2 small, random init, no download (`ndt.models.gpt.gpt2_small`)."""
    from ndt.models.gpt import gpt2_small

    model: nn.Module = gpt2_small()
    return model


def gpt2_layers(model: nn.Module) -> list[str]:
    """The measured sites of each block: attention output, the MLP's hidden layer and its output."""
    blocks = len(model.transformer.h)  # type: ignore[union-attr,arg-type]
    return [f"transformer.h.{i}.{site}" for i in range(blocks) for site in ("attn", "mlp.c_fc", "mlp.c_proj")]


def gpt2_workload(device: torch.device, batch: int = 8, seq: int = 256) -> Workload:
    """GPT-2 small trained as a causal language model on random tokens (next-token loss)."""
    from ndt.measure.tracker import HighFrequencyTracker

    torch.manual_seed(0)
    model = gpt2_model().to(device)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    gen = torch.Generator(device=device).manual_seed(0)
    vocab = int(model.config.vocab_size)  # type: ignore[union-attr,arg-type]
    data = torch.randint(0, vocab, (16 * batch, seq), generator=gen, device=device)
    probe = torch.randint(0, vocab, (batch, seq), generator=gen, device=device)
    order = torch.randperm(len(data), generator=gen, device=device)
    position = [0]

    def step() -> torch.Tensor:
        lo = position[0] % (len(data) - batch + 1)
        position[0] += batch
        ids = data[order[lo : lo + batch]]  # indices on the device: no host-to-device copy
        loss = model(input_ids=ids, labels=ids).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    def tracker(writer: str, with_probe: bool) -> Any:
        return HighFrequencyTracker(
            model,
            SAMPLING_FREQUENCY,
            layers=gpt2_layers(model),
            probe={"input_ids": probe} if with_probe else None,
            writer=writer,
            arch="gpt2_small",
        )

    return Workload("gpt2_small", step, tracker, device)


def timed_run(work: Workload, steps: int, tracked: bool, with_probe: bool) -> float:
    """Seconds for `steps` optimizer steps (tracked: with the tracker made, fed and closed), GPU drained."""
    with tempfile.TemporaryDirectory() as tmp:
        _drain(work.device)
        t0 = time.perf_counter()
        tracker = work.tracker(f"{tmp}/metrics", with_probe) if tracked else None
        for step in range(steps):
            loss = work.step()
            if tracker is not None:
                tracker.log(step, loss.detach())
        if tracker is not None:
            tracker.close()
        _drain(work.device)
        return time.perf_counter() - t0


def median_overhead(pairs: Sequence[tuple[float, float]]) -> float:
    """Median over (untracked s, tracked s) pairs of tracked / untracked - 1."""
    return statistics.median(tracked / base - 1 for base, tracked in pairs)


def bench_overhead(
    device: torch.device, names: Sequence[str] = (*STUDY_ARCHS, "gpt2_small")
) -> list[dict[str, Any]]:
    """Paired untracked/tracked runs per model and tracker setting (see the module docstring)."""
    rows = []
    for name in names:
        work = gpt2_workload(device) if name == "gpt2_small" else study_workload(name, device)
        steps, n_pairs = OVERHEAD_PLAN[name]
        timed_run(work, max(steps // 4, 10), tracked=True, with_probe=True)  # warm-up: kernels, allocator
        for with_probe in (True, False):
            pairs = []
            for i in range(n_pairs):
                order = (False, True) if i % 2 == 0 else (True, False)  # alternate: drift cancels
                t = {tracked: timed_run(work, steps, tracked, with_probe) for tracked in order}
                pairs.append((t[False], t[True]))
            base = statistics.median(p[0] for p in pairs)
            rows.append(
                {
                    "model": name,
                    "probe": with_probe,
                    "steps": steps,
                    "pairs": n_pairs,
                    "step_ms": 1e3 * base / steps,
                    "overhead": median_overhead(pairs),
                    "per_measurement_ms": 1e3
                    * statistics.median(tr - b for b, tr in pairs)
                    / len(range(0, steps, SAMPLING_FREQUENCY)),
                }
            )
        del work
        torch.cuda.empty_cache()
    return rows


def report_overhead(rows: list[dict[str, Any]]) -> str:
    lines = [
        f"tracking overhead on CUDA, a measurement every {SAMPLING_FREQUENCY} steps, close() included "
        f"(median of paired runs; target <= {100 * TARGET_OVERHEAD:.0f}%):"
    ]
    for r in rows:
        setting = "probe          " if r["probe"] else "training forward"
        verdict = "ok" if r["overhead"] <= TARGET_OVERHEAD else "above target"
        lines.append(
            f"  {r['model']:20s} {setting}: {100 * r['overhead']:6.2f}% ({r['per_measurement_ms']:.2f} ms per "
            f"measurement, {r['step_ms']:.2f} ms per step, {r['pairs']} pairs of {r['steps']} steps) {verdict}"
        )
    return "\n".join(lines)


# ------------------------------------------------------------------ 3. runs at once


def project_sweep(batch_wall_s: float, k: int, n_runs: int = PAPER_RUNS) -> float:
    """Wall seconds of an `n_runs` sweep run k at a time, each wave as long as the measured batch of k.

    ceil(n_runs / k) waves of `batch_wall_s` each: the last, partial wave is counted whole, and each
    wave pays the process start-up again (joblib's workers are reused, so this errs long).
    """
    return math.ceil(n_runs / k) * batch_wall_s


def concurrent_batch(
    k: int, results: Path, cores: int, device: str = "cuda", overrides: Sequence[str] = ()
) -> float:
    """Wall seconds of k study-protocol runs started together through the joblib launcher.

    `device` and `overrides` (extra Hydra overrides) let the tests run a short batch on the CPU.
    """
    if k % len(STUDY_ARCHS):
        raise ValueError(f"k must be a multiple of {len(STUDY_ARCHS)}, got {k}")
    seeds = ",".join(str(s) for s in range(k // len(STUDY_ARCHS)))
    cmd = [
        sys.executable,
        "-m",
        "ndt.run",
        "-m",
        "hydra/launcher=joblib",
        f"hydra.launcher.n_jobs={k}",
        f"arch={','.join(STUDY_ARCHS)}",
        f"seed={seeds}",
        "dataset=digits",
        "protocol=study",
        f"trainer.device={device}",
        f"trainer.num_threads={max(1, cores // k)}",  # k processes share the cores
        "trainer.progress=log",
        "trainer.log_every=1000",
        f"sweep_name=k{k}",
        f"paths.results_dir={results}",
        *overrides,
    ]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"the sweep of {k} runs failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    statuses = [json.loads(p.read_text())["status"] for p in (results / f"k{k}").glob("*/run.json")]
    if statuses.count("complete") != k:
        raise RuntimeError(f"the sweep of {k} runs ended with statuses {statuses}")
    return wall


def bench_concurrency(ks: Sequence[int] = CONCURRENCY, deadline: float = math.inf) -> list[dict[str, Any]]:
    """One batch per k (see `concurrent_batch`); a k whose batch would end after `deadline`
    (``time.perf_counter()``; guessed as the last batch's wall time scaled by k) is left out."""
    cores = os.cpu_count() or 1
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for k in ks:
            if rows and time.perf_counter() + rows[-1]["wall_s"] * k / rows[-1]["k"] > deadline:
                print(f"  n_jobs={k}: left out, it would pass the 5-minute budget", flush=True)
                continue
            wall = concurrent_batch(k, Path(tmp), cores)
            rows.append({"k": k, "wall_s": wall, "per_run_s": wall / k, "sweep_s": project_sweep(wall, k)})
    return rows


def report_concurrency(rows: list[dict[str, Any]]) -> str:
    lines = [
        f"runs at once on one GPU (hydra/launcher=joblib, protocol=study, {', '.join(STUDY_ARCHS)} mixed; "
        f"the {PAPER_RUNS}-run paper sweep projected; target <= {TARGET_SWEEP_S // 60} min):"
    ]
    for r in rows:
        lines.append(
            f"  n_jobs={r['k']:3d}: {r['k']} runs in {r['wall_s']:6.1f} s ({r['per_run_s']:5.1f} s per run) -> "
            f"paper sweep ~{r['sweep_s'] / 60:5.1f} min"
        )
    best = min(rows, key=lambda r: r["sweep_s"])
    lines.append(
        f"  fastest: n_jobs={best['k']} (~{best['sweep_s'] / 60:.1f} min): python -m ndt.run +sweep=paper "
        f"hydra/launcher=joblib hydra.launcher.n_jobs={best['k']} trainer.device=cuda "
        f"trainer.num_threads={max(1, (os.cpu_count() or 1) // best['k'])}"
    )
    return "\n".join(lines)


# ------------------------------------------------------------------ entry point

SECTIONS = ("overhead", "runs", "concurrency")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ndt.bench.gpu", description=__doc__.split("\n")[0])
    parser.add_argument("which", nargs="*", help=f"sections, of {SECTIONS} (default: all)")
    parser.add_argument(
        "--ks", default=",".join(map(str, CONCURRENCY)), help="runs at once to try (multiples of 3)"
    )
    args = parser.parse_args(argv)
    which = args.which or list(SECTIONS)
    if unknown := set(which) - set(SECTIONS):
        parser.error(f"unknown section(s) {sorted(unknown)}; choose from {SECTIONS}")
    require_cuda()
    from ndt.bench.timing import machine_line

    t0 = time.perf_counter()
    print(machine_line(), flush=True)
    device = torch.device("cuda")
    if "overhead" in which:
        from ndt.running.numerics import numerics

        with numerics(tf32=False, deterministic=True, device=device):  # conf/trainer's defaults, as a run
            print(report_overhead(bench_overhead(device)), flush=True)
    if "runs" in which:
        from ndt.bench.runs import bench_runs, report_runs

        print(report_runs(bench_runs(STUDY_ARCHS, device="cuda", protocols=("study",))), flush=True)
    if "concurrency" in which:
        ks = [int(k) for k in args.ks.split(",") if k]
        print(report_concurrency(bench_concurrency(ks, deadline=t0 + BUDGET_S)), flush=True)
    print(f"bench-gpu: {time.perf_counter() - t0:.0f} s in all (target < 300 s)", flush=True)


if __name__ == "__main__":
    main()
