"""Preemption: SIGTERM or SIGINT to a trainer finishes the step, saves it, exits with one line, and
the rerun trains no step twice and ends bit-identical to an uninterrupted run (pico.preempt)."""

import copy
import signal
import subprocess
import sys
import time
from pathlib import Path

from pico import checkpoint, train
from pico.config import load_params
from pico.preempt import StopRequest
from tests.helpers import REPO, assert_same_run, pico, run_folder


def test_the_first_signal_is_recorded_and_a_second_changes_nothing(capsys):
    stop = StopRequest(grace_s=60)
    stop.request(signal.SIGTERM)
    stop.request(signal.SIGINT)
    stop.uninstall()
    assert (stop.name, stop.exit_code) == ("SIGTERM", 143)
    err = capsys.readouterr().err.splitlines()
    assert err == ["SIGINT again: already stopping (the checkpoint being written is not cut short)"]


def test_the_deadline_exits_when_the_step_does_not_finish_in_time():
    code = (
        "import signal, time\nfrom pico.preempt import StopRequest\n"
        "StopRequest(0.5, lambda: 'the rerun resumes from X').install()\n"
        "print('ready', flush=True)\ntime.sleep(30)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline() == "ready\n"
    started = time.time()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 143 and time.time() - started < 5
    assert proc.stderr.read().splitlines()[-1] == (
        "could not finish the step and write a checkpoint within training.stop_grace_s=0.5 s after SIGTERM; "
        "exiting without one: the rerun resumes from X"
    )


def _train(project: Path, slow: float = 0.0) -> subprocess.Popen:
    return pico(project, "train", PICO_FAULT_STEP_SECONDS=str(slow))


def _logged_steps(project: Path) -> int:
    csv = project / "metrics/train.csv"
    return len(csv.read_text().splitlines()) - 1 if csv.exists() else 0


def test_sigterm_and_sigint_between_checkpoints_save_the_step_and_the_rerun_is_bit_identical(
    params_dict, prepared, tmp_path
):
    raw = copy.deepcopy(params_dict)
    # one periodic checkpoint mid-run (step 16); the signals land between checkpoints
    raw["training"].update(max_steps=24, checkpoint_every=16, log_every=1, eval_every=8, keep_checkpoints=2)
    clean, stopped = run_folder(tmp_path, raw, "clean"), run_folder(tmp_path, raw, "stopped")
    train.run(load_params(clean / "params.yaml"), progress=False)  # the reference, in this process

    resumed_from = []
    for sig, at_least, code in ((signal.SIGTERM, 5, 143), (signal.SIGINT, 18, 130)):
        proc = _train(stopped, slow=0.3)
        deadline = time.time() + 120
        while _logged_steps(stopped) < at_least:
            assert proc.poll() is None and time.time() < deadline, proc.stdout.read() if proc.poll() is not None else ""
            time.sleep(0.05)
        sent = time.time()
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == code and time.time() - sent < 60, out
        assert "Traceback" not in out and out.count("train: stopped at step") == 1, out
        assert "KeyboardInterrupt" not in out and "received" not in out
        step = checkpoint.read_state(checkpoint.latest_checkpoint(stopped / "checkpoints"))["step"]
        assert f"train: stopped at step {step} of 24 ({sig.name}): checkpoint " in out
        assert _logged_steps(stopped) == step  # every trained step is logged and saved: none to redo
        resumed_from.append(step)
    proc = _train(stopped)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    assert f"(step {resumed_from[-1]}," in out  # "resuming from …/step_000000NN (step NN, …)": no step trained twice

    # the interim checkpoints are gone once newer ones exist: the same folders as the clean run
    names = [p.name for p in checkpoint.list_checkpoints(stopped / "checkpoints")]
    assert (
        names
        == [p.name for p in checkpoint.list_checkpoints(clean / "checkpoints")]
        == ["step_00000016", "step_00000024"]
    )
    assert_same_run(clean, stopped, 24)
