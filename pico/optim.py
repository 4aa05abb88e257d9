"""AdamW, parameter groups and the learning-rate schedule, built from ``optim.*``.

Warmup is ``(step + 1) / warmup`` (``optim.warmup_start: pico`` gives pico-train's ``step / warmup``,
whose first step runs at lr 0), then
``optim.schedule``: linear to ``min_lr_ratio`` (pico decays to 0), cosine, or constant. Weight
decay applies to matrices and embeddings, not to RMSNorm gains (pico decays everything).
"""

from __future__ import annotations

import math
from typing import Any

import torch

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


def param_groups(model: torch.nn.Module) -> tuple[list[str], list[str]]:
    """Names of the parameters that get weight decay (matrices, embeddings) and those that don't
    (RMSNorm gains: pico decays everything, but gains should stay ~1), in the optimizer's order."""
    named = list(model.named_parameters())
    return [n for n, p in named if p.ndim >= 2], [n for n, p in named if p.ndim < 2]


def make_optimizer(model: torch.nn.Module, params: Params, fused: bool = False) -> torch.optim.AdamW:
    by_name = dict(model.named_parameters())
    decay_names, no_decay_names = param_groups(model)
    decay, no_decay = [by_name[n] for n in decay_names], [by_name[n] for n in no_decay_names]
    o = params.optim
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=o.lr,
        betas=o.betas,
        eps=o.eps,
        **({"fused": True} if fused else {"foreach": False}),
    )


def make_scheduler(
    optimizer: torch.optim.Optimizer,
    params: Params,
    state: dict[str, Any] | None = None,
    lineage: list[dict[str, Any]] | None = None,
) -> torch.optim.lr_scheduler.LambdaLR:
    """The lr schedule, fresh or continuing from a saved ``state_dict()`` under the run's plan
    segments (``lineage``)."""
    fn = lr_lambda(params, lineage)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, fn)
    if state is not None:
        scheduler.load_state_dict(state)
        # the constructor set the groups' lr for step 0; set the lr the saved step runs at (from the
        # schedule, which equals the saved one unless the plan changed at this step)
        scheduler._last_lr = [base * fn(scheduler.last_epoch) for base in scheduler.base_lrs]
        for group, lr in zip(optimizer.param_groups, scheduler.get_last_lr()):
            group["lr"] = lr
    return scheduler


def rebased_scheduler(optimizer: torch.optim.Optimizer, params: Params, step: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A schedule at ``step`` for ``optim.lr`` over an optimizer restored from another run's
    checkpoint (``training.restart_from``, e.g. a lower lr after a divergence): the restored state
    keeps the Adam moments, the schedule is built anew from the current params."""
    for group in optimizer.param_groups:
        group["initial_lr"] = params.optim.lr
    # last_epoch = step - 1: the constructor's first step() lands on ``step`` and sets the lr
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(params), last_epoch=step - 1)
