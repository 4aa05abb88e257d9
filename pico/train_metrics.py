"""The train stage's metric files — one owner for their names, columns and types.

    train.csv           step, loss (this step), loss_mean (over the log interval), lr, grad_norm
                        (before clipping), grad_norm_max, tokens
    eval_history.csv    step, tokens seen and the macro / per-source evaluation figures (pico.evaluate)
    perf.csv            step, tokens/s, elapsed seconds, model FLOP/s, MFU, and on a GPU the log
                        interval's peak memory allocated and reserved (MiB; rank 0's device)
    train_summary.json  ``TrainSummary``: how the run ended and what it amounted to
    run_info.json       where and when: the machine, the CPU numerics in effect, and each
                        invocation's start, steps and wall time
    headline.json       what `dvc exp show` lists (``headline``): status, step, final loss, macro
                        token perplexity, bits/byte, pico's number, tokens, wall hours — rounded;
                        the trainer keeps it current during the run (latest evaluation), the report
                        stage writes the final one (evaluate's figures)

perf.csv, run_info.json and headline.json hold wall-clock and machine facts, which differ on every rerun: they
are not DVC outputs (nor in checkpoints), so DVC's hashes of a run do not depend on when or where
it ran (git still carries them). A resumed run keeps perf.csv's rows up to its checkpoint.

Written by the trainer (from its history, atomically, so a crash never leaves a half file) — during
the run on a background thread (``Writer``), since an fsync can take longer than a GPU step; read by
evaluate, the report, ``pico compare`` and the Prefect flow through ``read_summary`` and
``parse_csv``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import threading
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from pico.fsutil import atomic_write_json, atomic_write_text

TRAIN_CSV, EVAL_CSV, PERF_CSV, SUMMARY_JSON = "train.csv", "eval_history.csv", "perf.csv", "train_summary.json"
RUN_INFO_JSON = "run_info.json"
HEADLINE_JSON = "headline.json"
TRAIN_COLUMNS = ("step", "loss", "loss_mean", "lr", "grad_norm", "grad_norm_max", "tokens")
PERF_COLUMNS = (
    "step",
    "tokens_per_s",
    "elapsed_s",
    "model_flops_per_s",
    "mfu",
    "gpu_peak_allocated_mib",
    "gpu_peak_reserved_mib",
)
EVAL_MACRO_KEYS = ("loss", "token_perplexity", "bits_per_byte", "pico_mean_seq_perplexity")

# running: not ended (or killed); completed: max_steps reached; early_stopped: no eval improvement
# (the best checkpoint is kept); diverged: NaN/inf or a loss spike (the update was not applied)
RunStatus = Literal["running", "completed", "early_stopped", "diverged"]


class TrainSummary(BaseModel):
    """``metrics/train_summary.json``, a DVC metric."""

    model_config = ConfigDict(extra="forbid")

    status: RunStatus
    reason: str | None = None
    step: int
    max_steps: int
    final_loss: float | None = None
    final_loss_mean: float | None = None
    min_loss_mean: float | None = None
    best_eval_loss: float | None = None
    best_eval_step: int | None = None
    last_good_checkpoint: str | None = None  # a folder name inside training.checkpoint_dir
    tokens: int
    epochs: float
    effective_batch_rows: int  # micro-batch x accumulation x processes
    effective_batch_tokens: int
    processes: int = 1
    parallelism: Literal["single", "ddp", "fsdp"] = "single"
    weights_identical_across_ranks: bool | None = None  # DDP only: every rank ended with equal weights
    parameters: int
    fingerprint: str
    code_version: str
    # the training-code versions the run trained under, from step N on (pico.lineage.continue_code)
    code_lineage: list[dict[str, Any]] = []
    # started from another run's checkpoint (pico fork, training.restart_from): its run, step and the changes
    forked_from: dict[str, Any] | None = None
    events: list[dict[str, Any]] = []
    eta_s: float | None = None  # while running: seconds to max_steps at the last interval's rate
    # per training source: epochs over its unique documents (rows are shuffled uniformly, so a source
    # goes by epochs x its copies in the rows: data budgets' weights), and its unique tokens
    source_epochs: dict[str, dict[str, float]] = {}


# The trainer's one line per log interval when it has no progress bar (under DVC, Prefect): the
# Prefect flow parses it into the run's progress artifact, so its format is owned here.
PROGRESS_RE = re.compile(
    r"^step (?P<step>\d+)/(?P<max_steps>\d+): loss (?P<loss>\S+) \(interval mean\), "
    r"lr (?P<lr>\S+), (?P<tokens_per_s>[\d,.]+) tokens/s, ETA (?P<eta>\S+)$"
)
EVAL_RE = re.compile(r"^step (?P<step>\d+): eval loss (?P<loss>\S+), token ppl (?P<token_perplexity>\S+), ")


def duration(seconds: float) -> str:
    """3m05s, 2h07m, 1d04h: a wall time or an ETA at a glance."""
    seconds = int(seconds)
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return (
        f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"
        if seconds >= 86400
        else f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    )


def progress_line(step: int, max_steps: int, loss_mean: float, lr: float, tokens_per_s: float, eta_s: float) -> str:
    return (
        f"step {step}/{max_steps}: loss {loss_mean:.4f} (interval mean), lr {lr:.2e}, "
        f"{tokens_per_s:,.0f} tokens/s, ETA {duration(eta_s)}"
    )


def perf_row(
    step: int,
    rate: float,
    elapsed_s: float,
    flops_per_token: int,
    peak: float | None,
    world: int,
    memory_mib: tuple[float, float] | None = None,
) -> dict:
    """A row of perf.csv: throughput, model FLOP/s and MFU against ``training.peak_flops``, and the
    interval's peak GPU memory (allocated, reserved; empty off a GPU): how far the run is from OOM."""
    allocated, reserved = (round(m, 1) for m in memory_mib) if memory_mib else ("", "")
    return {
        "step": step,
        "tokens_per_s": round(rate, 1),
        "elapsed_s": elapsed_s,
        "model_flops_per_s": round(rate * flops_per_token),
        "mfu": round(rate * flops_per_token / (peak * world), 5) if peak else "",
        "gpu_peak_allocated_mib": allocated,
        "gpu_peak_reserved_mib": reserved,
    }


