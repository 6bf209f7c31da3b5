"""Durable file replacement: what is renamed into place survives a power loss, in write order.

`os.replace` alone is atomic against a killed process, not against a crash of the machine: the kernel
may persist the rename before the data, leaving an empty file under the final name, and may persist
two files out of order. Here every write goes to a hidden temporary file in the same directory, is
fsynced, renamed, and then the directory is fsynced: when `replace_durably` returns, the new file and
its name are on disk, so a file written later can never survive a crash that an earlier one did not.

Cost: two fsyncs per file (data, then directory); one file per Parquet part and per checkpoint, so a
run of the study's protocol pays about 30 of them (see ``make bench``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Flush a directory's entries (new, renamed or removed names) to disk."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temporary_path(dest: Path) -> Path:
    """The hidden name `dest` is written under first (pyarrow and pandas readers skip dot files)."""
    return dest.with_name(f".{dest.name}.tmp")


def replace_durably(write: Callable[[Path], Any], dest: str | os.PathLike[str]) -> Path:
    """Write `dest` through a temporary file: write, fsync, rename, fsync the directory.

    Args:
        write: called with the temporary path; writes the whole file there.
        dest: the final path.

    Returns:
        `dest` as a Path, complete and durable.
    """
    dest = Path(dest)
    tmp = temporary_path(dest)
    try:
        write(tmp)
        with tmp.open("rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(dest.parent)
    return dest


def write_text_durably(dest: str | os.PathLike[str], text: str) -> Path:
    """`replace_durably` for a small text file (run.json, markers)."""
    return replace_durably(lambda p: p.write_text(text, encoding="utf-8"), dest)


def unlink_durably(path: str | os.PathLike[str]) -> None:
    """Remove a file and make the removal durable (no-op when it is absent)."""
    path = Path(path)
    try:
        path.unlink()
    except FileNotFoundError:
        return
    fsync_dir(path.parent)
