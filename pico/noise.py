"""The one rule for saying whether a difference between runs is an effect or seed noise. Used by
``pico compare``, the report's comparison sections and ``pico ablate``, so no delta anywhere is
called "better" while changing only the seed moves the number as much.

The rule is a two-sided t-test at 95 % on the means over seeds, with the seed standard deviation
pooled over every group of seeds at hand (one group per configuration: a ladder of ablation rungs
pools them all, which is what makes two seeds per rung enough). Perplexities are compared as logs
(seed noise is multiplicative on them); losses and bits per byte already are. Where no
configuration has two seeds, a recorded estimate stands in: ``pico reproduce --noise-seeds N``
writes the spread it measured (``reproductions/noise.json``), and the verdict says it used that.
Without either the verdict is *no noise estimate*, never *helps* or *hurts*.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pico.fsutil import atomic_write_json

NOISE_JSON = Path("reproductions") / "noise.json"  # written by `pico reproduce --noise-seeds N`
HELPS, HURTS, NOISE, UNKNOWN, MISSING = "helps", "hurts", "inside seed noise", "no noise estimate", "missing"

# metric -> (lower is better, compared as a log)
METRICS = {
    "token_perplexity": (True, True),
    "bits_per_byte": (True, False),
    "loss": (True, False),
    "final_loss_mean": (True, False),
    "pico_mean_seq_perplexity": (True, True),
    "best_eval_loss": (True, False),
}

# two-sided 97.5 % quantiles of Student's t by degrees of freedom (beyond 30: 1.96 + 2.4/df)
_T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131]
_T975 += [2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042]


def t975(df: int) -> float:
    return _T975[df - 1] if df <= len(_T975) else 1.96 + 2.4 / df


@dataclass(frozen=True)
class SeedNoise:
    """The standard deviation one seed change moves a metric by (on the compared scale), with its
    degrees of freedom and where it came from."""

    sd: float
    df: int
    basis: str

    @classmethod
    def pooled(cls, groups: list[list[float]], log: bool) -> SeedNoise | None:
        """From groups of seeds (one group per configuration); None when no group has two."""
        sq, df = 0.0, 0
        for values in groups:
            xs = _scale([v for v in values if _finite(v)], log)
            if len(xs) >= 2:
                mean = statistics.fmean(xs)
                sq += sum((x - mean) ** 2 for x in xs)
                df += len(xs) - 1
        if df == 0:
            return None
        runs = sum(len(g) for g in groups if len(g) >= 2)
        return cls(math.sqrt(sq / df), df, f"seed spread of these runs ({runs} runs, {df} degrees of freedom)")


@dataclass(frozen=True)
class Judgement:
    metric: str
    a: float | None  # mean over A's seeds
    b: float | None
    delta: float | None  # b - a, in the metric's units
    relative: float | None  # delta / a
    margin: float | None  # the |difference| (compared scale) beyond which it is an effect
    verdict: str
    basis: str

    def describe(self) -> str:
        """E.g. "-12.3 % (noise margin ±4.1 %, seed spread of these runs …): helps"."""
        if self.delta is None:
            return self.verdict
        change = f"{self.relative:+.2%}" if self.relative is not None else f"{self.delta:+.4g}"
        margin = "" if self.margin is None else f" (noise margin ±{_margin_text(self.metric, self.margin)})"
        return f"{change}{margin}: {self.verdict}"


def judge(metric: str, a: list[float], b: list[float], noise: SeedNoise | None = None) -> Judgement:
    """Is B's ``metric`` different from A's beyond seed noise? ``a``, ``b``: the values over seeds.
    ``noise``: the seed noise to use (a ladder's pooled estimate, or a recorded one); by default
    pooled from ``a`` and ``b`` themselves."""
    lower_better, log = METRICS.get(metric, (True, False))
    a, b = [v for v in a if _finite(v)], [v for v in b if _finite(v)]
    if not a or not b:
        return Judgement(metric, None, None, None, None, None, MISSING, "no value")
    ma, mb = statistics.fmean(a), statistics.fmean(b)
    delta, rel = mb - ma, (mb - ma) / ma if ma else None
    noise = noise or SeedNoise.pooled([a, b], log)
    if noise is None:
        return Judgement(metric, ma, mb, delta, rel, None, UNKNOWN, "one run each and no recorded noise estimate")
    sa, sb = _scale(a, log), _scale(b, log)
    diff = statistics.fmean(sb) - statistics.fmean(sa)
    margin = t975(noise.df) * noise.sd * math.sqrt(1 / len(a) + 1 / len(b))
    if abs(diff) <= margin:
        verdict = NOISE
    else:
        verdict = HELPS if (diff < 0) == lower_better else HURTS
    return Judgement(metric, ma, mb, delta, rel, margin, verdict, noise.basis)


def recorded(metric: str, root: Path = Path(".")) -> SeedNoise | None:
    """The seed noise ``pico reproduce --noise-seeds`` measured for ``metric`` (None if none)."""
    try:
        data = json.loads((root / NOISE_JSON).read_text())
        entry = data["metrics"][metric]
        return SeedNoise(
            float(entry["sd"]),
            int(entry["df"]),
            f"recorded estimate: `pico reproduce --noise-seeds {data['seeds']}` of {data['ref']} on {data['date']} "
            "(only one run per side here)",
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def record(path: Path, ref: str, date: str, seeds: int, values: dict[str, list[float]]) -> dict[str, Any]:
    """Write the seed noise of each metric from one configuration's runs over seeds (the rerun and
    its ``--noise-seeds`` reruns): what ``recorded`` reads."""
    metrics = {}
    for metric, xs in values.items():
        noise = SeedNoise.pooled([xs], METRICS.get(metric, (True, False))[1])
        if noise is not None:
            metrics[metric] = {"sd": noise.sd, "df": noise.df, "values": xs}
    data = {"ref": ref, "date": date, "seeds": seeds, "metrics": metrics}
    atomic_write_json(path, data)
    return data


def _scale(xs: list[float], log: bool) -> list[float]:
    return [math.log(x) for x in xs if x > 0] if log else list(xs)


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _margin_text(metric: str, margin: float) -> str:
    if METRICS.get(metric, (True, False))[1]:
        return f"{math.expm1(margin):.2%}"
    return f"{margin:.4g}"


# the headline figures a comparison judges: (label, metric key, where in a run's records)
HEADLINE = (
    ("token perplexity (macro)", "token_perplexity", "eval"),
    ("bits per byte (macro)", "bits_per_byte", "eval"),
    ("eval loss (macro)", "loss", "eval"),
    ("final train loss (interval mean)", "final_loss_mean", "summary"),
)


def headline_values(run: Any) -> dict[str, float | None]:
    """A run's headline figures (a ``pico.runs.RunRecord``), by metric key."""
    out = {}
    for _, key, where in HEADLINE:
        if where == "eval":
            out[key] = (run.final_eval or {}).get("macro", {}).get(key)
        else:
            out[key] = getattr(run.summary, key, None) if run.summary else None
    return out