def eval_line(step: int, macro: dict[str, float]) -> str:
    return (
        f"step {step}: eval loss {macro['loss']:.4f}, token ppl {macro['token_perplexity']:.3f}, "
        f"bits/byte {macro['bits_per_byte']:.4f} (pico per-seq mean {macro['pico_mean_seq_perplexity']:.4g})"
    )


def parse_progress(line: str) -> dict[str, Any] | None:
    """A progress line's fields (step, max_steps, loss, lr, tokens_per_s as numbers; eta as printed)."""
    m = PROGRESS_RE.match(line.strip())
    if not m:
        return None
    return {
        "step": int(m["step"]),
        "max_steps": int(m["max_steps"]),
        "loss": float(m["loss"]),
        "lr": float(m["lr"]),
        "tokens_per_s": float(m["tokens_per_s"].replace(",", "")),
        "eta": m["eta"],
    }


def parse_eval(line: str) -> int | None:
    """The step of an evaluation line, or None."""
    m = EVAL_RE.match(line.strip())
    return int(m["step"]) if m else None


def summary_path(metrics_dir: str | Path) -> Path:
    return Path(metrics_dir) / SUMMARY_JSON


def read_summary(metrics_dir: str | Path) -> TrainSummary | None:
    """The summary, or None when training has not written one; a damaged file is named."""
    path = summary_path(metrics_dir)
    if not path.is_file():
        return None
    return parse_summary(path.read_text(), str(path))


def parse_summary(text: str, where: str) -> TrainSummary:
    try:
        return TrainSummary.model_validate_json(text)
    except ValidationError as err:
        first = err.errors()[0]
        raise ValueError(
            f"{where} is not a train summary ({'.'.join(map(str, first['loc']))}: {first['msg']}); "
            "rerun the train stage"
        ) from None


