"""One writer per run folder: an advisory lock on ``<checkpoint_dir>.lock`` while a trainer runs.

``flock`` is released by the kernel when its holder exits, however it exits, so a lock left by a
killed trainer is simply taken over; the file's text (PID, host, start time) is only there to
name the holder in the refusal. The lock file sits beside the checkpoint folder, not in it, so it
never becomes part of the folder DVC caches.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from pathlib import Path

from pico.errors import TrainingFailed


class RunLock:
    def __init__(self, checkpoint_dir: str | Path):
        base = Path(checkpoint_dir).resolve()
        self.path = base.with_name(f"{base.name}.lock")
        self.fh = None

    def acquire(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = self.path.open("a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            fh.close()
            raise TrainingFailed(
                f"{self.path.with_suffix('')} is in use by a running trainer ({holder}); "
                "wait for it to end or stop it, then rerun"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"PID {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        fh.flush()
        self.fh = fh
        return self

    def release(self) -> None:
        if self.fh is not None:
            fcntl.flock(self.fh, fcntl.LOCK_UN)
            self.fh.close()
            self.fh = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
