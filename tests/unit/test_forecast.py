"""pico.forecast: a power law by each clock (tokens, lr-time) recovers a curve made with it, and the
forecast (their mean, an interval spanning both) says how sure it is."""

from __future__ import annotations

import json
import math
import random

from pico import forecast
from pico.config import parse_params
from pico.schedule import Area


def _params(max_steps: int = 200, **forecast_cfg) -> object:
    return parse_params({"training": {"max_steps": max_steps}, "optim": {"warmup_steps": 10}, "forecast": forecast_cfg})


def _evals(law, steps, tokens_per_step, noise_sd=0.0, seed=0, params=None):
    """Evaluations on a curve ``law(S)`` of the lr-time S under ``params``' schedule (default: cosine
    decay over 200 steps after 10 of warmup), with Gaussian noise."""
    rng, area = random.Random(seed), Area(params or _params())
    return [{"step": s, "tokens": s * tokens_per_step, "loss": law(area.at(s)) + rng.gauss(0, noise_sd)} for s in steps]


def test_a_power_law_is_recovered_and_its_interval_covers_the_truth():
    law = lambda d: 2.0 + 30.0 * d**-0.3  # noqa: E731
    evals = [{"step": 0, "tokens": 0, "loss": 9.0}] + _evals(law, range(10, 101, 10), 1000, noise_sd=0.01)
    made = forecast.forecast_at(evals, _params(), 1000)
    final = made["targets"][0]
    area = Area(_params())
    truth = law(area.at(200))
    assert made["points"] == 10 and final["step"] == 200
    assert final["lo"] < truth < final["hi"]  # the interval spans both clocks' fits
    # the clock the curve was made with recovers it; the forecast is the two clocks' mean
    lr_time = forecast.fit([area.at(e["step"]) for e in evals[1:]], [e["loss"] for e in evals[1:]])
    assert abs(lr_time.predict(area.at(200))[0] - truth) < 0.05
    tokens = forecast.fit([e["tokens"] for e in evals[1:]], [e["loss"] for e in evals[1:]])
    both = (lr_time.predict(area.at(200))[0] + tokens.predict(200 * 1000)[0]) / 2
    assert final["loss"] == both and set(made["fit"]) == {"tokens", "lr_time"}
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
    assert len(fits) == 2 * (len(evals) - 3)  # one per clock and evaluation once four points exist, none repeated
    forecast.write(tmp_path / "fresh", evals, params, 100, None, 1)
    live, fresh = (json.loads((tmp_path / d / forecast.FORECAST_JSON).read_text()) for d in ("live", "fresh"))
    assert live == fresh


def test_the_backtest_table_counts_coverage_and_sets_the_forecast_beside_the_naive_one():
    law = lambda d: 1.5 + 20.0 * d**-0.25  # noqa: E731
    params = _params()
    good = [{"step": 0, "tokens": 0, "loss": 9.0}] + _evals(law, range(10, 201, 10), 500, noise_sd=0.005)
    # a run whose loss drops off the curve after half-way (an lr decay's annealing): outside
    bent = [dict(e, loss=e["loss"] - (0.5 if e["step"] > 100 else 0.0)) for e in good]
    few = good[::10]  # steps 0, 100, 200: nothing to fit by half-way
    checks = {
        name: forecast.backtest_run(ev, params, 500) for name, ev in [("good", good), ("bent", bent), ("few", few)]
    }
    assert checks["good"]["inside"] and not checks["bent"]["inside"] and checks["few"] is None
    # the naive forecast (no progress after step 100) misses by the whole drop still to come
    assert checks["good"]["persistence_error"] == good[10]["loss"] - good[-1]["loss"]
    assert abs(checks["good"]["error"]) < abs(checks["good"]["persistence_error"])
    lines = forecast.backtest_table(checks)
    assert "| few | — | no forecast by 50%" in "\n".join(lines)
    assert lines[-1].startswith(
        "Made at 50% of training: the final eval loss fell inside the 95 % interval in 1 of 2 runs (1 had no forecast by then)"
    )


def test_under_a_decaying_lr_the_clocks_part_and_the_interval_spans_both():
    """A curve in lr-time under linear decay to 0: the second half of the run is worth a third of
    its lr-time, so its end is far above what the same law would reach in tokens; the forecast's
    interval still holds the truth, and 2x the budget is the run continued, its decay stretched."""
    linear = parse_params(
        {"training": {"max_steps": 200}, "optim": {"warmup_steps": 10, "schedule": "linear", "min_lr_ratio": 0.0}}
    )
    law = lambda s: 2.0 + 30.0 * s**-0.3  # noqa: E731
    evals = _evals(law, range(10, 101, 10), 1000, noise_sd=0.005, params=linear)
    made = forecast.forecast_at(evals, linear, 1000)
    final, twice = made["targets"][0], made["targets"][1]
    assert final["lo"] < law(Area(linear).at(200)) < final["hi"]
    assert final["loss"] > law(2 * Area(linear).at(100)) + 0.1  # twice the tokens is not twice the lr-time
    # 2x the budget: the run continued at step 100 to 400 steps, its decay stretched
    assert twice["lr_area"] == Area(linear).extended(100, 400) and twice["loss"] < final["loss"]
