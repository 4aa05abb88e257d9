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
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event
from prefect.runtime import flow_run

from pico.config import Params, load_params, read_params_file, with_overrides
from pico.train_metrics import TrainSummary, parse_eval, parse_progress, read_summary, summary_path

REPO = Path(__file__).resolve().parents[1]
TRAIN_STAGE = "train"
FRESH_ENV = "PICO_FRESH_RUN"  # pico.runstore.FRESH_ENV (not imported: the flow never loads torch)


class PipelineFailed(RuntimeError):
    """The pipeline cannot go on (a diverged run without recovery, recovery exhausted)."""


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


def stage_is_current(repo: Path, stage: str) -> bool:
    """DVC's own answer (``dvc status --json``), not its human-readable output: nothing to run."""
    proc = dvc(repo, "status", "--json", stage)
    if proc.returncode != 0:
        return False  # let `dvc repro` run and report the problem
    return not json.loads(proc.stdout or "{}")


@task(name="dvc-stage", cache_policy=NO_CACHE, task_run_name="{stage}")
def run_stage(stage: str, repo: str) -> str:
    logger = get_run_logger()
    if stage_is_current(Path(repo), stage):
        logger.info("stage '%s' is up to date (dvc status)", stage)
        return "skipped"
    live = LiveView(Path(repo), logger) if stage == TRAIN_STAGE else None
    code = dvc_streamed(Path(repo), live or logger.info, "repro", "--single-item", stage)
    if live and code == 0:
        live.close()
    if code != 0:
        raise RuntimeError(f"stage '{stage}' failed with exit code {code}")
    return "ran"


class LiveView:
    """The train stage's output, as it is printed, turned into what a person watching the run in
    the Prefect UI needs: every line in the task's log; a progress artifact (``pico-train-progress``:
    step / max_steps, tokens/s, ETA) updated at each of the trainer's log intervals; and the
    training log (``pico-training-log``, ``pico.live``) published anew after each evaluation. A
    failure to publish is logged and never stops the stage."""

    def __init__(self, repo: Path, logger: Any):
        self.repo, self.logger = repo, logger
        self.progress_id = None
        self.log_published = False

    def __call__(self, line: str) -> None:
        self.logger.info(line)
        progress = parse_progress(line)
        if progress is not None:
            self._publish(self._progress, progress)
        elif parse_eval(line) is not None:  # the trainer writes the evaluation's row before this line
            self._publish(self._training_log)

    def close(self) -> None:
        """After the stage succeeded: the log once more, with how it ended (completed, early-stopped).
        Not after a failure or a stop: the flow's own state says that, and a stopping service
        (SIGTERM) must not wait on the server."""
        if self.log_published:
            self._publish(self._training_log)

    def _publish(self, fn: Any, *args: Any) -> None:
        try:
            fn(*args)
        except Exception as err:  # the run matters more than its artifacts
            self.logger.warning("could not publish a live artifact: %s", str(err).splitlines()[0][:200])

    def _progress(self, p: dict[str, Any]) -> None:
        done = round(100.0 * p["step"] / p["max_steps"], 2)
        text = (
            f"step {p['step']:,} of {p['max_steps']:,} · {p['tokens_per_s']:,.0f} tokens/s · ETA {p['eta']} · "
            f"training loss {p['loss']:.4f}"
        )
        if self.progress_id is None:
            self.progress_id = create_progress_artifact(done, key="pico-train-progress", description=text)
        else:
            update_progress_artifact(self.progress_id, done, description=text)

    def _training_log(self) -> None:
        from pico.live import training_log

        self.log_published = True
        params = load_params(self.repo / "params.yaml")
        # the metric files' paths are relative to the repository, not to this process's folder (which
        # stays put: other threads of the flow may rely on it)
        params = params.model_copy(
            update={
                "training": params.training.model_copy(
                    update={"metrics_dir": str(self.repo / params.training.metrics_dir)}
                )
            }
        )
        md = training_log(params)
        create_markdown_artifact(md, key="pico-training-log", description="training log, refreshed at each evaluation")


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


def _retry_unless_diverged(repo: Path, since: float):
    # retrying a diverged run would diverge again at the same step: let the flow branch instead
    def condition(task, task_run, state) -> bool:
        try:
            summary = train_summary(repo, load_params(repo / "params.yaml"), since)
        except Exception:
            return True
        return summary is None or summary.status != "diverged"

    return condition


@task(name="publish", cache_policy=NO_CACHE)
def publish(repo: str, params: Params, outcome: dict[str, str], experiment: str | None) -> None:
    """The report (plots embedded, since the UI cannot resolve the report's relative image links)
    and the final metrics as a rounded table."""
    root = Path(repo)
    report = root / params.report.out_dir / "report.md"
    if report.exists():
        create_markdown_artifact(
            embed_images(report.read_text(), report.parent),
            key="pico-report",
            description=f"training report{f' of {experiment}' if experiment else ''}",
        )
    eval_path = root / params.evaluation.out
    if eval_path.exists():
        ev = json.loads(eval_path.read_text())
        table = [
            {
                "source": name,
                "token perplexity": _round(m["token_perplexity"]),
                "bits per byte": _round(m["bits_per_byte"]),
                "pico per-seq mean perplexity": _round(m["pico_mean_seq_perplexity"]),
                "tokens": m.get("tokens"),
            }
            for name, m in [*ev["sources"].items(), ("macro (mean over sources)", ev["macro"])]
        ]
        stages = ", ".join(f"{k} {v}" for k, v in outcome.items())
        create_table_artifact(
            table,
            key="pico-metrics",
            description=f"checkpoint step {ev['step']} ({ev.get('checkpoint_kind', 'latest')}); {stages}",
        )


