"""``pico train``: the train stage in this process, or ``training.nproc`` processes under torchrun,
and a run stopped on request reported as one line whichever process was signalled."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

from pico import distributed
from pico.config import Params
from pico.errors import TrainingFailed, TrainingInterrupted
from pico.preempt import StopRequest
from pico.train import run

# `pico train` with training.nproc > 1 names a file here for the ranks: a run stopped on request is
# reported through it by the launcher (one line), not as torchrun's failure report of every rank
STOP_REPORT_ENV = "PICO_STOP_REPORT"


def main(
    params: Params,
    params_path: str = "params.yaml",
    on_start: Callable[[Params, tuple], None] | None = None,
    stop: StopRequest | None = None,
) -> None:
    """``pico train``: this process, or ``training.nproc`` processes under torchrun."""
    cfg = params.training
    if cfg.nproc > 1 and not distributed.under_torchrun():
        if stop and stop.signum:  # signalled while starting: nothing launched, nothing trained
            raise TrainingInterrupted(f"stopped before training started ({stop.name}); rerun to train", stop.exit_code)
        report = Path(f"{Path(cfg.checkpoint_dir).resolve()}.stopped.json")
        report.unlink(missing_ok=True)
        os.environ[STOP_REPORT_ENV] = str(report)
        code = distributed.launch(params_path, cfg.nproc)
        if report.is_file():
            stopped = json.loads(report.read_text())
            report.unlink()
            raise TrainingInterrupted(stopped["message"], stopped["exit_code"])
        if code != 0:
            raise TrainingFailed(f"{cfg.nproc} training processes ended with exit code {code}")
        return
    try:
        summary = run(params, on_start=on_start, stop=stop)
    except TrainingInterrupted as stopped:
        if not os.environ.get(STOP_REPORT_ENV):
            raise
        if os.environ.get("RANK", "0") == "0":
            report = {"message": str(stopped), "exit_code": stopped.exit_code}
            Path(os.environ[STOP_REPORT_ENV]).write_text(json.dumps(report))
        return  # every rank ends cleanly; the launcher says where the run stopped
    final = f"{summary.final_loss:.4f}" if summary.final_loss is not None else "n/a"
    print(f"train: {summary.status} at step {summary.step}, final loss {final}")
