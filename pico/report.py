"""The report stage: the training log, written from metric files, never by hand.

Shape of the log: a header (run, status, fingerprint), *What we did* (params that differ from a
baseline, each as a sentence), *The result* (training loss, token-level Paloma perplexity and bits
per byte first → best → last per source, pico's per-sequence mean beside them, spikes), *What
happened* (a diagnosis with its evidence, pico/diagnose.py), *What we do next* (recommendations tied
to numbers), the config in brief and PNG plots. ``report.md`` is a function of the run's results
alone, so a rerun anywhere writes the same bytes; the date, machine and speed go to ``run_info.md``
beside it, which DVC does not hash. ``pico compare A B`` (pico/compare.py) sets two of these logs side by
side.
"""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path
from typing import Any

from pico import forecast, noise, train_metrics
from pico.config import Params
from pico.diagnose import Diagnosis, diagnose
from pico.fsutil import atomic_write_json, atomic_write_text
from pico.plots import make_plots
from pico.runs import RunRecord, describe_changes, load_params_at, load_run
from pico.train_metrics import TrainSummary, duration, median_rate

RUN_INFO_MD = "run_info.md"


def code_lineage_line(segments: list[dict], step: int) -> str:
    """The training-code versions a run trained under, as one sentence (pico.lineage.continue_code)."""
    ends = [seg["step"] for seg in segments[1:]] + [step]
    parts = [f"steps {seg['step'] + 1}-{end} under `{seg['code_version']}`" for seg, end in zip(segments, ends)]
    return (
        f"trained under {len(segments)} versions of the training code ({'; '.join(parts)}): a pipeline "
        "upgrade continued the run (`training.on_code_change: new_run` would have started a new one)"
    )


def fmt(x: Any, digits: int = 4) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, str):
        return x
    if isinstance(x, bool):
        return str(x)
    if isinstance(x, int):
        return f"{x:,}"
    if not math.isfinite(x):
        return str(x)
    return f"{x:.3e}" if abs(x) >= 1e5 or (x != 0 and abs(x) < 1e-3) else f"{x:.{digits}g}"


def first_best_last(rows: list[dict], key: str, best=min) -> str:
    vals = [(r["step"], r[key]) for r in rows if key in r]
    if not vals:
        return "n/a"
    b = best(vals, key=lambda v: v[1])
    return f"{fmt(vals[0][1])} → {fmt(b[1])} (step {int(b[0])}) → {fmt(vals[-1][1])}"


def status_line(summary: TrainSummary | None, max_steps: int) -> str:
    if summary is None:
        return f"unknown (no train summary yet) of {max_steps} steps"
    text = {"early_stopped": "early-stopped", "running": "in progress"}.get(summary.status, summary.status)
    line = f"{text} at step {summary.step} of {max_steps}"
    if summary.status == "running" and summary.eta_s is not None:
        line += f", ETA {duration(summary.eta_s)} (at the last interval's rate)"
    return line + (f" because {summary.reason}" if summary.reason else "")


def pico_number_line(pico: dict) -> str:
    """pico-train's own Paloma number (pico.pico_number), labelled for what it is."""
    per_source = ", ".join(f"{k} {fmt(v)}" for k, v in pico.get("sources", {}).items())
    return (
        f"pico-train's Paloma number, as pico-train computes it (mean over {pico['documents']} documents of "
        f"exp(mean NLL of tokens 2..n), each truncated to its first {pico['max_length']} tokens; "
        f"{pico['truncated']} were truncated): **{fmt(pico['mean_perplexity'])}** ({per_source}). "
        "Comparable with a pico-train run's logged value on the same texts; not a measure to steer by."
    )


