"""Prefect flow around ``pico reproduce``: rerun a past run in a scratch clone and publish the verdict.

    python -m flows.reproduce HEAD [--from train] [--noise-seeds 1] [--repo .]

The flow calls the same ``pico.reproduce.reproduce`` as the CLI, as one task, and publishes the
markdown (per-metric verdicts, the first differing output, both machines) as the ``pico-reproduce``
artifact; the run fails when the result is not reproduced, so a schedule of it alerts like a test.
"""

from __future__ import annotations

import argparse

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from flows.pipeline import REPO
from pico.reproduce import Reproduction, reproduce


class NotReproduced(RuntimeError):
    """The rerun's metrics are neither identical to the committed ones nor within noise."""


@task(name="reproduce", cache_policy=NO_CACHE)
def rerun(ref: str, repo: str, from_stage: str | None, noise_seeds: int) -> Reproduction:
    return reproduce(ref, repo, from_stage, noise_seeds)


@flow(name="pico-reproduce")
def reproduce_flow(
    ref: str = "HEAD", repo: str = str(REPO), from_stage: str | None = None, noise_seeds: int = 1
) -> dict[str, str]:
    logger = get_run_logger()
    result = rerun(ref, repo, from_stage, noise_seeds)
    create_markdown_artifact(result.markdown, key="pico-reproduce", description=f"reproduction of {ref}")
    verdicts = {v.label: v.verdict for v in result.verdicts}
    for label, verdict in verdicts.items():
        logger.info("%s: %s", label, verdict)
    logger.info("first difference: %s", result.first_difference)
    if not result.ok:
        raise NotReproduced(f"{ref} not reproduced; first difference: {result.first_difference}")
    return verdicts


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Rerun a past run and report how close it came (Prefect flow).")
    ap.add_argument("ref", nargs="?", default="HEAD")
    ap.add_argument("--repo", default=str(REPO))
    ap.add_argument("--from", dest="from_stage")
    ap.add_argument("--noise-seeds", type=int, default=1)
    args = ap.parse_args(argv)
    reproduce_flow(args.ref, args.repo, args.from_stage, args.noise_seeds)


if __name__ == "__main__":
    main()
