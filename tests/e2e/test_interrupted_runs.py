"""A run survives what interrupts it, by every route a user takes: `dvc exp run` (whose forced
checkout resets the checkpoint folder), a killed `dvc repro` continued by `dvc exp run`, queued
experiments whose worker died, `pico preset`, and SIGTERM to DVC's process group or to DVC alone.
Each rerun continues from the newest checkpoint in the run store (pico.runstore), training no step
twice. One repository, committed after a 20-step run; the tests build on each other in order."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pico import checkpoint
from tests.helpers import copy_dvc_repo, copy_presets, exp_refs, sh, start_queue, wait_for_queue


@pytest.fixture(scope="module")
def repo(tmp_path_factory, dvc_template) -> Path:
    root = copy_dvc_repo(
        dvc_template,
        tmp_path_factory.mktemp("interrupted") / "repo",
        {"training": {"max_steps": 20, "checkpoint_every": 10, "log_every": 5, "eval_every": 10}},
    )
    copy_presets(root)
    sh(root, "dvc", "repro")
    sh(root, "git", "add", "-A")
    sh(root, "git", "commit", "-qm", "a 20-step run")
    return root


STARTED: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def _no_leftovers():
    """A test that fails half-way leaves no DVC or trainer running to hold the next test's locks."""
    yield
    while STARTED:
        proc = STARTED.pop()
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()


def _start(repo: Path, *cmd: str, step_seconds: float = 0.15) -> subprocess.Popen:
    """A command in its own process group (as a shell runs a job), its training slowed down."""
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(repo),  # the repository's own pico/ runs, not the checkout's (an editable install)
        "DVC_NO_ANALYTICS": "1",
        "OMP_NUM_THREADS": "1",
        "PICO_FAULT_STEP_SECONDS": str(step_seconds),
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
    }
    proc = subprocess.Popen(
        cmd, cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    STARTED.append(proc)
    return proc


def _store_steps(repo: Path, since: float = 0.0) -> list[int]:
    """Steps of the checkpoints in the repository's run store (written since ``since``); a folder
    pruned while this reads it is passed over."""
    found = []
    for p in (repo / ".pico/runs").glob("*/step_*"):
        try:
            if p.stat().st_mtime >= since:
                found.append(checkpoint.read_state(p)["step"])
        except (OSError, ValueError):
            continue
    return sorted(found)


def _wait_for_step(repo: Path, proc: subprocess.Popen | None, step: int, timeout: float = 240) -> None:
    started, deadline = time.time(), time.time() + timeout
    while step not in _store_steps(repo, started):
        assert proc is None or proc.poll() is None, proc.stdout.read()
        assert time.time() < deadline, f"no new step_{step} in the run store"
        time.sleep(0.05)


def _kill_group(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _resumed_at(out: str) -> int:
    found = re.findall(r"resuming from \S+ \(step (\d+),", out)
    assert found, out
    return int(found[-1])


def test_a_killed_exp_run_with_a_changed_plan_resumes_from_its_newest_checkpoint(repo):
    """The issue's case: `dvc exp run -S training.max_steps=40` SIGKILLed after step 30's checkpoint
    (DVC's forced checkout of the next `dvc exp run` resets checkpoints/ to the 20-step run)."""
    cmd = ("dvc", "exp", "run", "-S", "training.max_steps=40")
    proc = _start(repo, *cmd)
    _wait_for_step(repo, proc, 30)
    _kill_group(proc)
    proc = _start(repo, *cmd, step_seconds=0)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    assert _resumed_at(out) == 30
    assert "train: completed at step 40" in out
    sh(repo, "git", "checkout", "--", "params.yaml", "dvc.lock")


def test_a_killed_dvc_repro_continued_by_dvc_exp_run(repo):
    params = repo / "params.yaml"
    params.write_text(params.read_text().replace("max_steps: 20", "max_steps: 60", 1))
    proc = _start(repo, "dvc", "repro")
    _wait_for_step(repo, proc, 50)
    _kill_group(proc)
    proc = _start(repo, "dvc", "exp", "run", step_seconds=0)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    assert _resumed_at(out) == 50


def test_sigterm_to_the_dvc_repro_process_group_saves_the_step_it_was_on(repo):
    params = repo / "params.yaml"
    params.write_text(params.read_text().replace("max_steps: 60", "max_steps: 90", 1))
    proc = _start(repo, "dvc", "repro", step_seconds=0.3)
    _wait_for_step(repo, proc, 70)
    time.sleep(1.0)  # between checkpoints: 71, 72 or 73
    sent = time.time()
    os.killpg(proc.pid, signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert time.time() - sent < 60
    [line] = [x for x in out.splitlines() if x.startswith("train: stopped")]
    stopped = int(re.match(r"train: stopped at step (\d+) of 90 \(SIGTERM\): checkpoint ", line).group(1))
    assert 70 < stopped < 80 and max(_store_steps(repo)) == stopped and "Traceback" not in out
    proc = _start(repo, "dvc", "repro", step_seconds=0)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    assert _resumed_at(out) == stopped  # no step trained twice


def test_sigterm_to_dvc_alone_is_noticed_within_seconds(repo):
    params = repo / "params.yaml"
    params.write_text(params.read_text().replace("max_steps: 90", "max_steps: 120", 1))
    proc = _start(repo, "dvc", "repro", step_seconds=0.3)
    _wait_for_step(repo, proc, 100)
    time.sleep(1.0)
    sent = time.time()
    os.kill(proc.pid, signal.SIGTERM)  # DVC dies; its trainer is not signalled
    out, _ = proc.communicate(timeout=120)  # the pipe closes when the trainer, its last writer, exits
    assert time.time() - sent < 30
    [line] = [x for x in out.splitlines() if x.startswith("train: stopped")]
    assert f"(the dvc process that started this trainer (PID {proc.pid}) has exited)" in line
    stopped = int(re.match(r"train: stopped at step (\d+)", line).group(1))
    assert stopped > 100 and max(_store_steps(repo)) == stopped

    # a pipeline upgrade that changes nothing a run computes: DVC reruns the stage, the run continues
    config, plan = repo / "pico/config.py", repo / "pico/plan.py"
    config.write_text(config.read_text() + "\n# a comment from the upgrade\n")
    plan.write_text(plan.read_text() + "\n\ndef unused_helper():\n    return 42\n")
    proc = _start(repo, "dvc", "repro", step_seconds=0)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    assert _resumed_at(out) == stopped and "changed training code" not in out and "showed run" not in out
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
    _wait_for_step(repo, None, 20, timeout=300)  # in the repository's store, from the queue's copy of it
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
    assert _resumed_at(log) >= 20, log
    # the dead task's row: said, then cleaned; no row is left "Running" with another run's numbers
    cleaned = sh(repo, "pico", "queue", "--clean")
    assert "removed" in cleaned.stdout and "Running" not in sh(repo, "dvc", "queue", "status").stdout
    assert "Running" not in sh(repo, "dvc", "exp", "show", "--no-pager").stdout
    assert sh(repo, "pico", "queue").returncode == 0


def test_a_killed_pico_preset_continues(repo):
    proc = _start(repo, "pico", "preset", "v1", step_seconds=0.05)
    _wait_for_step(repo, proc, 50)
    _kill_group(proc)
    proc = _start(repo, "pico", "preset", "v1", step_seconds=0)
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, out
    assert _resumed_at(out) >= 50