def result_section(run: RunRecord, d: Diagnosis) -> list[str]:
    train, evals, s, fe = run.train, run.evals, run.summary, run.final_eval
    lines = ["## The result", ""]
    if train:
        lines.append(
            f"- training loss (interval mean): {fmt(train[0]['loss_mean'])} → {fmt(train[-1]['loss_mean'])} "
            f"(min {fmt(min(r['loss_mean'] for r in train))})"
        )
    if evals:
        lines.append(f"- token-level eval loss (macro): {first_best_last(evals, 'loss')}")
    sources = list(fe.get("sources", {}))
    if sources and evals:
        lines += [
            "",
            "| source | token perplexity first → best (step) → last | bits per byte first → best → last "
            "| pico per-seq mean (final) | ratio |",
            "|---|---|---|---|---|",
        ]
        for name in sources:
            m = fe["sources"][name]
            lines.append(
                f"| {name} | {first_best_last(evals, f'token_perplexity/{name}')} | "
                f"{first_best_last(evals, f'bits_per_byte/{name}')} | {fmt(m.get('pico_mean_seq_perplexity'))} | "
                f"{fmt(m.get('seq_mean_over_token_ratio'), 3)}× |"
            )
        mac = fe.get("macro", {})
        lines.append(
            f"| **macro** (mean over sources) | {first_best_last(evals, 'token_perplexity')} | "
            f"{first_best_last(evals, 'bits_per_byte')} | {fmt(mac.get('pico_mean_seq_perplexity'))} | "
            f"{fmt(mac.get('seq_mean_over_token_ratio'), 3)}× |"
        )
        dom = fe.get("macro_domains") or {}
        if dom.get("domains"):
            lines.append(
                f"| macro over {dom['domains']} domains (Paloma's convention, final) | "
                f"{fmt(dom['token_perplexity'])} | {fmt(dom['bits_per_byte'])} | "
                f"{fmt(dom['pico_mean_seq_perplexity'])} | |"
            )
        lines += [
            "",
            f"Final figures are of the {fe.get('checkpoint_kind', 'latest')} checkpoint (step {fe.get('step')})."
            + (
                " Training stopped early, so that is the **best** checkpoint, not the last."
                if fe.get("checkpoint_kind") == "best"
                else ""
            ),
        ]
        if fe.get("pico_train_paloma"):
            lines += ["", pico_number_line(fe["pico_train_paloma"])]
    if train:
        cfg = run.params.report.diagnosis
        lines.append(
            f"- loss spikes (> {cfg.spike_factor}× the recent mean): {len(d.spikes)}; gradient-norm explosions "
            f"(> {cfg.grad_explosion_factor}× the median): {len(d.grad_explosions)}; max pre-clip gradient norm "
            f"{fmt(max(r.get('grad_norm_max', r['grad_norm']) for r in train))}"
        )
    if s is not None:
        lines.append(f"- {fmt(s.tokens)} tokens seen, {fmt(s.epochs, 3)} epochs over the packed rows")
        if s.source_epochs:
            per = ", ".join(
                f"{name} {fmt(v['epochs'], 3)}" + (f" (×{fmt(v['copies'], 3)} copies)" if v["copies"] != 1 else "")
                for name, v in sorted(s.source_epochs.items())
            )
            lines.append(f"- epochs per training source (over its unique tokens): {per}")
    c = fe.get("contamination")
    if c:
        per = ", ".join(f"{name} {v['contaminated']}/{v['documents']}" for name, v in c["by_source"].items())
        lines.append(
            f"- contamination: {c['contaminated_documents']} of {c['documents']} evaluation documents share a "
            f"{c['ngram']}-token n-gram with the training rows ({per})"
        )
    return lines


def diagnosis_sections(d: Diagnosis) -> list[str]:
    lines = ["## What happened", "", f"**{d.verdict}**", ""]
    lines += [f"- {e}" for e in d.evidence]
    lines += ["", "**metric pathology**: " + ("yes" if d.pathology else "no")]
    if d.pathology:
        lines += [""] + [f"- {e}" for e in d.pathology]
    lines += ["", "## What we do next", ""]
    lines += [f"- {r}" for r in d.recommendations] or ["- nothing: the run did what it should"]
    return lines