def _round(x: Any, digits: int = 4) -> Any:
    try:
        return float(f"{float(x):.{digits}g}")
    except (TypeError, ValueError):
        return x


def embed_images(markdown: str, folder: Path) -> str:
    """Relative PNG links (``![x](plots/loss.png)``) as data URIs, so the markdown shows its plots
    where the files are not reachable (the Prefect UI)."""
    import base64
    import re

    def inline(m: re.Match) -> str:
        path = folder / m["path"]
        if not path.is_file():
            return m[0]
        return f"![{m['alt']}](data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()})"

    return re.sub(r"!\[(?P<alt>[^\]]*)\]\((?P<path>[^):]+\.png)\)", inline, markdown)


def emit(kind: str, summary: TrainSummary | None, params: Params, **payload: Any) -> None:
    """A Prefect event about the run (``pico.training.diverged`` / ``completed`` / ``early-stopped``,
    ``pico.metric.pathology``) for automations to react to; Prefect relates it to this flow run and
    its deployment. The run is the resource, named by its fingerprint."""
    fingerprint = summary.fingerprint if summary else "unknown"
    body = {
        **(
            {
                "step": summary.step,
                "max_steps": summary.max_steps,
                "reason": summary.reason,
                "last_good_checkpoint": summary.last_good_checkpoint,
            }
            if summary
            else {}
        ),
        **payload,
    }
    emit_event(
        event=kind,
        resource={"prefect.resource.id": f"pico.run.{fingerprint}", "prefect.resource.name": params.report.run_name},
        payload=body,
    )


class _Diverged(Exception):
    def __init__(self, summary: TrainSummary):
        super().__init__(summary.reason)
        self.summary = summary


def _run_stages(root: Path, stages: list[str], retries: int, delays: list[float], outcome: dict[str, str]) -> None:
    for stage in stages:
        options: dict[str, Any] = {"retries": retries, "retry_delay_seconds": delays}
        started = time.time()
        if stage == TRAIN_STAGE:
            options["retry_condition_fn"] = _retry_unless_diverged(root, started)
        state = run_stage.with_options(**options)(stage, str(root), return_state=True)
        if state.is_failed():
            params = load_params(root / "params.yaml")
            summary = train_summary(root, params, since=started)
            if stage == TRAIN_STAGE and summary is not None and summary.status == "diverged":
                outcome[stage] = "diverged"
                emit("pico.training.diverged", summary, params)
                raise _Diverged(summary)
            state.result()  # re-raise the stage's error
        outcome[stage] = state.result()


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
    if fresh:  # the trainer moves its run's checkpoints aside (never deleted), once for this flow run
        os.environ[FRESH_ENV] = str(flow_run.get_id() or time.time())
        logger.info("fresh start requested: the train stage sets this run's checkpoints aside and starts at step 0")
    path = root / "params.yaml"
    asked = path.read_bytes()  # what the person asked for; recovery edits are undone
    recovery: dict[str, bytes] = {}  # what recovery last wrote into params.yaml
    try:
        return _pipeline(root, params, experiment, bool(overrides), retries, retry_delay_seconds, logger, recovery)
    finally:
        os.environ.pop(FRESH_ENV, None)
        if "wrote" in recovery:
            if path.read_bytes() == recovery["wrote"]:
                path.write_bytes(asked)
                logger.info("params.yaml restored: the recovery's restart point and lr live in its DVC experiment")
            else:  # someone edited it during the run: theirs wins
                logger.warning("params.yaml was edited during the run; left as it is (not restored)")


def _pipeline(
    root: Path,
    params: Params,
    experiment: str | None,
    overridden: bool,
    retries: int,
    retry_delay_seconds: float,
    logger: Any,
    recovery: dict[str, bytes],
) -> dict[str, str]:
    delays = [retry_delay_seconds * 2**i for i in range(max(retries, 1))]
    stages = dvc_stages(root)
    outcome: dict[str, str] = {}
    attempt = 0
    pending = stages
    base_name = experiment or "run"
    while True:
        try:
            _run_stages(root, pending, retries, delays, outcome)
            break
        except _Diverged as div:
            rec = params.recovery
            if not rec.enabled or attempt >= rec.max_attempts:
                why = "recovery is off" if not rec.enabled else f"{attempt} recovery attempts used"
                raise PipelineFailed(f"training diverged: {div.summary.reason} ({why})") from None
            if not div.summary.last_good_checkpoint:
                raise PipelineFailed(f"training diverged before its first checkpoint: {div.summary.reason}") from None
            attempt += 1
            new_lr = params.optim.lr * rec.lr_factor
            restart = str(Path(params.training.checkpoint_dir) / div.summary.last_good_checkpoint)
            logger.warning(
                "training diverged (%s); recovery %d/%d: restarting from %s with lr %g",
                div.summary.reason,
                attempt,
                rec.max_attempts,
                restart,
                new_lr,
            )
            # written into params.yaml for DVC to run and `dvc exp save` to keep with the experiment, then undone
            params = apply_overrides(root, {"optim.lr": new_lr, "training.restart_from": restart})
            recovery["wrote"] = (root / "params.yaml").read_bytes()
            experiment = f"{base_name}-recovery-{attempt}"
            pending = stages[stages.index(TRAIN_STAGE) :]
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
