"""Diagnose a run from its metric history: what happened, with the numbers that show it.

One verdict — *divergence*, *overfitting*, *plateau* or *healthy* (checked in that order) —
judged on the token-level evaluation loss and the training loss, and separately *metric
pathology*: pico's per-sequence mean perplexity far above the token-level one, dominated by a few
windows. The two can co-occur; the training log this project grew from mistook the second for
the first ("severe overfitting" from a per-sequence mean of 4.98e30 while training loss fell).
Every finding carries its evidence, and every recommendation is tied to a number.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from statistics import median
from typing import Any

from pico.train_metrics import TrainSummary


@dataclass
class Diagnosis:
    verdict: str
    evidence: list[str]
    pathology: list[str] | None = None  # evidence of metric pathology, None when absent
    recommendations: list[str] = field(default_factory=list)
    spikes: list[int] = field(default_factory=list)  # steps with a training-loss spike
    grad_explosions: list[int] = field(default_factory=list)  # steps with an exploding gradient norm


def g(x: float) -> str:
    if not math.isfinite(x):
        return str(x)
    return f"{x:.3g}" if abs(x) >= 1e4 or (x != 0 and abs(x) < 1e-3) else f"{x:.4g}"


def loss_spikes(train: list[dict], factor: float) -> list[int]:
    """Steps whose loss exceeds ``factor`` x the median of the previous five interval means."""
    out = []
    for i in range(3, len(train)):
        ref = median(r["loss_mean"] for r in train[max(0, i - 5) : i])
        if math.isfinite(ref) and (not math.isfinite(train[i]["loss"]) or train[i]["loss"] > factor * ref):
            out.append(int(train[i]["step"]))
    return out


def grad_explosions(train: list[dict], factor: float) -> list[int]:
    norms = [r["grad_norm"] for r in train if math.isfinite(r.get("grad_norm", math.nan))]
    if len(norms) < 3:
        return []
    ref = median(norms)
    return [int(r["step"]) for r in train if r.get("grad_norm_max", 0) > factor * ref]


def _divergence(train, summary, cfg) -> list[str] | None:
    if summary is not None and summary.status == "diverged":
        return [f"the trainer stopped the run: {summary.reason}"]
    bad = [r for r in train if not math.isfinite(r["loss_mean"])]
    if bad:
        return [f"training loss became {bad[0]['loss_mean']} at step {int(bad[0]['step'])}"]
    if len(train) >= 3:
        best = min(train, key=lambda r: r["loss_mean"])
        last = train[-1]
        if last["loss_mean"] > cfg.divergence_factor * best["loss_mean"]:
            return [
                f"training loss rose from its minimum {g(best['loss_mean'])} (step {int(best['step'])}) to "
                f"{g(last['loss_mean'])} at step {int(last['step'])} "
                f"({last['loss_mean'] / best['loss_mean']:.2f}x) and did not come back"
            ]
    return None


def _train_mean_at(train: list[dict], step: float) -> float | None:
    before = [r for r in train if r["step"] <= step]
    return before[-1]["loss_mean"] if before else None


def _overfitting(train, evals, summary, cfg) -> list[str] | None:
    if len(evals) < cfg.overfit_min_evals + 1:
        return None
    best_i = min(range(len(evals)), key=lambda i: evals[i]["loss"])
    after = evals[best_i + 1 :]
    if len(after) < cfg.overfit_min_evals:
        return None
    best, last = evals[best_i], evals[-1]
    if last["loss"] <= best["loss"] * (1 + cfg.overfit_min_rise):
        return None
    if "seen_loss" in best and "seen_loss" in last:
        # the honest comparison: the same model, in eval mode, on training rows it has seen
        s_best, s_last = best["seen_loss"], last["seen_loss"]
        if s_last >= s_best:
            return None  # held-out worse, seen rows not better: not memorisation (a dropout-only gap is not it)
        ev = [
            f"token-level held-out loss rose from its best {g(best['loss'])} (step {int(best['step'])}) to "
            f"{g(last['loss'])} (step {int(last['step'])}) over {len(after)} evaluations while the loss on "
            f"already-seen training rows (eval mode, no dropout) fell {g(s_best)} → {g(s_last)}",
            f"the held-out − seen gap grew {g(best['loss'] - s_best)} → {g(last['loss'] - s_last)} nats/token",
        ]
        return ev + _epochs_evidence(last, summary)
    t_best, t_last = _train_mean_at(train, best["step"]), _train_mean_at(train, last["step"])
    if t_best is None or t_last is None or t_last >= t_best:
        return None  # eval worse but train not better: not overfitting
    gap0, gap1 = best["loss"] - t_best, last["loss"] - t_last
    if gap1 <= gap0:
        return None
    ev = [
        f"token-level eval loss rose from its best {g(best['loss'])} (step {int(best['step'])}) to {g(last['loss'])} "
        f"(step {int(last['step'])}) over {len(after)} evaluations while training loss fell {g(t_best)} → {g(t_last)}",
        f"the eval − train gap grew {g(gap0)} → {g(gap1)} nats/token (training loss is measured with dropout "
        "on; no seen-rows loss was recorded to confirm it)",
    ]
    return ev + _epochs_evidence(last, summary)


def _epochs_evidence(last: dict, summary: TrainSummary | None) -> list[str]:
    epochs = last.get("epochs", summary.epochs if summary is not None else None)
    if epochs is None:
        return []
    out = [f"{epochs:.2f} epochs over the training rows by then" + (" (repeated data)" if epochs > 1 else "")]
    if summary is not None and summary.source_epochs and summary.epochs:
        # a source with copies in the rows (data budgets) repeats sooner than the rows do
        repeated = {n: epochs * v["copies"] for n, v in summary.source_epochs.items() if epochs * v["copies"] > 1}
        if repeated:
            out.append("repeated by then: " + ", ".join(f"{n} {e:.2f} epochs" for n, e in sorted(repeated.items())))
    return out


def schedule_flattened(train: list[dict], tail: list[dict], cfg: Any) -> str | None:
    """Why a flat tail is the lr schedule's doing, or None: over the tail the lr was at most
    ``plateau_lr_fraction`` of its peak (a linear-to-zero or cosine decay ending), so small steps,
    not a model that stopped learning, flattened the loss."""
    peak = max((r.get("lr", 0.0) for r in train), default=0.0)
    tail_lr = math.fsum(r.get("lr", 0.0) for r in tail) / len(tail)
    if peak <= 0 or tail_lr > cfg.plateau_lr_fraction * peak:
        return None
    return (
        f"the training loss flattened while the lr schedule decayed (mean lr {g(tail_lr)} over steps "
        f"{int(tail[0]['step'])}–{int(tail[-1]['step'])}, {tail_lr / peak * 100:.0f} % of its peak {g(peak)}): "
        "a schedule effect, not a plateau of the model; raising training.max_steps continues the run with "
        "the decay stretched"
    )


def _flat_tail(train: list[dict], cfg: Any) -> list[dict] | None:
    """The last ``plateau_fraction`` of the log when the training loss improved less than
    ``plateau_min_improvement`` over it, else None."""
    if len(train) < 8:
        return None
    tail = train[int(len(train) * (1 - cfg.plateau_fraction)) :]
    first, last = tail[0]["loss_mean"], tail[-1]["loss_mean"]
    rel = (first - last) / abs(first) if first else 0.0
    return tail if rel < cfg.plateau_min_improvement else None


def _plateau(train, evals, cfg) -> list[str] | None:
    tail = _flat_tail(train, cfg)
    if tail is None:
        return None
    first, last = tail[0]["loss_mean"], tail[-1]["loss_mean"]
    rel = (first - last) / abs(first) if first else 0.0
    if schedule_flattened(train, tail, cfg):
        return None  # the lr had decayed: the schedule flattened the curve, not the model (diagnose says so)
    ev = [
        f"training loss moved {g(first)} → {g(last)} ({-rel * 100:+.2f} %) over the last "
        f"{cfg.plateau_fraction * 100:.0f} % of training (steps {int(tail[0]['step'])}–{int(tail[-1]['step'])})"
    ]
    tail_evals = [e for e in evals if e["step"] >= tail[0]["step"]]
    if len(tail_evals) >= 2:
        e0, e1 = tail_evals[0]["loss"], tail_evals[-1]["loss"]
        if (e0 - e1) / e0 >= cfg.plateau_min_improvement:
            return None  # evaluation still improving
        ev.append(f"eval loss {g(e0)} → {g(e1)} over the same steps")
    return ev


def _pathology(evals, final_eval, cfg) -> list[str] | None:
    ev = []
    macro = final_eval.get("macro", {})
    ratio = macro.get("seq_mean_over_token_ratio")
    ratio = float(ratio) if ratio is not None else None
    hist = [
        (e["step"], e["pico_mean_seq_perplexity"] / e["token_perplexity"])
        for e in evals
        if e.get("token_perplexity") and math.isfinite(e["token_perplexity"])
    ]
    worst = max(hist, key=lambda x: x[1]) if hist else None
    if not ((ratio is not None and ratio > cfg.pathology_ratio) or (worst and worst[1] > cfg.pathology_ratio)):
        return None
    if ratio is not None:
        ev.append(
            f"final: pico per-sequence mean perplexity {g(float(macro['pico_mean_seq_perplexity']))} vs "
            f"token-level {g(macro['token_perplexity'])} ({g(ratio)}x)"
        )
    if worst and len(evals) >= 2:
        e0, e1 = evals[0], evals[-1]
        ev.append(
            f"over training the per-sequence mean went {g(e0['pico_mean_seq_perplexity'])} → "
            f"{g(e1['pico_mean_seq_perplexity'])} while token-level perplexity went "
            f"{g(e0['token_perplexity'])} → {g(e1['token_perplexity'])} (worst ratio {g(worst[1])}x at step {int(worst[0])})"
        )
    dom = final_eval.get("per_sequence_dominance")
    if dom and dom.get("top_windows"):
        top = dom["top_windows"][0]
        ev.append(
            f"window {top['window']} (source {top['source']}, document {top['doc']}, {top['tokens']} tokens, "
            f"mean loss {g(top['loss'])} nats) alone makes {top['share'] * 100:.1f} % of the per-sequence sum; "
            f"the top {len(dom['top_windows'])} windows make {dom['top_share'] * 100:.1f} %"
        )
        shares = sorted(dom.get("source_share", {}).items(), key=lambda kv: -kv[1])
        if shares:
            ev.append("share by source: " + ", ".join(f"{s} {v * 100:.1f} %" for s, v in shares))
    return ev


def recommendations(d: Diagnosis, params: Any, summary: TrainSummary | None, evals: list[dict]) -> list[str]:
    o, t = params.optim, params.training
    recs = []
    if d.verdict == "divergence":
        recs.append(
            f"lower the learning rate: {g(o.lr)} → {g(o.lr / 3)} (÷3), and restart from the last good checkpoint "
            f"({(summary.last_good_checkpoint if summary else None) or 'none kept'})"
        )
        if o.max_grad_norm is None:
            recs.append("turn on gradient clipping (optim.max_grad_norm: 1.0): it is off")
        if o.warmup_steps < 0.05 * t.max_steps:
            recs.append(
                f"lengthen the warmup: {o.warmup_steps} steps is {o.warmup_steps / t.max_steps * 100:.1f} % of the run"
            )
    elif d.verdict == "overfitting":
        best = min(evals, key=lambda e: e["loss"])
        recs.append(
            f"stop early: the best eval loss {g(best['loss'])} was at step {int(best['step'])} "
            f"(early_stop.enabled: true keeps that checkpoint)"
        )
        epochs = summary.epochs if summary else 0
        repeated = {n: v["epochs"] for n, v in (summary.source_epochs if summary else {}).items() if v["epochs"] > 1}
        if epochs > 1 or repeated:
            recs.append(
                f"more data: the run saw its rows {epochs:.2f} times"
                + (
                    " (" + ", ".join(f"{n} {e:.2f}×" for n, e in sorted(repeated.items())) + " per source)"
                    if repeated
                    else ""
                )
            )
        if params.model.dropout == 0:
            recs.append("regularise: model.dropout is 0")
    elif d.verdict == "plateau":
        recs.append(
            f"the loss has flattened at step {summary.step if summary else 0}: try a higher peak lr than "
            f"{g(o.lr)} or a larger model than {params.model.preset}; more steps alone buys little"
        )
    else:
        if len(evals) >= 2:
            e0, e1 = evals[-2], evals[-1]
            recs.append(
                f"train longer: eval loss still fell {g(e0['loss'])} → {g(e1['loss'])} between steps "
                f"{int(e0['step'])} and {int(e1['step'])}"
            )
    if d.spikes:
        recs.append(f"inspect the {len(d.spikes)} loss spike(s) at steps {', '.join(map(str, d.spikes[:5]))}")
    if d.pathology:
        recs.append(
            "judge the model by token-level perplexity and bits per byte, not pico's per-sequence mean: "
            + d.pathology[0]
        )
    if len(evals) < 4:
        recs.append(
            f"evaluate more often: {len(evals)} evaluations (training.eval_every={t.eval_every}) are too few "
            f"to see a trend"
        )
    return recs


def diagnose(
    train: list[dict], evals: list[dict], summary: TrainSummary | None, final_eval: dict, params: Any
) -> Diagnosis:
    cfg = params.report.diagnosis
    spikes = loss_spikes(train, cfg.spike_factor)
    explosions = grad_explosions(train, cfg.grad_explosion_factor)
    for verdict, evidence in (  # noqa: B007 (the verdict found is used after the loop)
        ("divergence", _divergence(train, summary, cfg)),
        ("overfitting", _overfitting(train, evals, summary, cfg)),
        ("plateau", _plateau(train, evals, cfg)),
    ):
        if evidence:
            break
    else:
        verdict = "healthy"
        evidence = []
        if train:
            evidence.append(f"training loss fell {g(train[0]['loss_mean'])} → {g(train[-1]['loss_mean'])}")
            tail = _flat_tail(train, cfg)
            flat = tail is not None and schedule_flattened(train, tail, cfg)
            if flat:
                evidence.append(flat)
        if evals:
            best = min(evals, key=lambda e: e["loss"])
            evidence.append(
                f"token-level eval loss {g(evals[0]['loss'])} → {g(evals[-1]['loss'])} "
                f"(best {g(best['loss'])} at step {int(best['step'])})"
            )
    if spikes:
        evidence.append(
            f"{len(spikes)} training-loss spike(s) above {cfg.spike_factor}x the recent mean "
            f"(steps {', '.join(map(str, spikes[:5]))})"
        )
    if explosions:
        evidence.append(
            f"{len(explosions)} interval(s) with gradient norm above {cfg.grad_explosion_factor}x its "
            f"median (steps {', '.join(map(str, explosions[:5]))})"
        )
    d = Diagnosis(verdict, evidence, _pathology(evals, final_eval, cfg), spikes=spikes, grad_explosions=explosions)
    d.recommendations = recommendations(d, params, summary, evals)
    return d
