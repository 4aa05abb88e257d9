"""Prefect flow that drives the DVC pipeline: one task per `dvc.yaml` stage, run through DVC.

The flow never implements a stage: each task runs ``dvc repro --single-item <stage>``, so
``dvc.lock``, DVC's cache and ``dvc exp show`` stay the one record of what ran and DVC alone
decides what is up to date (Prefect's own result caching is off for these tasks). Stages run one
at a time in ``dvc.yaml`` order because DVC holds a repository lock. A failed stage is retried with
backoff; a retried train stage resumes from its newest checkpoint (``checkpoints/`` persists).

    python -m flows.pipeline [--retries 2] [--retry-delay 10]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import yaml
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

REPO = Path(__file__).resolve().parents[1]


def dvc_stages(repo: Path = REPO) -> list[str]:
    """Stage names in the order dvc.yaml lists them (which is their dependency order)."""
    return list(yaml.safe_load((repo / "dvc.yaml").read_text())["stages"])


def _dvc_env() -> dict[str, str]:
    # the stages call `pico`, which lives beside this interpreter
    bindir = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}", "DVC_NO_ANALYTICS": "1"}


@task(name="dvc-stage", cache_policy=NO_CACHE, task_run_name="{stage}")
def run_stage(stage: str, repo: str) -> str:
    logger = get_run_logger()
    proc = subprocess.run(["dvc", "repro", "--single-item", stage], cwd=repo, env=_dvc_env(),
                          capture_output=True, text=True)
    for line in (proc.stdout + proc.stderr).splitlines():
        if line.strip():
            logger.info(line)
    if proc.returncode != 0:
        raise RuntimeError(f"stage '{stage}' failed with exit code {proc.returncode}")
    return "skipped" if "didn't change, skipping" in proc.stdout else "ran"


@flow(name="pico-pipeline")
def pipeline(repo: str = str(REPO), retries: int = 2, retry_delay_seconds: float = 10.0) -> dict[str, str]:
    """Run every DVC stage in order; retries back off exponentially from ``retry_delay_seconds``."""
    delays = [retry_delay_seconds * 2**i for i in range(max(retries, 1))]
    stage_task = run_stage.with_options(retries=retries, retry_delay_seconds=delays)
    outcome = {stage: stage_task(stage, repo) for stage in dvc_stages(Path(repo))}
    report = Path(repo) / "reports" / "report.md"
    if report.exists():
        create_markdown_artifact(report.read_text(), key="pico-report", description="training report")
    return outcome


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repo", default=str(REPO))
    ap.add_argument("--retries", type=int, default=2)
    ap.add_argument("--retry-delay", type=float, default=10.0)
    args = ap.parse_args(argv)
    print(pipeline(repo=args.repo, retries=args.retries, retry_delay_seconds=args.retry_delay))


if __name__ == "__main__":
    main()
