"""The Prefect flow's branches against a real server: a killed training retried and resumed, early stop evaluating the best checkpoint, a diverged run failing with its reason (not retried) or recovering with a lower lr as its own experiment."""

import json
from datetime import UTC, datetime

import pytest

from tests.helpers import latest_flow_task_runs, prefect_events, sh


def test_killed_training_is_retried_and_resumes(prefect_server, new_repo, tmp_path, monkeypatch):
    """The trainer SIGKILLed after step 4's checkpoint: the flow retries the train task, which
    resumes at step 4 and completes; every step is logged once. (That a resumed run ends
    bit-identical to an uninterrupted one: e2e/test_train_processes.py.)"""
    from flows.pipeline import pipeline

    killed = new_repo(tmp_path / "killed", {"training": {"max_steps": 12, "checkpoint_every": 4}})
    monkeypatch.setenv("PICO_FAULT_KILL_AT_STEP", "4")  # the trainer SIGKILLs itself after step 4's checkpoint
    outcome = pipeline(repo=str(killed), retries=1, retry_delay_seconds=0.0)
    assert outcome["train"] == "ran" and outcome["status"] == "completed"
    assert latest_flow_task_runs()["train"].run_count == 2
    steps = [int(line.split(",")[0]) for line in (killed / "metrics/train.csv").read_text().splitlines()[1:]]
    assert steps == [2, 4, 6, 8, 10, 12]  # each logged once: the retry resumed, it did not start over
    summary = json.loads((killed / "metrics/train_summary.json").read_text())
    assert summary["step"] == 12 and summary["status"] == "completed"
    info = json.loads((killed / "metrics/run_info.json").read_text())
    assert [i["from_step"] for i in info["invocations"]] == [0, 4] and info["invocations"][1]["to_step"] == 12


def test_early_stop_branch_evaluates_best_checkpoint(prefect_server, new_repo, tmp_path):
    from flows.pipeline import pipeline

    repo = new_repo(
        tmp_path / "repo",
        {
            "training": {"max_steps": 30, "eval_every": 2},
            "early_stop": {"enabled": True, "patience": 1, "min_delta": 10.0, "explosion_factor": None},
        },
    )
    outcome = pipeline(repo=str(repo), retries=0)
    assert outcome["status"] == "early_stopped"
    ev = json.loads((repo / "metrics/eval.json").read_text())
    assert ev["checkpoint_kind"] == "best" and ev["train_status"] == "early_stopped"
    report = (repo / "reports/report.md").read_text()
    assert "early-stopped at step 2 of 30 because evaluation loss has not improved" in report
    assert "that is the **best** checkpoint, not the last" in report


def test_diverged_run_fails_with_reason(prefect_server, new_repo, tmp_path, monkeypatch):
    from flows.pipeline import PipelineFailed, pipeline

    repo = new_repo(tmp_path / "repo")
    monkeypatch.setenv("PICO_FAULT_NAN_AT_STEP", "6")
    started = datetime.now(UTC)
    with pytest.raises(PipelineFailed, match=r"training loss is nan at step 6.*recovery is off"):
        pipeline(repo=str(repo), retries=2, retry_delay_seconds=0.0)
    assert latest_flow_task_runs()["train"].run_count == 1  # a diverged run is not retried blindly
    [event] = prefect_events(
        "pico.training.diverged", started
    )  # for automations (flows.automations pauses its deployment)
    assert event["payload"]["step"] == 5 and "nan at step 6" in event["payload"]["reason"]  # 5: the last applied
    assert any(r["prefect.resource.role"] == "flow-run" for r in event["related"])


def test_diverged_run_recovers_with_lower_lr(prefect_server, new_repo, tmp_path, monkeypatch):
    from flows.pipeline import pipeline

    repo = new_repo(tmp_path / "repo", {"recovery": {"enabled": True, "lr_factor": 0.5, "max_attempts": 1}})
    monkeypatch.setenv("PICO_FAULT_NAN_AT_STEP", "6")
    outcome = pipeline(repo=str(repo), experiment="nan", retries=0)
    assert outcome["status"] == "completed" and outcome["experiment"] == "nan-recovery-1"
    # the restart point and lr travel as the experiment's own params; the checkout's params.yaml is untouched
    assert sh(repo, "git", "diff", "--stat", "params.yaml").stdout == ""
    exps = json.loads(sh(repo, "dvc", "exp", "show", "--json").stdout)
    [recovered] = [e for row in exps for e in row.get("experiments") or [] if e.get("name") == "nan-recovery-1"]
    params = recovered["revs"][0]["data"]["params"]["params.yaml"]["data"]
    assert params["optim"]["lr"] == pytest.approx(1.5e-3)
    assert params["training"]["restart_from"] == "checkpoints/step_00000004"
    summary = json.loads((repo / "metrics/train_summary.json").read_text())
    assert summary["events"][0]["step"] == 4 and "restarted from" in summary["events"][0]["event"]
    # the next experiment from this checkout runs (the recovered run's checkpoints stay in the run store)
    monkeypatch.delenv("PICO_FAULT_NAN_AT_STEP")
    sh(repo, "dvc", "exp", "run", "-S", "optim.lr=1.0e-3")
    assert json.loads((repo / "metrics/train_summary.json").read_text())["status"] == "completed"
    assert list((repo / ".pico/runs").glob("*/step_00000008"))
    # and the recovered experiment still reproduces: its restart point is found in the run store
    sh(repo, "dvc", "exp", "apply", "nan-recovery-1")
    sh(repo, "dvc", "repro", "--force", "--single-item", "train")  # train alone, from its restart point
    assert json.loads((repo / "metrics/train_summary.json").read_text())["status"] == "completed"
