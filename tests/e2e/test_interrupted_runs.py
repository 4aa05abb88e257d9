"""A run survives what interrupts it, by every route a user takes: `dvc exp run` (whose forced
checkout resets the checkpoint folder), a killed `dvc repro` continued by `dvc exp run`, queued
experiments whose worker died, and SIGTERM to DVC's process group or to DVC alone (a killed
`pico preset`: test_experiments.py).
Each rerun continues from the newest checkpoint in the run store (pico.runstore), training no step
twice. One repository, committed after a 20-step run; the tests build on each other in order."""

import os
import re
import signal
import time
from pathlib import Path

import pytest

from tests.helpers import (
    copy_dvc_repo,
    exp_refs,
    kill_group,
    resumed_at,
    sh,
    start,
    start_queue,
    store_steps,
    wait_for_queue,
    wait_for_step,
)


@pytest.fixture(scope="module")
def repo(tmp_path_factory, dvc_template) -> Path:
    root = copy_dvc_repo(
        dvc_template,
        tmp_path_factory.mktemp("interrupted") / "repo",
        {"training": {"max_steps": 20, "checkpoint_every": 10, "log_every": 5, "eval_every": 10}},
    )
    sh(root, "dvc", "repro")
    sh(root, "git", "add", "-A")
    sh(root, "git", "commit", "-qm", "a 20-step run")
    return root


def test_a_killed_exp_run_with_a_changed_plan_resumes_from_its_newest_checkpoint(repo):
    """The issue's case: `dvc exp run -S training.max_steps=40` SIGKILLed after step 30's checkpoint
    (DVC's forced checkout of the next `dvc exp run` resets checkpoints/ to the 20-step run)."""
    cmd = ("dvc", "exp", "run", "-S", "training.max_steps=40")
    proc = start(repo, *cmd)
    wait_for_step(repo, proc, 30)
    kill_group(proc)
    proc = start(repo, *cmd, step_seconds=0)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    assert resumed_at(out) == 30
    assert "train: completed at step 40" in out
    sh(repo, "git", "checkout", "--", "params.yaml", "dvc.lock")


def test_a_killed_dvc_repro_continued_by_dvc_exp_run(repo):
    params = repo / "params.yaml"
    params.write_text(params.read_text().replace("max_steps: 20", "max_steps: 60", 1))
    proc = start(repo, "dvc", "repro")
    wait_for_step(repo, proc, 50)
    kill_group(proc)
    proc = start(repo, "dvc", "exp", "run", step_seconds=0)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    assert resumed_at(out) == 50


def test_sigterm_to_the_dvc_repro_process_group_saves_the_step_it_was_on(repo):
    params = repo / "params.yaml"
    params.write_text(params.read_text().replace("max_steps: 60", "max_steps: 90", 1))
    proc = start(repo, "dvc", "repro", step_seconds=0.3)
    wait_for_step(repo, proc, 70)
    time.sleep(1.0)  # between checkpoints: 71, 72 or 73
    sent = time.time()
    os.killpg(proc.pid, signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert time.time() - sent < 60
    [line] = [x for x in out.splitlines() if x.startswith("train: stopped")]
    stopped = int(re.match(r"train: stopped at step (\d+) of 90 \(SIGTERM\): checkpoint ", line).group(1))
    assert 70 < stopped < 80 and max(store_steps(repo)) == stopped and "Traceback" not in out
    proc = start(repo, "dvc", "repro", step_seconds=0)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    assert resumed_at(out) == stopped  # no step trained twice


def test_sigterm_to_dvc_alone_is_noticed_within_seconds(repo):
    params = repo / "params.yaml"
    params.write_text(params.read_text().replace("max_steps: 90", "max_steps: 120", 1))
    proc = start(repo, "dvc", "repro", step_seconds=0.3)
    wait_for_step(repo, proc, 100)
    time.sleep(1.0)
    sent = time.time()
    os.kill(proc.pid, signal.SIGTERM)  # DVC dies; its trainer is not signalled
    out, _ = proc.communicate(timeout=120)  # the pipe closes when the trainer, its last writer, exits
    assert time.time() - sent < 30
    [line] = [x for x in out.splitlines() if x.startswith("train: stopped")]
    assert f"(the dvc process that started this trainer (PID {proc.pid}) has exited)" in line
    stopped = int(re.match(r"train: stopped at step (\d+)", line).group(1))
    assert stopped > 100 and max(store_steps(repo)) == stopped

    # a pipeline upgrade that changes nothing a run computes: DVC reruns the stage, the run continues
    config, plan = repo / "pico/config.py", repo / "pico/plan.py"
    config.write_text(config.read_text() + "\n# a comment from the upgrade\n")
    plan.write_text(plan.read_text() + "\n\ndef unused_helper():\n    return 42\n")
    proc = start(repo, "dvc", "repro", step_seconds=0)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    assert resumed_at(out) == stopped and "changed training code" not in out and "showed run" not in out
    sh(repo, "git", "checkout", "--", "params.yaml", "pico/config.py", "pico/plan.py")


def _queue_processes(repo: Path) -> list[int]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().decode(errors="replace").split("\0")
            cwd = os.readlink(cmdline.parent / "cwd")
        except OSError:
            continue
        if cwd.startswith(str(repo)) and any(a in argv for a in ("queue", "exp", "train")):
            found.append(int(cmdline.parent.name))
    return found


def test_a_queued_experiment_whose_every_process_was_killed_continues_when_requeued(repo):
    queue = ("dvc", "exp", "run", "--queue", "-S", "training.max_steps=70", "-S", "optim.lr=1.0e-3")
    sh(repo, *queue)
    start_queue(repo, PYTHONPATH=str(repo), PICO_FAULT_STEP_SECONDS="0.3")  # the worker inherits the slowdown
    wait_for_step(repo, None, 20, timeout=300)  # in the repository's store, from the queue's copy of it
    for pid in _queue_processes(repo):  # the worker, the executor, DVC and the trainer: all gone
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    stale = sh(repo, "pico", "queue", check=False)
    assert stale.returncode == 1 and "DVC lists it as running, but its process" in stale.stdout, stale.stdout
    before = exp_refs(repo)
    sh(repo, *queue)
    start_queue(repo)
    status = wait_for_queue(repo, before, done=1)
    names = [line.split()[1] for line in status.splitlines() if "Success" in line]
    assert names, status
    log = sh(repo, "dvc", "queue", "logs", names[-1]).stdout
    assert resumed_at(log) >= 20, log
    # the dead task's row: said, then cleaned; no row is left "Running" with another run's numbers
    cleaned = sh(repo, "pico", "queue", "--clean")
    assert "removed" in cleaned.stdout and "Running" not in sh(repo, "dvc", "queue", "status").stdout
    assert "Running" not in sh(repo, "dvc", "exp", "show", "--no-pager").stdout
    assert sh(repo, "pico", "queue").returncode == 0
