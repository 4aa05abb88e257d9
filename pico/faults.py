"""Fault injection for the tests, set by environment variables and active only in a run that
starts at step 0 (so the resumed run after the fault runs clean):

- ``PICO_FAULT_NAN_AT_STEP=N``: the training loss of step N reads NaN (a divergence);
- ``PICO_FAULT_KILL_AT_STEP=N``: the process SIGKILLs itself right after step N's checkpoint;
- ``PICO_FAULT_STEP_SECONDS=S``: every step takes S seconds longer (a slow machine: a long run
  to watch in a test), resumed runs too.
"""

from __future__ import annotations

import math
import os
import signal
import time

import torch


class Faults:
    def __init__(self, fresh_run: bool):
        self.nan_at = int(os.environ.get("PICO_FAULT_NAN_AT_STEP", "0")) if fresh_run else 0
        self.kill_at = int(os.environ.get("PICO_FAULT_KILL_AT_STEP", "0")) if fresh_run else 0
        self.step_seconds = float(os.environ.get("PICO_FAULT_STEP_SECONDS", "0"))

    def loss(self, step: int, loss: torch.Tensor) -> torch.Tensor:
        return torch.full_like(loss, math.nan) if step == self.nan_at else loss

    def after_step(self, step: int) -> None:
        if self.step_seconds:
            time.sleep(self.step_seconds)
        if step == self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
