"""Wall time of full runs on the embedded digits data, and the share spent measuring, per protocol.

2,000 Adam steps at batch 32, 400 measurements on the fixed 160-example probe, checkpoints every 100
steps, through the real runner (`run_experiment`). Targets on a 2-core CPU: mlp_narrow under 15 s,
the three together under 3 minutes (the study's runs took 114-377 s each), for ``protocol=study``; the
corrected protocol (per-position conv measurements, the default) is timed beside it.
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


PROTOCOLS = ("study", "corrected")


def bench_runs(
    archs: tuple[str, ...] = ARCHS, device: str = "cpu", protocols: tuple[str, ...] = PROTOCOLS
) -> list[dict[str, Any]]:
    """Run each architecture once per protocol; return its timings from run.json."""
    from ndt.running.train import run_experiment

    register_configs()
    rows = []
    with (
        tempfile.TemporaryDirectory() as tmp,
        initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"),
    ):
        for protocol, arch in ((p, a) for p in protocols for a in archs):
            cfg = compose(
                "config",
                overrides=[
                    f"arch={arch}",
                    f"protocol={protocol}",
                    f"sweep_name={protocol}",
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
                    "protocol": protocol,
                    "arch": arch,
                    "total_s": t["total_s"],
                    "measure_s": t["measure_s"],
                    "n_measurements": record["n_measurements"],
                    "accuracy": record["final_accuracy"],
                }
            )
    return rows


def report_runs(rows: list[dict[str, Any]]) -> str:
    """The lines `make bench` prints: one block per protocol."""
    lines = []
    for protocol in dict.fromkeys(r["protocol"] for r in rows):
        block = [r for r in rows if r["protocol"] == protocol]
        target = "; target mlp_narrow < 15 s, all < 180 s" if protocol == "study" else ""
        lines.append(f"protocol={protocol} runs on digits (2,000 steps, 400 measurements{target}):")
        for r in block:
            lines.append(
                f"  {r['arch']:20s} {r['total_s']:6.1f} s, measuring {100 * r['measure_s'] / r['total_s']:4.1f}% "
                f"({r['n_measurements']} measurements), test accuracy {100 * r['accuracy']:.1f}%"
            )
        lines.append(f"  together: {sum(r['total_s'] for r in block):.1f} s")
    return "\n".join(lines)
