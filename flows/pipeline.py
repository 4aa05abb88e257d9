"""Prefect flow that drives the DVC pipeline: one task per `dvc.yaml` stage, run through DVC.

The flow never implements a stage: each task runs ``dvc repro --single-item <stage>``, so
``dvc.lock``, DVC's cache and ``dvc exp show`` stay the one record of what ran and DVC alone
decides what is up to date (Prefect's result caching is off for these tasks). Stages run one at a
time in ``dvc.yaml`` order because DVC holds a repository lock.

- **Retries**: a failed stage is retried with exponential backoff. A killed train stage resumes
  from its newest checkpoint (``checkpoints/`` is a persistent DVC output).
- **Branches** on the trainer's status (``metrics/train_summary.json``): *early_stopped* goes on
  to evaluate the best checkpoint; *diverged* fails the run with the reason, or, when
  ``recovery.enabled``, restarts from the last good checkpoint with the learning rate scaled by
  ``recovery.lr_factor`` (at most ``recovery.max_attempts`` times), saved as its own experiment.
- **Experiments**: a run with param overrides or an experiment name is saved with
  ``dvc exp save``, so it shows in ``dvc exp show`` beside ``dvc exp run -S`` runs.

    python -m flows.pipeline [--set optim.lr=1.0e-4 ...] [--exp NAME] [--fresh] [--retries 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from flows.artifacts import LiveView, emit, publish
from flows.recovery import TRAIN_STAGE, PipelineFailed, restore_params, retry_unless_diverged, run_with_recovery
from pico.config import Params, load_params, with_overrides
from pico.paramsfile import read_params_file
from pico.train_metrics import TrainSummary, read_summary, summary_path

__all__ = ["PipelineFailed", "parse_overrides", "pipeline"]

REPO = Path(__file__).resolve().parents[1]
FRESH_ENV = "PICO_FRESH_RUN"  # pico.runstore.FRESH_ENV (not imported: the flow never loads torch)


def dvc_stages(repo: Path) -> list[str]:
    """Stage names in the order dvc.yaml lists them (their dependency order)."""
    return list(yaml.safe_load((repo / "dvc.yaml").read_text())["stages"])


def _env() -> dict[str, str]:
    bindir = str(Path(sys.executable).parent)  # the stages call `pico`, installed beside this Python
    return {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}", "DVC_NO_ANALYTICS": "1"}


def dvc(repo: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["dvc", *args], cwd=repo, env=_env(), capture_output=True, text=True)


def parse_overrides(items: list[str]) -> dict[str, Any]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"override {item!r} is not KEY=VALUE (e.g. optim.lr=1.0e-4)")
        out[key.strip()] = yaml.safe_load(value)
    return out


def apply_overrides(repo: Path, overrides: dict[str, Any]) -> Params:
    """Edit params.yaml like `dvc exp run -S` does, after validating the result; returns the params."""
    path = repo / "params.yaml"
    raw, params = with_overrides(read_params_file(path), overrides, str(path))
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return params


def train_summary(repo: Path, params: Params, since: float | None = None) -> TrainSummary | None:
    """The train stage's summary; with ``since`` (a time.time()), only one written after it: the
    file persists across runs (dvc.yaml), so a train stage that failed before writing its own must
    not be judged by the last run's verdict."""
    summary = read_summary(repo / params.training.metrics_dir)
    path = summary_path(repo / params.training.metrics_dir)
    if summary is not None and since is not None and path.stat().st_mtime < since:
        return None
    return summary


def current_stages(repo: Path, stages: list[str]) -> set[str]:
    """The stages DVC says are up to date (``dvc status --json``: its own answer, not its
    human-readable output), asked once for a whole pass over the stages; empty when DVC cannot
    say (then each stage goes to ``dvc repro``, which reports the problem)."""
    proc = dvc(repo, "status", "--json")
    if proc.returncode != 0:
        return set()
    changed = json.loads(proc.stdout or "{}")
    return {stage for stage in stages if stage not in changed}


@task(name="dvc-stage", cache_policy=NO_CACHE, task_run_name="{stage}")
def run_stage(stage: str, repo: str, up_to_date: bool = False) -> str:
    """``dvc repro --single-item STAGE``, its output streamed into the task's log; "skipped" when DVC
    said the stage was up to date (and nothing before it ran in this pass)."""
    logger = get_run_logger()
    if up_to_date:
        logger.info("stage '%s' is up to date (dvc status)", stage)
        return "skipped"
    live = LiveView(Path(repo), logger) if stage == TRAIN_STAGE else None
    skip_line, said_skip = f"Stage '{stage}' didn't change, skipping", []

    def log(line: str) -> None:
        if skip_line in line:
            said_skip.append(line)
        (live or logger.info)(line)

    code = dvc_streamed(Path(repo), log, "repro", "--single-item", stage)
    if live and code == 0:
        live.close()
    if code != 0:
        raise RuntimeError(f"stage '{stage}' failed with exit code {code}")
    # an earlier stage ran but left this one's inputs as they were: DVC said so and ran nothing
    return "skipped" if said_skip else "ran"


def dvc_streamed(repo: Path, log: Any, *args: str) -> int:
    """Run dvc and hand each line of its output (the stage's own, stdout and stderr merged) to
    ``log`` as it is printed, so a multi-day stage is visible in the Prefect UI while it runs."""
    env = {**_env(), "PYTHONUNBUFFERED": "1"}  # the stage's prints reach the pipe at once, not per 8 KB
    with subprocess.Popen(
        ["dvc", *args], cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    ) as proc:
        for line in proc.stdout:
            if line.strip():
                log(line.rstrip())
        return proc.wait()


