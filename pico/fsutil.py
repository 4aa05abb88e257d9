"""Atomic file output: write beside the target, fsync, rename. A crash leaves the old file or
none, never a half-written one that looks valid."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "wb") -> Iterator[BinaryIO]:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual permissions
    try:
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_open(path, "w") as fh:
        fh.write(text)


def atomic_write_json(path: str | Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def fsync_path(path: str | Path) -> None:
    """fsync a file or a directory (a directory's entry list, after a rename)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def file_name(name: str) -> str:
    """``name`` (a revision, an experiment, a preset) as one safe path component: characters other
    than letters, digits and ``-_.`` become ``_``."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def free_name(dest: Path) -> Path:
    """``dest``, or ``dest-2``, ``dest-3``, … whichever does not exist yet (a move never overwrites)."""
    n, free = 2, dest
    while free.exists():
        free, n = dest.with_name(f"{dest.name}-{n}"), n + 1
    return free


def link_or_copy(src: str | Path, dest: str | Path) -> None:
    """``dest`` as a hard link to ``src`` (a copy where links cannot be made: another filesystem)."""
    try:
        os.link(src, dest)
    except OSError:
        shutil.copy2(src, dest)


def replace_dir(tmp: Path, final: Path) -> None:
    """Move a fully written temp directory into place (the old one, if any, is removed first)."""
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    fsync_path(final.parent)
