"""The Prefect flow against a real Prefect server (started once per test session): stages run
through DVC, retries, kill-and-resume, early-stop and divergence branches, experiments, schedules."""

import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from tests.helpers import REPO, make_dvc_repo, sh

STAGES = ("embedded_data", "tokenizer", "tokenize", "train", "evaluate", "report")


def latest_flow_task_runs():
    """Task runs of the most recently started flow run, by name. Only runs that started: START_TIME
    sorts by start time or else expected start, so a future run a served deployment scheduled
    (test_scheduled_runs_...) would otherwise come first."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, FlowRunFilterStartTime
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(start_time=FlowRunFilterStartTime(is_null_=False)),
            sort=FlowRunSort.START_TIME_DESC,
            limit=1,
        )[0]
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run.id])))
        return {r.name: r for r in runs}


def test_flow_runs_dvc_stages_with_retries_and_experiments(prefect_server, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterTaskRunId

    from flows.pipeline import pipeline

    repo = make_dvc_repo(tmp_path / "repo")
    marker = tmp_path / "failed-once"
    dvc_yaml = yaml.safe_load((repo / "dvc.yaml").read_text())
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
    assert outcome == {"flaky": "ran", **{s: "ran" for s in STAGES}, "status": "completed"}
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

    # DVC, not Prefect, decides what is up to date: a second run skips every stage DVC tracks
    again = pipeline(repo=str(repo), retries=0, retry_delay_seconds=0.0)
    assert {s: again[s] for s in STAGES} == {s: "skipped" for s in STAGES}

    # overrides land as a DVC experiment, beside `dvc exp run -S` runs
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "baseline")
    exp = pipeline(repo=str(repo), overrides={"optim.lr": 1.0e-3}, experiment="flow-lr", retries=0)
    assert exp["tokenize"] == "skipped" and exp["train"] == "ran" and exp["experiment"] == "flow-lr"
    shown = sh(repo, "dvc", "exp", "show", "--json").stdout
    assert "flow-lr" in shown and "0.001" in shown


def test_killed_training_is_retried_and_resumes(prefect_server, tmp_path, monkeypatch):
    from flows.pipeline import pipeline

    settings = {"training": {"max_steps": 12, "checkpoint_every": 4}}
    clean = make_dvc_repo(tmp_path / "clean", settings)
    sh(clean, "dvc", "repro")
    killed = make_dvc_repo(tmp_path / "killed", settings)
    monkeypatch.setenv("PICO_FAULT_KILL_AT_STEP", "4")  # the trainer SIGKILLs itself after step 4's checkpoint
    outcome = pipeline(repo=str(killed), retries=1, retry_delay_seconds=0.0)
    assert outcome["train"] == "ran" and outcome["status"] == "completed"
    assert latest_flow_task_runs()["train"].run_count == 2
    for name in ("metrics/eval.json", "metrics/train.csv", "metrics/eval_history.csv", "metrics/train_summary.json"):
        assert (killed / name).read_text() == (clean / name).read_text(), name
    assert (killed / "checkpoints/step_00000012/model.safetensors").read_bytes() == (
        clean / "checkpoints/step_00000012/model.safetensors"
    ).read_bytes()


def test_early_stop_branch_evaluates_best_checkpoint(prefect_server, tmp_path):
    from flows.pipeline import pipeline

    repo = make_dvc_repo(
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


def test_diverged_run_fails_with_reason(prefect_server, tmp_path, monkeypatch):
    from flows.pipeline import PipelineFailed, pipeline

    repo = make_dvc_repo(tmp_path / "repo")
    monkeypatch.setenv("PICO_FAULT_NAN_AT_STEP", "6")
    started = datetime.now(UTC)
    with pytest.raises(PipelineFailed, match=r"training loss is nan at step 6.*recovery is off"):
        pipeline(repo=str(repo), retries=2, retry_delay_seconds=0.0)
    assert latest_flow_task_runs()["train"].run_count == 1  # a diverged run is not retried blindly
    [event] = _events("pico.training.diverged", started)  # for automations (flows.automations pauses its deployment)
    assert event["payload"]["step"] == 5 and "nan at step 6" in event["payload"]["reason"]  # 5: the last applied
    assert any(r["prefect.resource.role"] == "flow-run" for r in event["related"])


def _events(name: str, since: datetime, timeout: float = 30.0) -> list[dict]:
    """Events of one name that occurred since ``since``, from the server's events API (they arrive
    asynchronously; the session's server also holds earlier tests' events)."""
    from prefect.client.orchestration import get_client

    deadline = time.time() + timeout
    while True:
        with get_client(sync_client=True) as client:
            response = client.request(
                "POST",
                "/events/filter",
                json={"filter": {"event": {"name": [name]}, "occurred": {"since": since.isoformat()}}},
            )
        found = response.json()["events"]
        if found or time.time() > deadline:
            return found
        time.sleep(1)


def test_diverged_run_recovers_with_lower_lr(prefect_server, tmp_path, monkeypatch):
    from flows.pipeline import pipeline

    repo = make_dvc_repo(tmp_path / "repo", {"recovery": {"enabled": True, "lr_factor": 0.5, "max_attempts": 1}})
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
    sh(repo, "dvc", "repro", "--force", "train")
    assert json.loads((repo / "metrics/train_summary.json").read_text())["status"] == "completed"


def _session_processes(sid: int) -> list[str]:
    """Command lines of the live processes in a session (what a stopped service left behind)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[3]) == sid and fields[0] != "Z":
                found.append((stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode())
        except (OSError, IndexError, ValueError):
            continue
    return found


def test_scheduled_runs_go_one_at_a_time_under_load_and_stop_on_sigterm(prefect_server, tmp_path):
    """A deployment every 2 s whose first run trains for ~10 s, on a machine kept busy by a
    CPU-bound process: runs that come due meanwhile are skipped (cancelled, saying why), no two
    runs overlap, the trained run completes, and SIGTERM stops the service within seconds,
    leaving no process behind."""
    from prefect.client.orchestration import get_client

    repo = make_dvc_repo(tmp_path / "repo")
    sh(repo, "dvc", "repro", "tokenize")
    env = {
        **os.environ,
        "PREFECT_API_URL": prefect_server.api_url,
        "PYTHONPATH": str(REPO),
        "PICO_FAULT_STEP_SECONDS": "1.0",
        "PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}",
    }
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"])]  # another CPU-heavy process
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "flows.serve",
            "--name",
            "every-2s",
            "--interval",
            "2",
            "--repo",
            str(repo),
            "--retries",
            "0",
            "--set",
            "training.log_every=4",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 240
        runs = []
        while time.time() < deadline:
            time.sleep(2)
            assert server.poll() is None, server.stdout.read()
            with get_client(sync_client=True) as client:
                try:
                    dep = client.read_deployment_by_name("pico-pipeline/every-2s")
                except Exception:
                    continue
                runs = [r for r in client.read_flow_runs() if r.deployment_id == dep.id and r.state]
            assert sum(r.state.is_running() for r in runs) <= 1
            done = [r for r in runs if r.state.is_completed()]
            if len(done) >= 2 and any(r.state.is_cancelled() for r in runs):
                break
        else:
            pytest.fail(f"states after 240 s: {[(r.name, r.state.type.value) for r in runs]}")
        assert dep.global_concurrency_limit.limit == 1
        skipped = [r for r in runs if r.state.is_cancelled()]
        assert skipped and all("concurrency" in (r.state.message or "").lower() for r in skipped), [
            r.state.message for r in skipped
        ]
        ran = sorted((r for r in runs if r.state.is_completed()), key=lambda r: r.start_time)
        for a, b in zip(ran, ran[1:]):
            assert a.end_time <= b.start_time  # one at a time
        assert json.loads((repo / "metrics/train_summary.json").read_text())["status"] == "completed"
        assert yaml.safe_load((repo / "params.yaml").read_text())["training"]["log_every"] == 4

        started = time.time()
        server.terminate()
        server.wait(timeout=30)
        # < 1 s with no run in progress; with one mid-training, 7 s on an idle 2-core machine beside
        # the hog and 17 s once in CI (the other worker busy): Prefect's runner reports the run's
        # cancellation and reloads the flow for its hooks. Its own kill grace is 30 s.
        assert time.time() - started < 30, "flows.serve took more than 30 s to stop on SIGTERM"
        time.sleep(1)
        assert _session_processes(server.pid) == []
    finally:
        for p in hogs:
            p.kill()
        if server.poll() is None:
            os.killpg(server.pid, 9)


def test_a_long_run_is_watchable_while_it_trains(prefect_server, tmp_path):
    """While the train task runs: its progress artifact moves (step / max_steps, tokens/s, ETA), a
    training-log artifact says "in progress", and the trainer's own lines are in the task's log.
    Only this flow run's artifacts and logs count: the session's server holds earlier tests' runs,
    whose last training log may well say "in progress" (a killed run)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        ArtifactFilterKey,
        FlowRunFilter,
        LogFilter,
        LogFilterFlowRunId,
    )
    from prefect.client.schemas.sorting import LogSort

    repo = make_dvc_repo(tmp_path / "repo", {"training": {"max_steps": 24, "log_every": 2, "eval_every": 6}})
    sh(repo, "dvc", "repro", "tokenize")
    env = {
        **os.environ,
        "PREFECT_API_URL": prefect_server.api_url,
        "PYTHONPATH": str(REPO),
        "PICO_FAULT_STEP_SECONDS": "0.5",
        "PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}",
    }
    with get_client(sync_client=True) as client:
        earlier_runs = {r.id for r in client.read_flow_runs(flow_run_filter=FlowRunFilter())}
    proc = subprocess.Popen(
        [sys.executable, "-m", "flows.pipeline", "--repo", str(repo), "--retries", "0"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    seen_progress, seen_logs, training_logs, trainer_lines = {}, set(), {}, {}
    ours = None
    try:
        with get_client(sync_client=True) as client:
            while proc.poll() is None:
                now = time.time()
                if ours is None:
                    ours = next(
                        (
                            r.id
                            for r in client.read_flow_runs(flow_run_filter=FlowRunFilter())
                            if r.id not in earlier_runs
                        ),
                        None,
                    )
                    continue
                for a in client.read_artifacts(
                    artifact_filter=ArtifactFilter(
                        key=ArtifactFilterKey(any_=["pico-train-progress", "pico-training-log"]),
                        flow_run_id=ArtifactFilterFlowRunId(any_=[ours]),
                    )
                ):
                    if a.key == "pico-train-progress":
                        seen_progress.setdefault(a.data, now)
                    elif a.id not in seen_logs:
                        seen_logs.add(a.id)
                        training_logs[a.id] = (now, a.data)
                for log in client.read_logs(
                    log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[ours])),
                    sort=LogSort.TIMESTAMP_DESC,
                    limit=50,
                ):
                    if log.message.startswith("step ") and "tokens/s, ETA" in log.message:
                        trainer_lines.setdefault(log.message, now)
                time.sleep(0.3)
        out = proc.stdout.read()
        assert proc.returncode == 0, out
        assert ours is not None, "the flow run never appeared on the server"
        train_end = latest_flow_task_runs()["train"].end_time.timestamp()
    finally:
        proc.kill()
    during = [v for v, t in seen_progress.items() if t < train_end and v < 100]
    assert len(during) >= 3, seen_progress  # >= 3 updates observed through the API before the task ended
    mid_logs = [md for t, md in training_logs.values() if t < train_end and "**in progress" in md]
    assert mid_logs, training_logs
    assert "| step | tokens | eval loss |" in mid_logs[0], mid_logs  # published after an evaluation
    assert any(t < train_end for t in trainer_lines.values()), trainer_lines
