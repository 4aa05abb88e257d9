"""`pico plan`: the figures a run will cost, from params, data and a calibration on this machine."""

import copy
import json

import pytest

from pico import plan, train
from pico.config import parse_params


def test_plan_figures_follow_from_the_params_and_the_data(params_dict, prepared, tmp_path):
    p = plan.make_plan(prepared, calibrate_s=0.2)
    rows = p.rows
    assert p.tokens_per_step == 8 * 32 and p.steps == 12 and p.steps_per_epoch == pytest.approx(rows / 8)
    assert p.epochs == pytest.approx(12 * 8 / rows)
    assert p.evaluations == 3  # at the start, at step 6, at step 12
    assert p.train_flops == 12 * 256 * train.build_model(prepared).flops_per_token(32)
    assert p.seconds_per_step > 0 and p.seconds_per_eval > 0
    assert p.wall_s > 12 * p.seconds_per_step + 3 * p.seconds_per_eval  # plus start-up and checkpoints
    assert p.device_hours == pytest.approx(p.wall_s / 3600) and p.price is None
    assert not any("WARNING" in line for line in p.lines())

    raw = copy.deepcopy(params_dict)
    raw["training"]["max_steps"] = 10 * rows  # 80 epochs of the rows
    raw["report"]["device_hour_price"] = 2.0
    long = plan.make_plan(parse_params(raw), device="h100")
    assert long.epochs == pytest.approx(80.0)
    assert any("WARNING the run goes 80.00 times over its training rows" in line for line in long.lines())
    per_token = long.train_flops / (long.steps * long.tokens_per_step)
    assert long.seconds_per_step == pytest.approx(long.tokens_per_step * per_token / (989e12 * plan.ASSUMED_MFU))
    assert long.price == pytest.approx(long.device_hours * 2.0)
    with pytest.raises(ValueError, match="stored figures exist for"):
        plan.make_plan(prepared, device="tpu")


def test_plan_is_saved_and_the_trainer_prints_it_first(prepared, tmp_path, capsys):
    made = plan.run(prepared)
    saved = json.loads((tmp_path / "metrics/plan.json").read_text())
    assert saved["wall_s"] == pytest.approx(made.wall_s) and "calibrated on this machine" in saved["basis"]
    capsys.readouterr()
    train.run(prepared, progress=False, on_start=plan.announce)  # what `pico train` hands the trainer
    out = capsys.readouterr().out
    assert "plan: 12 steps x 256 tokens/step" in out and "`pico plan` projects it" in out
