"""A run's records — params, metric history, summary, final evaluation — read from the workspace
or from a git revision / DVC experiment (whose commits hold the same files), and the sentences
that say how one run's params differ from another's."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pico import train_metrics
from pico.config import Params, flatten, parse_params
from pico.paramsfile import read_params_file, read_yaml
from pico.train_metrics import TrainSummary, parse_csv


@dataclass
class RunRecord:
    name: str
    params: Params
    train: list[dict[str, float]]
    evals: list[dict[str, float]]
    perf: list[dict[str, float]]
    summary: TrainSummary | None  # None: training has not written one yet
    final_eval: dict[str, Any]
    run_info: dict[str, Any] = field(default_factory=dict)  # metrics/run_info.json: machine, invocations
    plan: dict[str, Any] | None = None  # metrics/plan.json, written by `pico plan`


def _git(*args: str, repo: str | Path | None = None) -> str | None:
    proc = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True)
    return proc.stdout if proc.returncode == 0 else None


def experiment_refs(repo: str | Path | None = None) -> list[str]:
    """The git refs DVC saves experiments under (``refs/exps/…/<name>``) in ``repo`` (default: here)."""
    return (_git("for-each-ref", "--format=%(refname)", "refs/exps", repo=repo) or "").split()


def resolve_revision(name: str, repo: str | Path | None = None) -> str:
    """A git revision, or a DVC experiment name (refs/exps/.../<name>), of ``repo`` (default: here)."""
    if _git("rev-parse", "--verify", "--quiet", f"{name}^{{commit}}", repo=repo):
        return name
    matches = [r for r in experiment_refs(repo) if r.rsplit("/", 1)[-1] == name]
    if not matches:
        raise ValueError(f"{name!r} is neither a git revision nor a DVC experiment in this repository")
    return matches[0]


def commit_of(revision: str, repo: str | Path | None = None) -> str:
    """The commit a revision resolved by ``resolve_revision`` names."""
    return (_git("rev-parse", f"{revision}^{{commit}}", repo=repo) or "").strip()


def read_file(path: str, revision: str | None, repo: str | Path | None = None) -> str | None:
    if revision is None:
        p = Path(repo or ".") / path
        return p.read_text() if p.exists() else None
    return _git("show", f"{revision}:{Path(path).as_posix()}", repo=repo)


def load_params_at(source: str) -> dict:
    """Raw params from a params file, a git revision or a DVC experiment."""
    if Path(source).is_file():
        return read_params_file(source)
    text = read_file("params.yaml", resolve_revision(source))
    if text is None:
        raise ValueError(f"no params.yaml at {source}")
    return read_yaml(text, f"params.yaml at {source}")


def load_run(revision: str | None = None, params: Params | None = None, name: str | None = None) -> RunRecord:
    """A run's records from the workspace (revision None) or from a git revision / experiment."""
    rev = resolve_revision(revision) if revision else None
    if params is None:
        params = parse_params(
            read_yaml(read_file("params.yaml", rev) or "{}", f"params.yaml at {revision}"), f"params.yaml at {revision}"
        )
    m = Path(params.training.metrics_dir)
    summary_file = train_metrics.summary_path(m)
    summary = read_file(str(summary_file), rev)
    final_eval = read_file(params.evaluation.out, rev)
    final = json.loads(final_eval) if final_eval else {}
    if final.get("imported_from"):  # a checkpoint `pico import-pico` brought in: the metric files are another run's
        return RunRecord(
            name=name or revision or f"imported: {final['imported_from']}",
            params=params,
            train=[],
            evals=[],
            perf=[],
            summary=None,
            final_eval=final,
        )
    return RunRecord(
        name=name or revision or params.report.run_name,
        params=params,
        train=parse_csv(read_file(str(m / train_metrics.TRAIN_CSV), rev)),
        evals=parse_csv(read_file(str(m / train_metrics.EVAL_CSV), rev)),
        perf=parse_csv(read_file(str(m / train_metrics.PERF_CSV), rev)),
        summary=train_metrics.parse_summary(summary, f"{summary_file} at {revision or 'the workspace'}")
        if summary
        else None,
        final_eval=final,
        run_info=_json_or_none(read_file(str(m / train_metrics.RUN_INFO_JSON), rev)) or {},
        plan=_json_or_none(read_file(str(m / "plan.json"), rev)),
    )


def _json_or_none(text: str | None) -> Any:
    """Wall-clock side files (run_info.json, plan.json): informative, so a damaged one reads as absent."""
    try:
        return json.loads(text) if text else None
    except ValueError:
        return None


# Human names of the params a training log talks about; anything else is named by its key.
LABELS = {
    "optim.lr": "learning rate",
    "optim.warmup_steps": "warmup steps",
    "optim.weight_decay": "weight decay",
    "optim.max_grad_norm": "gradient clipping (max norm)",
    "optim.betas": "Adam betas",
    "optim.schedule": "lr schedule",
    "model.dropout": "dropout",
    "model.attention_dropout": "attention dropout",
    "model.preset": "model preset",
    "training.grad_accum_steps": "gradient accumulation",
    "training.micro_batch_size": "micro-batch",
    "training.log_every": "logging interval",
    "training.eval_every": "evaluation interval",
    "training.max_steps": "training steps",
    "data.seq_len": "sequence length",
    "tokenizer.source": "tokenizer",
}
IGNORED = (
    "report.",
    "embedded.out_dir",
    "data.tokens_dir",
    "tokenizer.out_dir",
    "training.checkpoint_dir",
    "training.metrics_dir",
    "evaluation.out",
)


def _fmt(v: Any) -> str:
    if v is None:
        return "off"
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, tuple)):
        return "(" + ", ".join(_fmt(x) for x in v) + ")"
    return str(v)


def _change(before: Any, after: Any) -> str:
    if isinstance(before, (int, float)) and isinstance(after, (int, float)) and not isinstance(before, bool):
        if before == 0:
            return "(from zero)" if after else ""
        ratio = after / before
        if ratio >= 2:  # growth as a factor, everything else as a percentage: "4×", "−67 %"
            return f"({ratio:g}×)"
        return f"({(ratio - 1) * 100:+.0f} %)".replace("-", "−")
    return ""


def describe_changes(current: Params, baseline: dict) -> list[str]:
    """One sentence per param that differs from the baseline, with before → after and the change."""
    base = parse_params(baseline, "baseline params")
    now, then = flatten(current.model_dump(mode="json")), flatten(base.model_dump(mode="json"))
    lines = []
    for key in sorted(now):
        if key.startswith(IGNORED) or now[key] == then.get(key):
            continue
        b, a = then.get(key), now[key]
        lines.append(f"{LABELS.get(key, key)} {_fmt(b)} → {_fmt(a)} {_change(b, a)}".rstrip() + f" (`{key}`)")
    eb, ea = base.training.effective_batch_rows(), current.training.effective_batch_rows()
    if ea != eb:
        lines.append(f"effective batch {eb} → {ea} rows per step {_change(eb, ea)}")
    return lines
