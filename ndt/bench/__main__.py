"""`python -m ndt.bench [kernel] [overhead] [conv] [durability] [callbacks] [runs] [aggregate] [view] [huge] [gpt2]`: print the benchmark ratios measured in this run."""

from __future__ import annotations

import argparse

import torch

from ndt.aggregate.bench import bench_aggregate
from ndt.bench.conv import bench_conv, report_conv
from ndt.bench.durability import bench_durability, report_durability
from ndt.bench.huge import bench_huge, report_huge
from ndt.bench.kernel import bench_kernel, report_kernel
from ndt.bench.overhead import bench_overhead, bench_phases, report_overhead, report_phases
from ndt.bench.runs import bench_runs, report_runs
from ndt.bench.timing import machine_line
from ndt.bench.view import bench_view, report_view

BENCHES = (
    "kernel",
    "overhead",
    "conv",
    "durability",
    "callbacks",
    "runs",
    "aggregate",
    "view",
    "huge",
    "gpt2",
)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ndt.bench", description=__doc__)
    parser.add_argument("which", nargs="*", help=f"benchmarks to run, of {BENCHES} (default: all)")
    args = parser.parse_args(argv)
    which = args.which or list(BENCHES)
    unknown = set(which) - set(BENCHES)
    if unknown:
        parser.error(f"unknown benchmark(s) {sorted(unknown)}; choose from {BENCHES}")
    print(machine_line(), flush=True)
    if "kernel" in which:
        print(report_kernel(bench_kernel()), flush=True)
    if "overhead" in which:
        print(report_overhead(bench_overhead()), flush=True)
        print(report_phases(bench_phases()), flush=True)
        if torch.cuda.is_available():
            print(report_overhead(bench_overhead(device="cuda")), flush=True)
    if "conv" in which:
        print(report_conv(bench_conv()), flush=True)
    if "durability" in which:
        print(report_durability(bench_durability()), flush=True)
    if "callbacks" in which:
        try:
            import lightning  # noqa: F401
        except ImportError:
            print("callback overhead: skipped (pip install 'ndt[lightning]', or make install-integrations)")
        else:
            from ndt.bench.callbacks import bench_callbacks, report_callbacks

            print(report_callbacks(bench_callbacks()), flush=True)
    if "runs" in which:
        print(report_runs(bench_runs()), flush=True)
    if "aggregate" in which:
        seconds = bench_aggregate(n_runs=1000)
        print(
            f"aggregation: 1,000 synthetic runs x 400 measurements x 8 layers in {seconds:.1f} s (target < 60 s)"
        )
    if "view" in which:
        try:
            print(report_view(bench_view()), flush=True)
        except RuntimeError as err:  # no Chromium here: the other figures still count
            print(f"view: not measured: {err}", flush=True)

    if "huge" in which:
        print(report_huge(bench_huge()), flush=True)
    if "gpt2" in which:
        try:
            import transformers  # noqa: F401
        except ImportError:
            print("GPT-2 small: skipped (pip install 'ndt[hf]', or make install-integrations)")
        else:
            from ndt.bench.gpt2 import bench_gpt2, report_gpt2

            print(report_gpt2(bench_gpt2()), flush=True)


if __name__ == "__main__":
    main()
