"""Stop a trainer whose ``dvc repro`` (or ``dvc exp run``) is gone.

Killing DVC with SIGKILL (or a crash of DVC, or of the Prefect flow that ran it) does not reach the
stage's process: it is re-parented and trains on, orphaned, while the next ``dvc repro`` starts
another trainer on the same folder (the run lock refuses it, naming the orphan). ``ParentWatch``
finds the nearest ancestor process that is DVC, and a daemon thread checks every few seconds that
this very process (same PID *and* start time, so a reused PID does not fool it) is still alive.
The trainer reads ``gone`` at each log interval, saves a checkpoint and stops.

Processes started outside DVC (a direct ``pico train``, ``nohup``, tests) have no DVC ancestor and
are never stopped by this. ``PICO_WATCH_PID`` names the process to watch explicitly (e.g. a
scheduler that is not DVC). Linux only (``/proc``); elsewhere nothing is watched.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent PID, start time in clock ticks) of a live process, or None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # the command name may hold spaces and parentheses
    if fields[0] in ("Z", "X"):  # a zombie has exited; only its exit status is left
        return None
    return int(fields[1]), int(fields[19])


def _is_dvc(pid: int) -> bool:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    names = [os.path.basename(a.decode(errors="replace")) for a in argv[:3]]
    # `dvc …`, `python /path/to/dvc …`, `python -m dvc …`
    return bool(names) and (
        names[0] == "dvc" or (names[0].startswith("python") and (names[1:2] == ["dvc"] or names[1:3] == ["-m", "dvc"]))
    )


def find_supervisor(pid: int | None = None) -> tuple[int, int] | None:
    """(PID, start time) of the process to watch: ``$PICO_WATCH_PID``, else the nearest DVC ancestor."""
    if os.environ.get("PICO_WATCH_PID"):
        target = int(os.environ["PICO_WATCH_PID"])
        found = _stat(target)
        return (target, found[1]) if found else None
    seen, current = set(), _stat(pid or os.getpid())
    while current is not None and current[0] > 1 and current[0] not in seen:
        parent = current[0]
        seen.add(parent)
        if _is_dvc(parent):
            started = _stat(parent)
            return (parent, started[1]) if started else None
        current = _stat(parent)
    return None


class ParentWatch:
    """``gone`` becomes True once the supervising DVC process has exited."""

    def __init__(self, interval_s: float = 2.0):
        self.supervisor = find_supervisor()
        self.gone = False
        self._stop = threading.Event()
        if self.supervisor is not None:
            threading.Thread(target=self._watch, args=(interval_s,), name="pico-parentwatch", daemon=True).start()

    def describe(self) -> str:
        return f"PID {self.supervisor[0]}" if self.supervisor else "none"

    def _watch(self, interval_s: float) -> None:
        pid, started = self.supervisor
        while not self._stop.wait(interval_s):
            now = _stat(pid)
            if now is None or now[1] != started:
                self.gone = True
                return

    def close(self) -> None:
        self._stop.set()
