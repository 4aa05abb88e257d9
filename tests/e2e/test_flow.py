"""The Prefect flow against a real Prefect server (started once per test session): stages run
through DVC (which alone decides what is up to date), a failed stage retried, its output streamed
live, the report and metrics published, overrides saved as a DVC experiment. The branches are in
test_flow_branches.py, the service in test_flow_service.py."""

import json
import sys

import yaml

from tests.helpers import latest_flow_task_runs, sh

STAGES = ("embedded_data", "tokenizer", "tokenize", "train", "evaluate", "report")


DATA_STAGES = ("embedded_data", "tokenizer", "tokenize")


def test_flow_runs_dvc_stages_with_retries_and_experiments(prefect_server, new_repo, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterTaskRunId

    from flows.pipeline import pipeline

    repo = new_repo(tmp_path / "repo")  # its data stages already ran
    marker = tmp_path / "failed-once"
    pipeline_yaml = (repo / "dvc.yaml").read_text()
    dvc_yaml = yaml.safe_load(pipeline_yaml)
    # a stage that fails on its first run and succeeds on the retry, printing a line 3 s before it ends
    # (no flush: the flow's PYTHONUNBUFFERED must carry it to the Prefect log while the stage runs)
    flaky = {
        "cmd": f"{sys.executable} -c \"import pathlib,sys,time; p=pathlib.Path(r'{marker}'); "
        f"first = not p.exists(); p.touch(); print('flaky: working'); "
        f'time.sleep(0 if first else 3); sys.exit(1 if first else 0)"'
    }
    dvc_yaml["stages"] = {"flaky": flaky, **dvc_yaml["stages"]}
    (repo / "dvc.yaml").write_text(yaml.safe_dump(dvc_yaml, sort_keys=False))
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "flaky stage")

    outcome = pipeline(repo=str(repo), retries=2, retry_delay_seconds=0.0)
    # the flaky stage ran before the data stages, so DVC was asked about each: it skipped them
    assert outcome == {
        "flaky": "ran",
        **{s: "skipped" for s in DATA_STAGES},
        **{s: "ran" for s in ("train", "evaluate", "report")},
        "status": "completed",
    }
    runs = latest_flow_task_runs()
    assert runs["flaky"].run_count == 2  # failed once, retried, completed
    assert runs["train"].run_count == 1
    with get_client(sync_client=True) as client:
        keys = {a.key for a in client.read_artifacts()}
        logs = client.read_logs(log_filter=LogFilter(task_run_id=LogFilterTaskRunId(any_=[runs["flaky"].id])))
    assert {"pico-report", "pico-metrics"} <= keys
    with get_client(sync_client=True) as client:
        report = next(a for a in client.read_artifacts() if a.key == "pico-report")
        metrics = next(a for a in client.read_artifacts() if a.key == "pico-metrics")
    # the UI cannot fetch the report's relative image links: the plots travel inside the markdown
    assert report.data.count("](data:image/png;base64,") == 4 and "](plots/" not in report.data
    assert "{" not in metrics.description and all(
        len(repr(row["token perplexity"])) <= 8 for row in json.loads(metrics.data)
    )
    # stage output streams into the run's log as it is printed, not when the stage exits
    working = [log.timestamp for log in logs if log.message == "flaky: working"]
    assert len(working) == 2 and (runs["flaky"].end_time - working[-1]).total_seconds() > 2

    # DVC, not Prefect, decides what is up to date: without the flaky stage (which has no
    # outputs, so DVC always runs it), a second run finds every stage current and runs nothing
    (repo / "dvc.yaml").write_text(pipeline_yaml)
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "baseline")
    again = pipeline(repo=str(repo), retries=0, retry_delay_seconds=0.0)
    assert again == {**{s: "skipped" for s in STAGES}, "status": "completed"}

    # overrides land as a DVC experiment, beside `dvc exp run -S` runs
    exp = pipeline(repo=str(repo), overrides={"optim.lr": 1.0e-3}, experiment="flow-lr", retries=0)
    assert exp["tokenize"] == "skipped" and exp["train"] == "ran" and exp["experiment"] == "flow-lr"
    shown = sh(repo, "dvc", "exp", "show", "--json").stdout
    assert "flow-lr" in shown and "0.001" in shown
