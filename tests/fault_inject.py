"""Run ``python -m ndt.run ARGS`` with a fault planted by the environment (for tests/test_faults.py).

``NDT_FAULT`` (JSON) chooses the fault; without it the run is plain:

- ``{"kind": "write", "k": K, "phase": P}``: SIGKILL this process at the K-th durable write
  (`ndt.storage.durable.replace_durably`: a Parquet part, a checkpoint, run.json, the marker), at phase
  ``mid`` (half the temporary written), ``before_rename`` (temporary complete and fsynced) or
  ``after_rename`` (renamed, directory not yet fsynced).
- ``{"kind": "step", "k": K}``: SIGKILL inside the K-th training step (between writes).
- ``{"kind": "pause", "k": K, "until": PATH}``: at the K-th training step, wait until PATH exists.

Nothing here is part of ndt: the faults are planted by replacing functions of the loaded modules.

``fault_inject.py --serve`` is a fork server, so that 20 kill-and-restart cycles do not pay 20 Python
and torch start-ups: it imports ndt once, then for each request line ``{"args": [...], "fault":
{...} | null, "log": PATH}`` on stdin forks a child that plants the fault and runs ``ndt.run ARGS``
(its output to PATH), and answers ``{"rc": N}`` (-9 for a SIGKILL). The parent never runs torch, so
forking it is safe.
"""

from __future__ import annotations

import json
import os
import runpy
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def plant(fault: dict[str, Any]) -> None:
    import ndt.running.checkpoint as checkpoint
    import ndt.running.train as train
    import ndt.storage.durable as durable
    import ndt.storage.parquet as parquet

    original = durable.replace_durably
    writes = [0]

    def replace_durably(write: Callable[[Path], Any], dest: str | os.PathLike[str]) -> Path:
        writes[0] += 1
        if fault["kind"] != "write" or writes[0] != fault["k"]:
            return original(write, dest)
        tmp = durable.temporary_path(Path(dest))
        if fault["phase"] == "mid":
            write(tmp)
            os.truncate(tmp, tmp.stat().st_size // 2)
            die()
        if fault["phase"] == "before_rename":
            write(tmp)
            with tmp.open("rb+") as f:
                os.fsync(f.fileno())
            die()
        original(write, dest)
        die()
        raise AssertionError("unreachable")

    # Callers bound the name at import: replace it where each looks it up.
    durable.replace_durably = replace_durably
    parquet.replace_durably = replace_durably  # type: ignore[attr-defined]
    checkpoint.replace_durably = replace_durably  # type: ignore[attr-defined]

    step_fn = train.training_step
    steps = [0]

    def training_step(state: Any) -> Any:
        steps[0] += 1
        if steps[0] == fault.get("k") and fault["kind"] == "step":
            die()
        if steps[0] == fault.get("k") and fault["kind"] == "pause":
            while not Path(fault["until"]).exists():
                time.sleep(0.05)
        return step_fn(state)

    train.training_step = training_step


def run_entry_point(args: list[str]) -> int:
    """``python -m ndt.run ARGS`` in this process; its exit status."""
    sys.argv = ["ndt.run", *args]
    try:
        runpy.run_module("ndt.run", run_name="__main__", alter_sys=True)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return 0


def serve() -> None:
    import ndt.running.hydra_callbacks
    import ndt.running.train  # noqa: F401  (imported once, inherited by every child)

    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:  # the child: one run of the entry point, output to its log file
            fd = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            if request.get("fault"):
                plant(request["fault"])
            code = run_entry_point(request["args"])
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        rc = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        print(json.dumps({"rc": rc}), flush=True)


if __name__ == "__main__" and sys.argv[1:] == ["--serve"]:
    serve()
elif __name__ == "__main__":
    spec = os.environ.get("NDT_FAULT")
    if spec:
        plant(json.loads(spec))
    sys.exit(run_entry_point(sys.argv[1:]))
