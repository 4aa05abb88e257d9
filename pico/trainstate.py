"""What a run carries from step to step, apart from the model and optimizer: ``TrainState`` (what
a checkpoint's state.json holds, and the summary it gives with the run's fixed ``RunFacts``), the
log interval's unread losses (``Interval``), when something is due after a step (``due``), and this
invocation's wall time (``Invocation``, in run_info.json).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from pico import numerics, train_metrics
from pico.config import EarlyStopConfig, TrainingConfig
from pico.monitor import LossWatch, eval_verdict
from pico.train_metrics import RunStatus, TrainSummary


@dataclass(frozen=True)
class RunFacts:
    """What a run is for its whole life, which its summary repeats beside the moving state."""

    max_steps: int
    fingerprint: str
    parameters: int
    rows: int  # packed training rows: one epoch
    batch_rows: int  # effective batch: micro-batch x accumulation x processes
    tokens_per_step: int
    processes: int
    parallelism: str  # single | ddp | fsdp
    manifest: dict[str, Any]  # the training data's (its sources, for epochs per source)


@dataclass
class TrainState:
    """What changes as a run trains; saved in every checkpoint's state.json."""

    watch: LossWatch
    step: int = 0
    position: int = 0  # rows consumed, over all ranks (the global row order's cursor)
    status: RunStatus = "running"
    reason: str | None = None
    history: dict[str, list[dict]] = field(default_factory=lambda: {"train": [], "eval": [], "perf": [], "events": []})
    # the steps of the log interval a checkpoint fell inside, so a resumed run logs the same interval means
    unlogged: dict[str, list[float]] = field(default_factory=lambda: {"losses": [], "norms": []})
    plan: dict[str, Any] = field(default_factory=dict)  # run_plan of the params now in effect
    lineage: list[dict[str, Any]] = field(default_factory=list)  # plan segments (pico.schedule.continued_segment)
    code_lineage: list[dict[str, Any]] = field(default_factory=list)  # training-code versions (pico.lineage)
    # a run started from another run's checkpoint (training.restart_from, `pico fork`): which, where, what changed
    forked_from: dict[str, Any] | None = None

    @property
    def code_version(self) -> str | None:
        """The training code the newest steps ran under (an ended run rerun under newer code keeps its own)."""
        return self.code_lineage[-1]["code_version"] if self.code_lineage else None

    def state_dict(self) -> dict[str, Any]:
        # perf rows are wall-clock: kept out of checkpoints so their hash is the same on every rerun
        history = {k: v for k, v in self.history.items() if k != "perf"}
        return {
            "step": self.step,
            "position": self.position,
            "status": self.status,
            "reason": self.reason,
            "history": history,
            "loss_running_mean": self.watch.mean,
            "unlogged": self.unlogged,
            "plan": self.plan,
            "lineage": self.lineage,
            "code_lineage": self.code_lineage,
            "forked_from": self.forked_from,
        }

    def summary(
        self,
        facts: RunFacts,
        early_stop: EarlyStopConfig,
        last_good: str | None,
        identical: bool | None = None,
        eta_s: float | None = None,
    ) -> TrainSummary:
        """``metrics/train_summary.json`` as of now. ``last_good``: a folder name inside
        training.checkpoint_dir, so equal runs write equal summaries."""
        verdict = eval_verdict(self.history["eval"], early_stop) if self.history["eval"] else None
        train = self.history["train"]
        epochs = self.position / facts.rows
        return TrainSummary(
            status=self.status,
            reason=self.reason,
            step=self.step,
            max_steps=facts.max_steps,
            final_loss=train[-1]["loss"] if train else None,
            final_loss_mean=train[-1]["loss_mean"] if train else None,
            min_loss_mean=min((r["loss_mean"] for r in train), default=None),
            best_eval_loss=verdict.best_loss if verdict else None,
            best_eval_step=verdict.best_step if verdict else None,
            last_good_checkpoint=last_good,
            tokens=self.step * facts.tokens_per_step,
            epochs=epochs,
            effective_batch_rows=facts.batch_rows,
            effective_batch_tokens=facts.tokens_per_step,
            processes=facts.processes,
            parallelism=facts.parallelism,
            weights_identical_across_ranks=identical if facts.processes > 1 else None,
            parameters=facts.parameters,
            fingerprint=facts.fingerprint,
            code_version=self.code_version,
            code_lineage=self.code_lineage,
            forked_from=self.forked_from,
            events=self.history.get("events", []),
            eta_s=eta_s if self.status == "running" else None,
            source_epochs=source_epochs(facts.manifest, epochs),
        )

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step, self.position = state["step"], state["position"]
        self.history = {**state["history"], "perf": []}
        self.status, self.reason = state.get("status", "running"), state.get("reason")
        self.watch.mean = state.get("loss_running_mean")
        self.unlogged = state.get("unlogged", {"losses": [], "norms": []})
        self.plan, self.lineage = state["plan"], state["lineage"]  # set by continue_plan
        self.forked_from = state.get("forked_from")
        # set by continue_code; a checkpoint from before code lineages: the version it recorded
        self.code_lineage = state.get("code_lineage") or [{"step": 0, "code_version": state.get("code_version")}]


