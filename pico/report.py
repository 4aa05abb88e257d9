"""The report stage: a Markdown training report with static PNG plots, written from metric files.

Nothing in it is typed by hand: every number comes from ``metrics/`` (train log, evaluation
history, final evaluation, summary) and ``params.yaml``. Plots are PNGs so the report renders
offline (``dvc plots show`` HTML loads its JavaScript from a CDN).
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from pico.config import Params  # noqa: E402
from pico.fsutil import atomic_open, atomic_write_text  # noqa: E402


def read_csv(path: Path) -> list[dict[str, float]]:
    if not path.exists():
        return []
    with path.open() as fh:
        return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(fh)]


def fmt(x: Any, digits: int = 4) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, str):
        return x
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    if isinstance(x, float):
        return f"{x:.{digits}g}" if abs(x) < 1e5 else f"{x:.3e}"
    return f"{x:,}" if isinstance(x, int) else str(x)


def _save(fig, path: Path) -> None:
    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=100, metadata={"Software": None})  # no version stamp: stable bytes
    plt.close(fig)


def make_plots(train: list[dict], evals: list[dict], out_dir: Path) -> list[str]:
    out_dir.mkdir(parents=True, exist_ok=True)
    made = []
    if train:
        steps = [r["step"] for r in train]
        fig, ax = plt.subplots(figsize=(7, 4))
        ax.plot(steps, [r["loss_mean"] for r in train], label="train loss (mean over log interval)")
        if evals:
            ax.plot([r["step"] for r in evals], [r["loss"] for r in evals], "o-", label="eval loss (token-level, macro)")
        ax.set_xlabel("step"), ax.set_ylabel("cross-entropy (nats/token)"), ax.legend(), ax.grid(alpha=0.3)
        _save(fig, out_dir / "loss.png")
        made.append("loss.png")
        for key, label, log in (("lr", "learning rate", False), ("grad_norm", "gradient norm (pre-clip)", True)):
            fig, ax = plt.subplots(figsize=(7, 3))
            ax.plot(steps, [r[key] for r in train])
            if key == "grad_norm":
                ax.plot(steps, [r["grad_norm_max"] for r in train], alpha=0.5, label="max over interval")
                ax.legend()
            ax.set_xlabel("step"), ax.set_ylabel(label), ax.grid(alpha=0.3)
            if log:
                ax.set_yscale("log")
            _save(fig, out_dir / f"{key}.png")
            made.append(f"{key}.png")
    if evals:
        fig, ax = plt.subplots(figsize=(7, 4))
        steps = [r["step"] for r in evals]
        for key in sorted(k for k in evals[0] if k.startswith("token_perplexity/")):
            ax.plot(steps, [r[key] for r in evals], "o-", label=key.split("/", 1)[1])
        ax.plot(steps, [r["token_perplexity"] for r in evals], "k--", label="macro")
        ax.set_xlabel("step"), ax.set_ylabel("token-level perplexity"), ax.set_yscale("log")
        ax.legend(), ax.grid(alpha=0.3)
        _save(fig, out_dir / "eval_perplexity.png")
        made.append("eval_perplexity.png")
    return made


def first_last(rows: list[dict], key: str, extreme: str = "best") -> str:
    vals = [r[key] for r in rows if key in r]
    if not vals:
        return "n/a"
    pick = max if extreme == "max" else min
    return f"{fmt(vals[0])} → {fmt(vals[-1])} ({extreme} {fmt(pick(vals))})"


def render(params: Params, summary: dict, final_eval: dict, train: list[dict], evals: list[dict],
           perf: list[dict], plots: list[str], plots_rel: str) -> str:
    m, o, t, d = params.model, params.optim, params.training, params.data
    lines = [
        f"# Training report: {params.report.run_name}",
        "",
        f"- **Status**: {summary.get('status', 'unknown')} at step {summary.get('step')} of {t.max_steps}"
        + (f" — {summary['reason']}" if summary.get("reason") else ""),
        f"- **Run fingerprint**: `{summary.get('fingerprint')}` (params that define the run + data + tokenizer)",
        f"- **Model**: pico-decoder-{m.preset} (d_model {m.dim}, hidden {m.hidden}, {m.n_layers} layers, "
        f"{m.n_heads}/{m.n_kv_heads} heads), {fmt(summary.get('parameters'))} parameters",
        f"- **Data**: {fmt(summary.get('tokens'))} training tokens seen, {fmt(summary.get('epochs'), 3)} epochs "
        f"over the packed rows; rows of {d.seq_len + 1} tokens",
        "",
        "## Config in brief",
        "",
        f"- optimizer: AdamW lr {fmt(o.lr)}, betas {tuple(o.betas)}, weight decay {fmt(o.weight_decay)}, "
        f"grad clip {fmt(o.max_grad_norm) if o.max_grad_norm else 'off'}",
        f"- schedule: {o.schedule}, warmup {o.warmup_steps} steps, min lr ratio {fmt(o.min_lr_ratio)}",
        f"- batch: micro {t.micro_batch_size} × accumulation {t.grad_accum_steps} = "
        f"{summary.get('effective_batch_rows')} rows = {fmt(summary.get('effective_batch_tokens'))} tokens per step",
        f"- dropout {fmt(m.dropout)}, attention dropout {fmt(m.attention_dropout)}, seed {t.seed}",
        "",
        "## Training",
        "",
        f"- training loss (mean over each log interval): {first_last(train, 'loss_mean')}",
        f"- gradient norm before clipping: {first_last(train, 'grad_norm_max', 'max')} (max per log interval)",
    ]
    if perf:
        rates = [r["tokens_per_s"] for r in perf]
        lines.append(f"- throughput: {fmt(sorted(rates)[len(rates) // 2], 5)} tokens/s (median over log intervals); "
                     f"wall time {fmt(perf[-1]['elapsed_s'], 4)} s for this invocation's steps")
    lines += ["", "## Evaluation over training (token-level, macro over sources)", ""]
    for key, label in (("loss", "eval loss"), ("token_perplexity", "token perplexity"),
                       ("bits_per_byte", "bits per byte"), ("pico_mean_seq_perplexity", "pico per-sequence mean perplexity")):
        lines.append(f"- {label}: {first_last(evals, key)}")
    if final_eval.get("checkpoint_kind") == "best":
        lines += ["", f"Training stopped early, so the evaluation below is of the **best** checkpoint (step "
                      f"{final_eval.get('step')}, eval loss {fmt(summary.get('best_eval_loss'))}), not the last."]
    for event in summary.get("events", []):
        lines.append(f"- step {event['step']}: {event['event']}")
    if final_eval:
        lines += [
            "",
            f"## Final evaluation ({final_eval.get('checkpoint_kind', 'latest')} checkpoint, step {final_eval.get('step')})",
            "",
            "| source | token perplexity | bits per byte | pico per-seq mean ppl | ratio | windows | tokens | bytes |",
            "|---|---|---|---|---|---|---|---|",
        ]
        rows = [*final_eval.get("sources", {}).items(), ("**macro**", final_eval.get("macro", {}))]
        for name, s in rows:
            lines.append(f"| {name} | {fmt(s.get('token_perplexity'))} | {fmt(s.get('bits_per_byte'))} | "
                         f"{fmt(s.get('pico_mean_seq_perplexity'))} | {fmt(s.get('seq_mean_over_token_ratio'), 3)}× | "
                         f"{fmt(s.get('windows'))} | {fmt(s.get('tokens'))} | {fmt(s.get('bytes'))} |")
        lines += [
            "",
            "Token perplexity is exp(Σ NLL / Σ tokens), the honest figure; bits per byte divides the same NLL by "
            "ln 2 × the UTF-8 bytes of the text and compares across tokenizers. The pico per-sequence mean is "
            "pico-train's 'Paloma perplexity' (mean over windows of exp(window loss)): for equally long windows it "
            "is ≥ token perplexity (Jensen), and a few bad windows can inflate it by orders of magnitude — read it "
            "beside, never instead.",
        ]
    if plots:
        lines += ["", "## Plots", ""]
        lines += [f"![{p.removesuffix('.png')}]({plots_rel}/{p})" for p in plots]
    return "\n".join(lines) + "\n"


def run(params: Params) -> Path:
    metrics = Path(params.training.metrics_dir)
    out = Path(params.report.out_dir)
    train, evals, perf = (read_csv(metrics / f) for f in ("train.csv", "eval_history.csv", "perf.csv"))
    summary_path, eval_path = metrics / "train_summary.json", Path(params.evaluation.out)
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    final_eval = json.loads(eval_path.read_text()) if eval_path.exists() else {}
    plots = make_plots(train, evals, out / "plots")
    text = render(params, summary, final_eval, train, evals, perf, plots, "plots")
    atomic_write_text(out / "report.md", text)
    print(f"report: {out / 'report.md'} ({len(plots)} plots)")
    return out / "report.md"
