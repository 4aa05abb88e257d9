"""``pico compare A B``: the training logs of two runs (git revisions or DVC experiments) side by
side, with their curves drawn together by tokens seen. A command, not a stage: nothing a stage
computes depends on it."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from pico import noise
from pico.diagnose import diagnose
from pico.fsutil import atomic_write_text, file_name
from pico.plots import compare_plots
from pico.report import cost_table, fmt, render, status_line
from pico.runs import RunRecord, describe_changes, load_params_at, load_run


def compare(a: str, b: str, out_path: str | Path | None = None, date: str | None = None) -> Path:
    """The training log of two runs (git revisions or DVC experiments), side by side, with their
    curves drawn together by tokens seen; written to ``comparisons/<a>-vs-<b>/`` (outside every
    stage's outputs) unless ``out_path`` names the markdown file."""
    runs = [load_run(a), load_run(b)]
    out_path = Path(out_path) if out_path else Path("comparisons") / f"{file_name(a)}-vs-{file_name(b)}" / "compare.md"
    plots = compare_plots(
        [
            (
                r.name,
                r.train,
                r.evals,
                r.summary.effective_batch_tokens
                if r.summary
                else r.params.data.seq_len * r.params.training.effective_batch_rows(),
            )
            for r in runs
        ],
        out_path.parent / "plots",
    )
    date = date or dt.date.today().isoformat()
    cols = [
        render(
            r,
            describe_changes(r.params, load_params_at(other)) if r is runs[1] else None,
            other if r is runs[1] else None,
            None,
            [],
        )
        for r, other in zip(runs, (b, a))
    ]
    diag = [diagnose(r.train, r.evals, r.summary, r.final_eval, r.params) for r in runs]

    def final(r: RunRecord, key: str) -> str:
        return fmt(r.final_eval.get("macro", {}).get(key))

    rows = [
        ("status", *(status_line(r.summary, r.params.training.max_steps) for r in runs)),
        ("final train loss", *(fmt(r.summary.final_loss_mean if r.summary else None) for r in runs)),
        ("token perplexity (macro)", *(final(r, "token_perplexity") for r in runs)),
        ("bits per byte (macro)", *(final(r, "bits_per_byte") for r in runs)),
        ("pico per-seq mean (macro)", *(final(r, "pico_mean_seq_perplexity") for r in runs)),
        ("tokens seen", *(fmt(r.summary.tokens if r.summary else None) for r in runs)),
        ("run (lineage)", *(lineage_cell(r) for r in runs)),
        ("diagnosis", *(d.verdict + (" + metric pathology" if d.pathology else "") for d in diag)),
    ]
    lines = [
        f"# Training logs compared: {a} vs {b}",
        "",
        f"- **Date**: {date}",
        "",
        f"| | {a} | {b} |",
        "|---|---|---|",
    ] + [f"| {k} | {x} | {y} |" for k, x, y in rows]
    lines += ["", "## Differences, judged against seed noise", ""]
    lines += noise.judgement_lines(noise.judge_runs([runs[0]], [runs[1]]), a, b)
    lines += ["", "## Time and cost", "", *cost_table(runs), "", "## Curves, by tokens seen", ""]
    lines += [f"![{p}](plots/{p})" for p in plots]
    lines += ["", f"## What changed from {a} to {b}", ""]
    lines += [f"- {c}" for c in describe_changes(runs[1].params, load_params_at(a))] or ["- nothing"]
    for name, text in zip((a, b), cols):
        body = text.split("\n", 1)[1].replace("\n## ", "\n### ")
        lines += ["", "---", "", f"## {name}", body]
    atomic_write_text(out_path, "\n".join(lines) + "\n")
    return out_path


def lineage_cell(r: RunRecord) -> str:
    """The run's fingerprint and, for a fork (``pico fork``), the run and step it started from and
    what it changed there."""
    s = r.summary
    if s is None:
        return "—"
    cell = f"`{s.fingerprint}`"
    if s.forked_from:
        f = s.forked_from
        changed = "; ".join(f.get("changes") or []) or "no change"
        cell += f", forked from `{f['fingerprint']}` at step {f['step']:,} ({changed})"
    return cell