class Interval:
    """The steps since the last log line. Their losses and gradient norms stay on the device until
    ``read`` brings them to the host in one sync and checks them, in step order."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.reset(self.started)

    def reset(self, now: float) -> None:
        self.pending: list[tuple[int, float, torch.Tensor, torch.Tensor]] = []  # (step, lr, loss, norm), unread
        self.losses: list[float] = []
        self.norms: list[float] = []
        self.carried = 0  # steps of this interval run before a resume (not timed by this clock)
        self.clock = now

    def resume(self, unlogged: dict[str, list[float]]) -> None:
        """The steps of this interval a checkpoint saved, so a resumed run logs the same means."""
        self.losses, self.norms = list(unlogged["losses"]), list(unlogged["norms"])
        self.carried = len(self.losses)

    def restart_clock(self) -> None:
        """At the first step of this invocation: time from here, not from start-up."""
        self.started = self.clock = time.perf_counter()

    def add(self, step: int, lr: float, loss: torch.Tensor, grad_norm: torch.Tensor) -> None:
        self.pending.append((step, lr, loss.detach(), grad_norm.detach()))

    def read(self, watch: LossWatch) -> str | None:
        """Read the pending steps into ``losses``/``norms``; why the run diverged, or None."""
        if not self.pending:
            return None
        values = torch.stack([torch.stack((loss.double(), norm.double())) for _, _, loss, norm in self.pending])
        pending, self.pending = self.pending, []
        for (step, lr, _, _), (loss, norm) in zip(pending, values.tolist()):
            self.losses.append(loss)
            self.norms.append(norm)
            why = watch.check(step, loss, norm)
            if why:
                return f"{why} (lr {lr:.3g})"
        return None

    def train_row(self, step: int, lr: float, tokens: int) -> dict[str, Any]:
        """The interval as a row of train.csv: this step's loss, the interval's mean and max norm."""
        return {
            "step": step,
            "loss": self.losses[-1],
            "loss_mean": math.fsum(self.losses) / len(self.losses),
            "lr": lr,
            "grad_norm": self.norms[-1],
            "grad_norm_max": max(self.norms),
            "tokens": tokens,
        }

    def rate(self, now: float, tokens_per_step: int) -> float:
        """Tokens per second over the steps this clock timed (not those carried over a resume)."""
        return (len(self.losses) - self.carried) * tokens_per_step / (now - self.clock)

    def eta_s(self, now: float, steps_left: int) -> float:
        return round(steps_left * (now - self.clock) / (len(self.losses) - self.carried), 1)


def nonfinite(loss: torch.Tensor, grad_norm: torch.Tensor) -> torch.Tensor:
    """1.0 where the step must not be applied (fused AdamW's ``found_inf``), computed on the device."""
    return (~(torch.isfinite(loss) & torch.isfinite(grad_norm))).to(torch.float32)


def source_epochs(manifest: dict[str, Any], epochs: float) -> dict[str, dict[str, float]]:
    """Epochs over each source's unique documents after ``epochs`` over the packed rows."""
    return {
        name: {"epochs": round(epochs * s["copies"], 6), "copies": s["copies"], "unique_tokens": s["unique_tokens"]}
        for name, s in manifest.get("sources", {}).items()
        if s.get("unique_tokens")
    }


@dataclass(frozen=True)
class Due:
    """What a finished optimizer step ``n`` calls for: the one place each cadence is decided."""

    log: bool
    eval: bool
    save: bool
    last: bool

    @property
    def anything(self) -> bool:
        return self.log or self.eval or self.save


def due(n: int, cfg: TrainingConfig) -> Due:
    last = n == cfg.max_steps
    return Due(
        log=n % cfg.log_every == 0 or last,
        eval=n % cfg.eval_every == 0 or last,
        save=n % cfg.checkpoint_every == 0 or last,
        last=last,
    )


class Invocation:
    """This invocation of a run (started, from which step, its clock) and the wall time earlier
    invocations of the same run spent, as run_info.json records them (not hashed by DVC)."""

    def __init__(self, cfg: TrainingConfig, fingerprint: str, device: torch.device):
        self.cfg, self.fingerprint, self.device = cfg, fingerprint, device
        self.started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        self.clock = time.perf_counter()
        self.from_step = 0
        info = train_metrics.read_run_info(cfg.metrics_dir)
        same_run = info.get("fingerprint") == fingerprint
        self.before_s = sum(c.get("wall_s") or 0 for c in info.get("invocations", [])) if same_run else 0.0

    def wall_s(self) -> float:
        """The run's wall time so far: earlier invocations of this run plus this one."""
        return round(self.before_s + time.perf_counter() - self.clock, 1)

    def seconds(self) -> float:
        return time.perf_counter() - self.clock

    def record(self, state: TrainState, ended: bool = False) -> None:
        entry: dict[str, Any] = {
            "started": self.started,
            "from_step": self.from_step,
            "to_step": state.step,
            "status": state.status,
        }
        if ended:
            ran = [r for r in state.history["perf"] if r["step"] > self.from_step]
            entry.update(wall_s=round(self.seconds(), 1), median_tokens_per_s=train_metrics.median_rate(ran))
        machine = {"numerics": self.cfg.numerics, "device": str(self.device), **numerics.describe()}
        train_metrics.record_invocation(self.cfg.metrics_dir, self.fingerprint, machine, entry)
