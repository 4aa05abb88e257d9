"""The optimizer and its torch scheduler: a schedule continued or rebased on a new lr runs exactly
as it should; norm gains get no weight decay."""

import pytest
import torch

from pico.config import parse_params
from pico.optim import EagerAdamW, make_optimizer, make_scheduler, param_groups, rebased_scheduler
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


def _train_a_little(model: torch.nn.Module, opt: torch.optim.Optimizer) -> None:
    torch.manual_seed(1)
    for _ in range(4):
        model(torch.randn(3, 4)).pow(2).mean().backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
        opt.step()
        opt.zero_grad(set_to_none=True)


@pytest.mark.parametrize("fused", [False, True])
def test_the_eager_adamw_is_torchs_adamw_without_the_compiler_guards(params, fused):
    """Same updates bit for bit (the per-parameter loop and the fused kernel a GPU run uses), same
    state_dict (checkpoints), loads torch's; compiled runs keep torch's own class."""
    models = []
    for compiled in (False, True):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
        opt = make_optimizer(model, params, fused, compiled)
        assert (type(opt) is EagerAdamW) == (not compiled) and isinstance(opt, torch.optim.AdamW)
        _train_a_little(model, opt)
        models.append((model, opt))
    (eager, eager_opt), (stock, stock_opt) = models
    assert all(torch.equal(a, b) for a, b in zip(eager.parameters(), stock.parameters()))
    a, b = eager_opt.state_dict(), stock_opt.state_dict()
    assert a["param_groups"] == b["param_groups"] and a["state"].keys() == b["state"].keys()
    assert all(torch.equal(a["state"][k][n], b["state"][k][n]) for k in a["state"] for n in a["state"][k])
    eager_opt.load_state_dict(b)  # a checkpoint written by either loads into the other
    assert all(p.grad is None for p in eager.parameters())
