"""The optimizer and its torch scheduler: a schedule continued or rebased on a new lr runs exactly
as it should; norm gains get no weight decay."""

import pytest
import torch

from pico.config import parse_params
from pico.optim import make_optimizer, make_scheduler, param_groups, rebased_scheduler
from pico.schedule import lr_lambda
from tests.helpers import tiny_params


@pytest.fixture
def params(tmp_path):
    return parse_params(tiny_params(tmp_path))


def test_norm_gains_get_no_weight_decay():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4, bias=False), torch.nn.LayerNorm(4))
    decay, no_decay = param_groups(model)
    assert decay == ["0.weight"] and no_decay == ["1.weight", "1.bias"]


def _steps(opt, sched, n):
    for _ in range(n):
        opt.step()
        sched.step()


def test_saved_schedule_continues_at_the_same_lr(params):
    model = torch.nn.Linear(4, 4)
    opt = make_optimizer(model, params)
    sched = make_scheduler(opt, params)
    _steps(opt, sched, 5)
    opt2 = make_optimizer(model, params)
    opt2.load_state_dict(opt.state_dict())
    sched2 = make_scheduler(opt2, params, sched.state_dict())
    assert [g["lr"] for g in opt2.param_groups] == [g["lr"] for g in opt.param_groups]
    _steps(opt, sched, 3)
    _steps(opt2, sched2, 3)
    assert sched2.get_last_lr() == sched.get_last_lr()


def test_rebased_schedule_runs_the_new_lr_from_the_restored_step(params):
    model = torch.nn.Linear(4, 4)
    opt = make_optimizer(model, params)
    sched = make_scheduler(opt, params)
    _steps(opt, sched, 6)
    raw = params.model_dump(mode="json")
    raw["optim"]["lr"] = params.optim.lr / 4
    lower = parse_params(raw)
    opt2 = make_optimizer(model, lower)
    opt2.load_state_dict(opt.state_dict())  # the old run's moments, and its lr
    rebased = rebased_scheduler(opt2, lower, step=6)
    f = lr_lambda(lower)
    assert rebased.last_epoch == 6
    assert rebased.get_last_lr()[0] == pytest.approx(lower.optim.lr * f(6))
    assert opt2.param_groups[0]["lr"] == pytest.approx(lower.optim.lr * f(6))
    _steps(opt2, rebased, 2)
    assert rebased.get_last_lr()[0] == pytest.approx(lower.optim.lr * f(8))
