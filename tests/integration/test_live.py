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


def test_live_view_reads_the_repository_files_without_changing_folder(prepared, tmp_path, monkeypatch):
    """The flow renders the training log from the repository's relative paths while its own working
    folder stays where it is (other threads of the flow process share it)."""
    import os
    import shutil

    import yaml

    from flows import artifacts

    train.run(prepared, progress=False)
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copytree(tmp_path / "metrics", repo / "metrics")
    raw = prepared.model_dump(mode="json")
    raw["training"]["metrics_dir"] = "metrics"  # relative, as in a real params.yaml
    (repo / "params.yaml").write_text(yaml.safe_dump(raw))
    published = []
    monkeypatch.setattr(artifacts, "create_markdown_artifact", lambda md, **kw: published.append(md))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    warnings = []
    view = artifacts.LiveView(
        repo, type("Log", (), {"info": lambda *a: None, "warning": lambda *a: warnings.append(a)})()
    )
    view("step 6: eval loss 5.0000, token ppl 148.413, bits/byte 4.0000 (pico per-seq mean 150)")
    assert not warnings and len(published) == 1 and "| 12 | 3,072 |" in published[0]  # at the evaluation's line
    view.close()
    assert len(published) == 2 and "**completed" in published[1]  # and once more with how the stage ended
    assert os.getcwd() == str(elsewhere)
