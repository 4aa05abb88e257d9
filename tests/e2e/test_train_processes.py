"""The trainer as a process: SIGKILL mid-run then resume bit-identical; a second trainer on the same run refused, a dead holder's lock taken over."""

import copy
import signal
import subprocess
import sys
import time

import pytest

from pico import checkpoint, train
from pico.config import load_params
from tests.helpers import REPO, assert_same_run, pico, run_folder


def test_sigkill_mid_run_then_resume_is_bit_identical(params_dict, prepared, tmp_path):
    """Kill the training process with SIGKILL mid-run (wherever it is once step 30's checkpoint
    exists), rerun: same weights, optimizer and logs as a clean run (trained in this process)."""
    raw = copy.deepcopy(params_dict)
    raw["training"].update(max_steps=60, checkpoint_every=10, log_every=5, eval_every=20, keep_checkpoints=3)

    clean, killed = run_folder(tmp_path, raw, "clean"), run_folder(tmp_path, raw, "killed")
    train.run(load_params(clean / "params.yaml"), progress=False)

    # steps slowed by sleeping (not computing), so the kill lands mid-run without loading the machine
    proc = pico(killed, "train", PICO_FAULT_STEP_SECONDS="0.05")
    target = killed / "checkpoints" / "step_00000030"
    deadline = time.time() + 300
    while not target.exists():
        assert proc.poll() is None, "training finished before it could be killed"
        assert time.time() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    interrupted_at = checkpoint.read_state(checkpoint.latest_checkpoint(killed / "checkpoints"))["step"]
    assert interrupted_at < 60
    proc = pico(killed, "train")
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    assert "resuming from" in out

    assert_same_run(clean, killed, 60)


def test_a_second_trainer_on_the_same_folder_is_refused_and_a_dead_holder_is_taken_over(prepared, tmp_path):
    from pico.errors import TrainingFailed
    from pico.runlock import RunLock

    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import sys, time; from pico.runlock import RunLock; held = RunLock(sys.argv[1]).acquire(); "
                "print('held', flush=True); time.sleep(60)"
            ),
            str(tmp_path / "checkpoints"),
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(TrainingFailed, match=rf"checkpoints is in use by a running trainer \(PID {holder.pid} on "):
            train.run(prepared, progress=False)
        assert not (tmp_path / "checkpoints").exists()  # refused before any work
    finally:
        holder.kill()
        holder.wait()
    assert train.run(prepared, progress=False).status == "completed"  # the dead holder's lock is taken over
    with RunLock(tmp_path / "checkpoints"):  # and released when the trainer ends
        pass
