"""Prefect flow around ``pico ablate``: the one-change-at-a-time ladder from A to B, watchable.

    python -m flows.ablate v1 v2 [--seeds 2] [--leave-one-out] [--at-step K] [--budget H] [--repo .]

The flow calls the same ``pico.ablate.ablate`` as the CLI, as one task: the ladder is priced
(refused over ``--budget``), its rung-seeds queued as DVC experiments and run by one ``dvc queue``
worker. While it runs, the ``pico-ablation-progress`` artifact counts the finished runs; at the end
the report (per change: effect, seed-noise margin, verdict) is the ``pico-ablation`` artifact. The
task is retried once: a rerun continues the ladder — finished experiments are kept, not rerun.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE

from flows.pipeline import REPO
from pico.ablate import ablate


@task(name="ablation ladder", cache_policy=NO_CACHE, retries=1)
def ladder(
    a: str, b: str, repo: str, seeds: int, leave_one_out: bool, at_step: int | None, budget: float | None
) -> str:
    progress_id = None

    def progress(done: int, of: int) -> None:
        nonlocal progress_id
        text = f"{done} of {of} experiments of the ladder {a} -> {b} finished"
        if progress_id is None:
            progress_id = create_progress_artifact(100 * done / of, key="pico-ablation-progress", description=text)
        else:
            update_progress_artifact(progress_id, 100 * done / of, description=text)

    with contextlib.chdir(repo):  # pico ablate works on the repository it runs in, as the CLI does
        path = ablate(a, b, seeds, leave_one_out, at_step, budget, progress=progress)
        return str(Path(repo) / path)


@flow(name="pico-ablate")
def ablate_flow(
    a: str,
    b: str,
    repo: str = str(REPO),
    seeds: int = 2,
    leave_one_out: bool = False,
    at_step: int | None = None,
    budget: float | None = None,
) -> str:
    logger = get_run_logger()
    path = Path(ladder(a, b, repo, seeds, leave_one_out, at_step, budget))
    md = path.read_text()
    create_markdown_artifact(md, key="pico-ablation", description=f"ablation {a} -> {b}")
    with path.with_suffix(".csv").open() as f:  # the verdicts, one row per change and figure
        for row in csv.DictReader(f):
            logger.info("%s, %s: %s (%s)", row["change"], row["metric"], row["verdict"], row["noise_basis"])
    return str(path)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="The one-change-at-a-time ablation ladder from A to B (Prefect flow).")
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--repo", default=str(REPO))
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--leave-one-out", action="store_true")
    ap.add_argument("--at-step", type=int)
    ap.add_argument("--budget", type=float)
    args = ap.parse_args(argv)
    ablate_flow(args.a, args.b, args.repo, args.seeds, args.leave_one_out, args.at_step, args.budget)


if __name__ == "__main__":
    main()
