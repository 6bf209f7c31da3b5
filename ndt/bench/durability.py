"""The cost of durable writes: a Parquet part and a checkpoint, fsynced (as ndt writes them) or not.

`ndt.storage.durable.replace_durably` adds two fsyncs (the file, then its directory) to each write.
A study-protocol run writes about 50 files durably (run.json and markers, 28 parts: one per 50
measurements and one at each of the 20 checkpoints, 20 checkpoints), so the extra cost per run is
about 50 x the difference measured here; the report prints it beside the run's wall time.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from ndt.storage.durable import replace_durably, temporary_path
from ndt.storage.schema import METRICS_SCHEMA

#: Files a study-protocol run (2,000 steps, a measurement every 5, flush_every 50, a checkpoint every
#: 100) writes durably: 2 run.json + 1 marker + 8 full parts + 20 parts flushed at checkpoints + 20
#: checkpoints.
FILES_PER_RUN = {"part": 28, "checkpoint": 20, "small": 3}


@dataclass
class DurabilityRow:
    """Median milliseconds per write, durable and not."""

    kind: str
    bytes: int
    durable_ms: float
    plain_ms: float

    @property
    def extra_ms(self) -> float:
        return self.durable_ms - self.plain_ms


def _plain_replace(write: Callable[[Path], Any], dest: Path) -> None:
    tmp = temporary_path(dest)
    write(tmp)
    os.replace(tmp, dest)


def _part_table(measurements: int = 50, layers: int = 5) -> pa.Table:
    n = measurements * layers
    rng = np.random.default_rng(0)
    arrays = []
    for f in METRICS_SCHEMA:
        if pa.types.is_dictionary(f.type) or pa.types.is_string(f.type):
            arrays.append(pa.array(["mlp_narrow__digits__s0"] * n).cast(f.type))
        elif pa.types.is_integer(f.type):
            arrays.append(pa.array(np.arange(n) % 100).cast(f.type))
        else:
            arrays.append(pa.array(rng.random(n)).cast(f.type))
    return pa.Table.from_arrays(arrays, schema=METRICS_SCHEMA)


def _checkpoint() -> dict[str, Any]:
    from ndt.models import build_model

    model = build_model("mlp_narrow", "digits")
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(4, 1, 28, 28)).sum().backward()
    opt.step()
    return {"model": model.state_dict(), "optimizer": opt.state_dict(), "rng_cpu": torch.get_rng_state()}


def bench_durability(repeats: int = 15, where: str | os.PathLike[str] | None = None) -> list[DurabilityRow]:
    """Write a study-size part and an mlp_narrow checkpoint `repeats` times each way; medians.

    Args:
        repeats: writes per kind and way.
        where: directory to write in (default: a temporary one under the current directory, on the
            disk results usually go to; /tmp may be memory, where fsync costs nothing).
    """
    table, state = _part_table(), _checkpoint()
    writers: dict[str, Callable[[Path], Any]] = {
        "part": lambda p: pq.write_table(table, p, compression="zstd"),
        "checkpoint": lambda p: torch.save(state, p),
    }
    rows = []
    with tempfile.TemporaryDirectory(dir=where or ".", prefix=".bench-durability-") as tmp:
        for kind, write in writers.items():
            times: dict[str, list[float]] = {"durable": [], "plain": []}
            dest = Path(tmp) / f"{kind}.bin"
            for _ in range(repeats):  # alternate, so that drift on a shared machine hits both alike
                for way, replace in (("durable", replace_durably), ("plain", _plain_replace)):
                    t = time.perf_counter()
                    replace(write, dest)
                    times[way].append(time.perf_counter() - t)
            rows.append(
                DurabilityRow(
                    kind,
                    dest.stat().st_size,
                    1e3 * float(np.median(times["durable"])),
                    1e3 * float(np.median(times["plain"])),
                )
            )
    return rows


def report_durability(rows: list[DurabilityRow]) -> str:
    """The per-write costs and the extra time per study-protocol run."""
    lines = ["durable writes (fsync of file and directory) vs rename only, median per write:"]
    per_run, files = 0.0, 0
    for r in rows:
        lines.append(
            f"  {r.kind:10s} {r.bytes / 1024:7.0f} KiB: {r.durable_ms:6.2f} ms vs {r.plain_ms:6.2f} ms "
            f"(+{r.extra_ms:5.2f} ms)"
        )
        per_run += FILES_PER_RUN[r.kind] * max(r.extra_ms, 0.0)
        files += FILES_PER_RUN[r.kind]
    lines.append(f"  per study-protocol run ({files} parts and checkpoints): about +{per_run / 1e3:.2f} s")
    return "\n".join(lines)
