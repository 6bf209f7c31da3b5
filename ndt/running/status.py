"""Where a sweep stands, from its files alone: done, skipped, running, failed and missing runs.

Pure functions over a sweep directory (see `ndt.storage.layout`); nothing asks SLURM, so it works on a
laptop copy of a cluster's results and on a sweep still in progress. Per run directory:

- **done**: the COMPLETE marker exists and run.json's status is ``complete``.
- **skipped**: status ``skipped`` (an incompatible architecture/dataset pair); the reason is its error.
- **failed**: status ``failed`` (the reason is the first line of run.json's error), or a run that
  stopped giving signs of life: status ``running`` (or a run that started but has no run.json yet)
  with a heartbeat older than ``stale_after_s`` (reason ``no heartbeat for N min: the process died``;
  ``stale`` is then True). A job that was requeued and waits in the queue looks like this too until it
  starts again and resumes.
- **running**: status ``running`` with a fresh heartbeat (touched at every checkpoint and log line),
  or any run whose lock (``ndt.storage.lock``) a live process holds: ``holder`` names its PID and host.
- **missing**: expected by the sweep, but no directory yet (pending in the queue, or never ran).

The expected runs come from the ``multirun.yaml`` that Hydra writes into the sweep directory when a
multirun starts: its sweeper parameters and command-line overrides are expanded the way Hydra's basic
sweeper expands them (the cartesian product of every comma list), and each job's run directory name
is ``<arch>__<dataset>__s<seed>`` with the values its overrides set, else the config's. Without a
``multirun.yaml`` (a single run, or a sweep made by hand) or with another sweeper, nothing is
reported missing: the runs are those on disk. When the same sweep directory received several
multiruns, the last one's runs are the expected ones.

Files a resume found damaged and moved under ``set_aside/`` are listed per run (``set_aside``), so
that a user sees them; they are never deleted.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ndt.storage.layout import (
    HEARTBEAT,
    LOG_FILE,
    RUN_JSON,
    SET_ASIDE_DIR,
    is_complete,
    read_run_json,
    run_name,
)
from ndt.storage.lock import lock_holder

#: What `run_status` reports, in the order counts are printed.
STATES = ("done", "skipped", "running", "failed", "missing")
#: Default age, in seconds, after which a run without a fresh heartbeat counts as dead. The runner
#: touches the heartbeat every ``trainer.log_every`` steps (seconds apart); 10 min leaves room for a
#: slow data load or a busy shared filesystem.
DEFAULT_STALE_AFTER_S = 600.0
#: The file Hydra writes into a sweep directory at the start of a multirun.
MULTIRUN_YAML = "multirun.yaml"
#: Hydra's own sweeper: the one whose expansion `expected_runs` reproduces.
BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"


@dataclass(frozen=True)
class RunStatus:
    """One run of a sweep.

    Attributes:
        name: ``<arch>__<dataset>__s<seed>``, the run directory's name.
        state: one of `STATES`.
        reason: why a run failed or was skipped (one line); None otherwise.
        stale: True for a run that failed by silence (status running, heartbeat too old).
        heartbeat_age_s: seconds since the last sign of life (heartbeat, else run.json / run.log);
            None for missing runs.
        slurm: the SLURM job ids run.json records (``slurm_job_id``, ``slurm_array_job_id``, ...), or {}.
        holder: who holds the run's lock now ("PID 123 on host n1 (since ...)"), or None.
        set_aside: files moved under ``set_aside/`` as damaged, relative to it (e.g. ``metrics/part-00003.parquet``).
    """

    name: str
    state: str
    reason: str | None = None
    stale: bool = False
    heartbeat_age_s: float | None = None
    slurm: dict[str, str] = field(default_factory=dict)
    holder: str | None = None
    set_aside: tuple[str, ...] = ()


@dataclass(frozen=True)
class SweepStatus:
    """Every run of a sweep directory, sorted by name.

    Attributes:
        sweep_dir: the directory read.
        runs: one `RunStatus` per run on disk or expected.
        expected: names the sweep's multirun.yaml expects, or None when it could not tell.
    """

    sweep_dir: Path
    runs: tuple[RunStatus, ...]
    expected: tuple[str, ...] | None

    def counts(self) -> dict[str, int]:
        """Number of runs in each state, every state of `STATES` present (0 when none)."""
        out = dict.fromkeys(STATES, 0)
        for run in self.runs:
            out[run.state] += 1
        return out

    def in_state(self, state: str) -> list[RunStatus]:
        """The runs in `state`, sorted by name."""
        return [r for r in self.runs if r.state == state]

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready form: sweep_dir, expected, counts, runs (one dict per `RunStatus`)."""
        return {
            "sweep_dir": str(self.sweep_dir),
            "expected": None if self.expected is None else list(self.expected),
            "counts": self.counts(),
            "runs": [asdict(r) for r in self.runs],
        }


