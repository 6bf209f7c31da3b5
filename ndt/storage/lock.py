"""One process per run directory: an advisory lock on ``<run_dir>/lock``.

`run_lock` takes ``fcntl.flock(LOCK_EX | LOCK_NB)`` on the lock file and writes the holder's PID, host
and start time into it. The kernel releases the lock when the process ends, however it ends: a
SIGKILLed or power-cycled owner never blocks a restart, and a lock file left behind by a dead process
is simply taken over. A second process on the same run directory (the same sweep started twice, a
requeued job while the old one still runs) gets `RunLockedError` naming the holder.

flock works across the hosts of a cluster on NFSv4 and Lustre (mounted with ``flock``) and on local
disks; on a file system without it (some NFSv3 mounts) the lock cannot be taken and the error says so.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ndt.storage.layout import LOCK_FILE


class RunLockedError(RuntimeError):
    """Another live process holds the run directory's lock."""


def _describe(info: dict[str, Any]) -> str:
    since = info.get("since")
    when = (
        time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since)) if isinstance(since, int | float) else "?"
    )
    return f"PID {info.get('pid', '?')} on host {info.get('host', '?')} (since {when})"


def _read_info(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


_HELD = (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)


def _flock_retrying(fd: int, tries: int = 5) -> None:
    # A few quick retries: `lock_holder` (ndt.status) holds the lock for an instant when probing it.
    for i in range(tries):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except OSError as err:
            if err.errno not in _HELD or i == tries - 1:
                raise
            time.sleep(0.05)


@contextlib.contextmanager
def run_lock(run_dir: str | os.PathLike[str]) -> Iterator[None]:
    """Hold the run directory's lock for the body of the ``with``.

    Raises:
        RunLockedError: another process holds it (message: its PID, host and start time, and the fix),
            or the file system refuses locks.
    """
    path = Path(run_dir) / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            _flock_retrying(fd)
        except OSError as err:
            if err.errno in _HELD:
                holder = _describe(_read_info(path))
                raise RunLockedError(
                    f"{Path(run_dir)} is being run by another process: {holder}. Two processes on one run "
                    "would overwrite each other's rows, so this one leaves it alone; wait for that process "
                    "to end (or stop it) and run again, and the run resumes from its last checkpoint."
                ) from None
            raise RunLockedError(
                f"cannot lock {path} ({err.strerror}): the file system does not support flock; put "
                "paths.results_dir on one that does (local disk, NFSv4, Lustre mounted with flock)"
            ) from err
        info = {"pid": os.getpid(), "host": socket.gethostname(), "since": round(time.time())}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)  # the holder's details are true only while it holds the lock
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def lock_holder(run_dir: str | os.PathLike[str]) -> str | None:
    """Who holds the run's lock now ("PID 123 on host n1 (since ...)"), or None when nobody does.

    Probes the lock without blocking (takes and releases it when it is free); no lock file: None.
    """
    path = Path(run_dir) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno in _HELD:
                return _describe(_read_info(path))
            return None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
