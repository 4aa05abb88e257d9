"""Run health decisions, as pure functions of the metric history (so they are testable and a
resumed run decides exactly as an uninterrupted one).

- ``eval_verdict``: after each evaluation, is this the best eval loss so far, and should training
  stop early (no improvement for ``patience`` evaluations, or the loss exploded past
  ``explosion_factor`` x the best)?
- ``LossWatch``: after each step, is the training loss (or gradient norm) NaN/inf, or the loss a spike past
  ``loss_spike_factor`` x its running mean? Either makes the run *diverged*.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pico.config import EarlyStopConfig


@dataclass(frozen=True)
class EvalVerdict:
    is_best: bool
    best_loss: float
    best_step: int
    stop_reason: str | None


def eval_verdict(evals: list[dict], cfg: EarlyStopConfig) -> EvalVerdict:
    """Judge the newest evaluation in ``evals`` (rows with ``step`` and ``loss``)."""
    losses = [(int(r["step"]), float(r["loss"])) for r in evals]
    step, loss = losses[-1]
    best_step, best_loss = min(losses, key=lambda x: (x[1], x[0]))
    is_best = best_step == step
    reason = None
    if cfg.enabled:
        if not math.isfinite(loss):
            reason = f"evaluation loss is {loss} at step {step}"
        elif cfg.explosion_factor is not None and loss > best_loss * cfg.explosion_factor:
            reason = (
                f"evaluation loss {loss:.4f} at step {step} exceeds {cfg.explosion_factor} x the best "
                f"{best_loss:.4f} (step {best_step})"
            )
        else:
            # evaluations since the last one that improved on its predecessors' best by min_delta
            record, since = math.inf, 0
            for _, value in losses:
                if value < record - cfg.min_delta:
                    record, since = value, 0
                else:
                    since += 1
            if since >= cfg.patience:
                reason = (
                    f"evaluation loss has not improved by {cfg.min_delta} for {since} evaluations "
                    f"(best {best_loss:.4f} at step {best_step})"
                )
    return EvalVerdict(is_best, best_loss, best_step, reason)


class LossWatch:
    """Running mean of the training loss; flags NaN/inf and spikes."""

    def __init__(self, cfg: EarlyStopConfig, beta: float = 0.9):
        self.cfg, self.beta = cfg, beta
        self.mean: float | None = None

    def check(self, step: int, loss: float, grad_norm: float = 0.0) -> str | None:
        if not math.isfinite(loss):
            return f"training loss is {loss} at step {step}"
        if not math.isfinite(grad_norm):
            return f"gradient norm is {grad_norm} at step {step}"
        f = self.cfg.loss_spike_factor
        if (
            self.cfg.enabled
            and f is not None
            and self.mean is not None
            and step > self.cfg.spike_warmup_steps
            and loss > f * self.mean
        ):
            return f"training loss spiked to {loss:.4f} at step {step}, {loss / self.mean:.2f} x its running mean {self.mean:.4f}"
        self.mean = loss if self.mean is None else self.beta * self.mean + (1 - self.beta) * loss
        return None

    def state(self) -> float | None:
        return self.mean
