"""A pipeline run that stops reporting (its process or the Prefect server went away) is marked
Crashed by the project's automation on a real Prefect server, instead of staying Running forever;
another flow's runs are left alone."""

import time
import uuid

import pytest


@pytest.fixture
def automations(prefect_server):
    """The project's automations on the session's server, deleted afterwards: the flow tests in
    the same worker share that server, and their runs must not meet this test's 10 s heartbeat rule."""
    from prefect.automations import Automation

    from flows import automations

    yield automations
    for made in (automations.crash_zombies_automation(), automations.pause_diverged_automation()):
        try:
            Automation.read(name=made.name).delete()
        except ValueError:  # none of that name
            pass


def _running_run(client, flow_name):
    from prefect import flow
    from prefect.states import Running

    run = client.create_flow_run(flow=flow(name=flow_name)(lambda: None), name=f"zombie-{uuid.uuid4().hex[:6]}")
    client.set_flow_run_state(run.id, Running(), force=True)
    return run


def test_a_run_without_heartbeats_is_crashed(automations):
    from prefect.client.orchestration import get_client
    from prefect.events import emit_event

    made = automations.ensure(within_s=10)
    assert automations.ensure(within_s=10).id == made.id  # idempotent: updated by name, not duplicated
    with get_client(sync_client=True) as client:
        ours = _running_run(client, automations.FLOW_NAME)
        other = _running_run(client, "someone-elses-flow")
        for run, flow_name in ((ours, automations.FLOW_NAME), (other, "someone-elses-flow")):
            emit_event(
                event="prefect.flow-run.heartbeat",
                resource={"prefect.resource.id": f"prefect.flow-run.{run.id}"},
                related=[
                    {
                        "prefect.resource.id": f"prefect.flow.{run.flow_id}",
                        "prefect.resource.role": "flow",
                        "prefect.resource.name": flow_name,
                    }
                ],
            )
        deadline = time.time() + 90
        while client.read_flow_run(ours.id).state.type.value != "CRASHED":
            assert time.time() < deadline, "the silent run was not marked Crashed"
            time.sleep(1)
        state = client.read_flow_run(ours.id).state
        assert "no heartbeat" in state.message
        assert client.read_flow_run(other.id).state.type.value == "RUNNING"


def test_a_diverged_run_pauses_its_deployment(automations):
    """The flow's ``pico.training.diverged`` event, related to a deployment as Prefect relates a
    deployment's runs, pauses that deployment; another deployment is left alone."""
    from prefect.client.orchestration import get_client
    from prefect.events import emit_event

    from flows.pipeline import pipeline

    automations.ensure(within_s=10)
    with get_client(sync_client=True) as client:
        ids = {name: pipeline.to_deployment(name=name, interval=3600).apply() for name in ("diverges", "healthy")}
        assert not client.read_deployment(ids["diverges"]).paused
        emit_event(
            event=automations.DIVERGED_EVENT,
            resource={"prefect.resource.id": "pico.run.0123456789abcdef", "prefect.resource.name": "test run"},
            related=[
                {"prefect.resource.id": f"prefect.deployment.{ids['diverges']}", "prefect.resource.role": "deployment"}
            ],
            payload={"step": 6, "reason": "training loss is nan at step 6"},
        )
        deadline = time.time() + 90
        while not client.read_deployment(ids["diverges"]).paused:
            assert time.time() < deadline, "the diverged run's deployment was not paused"
            time.sleep(1)
        assert not client.read_deployment(ids["healthy"]).paused
