"""The learning-rate schedule, from ``optim.*``, as plain arithmetic (no torch: the forecast and
the flow use it too).

Warmup is ``(step + 1) / warmup`` (``optim.warmup_start: pico`` gives pico-train's ``step / warmup``,
whose first step runs at lr 0), then ``optim.schedule``: linear to ``min_lr_ratio`` (pico decays to
0), cosine, or constant. A run continued with a new ``max_steps`` gets a plan segment
(``continued_segment``) that keeps the lr continuous. ``area`` is the schedule's running sum — the
"time" a run has trained for in learning-rate units, which is what its loss follows (pico.forecast).
"""

from __future__ import annotations

import math
from typing import Any

from pico.config import Params


def base_factor(params: Params, total: int, step: int) -> float:
    """The schedule's multiplier of optim.lr after ``step`` optimizer steps of a ``total``-step plan."""
    o = params.optim
    warmup, floor = o.warmup_steps, o.min_lr_ratio
    if step < warmup:
        return (step + (o.warmup_start != "pico")) / warmup  # pico-train: step/warmup, first step at lr 0
    if o.schedule == "constant" or total <= warmup:
        return 1.0
    progress = min(1.0, (step - warmup) / (total - warmup))
    return floor + (1.0 - floor) * decay_shape(o.schedule, progress)


def decay_shape(schedule: str, progress: float) -> float:
    """1 at the start of the decay, 0 at its end."""
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0 - progress if schedule == "linear" else 1.0


def continued_segment(params: Params, lineage: list[dict[str, Any]], step: int, max_steps: int) -> dict[str, Any]:
    """A new plan segment for a run continued at ``step`` with a new ``max_steps``: the lr stays
    continuous — the step after the change runs at the lr it would have run at — and the rest of
    the decay (cosine/linear) is stretched or squeezed to end at ``min_lr_ratio`` at the new
    ``max_steps``. Inside warmup nothing has depended on max_steps yet, so the plan is simply
    retargeted. The segment is stored in the checkpoint (``lineage``), so a resumed continuation
    rebuilds the same schedule."""
    at = lr_lambda(params, lineage)(step)
    kind = "retarget" if step < params.optim.warmup_steps else "stretch"
    return {"step": step, "max_steps": max_steps, "kind": kind, "factor_at_step": at}


def lr_lambda(params: Params, lineage: list[dict[str, Any]] | None = None):
    """Multiplier of optim.lr after ``step`` optimizer steps (step 0 is > 0 unless warmup_start is pico). ``lineage``:
    the run's plan segments (``continued_segment``), oldest first; none = one plan of max_steps."""
    segments = lineage or [{"step": 0, "max_steps": params.training.max_steps, "kind": "retarget"}]
    floor, schedule = params.optim.min_lr_ratio, params.optim.schedule

    def factor(step: int) -> float:
        seg = next(s for s in reversed(segments) if step >= s["step"] or s is segments[0])
        if seg["kind"] == "retarget":
            return base_factor(params, seg["max_steps"], step)
        if schedule == "constant":
            return 1.0
        span = seg["max_steps"] - seg["step"]
        progress = min(1.0, (step - seg["step"]) / span) if span > 0 else 1.0
        start = seg["factor_at_step"]
        return floor + (start - floor) * decay_shape(schedule, progress) if start > floor else start

    return factor


def one_plan(params: Params) -> list[dict[str, Any]]:
    """The plan segments of a run never continued: one plan of ``max_steps``."""
    return [{"step": 0, "max_steps": params.training.max_steps, "kind": "retarget"}]


class Area:
    """The lr schedule's running sum, ``at(k)`` = Σ multiplier over the first k optimizer steps
    (steps done), under the run's plan segments; ``extended(now, steps)``: the same if at step
    ``now`` the plan were continued to end at ``steps`` (pico's continued runs: the lr stays
    continuous and the decay is stretched). Sums are built once and extended as asked."""

    def __init__(self, params: Params, lineage: list[dict[str, Any]] | None = None):
        self.params = params
        self.lineage = lineage or one_plan(params)
        self.factor = lr_lambda(params, self.lineage)
        self.sums = [0.0]

    def at(self, step: int) -> float:
        while len(self.sums) <= step:
            self.sums.append(self.sums[-1] + self.factor(len(self.sums) - 1))
        return self.sums[step]

    def extended(self, now: int, steps: int) -> float:
        if steps <= self.lineage[-1]["max_steps"]:
            return self.at(steps)
        g = lr_lambda(self.params, [*self.lineage, continued_segment(self.params, self.lineage, now, steps)])
        return self.at(now) + math.fsum(g(i) for i in range(now, steps))
