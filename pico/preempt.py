"""Stop on request, never mid-write: SIGTERM (a spot VM, ``scancel``, a pod shutting down) and
SIGINT (Ctrl-C) ask the trainer to finish the optimizer step it is in, write a checkpoint and exit.

``StopRequest`` replaces Python's handlers while a trainer runs: the first signal only records
itself; the loop reads it before every step and stops with one line once the checkpoint is written. No exception is raised
from inside a kernel or a checkpoint write, so Ctrl-C is one line rather than a traceback, and a
second signal during the save changes nothing (saves are atomic anyway: ``pico.checkpoint``).

A deadline guards the promise: if the process has not exited ``grace_s`` seconds after the first
signal (a step, an evaluation or a save slower than the grace period a scheduler gives), it says
so, names the checkpoint the rerun will start from, and exits at once. Exit codes follow the shell's
convention for a signal: 128 + the signal's number (143 for SIGTERM, 130 for SIGINT).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequest:
    """Signals turned into a flag the training loop reads between steps."""

    def __init__(self, grace_s: float, on_deadline: Callable[[], str] = lambda: ""):
        self.grace_s, self.on_deadline = grace_s, on_deadline
        self.signum: int | None = None
        self._previous: dict[int, object] = {}
        self._done = threading.Event()

    def install(self) -> StopRequest:
        """Take over SIGTERM and SIGINT (only the main thread may; elsewhere nothing changes)."""
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def uninstall(self) -> None:
        self._done.set()
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""

    @property
    def exit_code(self) -> int:
        return 128 + (self.signum or signal.SIGTERM)

    def request(self, signum: int) -> None:
        """What a signal does (also callable directly, e.g. by a test or another rank's request)."""
        if self.signum is not None:
            print(
                f"{signal.Signals(signum).name} again: already stopping (the checkpoint being written "
                "is not cut short)",
                file=sys.stderr,
                flush=True,
            )
            return
        # nothing printed yet: the trainer's one line, once the checkpoint is written, says it all
        self.signum = signum
        threading.Thread(target=self._deadline, name="pico-stop-deadline", daemon=True).start()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.request(signum)

    def _deadline(self) -> None:
        if self._done.wait(self.grace_s):
            return
        where = self.on_deadline()
        print(
            f"could not finish the step and write a checkpoint within training.stop_grace_s="
            f"{self.grace_s:g} s after {self.name}; exiting without one{': ' + where if where else ''}",
            file=sys.stderr,
            flush=True,
        )
        os._exit(self.exit_code)
