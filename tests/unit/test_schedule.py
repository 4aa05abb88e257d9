"""The lr schedule (pico.schedule): warmup never starts at 0 (unless pico's), decay ends where
asked, and its running sum — the forecast's clock — follows the plan, stretched when continued."""

import math

import pytest

from pico.config import parse_params
from pico.schedule import Area, continued_segment, lr_lambda, one_plan
from tests.helpers import tiny_params


@pytest.fixture
def params(tmp_path):
    return parse_params(tiny_params(tmp_path))


def test_lr_schedule_first_step_not_zero(params):
    f = lr_lambda(params)
    assert f(0) == pytest.approx(1 / 3)  # warmup 3: steps run at 1/3, 2/3, 1
    assert f(2) == pytest.approx(1.0)
    assert f(params.training.max_steps) == pytest.approx(params.optim.min_lr_ratio)
    raw = params.model_dump(mode="json")
    raw["optim"].update(schedule="linear", min_lr_ratio=0.0)  # pico: linear to 0
    linear = parse_params(raw)
    assert lr_lambda(linear)(linear.training.max_steps) == pytest.approx(0.0)


def test_pico_warmup_start_runs_its_first_step_at_lr_zero(tmp_path):
    raw = tiny_params(tmp_path)
    raw["optim"]["warmup_start"] = "pico"
    f = lr_lambda(parse_params(raw))
    w = raw["optim"]["warmup_steps"]
    assert f(0) == 0.0 and f(1) == pytest.approx(1 / w) and f(w) == pytest.approx(1.0)  # pico-train's step/warmup


def _linear(tmp_path, **optim):
    raw = tiny_params(tmp_path)
    raw["optim"].update(schedule="linear", min_lr_ratio=0.0, warmup_steps=2, **optim)
    raw["training"]["max_steps"] = 10
    return parse_params(raw)


def test_the_area_is_the_running_sum_of_the_schedule(tmp_path):
    p = _linear(tmp_path)
    f, area = lr_lambda(p), Area(p)
    assert area.at(0) == 0.0 and area.at(1) == f(0) == 0.5
    assert area.at(10) == pytest.approx(math.fsum(f(i) for i in range(10)))
    assert area.at(10) - area.at(5) < area.at(5)  # decaying: the second half is worth less lr-time
    const = parse_params(
        dict(p.model_dump(mode="json"), optim=dict(p.optim.model_dump(mode="json"), schedule="constant"))
    )
    assert Area(const).at(10) == pytest.approx(0.5 + 9)  # warmup's 1/2, then one per step: tokens, up to warmup


def test_an_extended_plan_is_the_continued_run_s_schedule(tmp_path):
    p = _linear(tmp_path)
    area = Area(p)
    assert area.extended(6, 10) == area.at(10)  # within the plan: the plan
    # continued at step 6 to 20 steps: the lr at step 6 kept and decayed to 0 over 14 steps
    g = lr_lambda(p, [*one_plan(p), continued_segment(p, one_plan(p), 6, 20)])
    assert g(6) == pytest.approx(lr_lambda(p)(6))
    assert area.extended(6, 20) == pytest.approx(area.at(6) + math.fsum(g(i) for i in range(6, 20)))
    assert area.extended(6, 20) > area.at(10)
    # a finished linear-to-0 run continued gains no lr-time: its lr is 0
    assert area.extended(10, 40) == pytest.approx(area.at(10))
