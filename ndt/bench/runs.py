"""Wall time of full study-protocol runs on the embedded digits data, and the share spent measuring.

2,000 Adam steps at batch 32, 400 measurements on the fixed 160-example probe, checkpoints every 100
steps, through the real runner (`run_experiment`). Targets on a 2-core CPU: mlp_narrow under 15 s,
the three together under 3 minutes (the study's runs took 114-377 s each).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir

import ndt
from ndt.running.config import register_configs

ARCHS = ("mlp_narrow", "cnn_deep", "transformer_shallow")
CONF_DIR = Path(ndt.__file__).resolve().parent.parent / "conf"


def bench_runs(archs: tuple[str, ...] = ARCHS, device: str = "cpu") -> list[dict[str, Any]]:
    """Run each architecture once with the study's protocol; return its timings from run.json."""
    from ndt.running.train import run_experiment

    register_configs()
    rows = []
    with (
        tempfile.TemporaryDirectory() as tmp,
        initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"),
    ):
        for arch in archs:
            cfg = compose(
                "config",
                overrides=[
                    f"arch={arch}",
                    "dataset=digits",
                    f"trainer.device={device}",
                    f"paths.results_dir={tmp}",
                    "trainer.progress=log",
                    "trainer.log_every=1000",
                ],
            )
            record = run_experiment(cfg)
            if record["status"] != "complete":
                raise RuntimeError(f"{arch}: {record['status']}: {record.get('error')}")
            t = record["timings"]
            rows.append(
                {
                    "arch": arch,
                    "total_s": t["total_s"],
                    "measure_s": t["measure_s"],
                    "n_measurements": record["n_measurements"],
                    "accuracy": record["final_accuracy"],
                }
            )
    return rows


def report_runs(rows: list[dict[str, Any]]) -> str:
    lines = [
        "study-protocol runs on digits (2,000 steps, 400 measurements; target mlp_narrow < 15 s, all < 180 s):"
    ]
    for r in rows:
        lines.append(
            f"  {r['arch']:20s} {r['total_s']:6.1f} s, measuring {100 * r['measure_s'] / r['total_s']:4.1f}% "
            f"({r['n_measurements']} measurements), test accuracy {100 * r['accuracy']:.1f}%"
        )
    lines.append(f"  together: {sum(r['total_s'] for r in rows):.1f} s")
    return "\n".join(lines)
