"""The training log the Prefect flow publishes while a run trains (pico/live.py)."""

import json

from pico import train
from pico.live import training_log
from pico.train_metrics import SUMMARY_JSON


def test_training_log_says_in_progress_with_the_verdict_and_the_newest_evaluations(prepared, tmp_path, monkeypatch):
    train.run(prepared, progress=False)
    monkeypatch.chdir(tmp_path)
    done = training_log(prepared)
    assert "**completed — " in done and "| step | tokens | eval loss |" in done
    assert "| 12 | 3,072 |" in done  # step 12 x 256 tokens per step
    path = tmp_path / "metrics" / SUMMARY_JSON
    summary = json.loads(path.read_text())
    path.write_text(json.dumps({**summary, "status": "running", "step": 6, "eta_s": 125.0}))
    live = training_log(prepared)
    first = [line for line in live.splitlines() if line.startswith("**")][0]
    assert first.startswith("**in progress — ") and "in progress at step 6 of 12, ETA 2m05s" in first
    assert "gradient norm" in live and "(clipped at 1)" in live
