"""What the flow does when training diverges, as plain code (no Prefect, no DVC): the stage runner
and the params writer are passed in, so every branch is unit-tested (tests/unit/test_recovery.py).

A diverged run is never retried as it was: it would diverge again at the same step. Without
``recovery.enabled`` the flow fails with the trainer's reason. With it, the run restarts from its
last good checkpoint with the learning rate scaled by ``recovery.lr_factor``, at most
``recovery.max_attempts`` times, each attempt its own DVC experiment (``NAME-recovery-N``). The
restart point and lr are written into params.yaml only for DVC to run and record them;
``restore_params`` puts back what the person asked for afterwards, unless they edited it meanwhile.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pico.config import Params
from pico.train_metrics import TrainSummary

TRAIN_STAGE = "train"


class PipelineFailed(RuntimeError):
    """The pipeline cannot go on (a diverged run without recovery, recovery exhausted)."""


@dataclass
class Recovered:
    """Where the stages ended: the params and experiment name of the last attempt."""

    params: Params
    experiment: str | None
    attempts: int = 0


# run(stages) runs those stages in order; it returns the trainer's summary when training diverged
# (the later stages not run), None when every stage ran, and raises on any other failure
StageRunner = Callable[[list[str]], TrainSummary | None]
# rewrite({"optim.lr": ..., "training.restart_from": ...}) writes params.yaml and returns its params
ParamsWriter = Callable[[dict[str, Any]], Params]


def run_with_recovery(
    stages: list[str], run: StageRunner, params: Params, experiment: str | None, rewrite: ParamsWriter, log: Any
) -> Recovered:
    state = Recovered(params, experiment)
    base_name, pending = experiment or "run", stages
    while (diverged := run(pending)) is not None:
        rec = state.params.recovery
        if not rec.enabled or state.attempts >= rec.max_attempts:
            why = "recovery is off" if not rec.enabled else f"{state.attempts} recovery attempts used"
            raise PipelineFailed(f"training diverged: {diverged.reason} ({why})")
        if not diverged.last_good_checkpoint:
            raise PipelineFailed(f"training diverged before its first checkpoint: {diverged.reason}")
        state.attempts += 1
        new_lr = state.params.optim.lr * rec.lr_factor
        restart = str(Path(state.params.training.checkpoint_dir) / diverged.last_good_checkpoint)
        log.warning(
            "training diverged (%s); recovery %d/%d: restarting from %s with lr %g",
            diverged.reason,
            state.attempts,
            rec.max_attempts,
            restart,
            new_lr,
        )
        state.params = rewrite({"optim.lr": new_lr, "training.restart_from": restart})
        state.experiment = f"{base_name}-recovery-{state.attempts}"
        pending = stages[stages.index(TRAIN_STAGE) :]  # the data stages stand
    return state


def restore_params(path: Path, asked: bytes, wrote: bytes, log: Any) -> bool:
    """Put back the params.yaml the person asked for (the recovery's restart point and lr live in its
    DVC experiment), unless someone edited the file during the run: theirs wins. True if restored."""
    if path.read_bytes() != wrote:
        log.warning("params.yaml was edited during the run; left as it is (not restored)")
        return False
    path.write_bytes(asked)
    log.info("params.yaml restored: the recovery's restart point and lr live in its DVC experiment")
    return True


def retry_unless_diverged(read_summary: Callable[[], TrainSummary | None]) -> Callable[..., bool]:
    """A Prefect retry condition for the train stage: retry a crash (a killed trainer resumes from
    its newest checkpoint), not a divergence (it would diverge again; the flow branches instead).
    ``read_summary`` returns the summary the failed attempt wrote, None if it wrote none."""

    def condition(task: Any, task_run: Any, state: Any) -> bool:
        try:
            summary = read_summary()
        except Exception:  # an unreadable summary is no evidence of divergence
            return True
        return summary is None or summary.status != "diverged"

    return condition
