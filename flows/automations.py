"""Server-side automations the pipeline relies on, created (or updated) by name.

**Crash pipeline runs that stopped reporting.** A flow run whose process or Prefect server went
away mid-run (a server restart, a lost machine) would otherwise stay "Running" forever. Every
flow run emits a ``prefect.flow-run.heartbeat`` event every ``PREFECT_FLOWS_HEARTBEAT_FREQUENCY``
seconds (180 by default); this proactive automation marks a pico pipeline run *Crashed* when no
heartbeat (nor a final state) has followed the last one for three intervals. A crashed run is rerun
like a failed one: the train stage resumes from its newest checkpoint. This is Prefect's own
recipe (docs: "Detect and respond to zombie flows"), limited to this project's flow so it never
touches other flows on a shared server.

**Pause a deployment whose run diverged.** The flow emits ``pico.training.diverged`` (and
``pico.training.completed`` / ``pico.training.early-stopped`` / ``pico.metric.pathology``, see
``flows.artifacts.emit``); this automation pauses the deployment the diverged run came from, so a
nightly schedule does not re-run a diverging config until a person has looked (resume it in the
UI or with ``prefect deployment resume``). Runs started by hand have no deployment: nothing to pause.

    python -m flows.automations          # against $PREFECT_API_URL; flows.serve does this at start
"""

from __future__ import annotations

import argparse
from datetime import timedelta

from prefect.automations import Automation, ChangeFlowRunState, EventTrigger, PauseDeployment, Posture
from prefect.client.schemas.objects import StateType
from prefect.settings import get_current_settings

FLOW_NAME = "pico-pipeline"
CRASH_ZOMBIES = "pico-pipeline: crash runs that stopped reporting"
PAUSE_DIVERGED = "pico-pipeline: pause the deployment of a diverged run"
DIVERGED_EVENT = "pico.training.diverged"
FINAL_EVENTS = (
    "prefect.flow-run.Completed",
    "prefect.flow-run.Failed",
    "prefect.flow-run.Cancelled",
    "prefect.flow-run.Crashed",
)


def crash_zombies_automation(within_s: float | None = None) -> Automation:
    heartbeat = get_current_settings().flows.heartbeat_frequency or 180
    within = timedelta(seconds=within_s if within_s is not None else 3 * heartbeat)
    return Automation(
        name=CRASH_ZOMBIES,
        description=f"Marks a {FLOW_NAME} flow run Crashed when it sent no heartbeat for {within}.",
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect={"prefect.flow-run.heartbeat", *FINAL_EVENTS},
            match={"prefect.resource.id": ["prefect.flow-run.*"]},
            match_related={"prefect.resource.role": "flow", "prefect.resource.name": FLOW_NAME},
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=within,
        ),
        actions=[
            ChangeFlowRunState(
                state=StateType.CRASHED,
                message=f"no heartbeat for {within}: the run's process or the Prefect server went away. "
                "Rerun the flow: training resumes from its newest checkpoint.",
            )
        ],
    )


def pause_diverged_automation() -> Automation:
    return Automation(
        name=PAUSE_DIVERGED,
        description=f"Pauses the deployment of a {FLOW_NAME} run whose training diverged ({DIVERGED_EVENT}).",
        trigger=EventTrigger(
            expect={DIVERGED_EVENT}, posture=Posture.Reactive, threshold=1, match={"prefect.resource.id": "pico.run.*"}
        ),
        actions=[PauseDeployment(source="inferred")],
    )


def ensure(within_s: float | None = None) -> Automation:
    """Create the automations, or bring existing ones of the same names up to date; returns the
    zombie-crashing one (``ensure_one`` for each)."""
    ensure_one(pause_diverged_automation())
    return ensure_one(crash_zombies_automation(within_s))


def ensure_one(wanted: Automation) -> Automation:
    try:
        existing = Automation.read(name=wanted.name)
    except ValueError:  # Automation.read raises ValueError when no automation has the name
        existing = None
    if existing is None:
        return wanted.create()
    existing.description, existing.trigger, existing.actions = wanted.description, wanted.trigger, wanted.actions
    existing.enabled = True
    existing.update()
    return existing


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Create the pipeline's Prefect automations on $PREFECT_API_URL.")
    ap.add_argument(
        "--within",
        type=float,
        help="seconds without a heartbeat before a run is crashed (default: 3 x PREFECT_FLOWS_HEARTBEAT_FREQUENCY)",
    )
    args = ap.parse_args(argv)
    ensure(args.within)
    for name in (CRASH_ZOMBIES, PAUSE_DIVERGED):
        print(f"automation {name!r} ({Automation.read(name=name).id}) is in place")


if __name__ == "__main__":
    main()
