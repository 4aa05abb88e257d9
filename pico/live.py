"""What a person watching a long run sees while it trains: the training log the Prefect flow
publishes as an artifact at each evaluation ("in progress — healthy / overfitting / …"), from the
metric files the trainer rewrites at every log interval (``pico.train_metrics``). No torch: the
flow process renders it.
"""

from __future__ import annotations

from pico import forecast
from pico.config import Params
from pico.diagnose import diagnose
from pico.report import fmt, status_line
from pico.runs import load_run

EVAL_ROWS = 8  # the newest evaluations shown


def training_log(params: Params) -> str:
    """The run's training log so far, as markdown."""
    run = load_run(params=params)
    s, t = run.summary, params.training
    d = diagnose(run.train, run.evals, s, {}, params)
    state = "in progress" if s is None or s.status == "running" else s.status.replace("_", "-")
    lines = [
        f"# Training log: {params.report.run_name}",
        "",
        f"**{state} — {d.verdict}**: {status_line(s, t.max_steps)}",
        "",
    ]
    if s is not None:
        lines.append(f"- tokens seen: {s.tokens:,} ({s.epochs:.3g} epochs of the training rows)")
    if run.train:
        last = run.train[-1]
        lines.append(
            f"- training loss (interval mean) {fmt(last['loss_mean'])} at step {int(last['step'])}, "
            f"lr {fmt(last['lr'], 3)}, gradient norm {fmt(last['grad_norm'], 3)} (clipped at "
            f"{fmt(params.optim.max_grad_norm)})"
        )
    lines += [f"- {e}" for e in d.evidence]
    if d.pathology:
        lines += [f"- metric pathology: {e}" for e in d.pathology]
    if run.evals:
        lines += [
            "",
            "| step | tokens | eval loss | token ppl | bits/byte | pico per-seq mean ppl |",
            "|---:|---:|---:|---:|---:|---:|",
        ]
        per_step = s.effective_batch_tokens if s else params.data.seq_len * t.effective_batch_rows()
        for e in run.evals[-EVAL_ROWS:]:
            lines.append(
                f"| {int(e['step'])} | {int(e['step']) * per_step:,} | {fmt(e['loss'])} | "
                f"{fmt(e['token_perplexity'])} | {fmt(e['bits_per_byte'])} | "
                f"{fmt(e['pico_mean_seq_perplexity'], 3)} |"
            )
    ahead = forecast.read(params.training.metrics_dir)
    if ahead and ahead.get("latest"):
        lines += ["", f"- {forecast.line(ahead['latest'])}"]
    for event in s.events if s else []:
        lines.append(f"\n- step {event['step']}: {event['event']}")
    return "\n".join(lines) + "\n"