def eval_row(step: int, tokens: int, epochs: float, metrics: dict, seen_loss: float | None) -> dict:
    """One eval_history.csv row from ``pico.eval_metrics.evaluate_model``'s result: the step, the
    training tokens and epochs seen by then (runs with different batches compare per token), the
    figures, and ``seen_loss``: the eval-mode loss of a fixed sample of already-seen training rows
    (empty until all of them were trained on). (Wall-clock time is perf.csv's ``elapsed_s`` by
    step: here it would change DVC's hash.)"""
    row = {"step": step, "tokens": tokens, "epochs": round(epochs, 6)}
    for key in EVAL_MACRO_KEYS:
        row[key] = metrics["macro"][key]
    row["seen_loss"] = seen_loss
    for name, m in metrics["sources"].items():
        row[f"token_perplexity/{name}"] = m["token_perplexity"]
        row[f"bits_per_byte/{name}"] = m["bits_per_byte"]
    return row


def _csv(rows: list[dict], columns: tuple[str, ...]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def parse_csv(text: str | None) -> list[dict[str, float]]:
    if not text:
        return []
    return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(io.StringIO(text))]


def headline(
    summary: TrainSummary | None, macro: dict[str, Any], wall_s: float | None, pico_train: float | None = None
) -> dict[str, Any]:
    """headline.json: a few short, rounded columns (the full figures stay in eval.json,
    eval_history.csv and train_summary.json). ``window_mean_ppl`` is pico-train's statistic over our
    windows; ``pico_train_ppl`` its number exactly (pico.pico_number: the evaluate stage's, so the
    trainer's interim headline leaves it empty)."""

    def r(x: Any, digits: int = 5) -> Any:
        return float(f"{float(x):.{digits}g}") if isinstance(x, (int, float)) and math.isfinite(float(x)) else x

    return {
        "status": summary.status if summary else None,
        "step": summary.step if summary else None,
        "loss": r(summary.final_loss_mean) if summary else None,
        "ppl": r(macro.get("token_perplexity")),
        "bpb": r(macro.get("bits_per_byte"), 4),
        "window_mean_ppl": r(macro.get("pico_mean_seq_perplexity"), 4),
        "pico_train_ppl": r(pico_train, 4) if pico_train is not None else None,
        "tokens": summary.tokens if summary else None,
        "wall_h": r(wall_s / 3600, 3) if wall_s is not None else None,
    }


def write(
    metrics_dir: str | Path,
    history: dict[str, list[dict]],
    summary: TrainSummary | None = None,
    wall_s: float | None = None,
) -> None:
    """Rewrite the files from the run's history (cheap at these sizes, and atomic); with a summary,
    the headline too (from the newest evaluation: the run in progress, as `dvc exp show` sees it)."""
    d = Path(metrics_dir)
    atomic_write_text(d / TRAIN_CSV, _csv(history["train"], TRAIN_COLUMNS))
    eval_cols: tuple[str, ...] = tuple(history["eval"][0]) if history["eval"] else ("step",)
    atomic_write_text(d / EVAL_CSV, _csv(history["eval"], eval_cols))
    atomic_write_text(d / PERF_CSV, _csv(history["perf"], PERF_COLUMNS))
    if summary is not None:
        atomic_write_json(d / SUMMARY_JSON, json.loads(summary.model_dump_json()))
        # the evaluate stage's exact pico-train number stays while it is of this very step
        previous = _headline(d)
        kept = previous.get("pico_train_ppl") if previous.get("step") == summary.step else None
        atomic_write_json(
            d / HEADLINE_JSON, headline(summary, history["eval"][-1] if history["eval"] else {}, wall_s, kept)
        )