def _run_stages(
    root: Path, stages: list[str], retries: int, delays: list[float], outcome: dict[str, str]
) -> TrainSummary | None:
    """Each stage as a Prefect task, in order (the StageRunner of flows.recovery): the trainer's
    summary when training diverged, None when every stage ran; any other failure raises. DVC is
    asked once which stages are up to date: one of those is skipped unless a stage before it ran."""
    current, ran = current_stages(root, stages), False
    for stage in stages:
        options: dict[str, Any] = {"retries": retries, "retry_delay_seconds": delays}
        started = time.time()
        if stage == TRAIN_STAGE:
            options["retry_condition_fn"] = retry_unless_diverged(
                lambda since=started: train_summary(root, load_params(root / "params.yaml"), since)
            )
        up_to_date = stage in current and not ran
        state = run_stage.with_options(**options)(stage, str(root), up_to_date, return_state=True)
        ran = ran or not up_to_date
        if state.is_failed():
            params = load_params(root / "params.yaml")
            summary = train_summary(root, params, since=started)
            if stage == TRAIN_STAGE and summary is not None and summary.status == "diverged":
                outcome[stage] = "diverged"
                emit("pico.training.diverged", summary, params)
                return summary
            state.result()  # re-raise the stage's error
        outcome[stage] = state.result()
    return None


@flow(name="pico-pipeline")
def pipeline(
    repo: str = str(REPO),
    overrides: dict[str, Any] | None = None,
    experiment: str | None = None,
    fresh: bool = False,
    retries: int = 2,
    retry_delay_seconds: float = 10.0,
) -> dict[str, str]:
    """Run the DVC pipeline stage by stage; see the module docstring for retries and branches."""
    logger = get_run_logger()
    root = Path(repo)
    params = apply_overrides(root, overrides) if overrides else load_params(root / "params.yaml")
    if fresh:  # the trainer sets its run's checkpoints aside (never deleted), once for this flow run
        os.environ[FRESH_ENV] = str(flow_run.get_id() or time.time())
        logger.info("fresh start requested: the train stage sets this run's checkpoints aside and starts at step 0")
    path = root / "params.yaml"
    asked, wrote = path.read_bytes(), []  # what the person asked for; what recovery last wrote

    def rewrite(changes: dict[str, Any]) -> Params:
        changed = apply_overrides(root, changes)
        wrote.append(path.read_bytes())
        return changed

    delays = [retry_delay_seconds * 2**i for i in range(max(retries, 1))]
    outcome: dict[str, str] = {}
    try:
        ended = run_with_recovery(
            dvc_stages(root),
            lambda pending: _run_stages(root, pending, retries, delays, outcome),
            params,
            experiment,
            rewrite,
            logger,
        )
        return _finish(root, ended.params, ended.experiment, bool(overrides), outcome, logger)
    finally:
        os.environ.pop(FRESH_ENV, None)
        if wrote:
            restore_params(path, asked, wrote[-1], logger)


def _finish(
    root: Path, params: Params, experiment: str | None, overridden: bool, outcome: dict[str, str], logger: Any
) -> dict[str, str]:
    """After the stages: save the experiment, say how training ended (events for automations), and
    publish the report and metrics."""
    summary = train_summary(root, params)
    if summary is not None and summary.status == "early_stopped":
        logger.info(
            "training stopped early at step %s (%s); evaluated the best checkpoint (step %s)",
            summary.step,
            summary.reason,
            summary.best_eval_step,
        )
    if experiment or overridden:
        args = ["exp", "save", "--force"] + (["-n", experiment] if experiment else [])
        saved = dvc(root, *args)
        if saved.returncode != 0:
            raise PipelineFailed(f"dvc exp save failed: {saved.stderr.strip() or saved.stdout.strip()}")
        logger.info("saved as DVC experiment %s", experiment or saved.stdout.strip())
        outcome["experiment"] = experiment or saved.stdout.strip()
    outcome["status"] = summary.status if summary is not None else "unknown"
    if summary is not None and summary.status in ("completed", "early_stopped"):
        emit(f"pico.training.{summary.status.replace('_', '-')}", summary, params)
    ratio = _pathology_ratio(root, params)
    if ratio is not None and ratio > params.report.diagnosis.pathology_ratio:
        emit(
            "pico.metric.pathology",
            summary,
            params,
            seq_mean_over_token_ratio=ratio,
            threshold=params.report.diagnosis.pathology_ratio,
        )
        logger.warning("metric pathology: pico's per-sequence mean perplexity is %.3g x the token-level one", ratio)
    publish(str(root), params, outcome, experiment)
    return outcome


def _pathology_ratio(root: Path, params: Params) -> float | None:
    try:
        return float(json.loads((root / params.evaluation.out).read_text())["macro"]["seq_mean_over_token_ratio"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Run the pico DVC pipeline as a Prefect flow.")
    ap.add_argument("--repo", default=str(REPO))
    ap.add_argument(
        "--set",
        "-S",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="param override, as with `dvc exp run -S` (repeatable)",
    )
    ap.add_argument("--exp", dest="experiment", help="save the run as this DVC experiment")
    ap.add_argument("--fresh", action="store_true", help="discard existing checkpoints instead of resuming")
    ap.add_argument("--retries", type=int, default=2)
    ap.add_argument("--retry-delay", type=float, default=10.0, help="first retry delay in seconds (doubles)")
    args = ap.parse_args(argv)
    result = pipeline(
        repo=args.repo,
        overrides=parse_overrides(args.overrides) or None,
        experiment=args.experiment,
        fresh=args.fresh,
        retries=args.retries,
        retry_delay_seconds=args.retry_delay,
    )
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
