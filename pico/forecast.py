"""Where a running run is heading: at every evaluation, a saturating power law fitted to the run's
own eval loss against how long it has trained,

    L(t) = E + A * (t / t_now) ** -alpha      (E: the loss it saturates at)

by two clocks t, because which one a run follows depends on its schedule: **tokens** seen (every
step buys the same progress) and **lr-time**, the lr schedule's area after the steps done
(pico.schedule.Area: Σ of its multiplier; a late step of a decaying schedule buys less). Low-lr runs
decaying linearly follow lr-time (the scaled v1 preset: the half-way forecast by tokens was 0.21
nats too optimistic, outside its interval, on 13 of 16 runs of its ablation); the default run's
high-lr cosine keeps improving at its early rate as the lr anneals, which lr-time misses and tokens
does not (by lr-time 0.36 nats too pessimistic, outside). So the forecast is the two fits' mean and
its interval spans both fits' 95 % intervals (each: the parameters' covariance carried to the
prediction by the delta method, plus the points' scatter about the curve): over those 17 runs,
made half-way, the final loss fell inside in 17, 0.069 nats off (median).

It is extrapolated to ``max_steps`` and to 2x and 4x that budget — the run continued as pico
continues runs, the lr kept and its decay stretched — beside what finishing costs (device-hours and
their price) and is predicted to gain. Fitted with ``scipy.optimize.curve_fit`` on the evaluations
after warmup (step 0 is the untrained model's loss, warmup's steps are not on the curve yet).

``metrics/forecast.json`` (this module owns it) holds the forecast made at each evaluation, each
from the evaluations up to it — so a resumed or finished run's file is the same as a live one's
and a back-test reads the forecast made at 50 % straight from it — and, for the newest, the cost
left and whether the predicted gain of finishing fell under ``forecast.min_gain`` (the Prefect flow
turns that into the event ``pico.training.diminishing-returns``). The cost is a wall-clock fact, so
the file is not a DVC output (like perf.csv).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pico.config import Params
from pico.fsutil import atomic_write_json
from pico.noise import t975
from pico.schedule import Area

FORECAST_JSON = "forecast.json"
BUDGETS = ((1, "max_steps"), (2, "2x budget"), (4, "4x budget"))
# what "how long it has trained" means: tokens seen, or lr-time (the schedule's area); see above
CLOCKS = ("tokens", "lr_time")
MIN_POINTS_TEXT = "too few evaluations after warmup"


@dataclass(frozen=True)
class Fit:
    E: float
    A: float
    alpha: float
    scale: float  # the x the curve is normalised by (the newest point's)
    cov: list[list[float]] | None  # of (E, A, alpha); None when the fit could not estimate it
    residual_sd: float
    points: int

    def predict(self, at: float) -> tuple[float, float | None, float | None]:
        """The loss at ``at`` (the fit's x) and its 95 % interval (None when the covariance is unknown)."""
        x = at / self.scale
        mean = self.E + self.A * x**-self.alpha
        if self.cov is None:
            return mean, None, None
        grad = (1.0, x**-self.alpha, -self.A * x**-self.alpha * math.log(x))
        var = sum(grad[i] * self.cov[i][j] * grad[j] for i in range(3) for j in range(3)) + self.residual_sd**2
        if not math.isfinite(var) or var < 0:
            return mean, None, None
        half = t975(max(self.points - 3, 1)) * math.sqrt(var)
        return mean, mean - half, mean + half


def fit(xs: list[float], losses: list[float]) -> Fit | None:
    """The power law through (x, loss); None when it does not converge."""
    import numpy as np
    from scipy.optimize import OptimizeWarning, curve_fit

    x = np.asarray(xs, dtype=float) / xs[-1]
    y = np.asarray(losses, dtype=float)
    low = float(y.min())
    start = (0.5 * low, max(float(y[-1] - 0.5 * low), 1e-3), 0.5)

    def law(x: Any, e: float, a: float, alpha: float) -> Any:
        return e + a * x**-alpha

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", OptimizeWarning)
            popt, pcov = curve_fit(law, x, y, p0=start, bounds=([0.0, 0.0, 1e-3], [low, np.inf, 5.0]), maxfev=20000)
    except (RuntimeError, ValueError):
        return None
    residual = y - law(x, *popt)
    dof = max(len(y) - 3, 1)
    cov = pcov.tolist() if np.all(np.isfinite(pcov)) else None
    return Fit(*(float(v) for v in popt), float(xs[-1]), cov, float(math.sqrt((residual**2).sum() / dof)), len(y))


def fit_points(evals: list[dict], warmup_steps: int, min_points: int) -> list[dict]:
    """The evaluations the curve is fitted to: after step 0, and after warmup when enough remain."""
    trained = [e for e in evals if int(e["step"]) > 0 and math.isfinite(float(e["loss"]))]
    after = [e for e in trained if int(e["step"]) >= warmup_steps]
    return after if len(after) >= min_points else trained


def forecast_at(
    evals: list[dict],
    params: Params,
    tokens_per_step: float,
    area: Area | None = None,
    budgets: tuple[tuple[int, str], ...] = BUDGETS,
) -> dict[str, Any]:
    """The forecast made with ``evals`` (the evaluations so far, as eval_history.csv's rows);
    ``area``: the run's lr-time (its plan segments; default the one plan of its params)."""
    cfg, max_steps = params.forecast, params.training.max_steps
    area = area or Area(params)
    # rows from before eval_history.csv had a tokens column: tokens from the step
    evals = [{**e, "tokens": e.get("tokens") or int(e["step"]) * tokens_per_step} for e in evals]
    last = evals[-1]
    now = int(last["step"])
    out: dict[str, Any] = {"step": now, "tokens": int(last["tokens"]), "loss": float(last["loss"])}
    out["lr_area"] = area.at(now)
    points = fit_points(evals, params.optim.warmup_steps, cfg.min_points)
    out["points"] = len(points)
    if len(points) < cfg.min_points:
        out["fit"] = None
        out["why"] = f"{len(points)} evaluations to fit, {cfg.min_points} needed"
        return out
    steps_fitted = [int(e["step"]) for e in points]
    losses = [float(e["loss"]) for e in points]
    fits = {c: fit([clock(c, area, k, tokens_per_step) for k in steps_fitted], losses) for c in CLOCKS}
    fits = {c: f for c, f in fits.items() if f is not None}
    if not fits:
        out["fit"], out["why"] = None, "the power law did not converge"
        return out
    out["fit"] = {c: {"E": f.E, "A": f.A, "alpha": f.alpha, "residual_sd": f.residual_sd} for c, f in fits.items()}
    out["targets"] = []
    for factor, label in budgets:
        steps = max_steps * factor
        at = {c: clock(c, area, steps, tokens_per_step, now) for c in fits}
        loss, lo, hi = _combined([f.predict(at[c]) for c, f in fits.items()])
        out["targets"].append(
            {"label": label, "step": steps, "tokens": int(steps * tokens_per_step), "lr_area": at.get("lr_time")}
            | {"loss": loss, "lo": lo, "hi": hi}
            | {"perplexity": _exp(loss), "perplexity_lo": _exp(lo), "perplexity_hi": _exp(hi)}
        )
    # what finishing gains: the fitted loss now (less noisy than the newest point) minus at max_steps
    fitted_now = _combined([f.predict(clock(c, area, now, tokens_per_step)) for c, f in fits.items()])[0]
    out["gain_of_finishing"] = fitted_now - out["targets"][0]["loss"] if now < max_steps else 0.0
    return out


def clock(name: str, area: Area, steps: int, tokens_per_step: float, now: int | None = None) -> float:
    """How long a run has trained after ``steps``, by one of the two clocks (``now``: the run
    continued from that step, its decay stretched, when ``steps`` is past its plan)."""
    if name == "tokens":
        return steps * tokens_per_step
    return area.extended(now, steps) if now is not None and steps > now else area.at(steps)


def _combined(predictions: list[tuple[float, float | None, float | None]]) -> tuple[float, float | None, float | None]:
    """The clocks' mean, and an interval spanning every clock's 95 % interval."""
    los = [lo for _, lo, _ in predictions if lo is not None]
    his = [hi for _, _, hi in predictions if hi is not None]
    mean = sum(m for m, _, _ in predictions) / len(predictions)
    if not los:
        return mean, None, None
    return mean, min(min(los), mean), max(max(his), mean)


def history(
    evals: list[dict],
    params: Params,
    tokens_per_step: float,
    earlier: list[dict[str, Any]] = (),
    area: Area | None = None,
    budgets: tuple[tuple[int, str], ...] = BUDGETS,
) -> list[dict[str, Any]]:
    """The forecast made at each evaluation, each from the evaluations up to it. ``earlier``: the
    forecasts already made (forecast.json's), kept while they match the evaluations — only the new
    ones are fitted, not every one again at each evaluation of a long run."""
    area = area or Area(params)
    made = []
    for i, e in enumerate(evals):
        old = earlier[i] if i < len(earlier) else None
        same = old is not None and old["step"] == int(e["step"]) and old["loss"] == float(e["loss"])
        if not same:
            break
        made.append(old)
    return made + [
        forecast_at(evals[: i + 1], params, tokens_per_step, area, budgets) for i in range(len(made), len(evals))
    ]


def cost_left(params: Params, step: int, seconds_per_step: float | None, processes: int) -> dict[str, Any]:
    """Device-hours (and their price, ``report.device_hour_price``) to reach each budget from ``step``."""
    price = params.report.device_hour_price
    out = {"seconds_per_step": seconds_per_step, "price_per_device_hour": price}
    for factor, label in BUDGETS:
        steps_left = max(params.training.max_steps * factor - step, 0)
        hours = steps_left * seconds_per_step * processes / 3600 if seconds_per_step else None
        out[label] = {"device_hours": hours, "cost": hours * price if hours is not None and price else None}
    return out


def write(
    metrics_dir: str | Path,
    evals: list[dict],
    params: Params,
    tokens_per_step: float,
    seconds_per_step: float | None,
    processes: int,
    lineage: list[dict[str, Any]] | None = None,
) -> dict[str, Any] | None:
    """metrics/forecast.json from the evaluations so far; returns the newest forecast (None: none).
    ``lineage``: the run's lr plan segments (TrainState.lineage; default its params' one plan)."""
    if not params.forecast.enabled or not evals:
        return None
    before = read(metrics_dir) or {}
    settings = {
        "max_steps": params.training.max_steps,
        "tokens_per_step": tokens_per_step,
        "warmup_steps": params.optim.warmup_steps,
        "min_points": params.forecast.min_points,
        "schedule": {k: getattr(params.optim, k) for k in ("schedule", "warmup_start", "min_lr_ratio")},
        "clocks": list(CLOCKS),
        "lineage": lineage or None,
    }
    same = before.get("fitted_with") == settings  # the earlier forecasts were made the same way
    area = Area(params, lineage)
    made = history(evals, params, tokens_per_step, before.get("at_each_evaluation", []) if same else [], area)
    latest = dict(made[-1])
    latest["cost_left"] = cost_left(params, latest["step"], seconds_per_step, processes)
    gain = latest.get("gain_of_finishing")
    latest["diminishing_returns"] = bool(
        gain is not None and latest["step"] < params.training.max_steps and gain < params.forecast.min_gain
    )
    data = {
        "metric": "macro eval loss (nats/token) against two clocks: tokens seen and lr-time",
        "law": "E + A * (t / t_now) ** -alpha per clock (lr-time: the sum of the schedule's lr multiplier "
        "over the steps done); the forecast is the clocks' mean, its interval spans both fits' 95 % intervals",
        "max_steps": params.training.max_steps,
        "tokens_per_step": tokens_per_step,
        "min_gain": params.forecast.min_gain,
        "fitted_with": settings,
        "latest": latest,
        "at_each_evaluation": made,
    }
    atomic_write_json(Path(metrics_dir) / FORECAST_JSON, data)
    return latest


def read(metrics_dir: str | Path) -> dict[str, Any] | None:
    import json

    try:
        return json.loads((Path(metrics_dir) / FORECAST_JSON).read_text())
    except (OSError, ValueError):
        return None


def line(latest: dict[str, Any]) -> str:
    """The training log's line: e.g. ``forecast: eval loss 4.31 [4.22, 4.40] at step 200 …``."""
    if latest.get("fit") is None:
        return f"forecast: not yet ({latest['why']})"
    final, *more = latest["targets"]
    parts = [f"forecast: eval loss {_interval(final)} at step {final['step']:,} (ppl {final['perplexity']:.4g})"]
    parts += [f"{t['label']} {_interval(t)}" for t in more]
    text = "; ".join(parts) + f"; finishing gains {latest['gain_of_finishing']:.3g} nats"
    cost = latest.get("cost_left", {}).get("max_steps", {})
    if cost.get("device_hours") is not None:
        text += f" for {cost['device_hours']:.3g} device-hours" + (
            f" (${cost['cost']:,.2f})" if cost.get("cost") else ""
        )
    if latest.get("diminishing_returns"):
        text += " — diminishing returns"
    return text


def backtest(made: list[dict[str, Any]], final_loss: float, at: float = 0.5) -> dict[str, Any] | None:
    """The newest forecast made by fraction ``at`` of the run (from the evaluations up to it), against
    the final evaluation's loss: its error and whether the final value fell inside its interval;
    None when no forecast could be made that early."""
    if not made:
        return None
    end = made[-1]["step"]
    chosen = next((f for f in reversed(made) if f["step"] <= at * end and f.get("fit")), None)
    return None if chosen is None else _checked(chosen, final_loss)


def _checked(chosen: dict[str, Any], final_loss: float) -> dict[str, Any]:
    target = chosen["targets"][0]
    inside = target["lo"] is not None and target["lo"] <= final_loss <= target["hi"]
    return {
        "made_at_step": chosen["step"],
        "predicted": target["loss"],
        "lo": target["lo"],
        "hi": target["hi"],
        "final": final_loss,
        "error": target["loss"] - final_loss,
        "inside": inside,
    }


def backtest_run(evals: list[dict], params: Params, tokens_per_step: float, at: float = 0.5) -> dict[str, Any] | None:
    """``backtest`` of a finished run from its eval history (eval_history.csv's rows), with the
    naive forecast beside it: that the loss stays where it was when the forecast was made."""
    if not evals:
        return None
    # only the forecast the check reads is fitted: the newest by ``at`` with a fit, at max_steps
    end, area = int(evals[-1]["step"]), Area(params)
    for i in reversed([i for i, e in enumerate(evals) if int(e["step"]) <= at * end]):
        made = forecast_at(evals[: i + 1], params, tokens_per_step, area, BUDGETS[:1])
        if made.get("fit"):
            check = _checked(made, float(evals[-1]["loss"]))
            check["loss_then"] = float(evals[i]["loss"])
            check["persistence_error"] = check["loss_then"] - check["final"]
            return check
    return None


def backtest_table(checks: dict[str, dict[str, Any] | None], at: float = 0.5) -> list[str]:
    """Markdown: each run's forecast made at ``at`` of training against its final eval loss, and the
    summary — how many finals fell inside their interval, and how far off the forecast was beside
    the naive one (no further progress)."""
    lines = [
        "| run | made at step | predicted final eval loss [95 % interval] | final | error | "
        "inside | naive error (loss then) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, c in checks.items():
        if c is None:
            lines.append(f"| {name} | — | no forecast by {at:.0%}: {MIN_POINTS_TEXT} | | | | |")
            continue
        interval = f" [{c['lo']:.4g}, {c['hi']:.4g}]" if c["lo"] is not None else " (no interval)"
        lines.append(
            f"| {name} | {c['made_at_step']} | {c['predicted']:.4g}{interval} | {c['final']:.4g} | "
            f"{c['error']:+.3g} | {'yes' if c['inside'] else '**no**'} | {c['persistence_error']:+.3g} |"
        )
    return lines + ["", backtest_summary(checks, at)]


def backtest_summary(checks: dict[str, dict[str, Any] | None], at: float = 0.5) -> str:
    import statistics

    made = [c for c in checks.values() if c is not None]
    if not made:
        return f"No run had a forecast by {at:.0%} of training ({len(checks)} runs)."
    inside = sum(c["inside"] for c in made)
    err = statistics.median(abs(c["error"]) for c in made)
    naive = statistics.median(abs(c["persistence_error"]) for c in made)
    widths = [c["hi"] - c["lo"] for c in made if c["lo"] is not None]
    width = f"; median interval width {statistics.median(widths):.3g} nats" if widths else ""
    none = len(checks) - len(made)
    return (
        f"Made at {at:.0%} of training: the final eval loss fell inside the 95 % interval in {inside} of "
        f"{len(made)} runs{f' ({none} had no forecast by then)' if none else ''}; median |error| "
        f"{err:.3g} nats against {naive:.3g} for the naive forecast (no further progress){width}."
    )


def _interval(t: dict[str, Any]) -> str:
    if t["lo"] is None:
        return f"{t['loss']:.4g} (no interval)"
    return f"{t['loss']:.4g} [{t['lo']:.4g}, {t['hi']:.4g}]"


def _exp(x: float | None) -> float | None:
    if x is None:
        return None
    return math.exp(x) if x < 700 else math.inf