def run_info_markdown(run: RunRecord, info: dict[str, Any], date: str) -> str:
    """When, where and how fast: wall-clock facts, in a file DVC does not hash (report.md links it)."""
    machine = info.get("machine", {})
    lines = [f"# When, where, how fast: {run.name}", "", f"- **Report written**: {date}"]
    if machine:
        lines.append(
            f"- **Machine**: {machine.get('cpu')} ({machine.get('cores')} cores), device {machine.get('device')}"
            + (f" ({machine['cuda']})" if machine.get("cuda") else "")
            + f", torch {machine.get('torch')}"
        )
        lines.append(
            f"- **CPU numerics**: {machine.get('numerics')} (ATen {machine.get('aten_cpu_capability')}, "
            f"MKL_CBWR {machine.get('mkl_cbwr') or 'unset'}, {machine.get('threads')} threads)"
        )
    if run.perf:
        lines.append(f"- **Throughput**: {fmt(median_rate(run.perf), 5)} tokens/s (median of log intervals)")
    lines += ["", *cost_table([run])]
    calls = info.get("invocations", [])
    if calls:
        lines += ["", "| started | steps | status | wall time (s) | tokens/s (median) |", "|---|---|---|---|---|"]
        lines += [
            f"| {c.get('started')} | {c.get('from_step')} → {c.get('to_step')} | {c.get('status')} | "
            f"{fmt(c.get('wall_s'), 5)} | {fmt(c.get('median_tokens_per_s'), 5)} |"
            for c in calls
        ]
    return "\n".join(lines) + "\n"


def cost(run: RunRecord) -> dict[str, float | None]:
    """Planned (``pico plan``) and actual wall time, tokens/s and device-hours of a run."""
    plan, calls = run.plan or {}, run.run_info.get("invocations", [])
    walls = [c["wall_s"] for c in calls if c.get("wall_s") is not None]
    actual = sum(walls) if walls else None
    procs = run.summary.processes if run.summary else 1
    per_step = plan.get("seconds_per_step")
    price = run.params.report.device_hour_price
    return {
        "planned_wall_s": plan.get("wall_s"),
        "actual_wall_s": actual,
        "planned_tokens_per_s": plan["tokens_per_step"] / per_step if per_step else None,
        "actual_tokens_per_s": median_rate(run.perf),
        "planned_device_hours": plan.get("device_hours"),
        "actual_device_hours": actual * procs / 3600 if actual is not None else None,
        "price": price,
    }


def cost_table(runs: list[RunRecord]) -> list[str]:
    """Planned vs actual, one column per run (markdown)."""
    costs = [cost(r) for r in runs]

    def cell(c: dict, key: str, as_time: bool = False) -> str:
        p, a = c[f"planned_{key}"], c[f"actual_{key}"]

        def show(x: float) -> str:
            return duration(x) if as_time else fmt(x, 4)

        text = f"{show(p) if p is not None else 'no plan'} → {show(a) if a is not None else 'n/a'}"
        return text + (f" ({a / p - 1:+.0%})" if p and a is not None else "")

    rows = [
        ("wall time (planned → actual)", [cell(c, "wall_s", True) for c in costs]),
        ("tokens/s (planned → actual median)", [cell(c, "tokens_per_s") for c in costs]),
        ("device-hours (planned → actual)", [cell(c, "device_hours") for c in costs]),
    ]
    if any(c["price"] is not None for c in costs):
        rows.append(
            (
                "cost (actual device-hours x report.device_hour_price)",
                [
                    fmt(c["actual_device_hours"] * c["price"], 4)
                    if c["price"] is not None and c["actual_device_hours"] is not None
                    else "n/a"
                    for c in costs
                ],
            )
        )
    head = "| | " + " | ".join(r.name for r in runs) + " |"
    return [head, "|---" * (len(runs) + 1) + "|"] + [f"| {k} | " + " | ".join(v) + " |" for k, v in rows]


def headline(run: RunRecord) -> dict[str, Any]:
    """The final ``metrics/headline.json``: evaluate's figures and the run's whole wall time."""
    pico = (run.final_eval.get("pico_train_paloma") or {}).get("mean_perplexity")
    return train_metrics.headline(run.summary, run.final_eval.get("macro", {}), cost(run)["actual_wall_s"], pico)


