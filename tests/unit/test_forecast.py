"""pico.forecast: the power law recovers a curve it was made from, and says how sure it is."""

from __future__ import annotations

import json
import math
import random

from pico import forecast
from pico.config import parse_params


def _params(max_steps: int = 200, **forecast_cfg) -> object:
    return parse_params({"training": {"max_steps": max_steps}, "optim": {"warmup_steps": 10}, "forecast": forecast_cfg})


def _evals(law, steps, tokens_per_step, noise_sd=0.0, seed=0):
    rng = random.Random(seed)
    return [
        {"step": s, "tokens": s * tokens_per_step, "loss": law(s * tokens_per_step) + rng.gauss(0, noise_sd)}
        for s in steps
    ]


def test_a_power_law_is_recovered_and_its_interval_covers_the_truth():
    law = lambda d: 2.0 + 30.0 * d**-0.3  # noqa: E731
    evals = [{"step": 0, "tokens": 0, "loss": 9.0}] + _evals(law, range(10, 101, 10), 1000, noise_sd=0.01)
    made = forecast.forecast_at(evals, _params(), 1000)
    final = made["targets"][0]
    assert made["points"] == 10 and final["step"] == 200
    assert final["lo"] < law(200 * 1000) < final["hi"]
    assert abs(final["loss"] - law(200 * 1000)) < 0.05
    assert made["targets"][1]["loss"] < final["loss"] and made["gain_of_finishing"] > 0


def test_too_few_evaluations_say_so_and_the_backtest_reads_the_halfway_forecast(tmp_path):
    law = lambda d: 1.5 + 20.0 * d**-0.25  # noqa: E731
    evals = [{"step": 0, "tokens": 0, "loss": 9.0}] + _evals(law, range(10, 201, 10), 500, noise_sd=0.005)
    params = _params()
    assert forecast.forecast_at(evals[:3], params, 500)["why"] == "2 evaluations to fit, 4 needed"
    latest = forecast.write(tmp_path, evals[:11], params, 500, seconds_per_step=2.0, processes=1)
    data = json.loads((tmp_path / forecast.FORECAST_JSON).read_text())
    assert len(data["at_each_evaluation"]) == 11 and data["latest"]["step"] == 100
    assert latest["cost_left"]["max_steps"]["device_hours"] == (200 - 100) * 2.0 / 3600
    check = forecast.backtest(forecast.history(evals, params, 500), evals[-1]["loss"])
    assert check["made_at_step"] == 100 and check["inside"], check
    assert "forecast: eval loss" in forecast.line(latest)


def test_diminishing_returns_when_finishing_gains_too_little(tmp_path):
    flat = lambda d: 3.0 + 0.001 * d**-0.5  # noqa: E731  (already at its floor)
    evals = _evals(flat, range(10, 101, 10), 1000, noise_sd=1e-5)
    latest = forecast.write(tmp_path, evals, _params(min_gain=0.01), 1000, None, 1)
    assert latest["diminishing_returns"] and "diminishing returns" in forecast.line(latest)
    assert latest["cost_left"]["max_steps"]["device_hours"] is None  # no rate measured yet: not guessed
    assert not math.isnan(latest["gain_of_finishing"])


def test_each_evaluation_fits_only_the_new_forecast_and_the_file_equals_a_fresh_one(tmp_path, monkeypatch):
    law = lambda d: 2.0 + 10.0 * d**-0.4  # noqa: E731
    evals = _evals(law, range(10, 121, 10), 100, noise_sd=0.002)
    params, fits = _params(), []
    real = forecast.fit
    monkeypatch.setattr(forecast, "fit", lambda *a: fits.append(1) or real(*a))
    for i in range(1, len(evals) + 1):
        forecast.write(tmp_path / "live", evals[:i], params, 100, None, 1)
    assert len(fits) == len(evals) - 3  # one fit per evaluation once four points exist, none repeated
    forecast.write(tmp_path / "fresh", evals, params, 100, None, 1)
    live, fresh = (json.loads((tmp_path / d / forecast.FORECAST_JSON).read_text()) for d in ("live", "fresh"))
    assert live == fresh