def _headline(metrics_dir: Path) -> dict[str, Any]:
    try:
        found = json.loads((metrics_dir / HEADLINE_JSON).read_text())
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def read_perf(metrics_dir: str | Path, upto_step: int) -> list[dict[str, Any]]:
    """perf.csv's rows up to a step (where a resumed run continues), values kept as written so they
    are written back unchanged; a damaged row is dropped (wall-clock figures, not results)."""
    try:
        rows = list(csv.DictReader(io.StringIO((Path(metrics_dir) / PERF_CSV).read_text())))
    except (OSError, csv.Error):
        return []
    return [
        {**row, "step": int(row["step"])}
        for row in rows
        if str(row.get("step", "")).isdigit() and int(row["step"]) <= upto_step
    ]


def median_rate(perf: list[dict[str, Any]]) -> float | None:
    """The median tokens/s over perf rows (log intervals)."""
    rates = sorted(float(r["tokens_per_s"]) for r in perf)
    return rates[len(rates) // 2] if rates else None


def read_run_info(metrics_dir: str | Path) -> dict[str, Any]:
    try:
        info = json.loads((Path(metrics_dir) / RUN_INFO_JSON).read_text())
        return info if isinstance(info, dict) else {}
    except (OSError, ValueError):
        return {}


def record_invocation(
    metrics_dir: str | Path, fingerprint: str, machine: dict[str, Any], invocation: dict[str, Any]
) -> None:
    """Add (or update, by start time) this invocation in run_info.json; a new run starts a new list."""
    info = read_run_info(metrics_dir)
    if info.get("fingerprint") != fingerprint:
        info = {"fingerprint": fingerprint, "invocations": []}
    calls = [c for c in info.get("invocations", []) if c.get("started") != invocation["started"]]
    info.update(machine=machine, invocations=[*calls, {**invocation, "machine": machine}])
    atomic_write_json(Path(metrics_dir) / RUN_INFO_JSON, info)


class Writer:
    """``write`` on a background thread: the training loop hands over the history and goes on while
    the files are written and fsynced (a disk can take longer than a GPU step). Only the newest
    snapshot is written; ``flush`` waits for it and raises, in the trainer, an error the thread met
    (e.g. a full disk), naming the folder. The trainer flushes before each checkpoint and writes the
    checkpoint (whose state.json holds the whole history) even when the flush fails."""

    def __init__(self, metrics_dir: str | Path):
        self.metrics_dir = metrics_dir
        self._cv = threading.Condition()
        self._pending: tuple[dict[str, list[dict]], TrainSummary | None, float | None] | None = None
        self._busy = False
        self._error: BaseException | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="pico-metrics-writer", daemon=True)
        self._thread.start()

    def submit(
        self, history: dict[str, list[dict]], summary: TrainSummary | None = None, wall_s: float | None = None
    ) -> None:
        snapshot = {name: list(rows) for name, rows in history.items()}  # rows are appended, never changed
        with self._cv:  # an earlier write error waits for flush: the trainer saves its checkpoint first
            self._pending = (snapshot, summary, wall_s)
            self._cv.notify()

    def flush(self) -> None:
        self.wait()
        with self._cv:
            self._raise()

    def wait(self) -> None:
        """Until the newest snapshot is on disk (or its write failed: ``flush`` raises that)."""
        with self._cv:
            self._cv.wait_for(lambda: self._pending is None and not self._busy)

    def close(self) -> None:
        """Flush and end the thread."""
        self.flush()
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        self._thread.join()

    def _raise(self) -> None:
        if self._error is not None:
            err, self._error = self._error, None
            raise OSError(f"could not write the metrics in {self.metrics_dir}: {err}") from err

    def _run(self) -> None:
        while True:
            with self._cv:
                self._cv.wait_for(lambda: self._pending is not None or self._closed)
                if self._pending is None:
                    return
                (history, summary, wall_s), self._pending, self._busy = self._pending, None, True
            try:
                write(self.metrics_dir, history, summary, wall_s)
            except Exception as err:  # handed to the trainer at its next submit/flush
                with self._cv:
                    self._error = err
            finally:
                with self._cv:
                    self._busy = False
                    self._cv.notify_all()