def render_imported(run: RunRecord) -> str:
    """A checkpoint `pico import-pico` brought in: its evaluation, honestly, and nothing about training."""
    fe = run.final_eval
    dims = fe.get("model_dims") or {}
    lines = [
        f"# Evaluation of an imported checkpoint: {fe['imported_from']}",
        "",
        f"- **Imported** with `pico import-pico` (step {fe.get('step')}, fingerprint `{fe.get('fingerprint')}`): "
        "it was not trained by this pipeline, so there is no training history or diagnosis here",
        f"- **Model**: d_model {dims.get('d_model')}, hidden {dims.get('hidden_dim')}, {dims.get('n_layers')} layers, "
        f"{dims.get('n_heads')}/{dims.get('n_kv_heads')} heads, vocabulary {dims.get('vocab_size')}",
        "",
        "## The result",
        "",
        "| source | token perplexity | bits per byte | pico per-seq mean | ratio |",
        "|---|---|---|---|---|",
    ]
    for name, m in fe.get("sources", {}).items():
        lines.append(
            f"| {name} | {fmt(m['token_perplexity'])} | {fmt(m['bits_per_byte'])} | "
            f"{fmt(m['pico_mean_seq_perplexity'])} | {fmt(m['seq_mean_over_token_ratio'], 3)}× |"
        )
    mac, dom = fe.get("macro", {}), fe.get("macro_domains") or {}
    lines.append(
        f"| **macro** (mean over sources) | {fmt(mac.get('token_perplexity'))} | {fmt(mac.get('bits_per_byte'))} | "
        f"{fmt(mac.get('pico_mean_seq_perplexity'))} | {fmt(mac.get('seq_mean_over_token_ratio'), 3)}× |"
    )
    if dom.get("domains"):
        lines.append(
            f"| macro over {dom['domains']} domains (Paloma's convention) | {fmt(dom['token_perplexity'])} | "
            f"{fmt(dom['bits_per_byte'])} | {fmt(dom['pico_mean_seq_perplexity'])} | |"
        )
    lines += [
        "",
        "The per-sequence mean is pico-train's statistic over these windows; read the token-level "
        "figure beside it (the ratio shows how far a few windows pull the mean).",
    ]
    pico = fe.get("pico_train_paloma")
    if pico:
        lines += ["", pico_number_line(pico)]
    return "\n".join(lines) + "\n"


def render(
    run: RunRecord,
    changes: list[str] | None,
    baseline_name: str | None,
    when: str | None,
    plots: list[str],
    plots_rel: str = "plots",
    against: list[str] = (),
) -> str:
    if run.final_eval.get("imported_from"):
        return render_imported(run)
    p, s = run.params, run.summary
    m, o, t = p.model, p.optim, p.training
    d = diagnose(run.train, run.evals, s, run.final_eval, p)
    # the batch the run actually had (its summary), else what the params ask for
    processes = s.processes if s else t.nproc
    batch_rows = s.effective_batch_rows if s else t.effective_batch_rows()
    lines = [
        f"# Training log: {run.name}",
        "",
        *([f"- **When, where, how fast**: {when}"] if when else []),
        f"- **Status**: {status_line(s, t.max_steps)}",
        f"- **Fingerprint**: `{s.fingerprint if s else None}` (params + data + tokenizer; training code "
        f"`{s.code_version if s else None}`)",
        *(
            [f"- **Code lineage**: {code_lineage_line(s.code_lineage, s.step)}"]
            if s and len(s.code_lineage) > 1
            else []
        ),
        f"- **Model**: pico-decoder-{m.preset} (d_model {m.dim}, hidden {m.hidden}, {m.n_layers} layers, "
        f"{m.n_heads}/{m.n_kv_heads} heads), {fmt(s.parameters if s else None)} parameters",
        "",
        "## What we did",
        "",
    ]
    if changes is None:
        lines.append("- no baseline to compare with")
    elif not changes:
        lines.append(f"- the same params as the baseline ({baseline_name})")
    else:
        lines.append(f"Compared with {baseline_name}:")
        lines += [f"- {c}" for c in changes]
        lines += ["", *against] if against else []
    for event in s.events if s else []:
        lines.append(f"- at step {event['step']}: {event['event']}")
    lines += (
        [""]
        + result_section(run, d)
        + forecast_section(run)
        + [""]
        + diagnosis_sections(d)
        + [
            "",
            "## Config in brief",
            "",
            f"- AdamW lr {fmt(o.lr)}, betas {tuple(o.betas)}, weight decay {fmt(o.weight_decay)}, "
            f"grad clip {fmt(o.max_grad_norm) if o.max_grad_norm else 'off'}; {o.schedule} schedule, warmup {o.warmup_steps}",
            f"- batch: micro {t.micro_batch_size} × accumulation {t.grad_accum_steps} × {processes} process"
            f"{'es' if processes > 1 else ''} = {batch_rows} rows × {p.data.seq_len} tokens per step",
            f"- dropout {fmt(m.dropout)}, attention dropout {fmt(m.attention_dropout)}, seed {t.seed}",
            "",
            "Token perplexity is exp(Σ NLL / Σ tokens); bits per byte divides the same NLL by ln 2 × the UTF-8 "
            "bytes of the text. The pico per-sequence mean is pico-train's statistic (mean over windows of "
            "exp(window loss)); a few bad windows can inflate it by orders of magnitude — read it beside, never instead.",
        ]
    )
    if plots:
        lines += ["", "## Plots", ""] + [f"![{x.removesuffix('.png')}]({plots_rel}/{x})" for x in plots]
    return "\n".join(lines) + "\n"