def _first_line(text: Any) -> str | None:
    if text is None:
        return None
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    return lines[0] if lines else None


def _format_age(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def last_sign_of_life(run_dir: Path) -> float | None:
    """Unix time of the run's last sign of life, or None when the directory holds nothing to date.

    The heartbeat file holds the writer's unix time (its modification time serves when it cannot be
    read); without one (killed before training started), the newest modification time of run.json,
    run.log and the directory itself.
    """
    beat = run_dir / HEARTBEAT
    try:
        return float(beat.read_text().strip())
    except (OSError, ValueError):
        pass
    times = [p.stat().st_mtime for p in (beat, run_dir / RUN_JSON, run_dir / LOG_FILE, run_dir) if p.exists()]
    return max(times) if times else None


def run_status(
    run_dir: str | Path, *, stale_after_s: float = DEFAULT_STALE_AFTER_S, now: float | None = None
) -> RunStatus:
    """The state of one run directory (see the module docstring for the rules).

    Args:
        run_dir: ``<sweep>/<arch>__<dataset>__s<seed>``; it need not hold a run.json yet.
        stale_after_s: a run whose last sign of life is older than this many seconds is dead.
        now: the current unix time (tests pass their own); default ``time.time()``.
    """
    run_dir = Path(run_dir)
    now = time.time() if now is None else now
    beat = last_sign_of_life(run_dir)
    age = None if beat is None else max(0.0, now - beat)
    try:
        record = read_run_json(run_dir)
    except FileNotFoundError:
        record = {}  # started (Hydra made the directory) but the runner has not written its record yet
    except (OSError, ValueError) as e:
        return RunStatus(run_dir.name, "failed", f"unreadable {RUN_JSON}: {e}", heartbeat_age_s=age)
    slurm = {str(k): str(v) for k, v in (record.get("slurm") or {}).items()}
    status = record.get("status", "running")
    holder = lock_holder(run_dir)
    aside_dir = run_dir / SET_ASIDE_DIR
    aside = tuple(sorted(str(p.relative_to(aside_dir)) for p in aside_dir.rglob("*") if p.is_file()))

    def make(state: str, reason: str | None = None, stale: bool = False) -> RunStatus:
        return RunStatus(run_dir.name, state, reason, stale, age, slurm, holder, aside)

    if status == "complete" and is_complete(run_dir):
        return make("done")
    if status == "skipped":
        return make("skipped", _first_line(record.get("error")))
    if status == "failed":
        return make("failed", _first_line(record.get("error")) or "failed (no error recorded)")
    if status not in ("running", "complete"):  # complete without its marker: it was finishing
        return make("failed", f"unknown status {status!r} in {RUN_JSON}")
    if holder is not None or (age is not None and age <= stale_after_s):
        return make("running")  # a held lock means a live process, whatever the heartbeat says
    silence = "never" if age is None else f"for {_format_age(age)}"
    return make("failed", f"no heartbeat {silence}: the process died", stale=True)


def expected_runs(sweep_dir: str | Path) -> list[str] | None:
    """Run directory names the sweep's ``multirun.yaml`` expects, in sweep order; None if unknown.

    Expands the sweeper's ``params`` and the command-line overrides (``hydra.overrides.task``) as
    Hydra's BasicSweeper does. None when there is no multirun.yaml, another sweeper made the sweep,
    or the overrides cannot be parsed.
    """
    path = Path(sweep_dir) / MULTIRUN_YAML
    if not path.is_file():
        return None
    # Imported here: only this function needs Hydra. BasicSweeper.split_arguments is the very code
    # that expanded the sweep (Hydra 1.3 keeps it in an internal module).
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        cfg = OmegaConf.load(path)
        hydra = OmegaConf.to_container(cfg.hydra, resolve=False)
    except (OSError, OmegaConfBaseException, AttributeError):
        return None
    if not isinstance(hydra, dict):
        return None
    sweeper = hydra.get("sweeper") or {}
    if sweeper.get("_target_", BASIC_SWEEPER) != BASIC_SWEEPER:
        return None
    params = sweeper.get("params") or {}
    task = (hydra.get("overrides") or {}).get("task") or []
    arguments = [f"{k}={v}" for k, v in params.items()] + [str(t) for t in task]
    try:
        overrides = OverridesParser.create().parse_overrides(arguments)
        jobs = BasicSweeper.split_arguments(overrides, None)[0]
    except HydraException:
        return None
    defaults = {
        "arch": OmegaConf.select(cfg, "arch.name", default=None, throw_on_resolution_failure=False),
        "dataset": OmegaConf.select(cfg, "dataset.name", default=None, throw_on_resolution_failure=False),
        "seed": OmegaConf.select(cfg, "seed", default=None, throw_on_resolution_failure=False),
    }
    return [_job_run_name(job, defaults) for job in jobs]


def _job_run_name(job: Iterable[str], defaults: dict[str, Any]) -> str:
    """``<arch>__<dataset>__s<seed>`` of one job: its overrides' values, else the config's."""
    values = dict(defaults)
    for override in job:
        key, _, value = override.partition("=")
        key = key.lstrip("+~").split("@")[0]  # `+arch=x`, `++seed=1`, `arch@pkg=x` name the same axis
        if key in values:
            values[key] = value
    seed = values["seed"]
    return run_name(str(values["arch"]), str(values["dataset"]), None if seed in (None, "null") else seed)


def _is_run_dir(path: Path, expected: set[str]) -> bool:
    # A run directory holds the runner's or Hydra's files; `tables/` and `.submitit/` do not.
    if not path.is_dir() or path.name.startswith("."):
        return False
    return path.name in expected or any((path / f).exists() for f in (RUN_JSON, LOG_FILE, ".hydra"))


def sweep_status(
    sweep_dir: str | Path, *, stale_after_s: float = DEFAULT_STALE_AFTER_S, now: float | None = None
) -> SweepStatus:
    """The state of every run of `sweep_dir`: those on disk, and those its multirun.yaml expects.

    Args:
        sweep_dir: ``<results_dir>/<sweep_name>``.
        stale_after_s: see `run_status`.
        now: the current unix time; default ``time.time()``.

    Raises:
        FileNotFoundError: `sweep_dir` is not a directory.
    """
    root = Path(sweep_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"no sweep directory at {root}")
    now = time.time() if now is None else now
    expected = expected_runs(root)
    wanted = set(expected or ())
    runs = {
        p.name: run_status(p, stale_after_s=stale_after_s, now=now)
        for p in root.iterdir()
        if _is_run_dir(p, wanted)
    }
    for name in wanted - runs.keys():
        runs[name] = RunStatus(name, "missing")
    return SweepStatus(
        root, tuple(runs[n] for n in sorted(runs)), None if expected is None else tuple(expected)
    )


def format_report(status: SweepStatus) -> str:
    """The human-readable summary: a counts line, then the failed, running and missing runs.

    Example::

        results/smoke: 3 runs (3 expected by multirun.yaml): 1 done, 0 skipped, 1 running, 1 failed, 0 missing
        failed:
          cnn_shallow__digits__s0: no heartbeat for 12 min: the process died  [SLURM job 41_1]
        running:
          mlp_narrow__digits__s0: heartbeat 3 s ago
    """
    counts = status.counts()
    source = (
        "no multirun.yaml"
        if status.expected is None
        else f"{len(status.expected)} expected by {MULTIRUN_YAML}"
    )
    lines = [
        f"{status.sweep_dir}: {len(status.runs)} run{'' if len(status.runs) == 1 else 's'} ({source}): "
        + ", ".join(f"{counts[s]} {s}" for s in STATES)
    ]
    for state in ("failed", "running", "missing"):
        runs = status.in_state(state)
        if runs:
            lines.append(f"{state}:")
        for run in runs:
            if state == "missing":
                lines.append(f"  {run.name}")
                continue
            detail = (
                str(run.reason)
                if state == "failed"
                else f"heartbeat {_format_age(run.heartbeat_age_s or 0.0)} ago"
            )
            if state == "running" and run.holder:
                detail += f", locked by {run.holder}"
            job = _slurm_job(run.slurm)
            lines.append(f"  {run.name}: {detail}" + (f"  [SLURM job {job}]" if job else ""))
    damaged = [r for r in status.runs if r.set_aside]
    if damaged:
        lines.append(f"set aside as damaged (under <run>/{SET_ASIDE_DIR}/; recomputed on resume):")
        lines += [f"  {r.name}: {', '.join(r.set_aside)}" for r in damaged]
    return "\n".join(lines)


def _slurm_job(ids: dict[str, str]) -> str | None:
    """``<array>_<task>`` for an array task (what squeue and sacct show), else the job id."""
    if "slurm_array_job_id" in ids and "slurm_array_task_id" in ids:
        return f"{ids['slurm_array_job_id']}_{ids['slurm_array_task_id']}"
    return ids.get("slurm_job_id")
