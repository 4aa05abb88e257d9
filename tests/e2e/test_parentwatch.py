"""An orphaned trainer stops: killing the `dvc` that started `pico train` (SIGKILL reaches only
DVC) makes the trainer save a checkpoint and exit with one line, instead of training on unseen
while the next `dvc repro` finds the run folder taken."""

import copy
import os
import signal
import subprocess
import sys
import time

from pico import checkpoint
from pico.parentwatch import find_supervisor
from tests.helpers import REPO, write_params


def test_a_process_outside_dvc_watches_nothing():
    assert find_supervisor() is None  # pytest is not DVC: a direct `pico train` is never stopped


def test_the_trainer_stops_with_a_checkpoint_when_its_dvc_dies(params_dict, prepared, tmp_path):
    raw = copy.deepcopy(params_dict)
    # no log line, evaluation or checkpoint due for the whole run: the trainer must notice on its own
    raw["training"].update(max_steps=100_000, log_every=100_000, eval_every=100_000, checkpoint_every=100_000)
    params = write_params(tmp_path / "params.yaml", raw)
    # a stand-in for `dvc repro`: a process named dvc that runs the stage and waits for it
    fake_dvc = tmp_path / "bin" / "dvc"
    fake_dvc.parent.mkdir()
    fake_dvc.write_text(
        f"#!{sys.executable}\nimport subprocess, sys\n"
        f"subprocess.run([sys.executable, '-m', 'pico.cli', '--params', {str(params)!r}, 'train'],"
        f" stdout=open({str(tmp_path / 'train.log')!r}, 'w'), stderr=subprocess.STDOUT)\n"
    )
    fake_dvc.chmod(0o755)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    dvc = subprocess.Popen([str(fake_dvc)], cwd=tmp_path, env=env)
    log = tmp_path / "train.log"
    deadline = time.time() + 120
    while "run fingerprint" not in (log.read_text() if log.exists() else ""):
        assert dvc.poll() is None and time.time() < deadline, log.read_text() if log.exists() else "no log"
        time.sleep(0.1)
    time.sleep(1)
    os.kill(dvc.pid, signal.SIGKILL)  # only DVC dies; the trainer is re-parented
    killed = time.time()
    while time.time() < killed + 30 and "to continue from it" not in log.read_text():
        time.sleep(0.1)
    noticed = time.time() - killed
    dvc.wait()
    text = log.read_text()
    assert noticed < 10, f"noticed after {noticed:.1f} s"  # the watch thread's 2 s, then the step in progress
    assert f"(the dvc process that started this trainer (PID {dvc.pid}) has exited): checkpoint" in text, text
    assert "Traceback" not in text
    saved = checkpoint.latest_checkpoint(tmp_path / "checkpoints")
    assert saved is not None and 0 < checkpoint.read_state(saved)["step"] < 100_000
    # and the trainer process is gone: the run lock is free again
    from pico.runlock import RunLock

    deadline = time.time() + 10
    while True:
        try:
            with RunLock(tmp_path / "checkpoints"):
                break
        except Exception:
            assert time.time() < deadline, "the orphaned trainer still holds the run folder"
            time.sleep(0.2)