def baseline_changes(params: Params) -> tuple[list[str] | None, str | None]:
    source = params.report.baseline or "HEAD"
    try:
        return describe_changes(params, load_params_at(source)), source
    except Exception as err:  # no git, no commit yet, an unknown name: the log says so
        print(f"report: no baseline ({source}): {err}")
        return None, None


def forecast_section(run: RunRecord) -> list[str]:
    """The forecast made halfway through the run (pico.forecast, from its own eval history) against
    where it ended: how far a forecast of this run could be trusted."""
    s = run.summary
    if not run.evals or s is None or not run.params.forecast.enabled:
        return []
    lines = ["", "## Forecast", ""]
    if s.status == "running":
        latest = forecast.forecast_at(run.evals, run.params, s.effective_batch_tokens)
        if latest.get("fit") is not None:
            lines.append(f"- {forecast.line(latest)} (power laws fitted to the eval loss by tokens and by lr-time)")
        else:
            lines.append(f"- {forecast.line(latest)}")
        return lines
    check = forecast.backtest_run(run.evals, run.params, s.effective_batch_tokens)
    if check is None:
        return lines + [
            f"- no forecast by mid-run: {forecast.MIN_POINTS_TEXT} (forecast.min_points) by then; evaluate more often "
            "(training.eval_every) to forecast earlier"
        ]
    inside = "inside" if check["inside"] else "outside"
    interval = f" [{fmt(check['lo'])}, {fmt(check['hi'])}]" if check["lo"] is not None else ""
    return lines + [
        f"- made at step {check['made_at_step']} (half-way): final eval loss {fmt(check['predicted'])}{interval}; "
        f"it ended at {fmt(check['final'])} ({check['error']:+.3g}, {inside} the interval; the naive forecast, "
        f"no further progress from {fmt(check['loss_then'])}, was off by {check['persistence_error']:+.3g})"
    ]


def judged_against(record: RunRecord, base: str | None) -> list[str]:
    """The headline figures against the baseline run's, each judged against seed noise (pico.noise:
    one run each, so the noise is the recorded estimate of ``pico reproduce --noise-seeds``, if any)."""
    try:
        baseline = load_run(base)
    except Exception as err:  # the baseline has no metrics (yet): the params comparison stands alone
        print(f"report: no baseline metrics ({base}): {str(err).splitlines()[0][:200]}")
        return []
    if not baseline.final_eval:
        return []
    return noise.judgement_lines(noise.judge_runs([baseline], [record]), base, "this run")


def run(params: Params, date: str | None = None) -> Path:
    out = Path(params.report.out_dir)
    record = load_run(params=params, name=params.report.run_name)
    per_step = record.summary.effective_batch_tokens if record.summary else None
    plots = make_plots(
        record.train, record.evals, out / "plots", params.report.run_name, per_step, params.optim.max_grad_norm
    )
    changes, base = baseline_changes(params)
    against = judged_against(record, base) if changes else []
    when = (
        f"[{RUN_INFO_MD}]({RUN_INFO_MD}) (date, machine, speed: wall-clock facts, kept out of DVC's "
        "hashes so a rerun anywhere hashes the same)"
    )
    text = render(record, changes, base, when, plots, against=against)
    atomic_write_text(out / "report.md", text)
    info = train_metrics.read_run_info(params.training.metrics_dir)
    atomic_write_text(out / RUN_INFO_MD, run_info_markdown(record, info, date or dt.date.today().isoformat()))
    atomic_write_json(Path(params.training.metrics_dir) / train_metrics.HEADLINE_JSON, headline(record))
    print(f"report: {out / 'report.md'} ({len(plots)} plots)")
    return out / "report.md"
