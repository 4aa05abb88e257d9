"""Serve the pipeline flow as a Prefect deployment with a cron schedule.

    prefect server start                      # UI on http://127.0.0.1:4200 (another terminal)
    export PREFECT_API_URL=http://127.0.0.1:4200/api
    python -m flows.serve --cron "0 3 * * *" --name nightly [--set optim.lr=1.0e-4] [--exp nightly-lr]

The process registers the deployment and then runs its scheduled (and UI-triggered) flow runs
until it is stopped. Each run is the same flow as `python -m flows.pipeline`.

**One run at a time.** Runs share one checkout (DVC's lock would fail a second `dvc repro`, and
two runs would edit one params.yaml), so the deployment has a server-side concurrency limit of one:
a run that comes due — or is started from the UI — while another is in progress waits for it
(``--on-overlap wait``, Prefect's "AwaitingConcurrencySlot") or is cancelled with a message saying
why (``--on-overlap skip``, the default for schedules: a nightly run must not pile up behind a
multi-day one). SIGTERM (or Ctrl-C) cancels the run in progress — the trainer saves nothing new
but resumes from its newest checkpoint next time — and the process exits within seconds.
"""

from __future__ import annotations

import argparse

from prefect import serve
from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy

from flows import automations
from flows.pipeline import REPO, parse_overrides, pipeline

ON_OVERLAP = {"wait": ConcurrencyLimitStrategy.ENQUEUE, "skip": ConcurrencyLimitStrategy.CANCEL_NEW}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Serve the pico pipeline as a scheduled Prefect deployment.")
    ap.add_argument("--name", default="pico-pipeline", help="deployment name")
    when = ap.add_mutually_exclusive_group()
    when.add_argument("--cron", default="0 3 * * *", help="cron schedule (default: daily at 03:00)")
    when.add_argument("--interval", type=float, help="run every N seconds instead of on a cron schedule")
    ap.add_argument("--repo", default=str(REPO))
    ap.add_argument("--set", "-S", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--exp", dest="experiment", help="save each run as this DVC experiment")
    ap.add_argument("--retries", type=int, default=2)
    ap.add_argument("--retry-delay", type=float, default=10.0)
    ap.add_argument(
        "--on-overlap",
        choices=sorted(ON_OVERLAP),
        default="skip",
        help="a run that comes due while another runs: wait for it, or skip it (default)",
    )
    args = ap.parse_args(argv)
    parameters = {
        "repo": args.repo,
        "overrides": parse_overrides(args.overrides) or None,
        "experiment": args.experiment,
        "retries": args.retries,
        "retry_delay_seconds": args.retry_delay,
    }
    schedule = {"interval": args.interval} if args.interval else {"cron": args.cron}
    automations.ensure()  # runs that stop reporting are Crashed; a diverged run pauses its deployment
    print(f"automations {automations.CRASH_ZOMBIES!r} and {automations.PAUSE_DIVERGED!r} are in place")
    # one run at a time, enforced by the server (so UI-triggered runs and other serve processes obey it)
    limit = ConcurrencyLimitConfig(limit=1, collision_strategy=ON_OVERLAP[args.on_overlap])
    deployment = pipeline.to_deployment(name=args.name, parameters=parameters, concurrency_limit=limit, **schedule)
    print(f"serving {pipeline.name}/{args.name}: one run at a time, overlapping runs {args.on_overlap}")
    serve(deployment, print_starting_message=False)


if __name__ == "__main__":
    main()
