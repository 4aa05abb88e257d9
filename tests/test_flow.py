"""The Prefect flow against a real Prefect server: stages run through DVC, retries, no-op reruns."""

import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import make_dvc_repo, sh

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def prefect_server():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def test_flow_runs_dvc_stages_with_retries(prefect_server, tmp_path):
    from prefect.client.orchestration import get_client

    from flows.pipeline import pipeline

    repo = make_dvc_repo(tmp_path / "repo")
    marker = tmp_path / "failed-once"
    dvc_yaml = yaml.safe_load((repo / "dvc.yaml").read_text())
    # a stage that fails on its first run and succeeds on the retry
    flaky = {"cmd": f"{sys.executable} -c \"import pathlib,sys; p=pathlib.Path(r'{marker}'); "
                    f"sys.exit(0 if p.exists() else p.touch() or 1)\""}
    dvc_yaml["stages"] = {"flaky": flaky, **dvc_yaml["stages"]}
    (repo / "dvc.yaml").write_text(yaml.safe_dump(dvc_yaml, sort_keys=False))
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "flaky stage")

    outcome = pipeline(repo=str(repo), retries=2, retry_delay_seconds=0.0)
    assert outcome == {s: "ran" for s in ("flaky", "embedded_data", "tokenizer", "tokenize", "train", "evaluate", "report")}
    assert (repo / "metrics/eval.json").exists() and (repo / "dvc.lock").exists()

    with get_client(sync_client=True) as client:
        runs = {r.name: r for r in client.read_task_runs()}
        assert runs["flaky"].run_count == 2  # failed once, retried, completed
        assert runs["train"].run_count == 1
        artifacts = client.read_artifacts()
        assert any(a.key == "pico-report" and "Training report" in (a.data or "") for a in artifacts)

    # DVC, not Prefect, decides what is up to date: a second run skips every stage it tracks
    again = pipeline(repo=str(repo), retries=0, retry_delay_seconds=0.0)
    assert {s: v for s, v in again.items() if s != "flaky"} == {
        s: "skipped" for s in ("embedded_data", "tokenizer", "tokenize", "train", "evaluate", "report")}