def judge_runs(a: list[Any], b: list[Any], root: Path = Path(".")) -> list[tuple[str, Judgement]]:
    """Each headline figure of runs ``b`` against runs ``a`` (each a list of seeds of one
    configuration): seed noise pooled from them, else the recorded estimate under ``root``."""
    out = []
    for label, key, _ in HEADLINE:
        xa = [headline_values(r)[key] for r in a]
        xb = [headline_values(r)[key] for r in b]
        pooled = SeedNoise.pooled([[v for v in xa if _finite(v)], [v for v in xb if _finite(v)]], METRICS[key][1])
        out.append((label, judge(key, xa, xb, pooled or recorded(key, root))))
    return out


def judgement_lines(judged: list[tuple[str, Judgement]], a_name: str, b_name: str) -> list[str]:
    """The markdown table every comparison prints, and the rule under it."""
    lines = [f"| metric | {a_name} | {b_name} | change | verdict |", "|---|---|---|---|---|"]
    bases = []
    for label, j in judged:
        lines.append(f"| {label} | {_num(j.a)} | {_num(j.b)} | {_change_text(j)} | **{j.verdict}** |")
        if j.basis not in bases:
            bases.append(j.basis)
    lines += [
        "",
        "Verdicts: a two-sided t-test at 95 % on the means over seeds (perplexities as logs); *inside seed "
        "noise* when changing only the seed moves the figure as much. Noise from: " + "; ".join(bases) + ".",
    ]
    return lines


def _change_text(j: Judgement) -> str:
    if j.delta is None:
        return "n/a"
    rel = f" ({j.relative:+.2%})" if j.relative is not None else ""
    margin = f", margin ±{_margin_text(j.metric, j.margin)}" if j.margin is not None else ""
    return f"{j.delta:+.4g}{rel}{margin}"


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.5g}"
