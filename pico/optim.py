"""AdamW and its parameter groups, built from ``optim.*``; the lr schedule they run under is
``pico.schedule`` (plain arithmetic, no torch). Weight decay applies to matrices and embeddings,
not to RMSNorm gains (pico decays everything).

A run that is not compiled steps an ``EagerAdamW``: torch's AdamW without the guards that keep
``torch.compile`` from tracing it. Each guard imports the compiler (``torch._dynamo``, ~1.3 s of
CPU) on first use, so every trainer process paid for a compiler it never ran: a queued ablation
ladder or a test suite starts dozens. Same update, same ``state_dict``, same class for checkpoints.
"""

from __future__ import annotations

from typing import Any

import torch

from pico.config import Params
from pico.schedule import lr_lambda


def param_groups(model: torch.nn.Module) -> tuple[list[str], list[str]]:
    """Names of the parameters that get weight decay (matrices, embeddings) and those that don't
    (RMSNorm gains: pico decays everything, but gains should stay ~1), in the optimizer's order."""
    named = list(model.named_parameters())
    return [n for n, p in named if p.ndim >= 2], [n for n, p in named if p.ndim < 2]


class EagerAdamW(torch.optim.AdamW):
    """``torch.optim.AdamW`` calling the functions its compiler guards wrap (``__wrapped__``): the
    guards' only work is to import ``torch._dynamo`` and to keep it from tracing these methods,
    which nothing does outside ``torch.compile``. ``step`` runs without grad, as the guard did."""

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        torch.optim.Optimizer.add_param_group.__wrapped__(self, param_group)

    def zero_grad(self, set_to_none: bool = True) -> None:
        torch.optim.Optimizer.zero_grad.__wrapped__(self, set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return torch.optim.Optimizer.state_dict.__wrapped__(self)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        torch.optim.Optimizer.load_state_dict.__wrapped__(self, state_dict)

    def step(self, closure: Any = None) -> Any:
        with torch.no_grad():
            return torch.optim.AdamW.step.__wrapped__(self, closure)


# where a torch release drops the wrappers' __wrapped__, the stock class (and its compiler import)
_EAGER = all(
    hasattr(f, "__wrapped__")
    for f in (
        torch.optim.Optimizer.add_param_group,
        torch.optim.Optimizer.zero_grad,
        torch.optim.Optimizer.state_dict,
        torch.optim.Optimizer.load_state_dict,
        torch.optim.AdamW.step,
    )
)


def make_optimizer(
    model: torch.nn.Module, params: Params, fused: bool = False, compiled: bool = False
) -> torch.optim.AdamW:
    """AdamW over ``param_groups``; ``compiled``: the model runs under ``torch.compile``, so the
    optimizer keeps torch's compiler guards (``EagerAdamW`` otherwise)."""
    by_name = dict(model.named_parameters())
    decay_names, no_decay_names = param_groups(model)
    decay, no_decay = [by_name[n] for n in decay_names], [by_name[n] for n in no_decay_names]
    o = params.optim
    adamw = torch.optim.AdamW if compiled or not _EAGER else EagerAdamW
    return adamw(
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
