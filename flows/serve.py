"""Serve the pipeline flow as a Prefect deployment with a cron schedule.

    prefect server start                      # UI on http://127.0.0.1:4200 (another terminal)
    export PREFECT_API_URL=http://127.0.0.1:4200/api
    python -m flows.serve --cron "0 3 * * *" --name nightly [--set optim.lr=1.0e-4] [--exp nightly-lr]

The process registers the deployment and then runs its scheduled (and UI-triggered) flow runs
until it is stopped, one at a time. Each run is the same flow as `python -m flows.pipeline`.
"""

from __future__ import annotations

import argparse

from flows import automations
from flows.pipeline import REPO, parse_overrides, pipeline


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
    args = ap.parse_args(argv)
    parameters = {"repo": args.repo, "overrides": parse_overrides(args.overrides) or None,
                  "experiment": args.experiment, "retries": args.retries, "retry_delay_seconds": args.retry_delay}
    schedule = {"interval": args.interval} if args.interval else {"cron": args.cron}
    made = automations.ensure()  # a run whose process or server goes away is marked Crashed, not left Running
    print(f"automation {made.name!r} is in place")
    # one run at a time: runs share one repository, and DVC's lock fails a second `dvc repro` in it;
    # a run that comes due while another goes on waits for it instead of starting beside it
    pipeline.serve(name=args.name, parameters=parameters, limit=1, **schedule)


if __name__ == "__main__":
    main()
