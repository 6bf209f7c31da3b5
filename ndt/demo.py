"""`python -m ndt.demo`: a short tracked training on data generated in-process (no download, no GPU).

A 784-128-64-10 MLP learns a random teacher's labels for 300 steps; the tracker measures every layer
every 5 steps, streams the rows to Parquet and finds jumps in the layer-mean stable rank.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn

from ndt import HighFrequencyTracker, read_metrics


def run_demo(out_dir: Path, steps: int = 300, seed: int = 0) -> Path:
    """Train, track and write Parquet under `out_dir`; return the metrics directory."""
    torch.manual_seed(seed)
    teacher = torch.randn(784, 10)
    x = torch.randn(2048, 784)
    y = (x @ teacher).argmax(dim=1)  # a learnable labelling
    probe = x[:160]
    model = nn.Sequential(nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    metrics_dir = out_dir / "metrics"
    with HighFrequencyTracker(
        model,
        sampling_frequency=5,
        probe=probe,
        writer=metrics_dir,
        arch="mlp_demo",
        dataset="synthetic",
        seed=seed,
    ) as tracker:
        for step in range(steps):
            idx = torch.randint(0, x.shape[0], (32,))
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            tracker.log(step, loss.item())
        jumps = tracker.detect_jumps(metric="stable_rank")
    df = read_metrics(metrics_dir)
    accuracy = (model(x).argmax(1) == y).float().mean().item()
    print(f"trained {steps} steps: final loss {loss.item():.3f}, accuracy {accuracy:.1%}")
    print(
        f"{len(df)} rows ({df.step.nunique()} measurements x {df.layer.nunique()} layers), {len(jumps)} jumps"
    )
    print(f"results: {metrics_dir.resolve()}  (read with ndt.read_metrics or pandas.read_parquet)")
    return metrics_dir


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ndt.demo", description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("results/demo"), help="output directory")
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args(argv)
    if (args.out / "metrics").exists():
        import shutil

        shutil.rmtree(args.out / "metrics")  # the demo's own output: safe to replace
    run_demo(args.out, args.steps)


if __name__ == "__main__":
    main()
