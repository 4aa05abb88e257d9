"""The real thing: `dvc repro` of dvc.yaml in a temporary git repo, on a tiny config."""

import json
from pathlib import Path

import pytest
import yaml

from tests.conftest import make_dvc_repo, sh

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def dvc_repo(tmp_path_factory) -> Path:
    return make_dvc_repo(tmp_path_factory.mktemp("dvcrepo"))


def test_repro_runs_every_stage_then_nothing(dvc_repo):
    out = sh(dvc_repro := dvc_repo, "dvc", "repro").stdout
    for stage in ("embedded_data", "tokenizer", "tokenize", "train", "evaluate", "report"):
        assert f"Running stage '{stage}'" in out
    metrics = json.loads((dvc_repro / "metrics/eval.json").read_text())
    assert metrics["step"] == 8
    assert set(metrics["sources"]) == {"pydoc_topics", "stdlib_docstrings"}
    assert metrics["macro"]["bits_per_byte"] > 0
    assert (dvc_repro / "reports/report.md").exists()
    assert (dvc_repro / "reports/plots/loss.png").exists()
    lock = yaml.safe_load((dvc_repro / "dvc.lock").read_text())
    assert set(lock["stages"]) == {"embedded_data", "tokenizer", "tokenize", "train", "evaluate", "report"}
    assert "optim" in lock["stages"]["train"]["params"]["params.yaml"]
    assert "optim" not in lock["stages"]["tokenize"]["params"]["params.yaml"]

    again = sh(dvc_repo, "dvc", "repro").stdout
    assert "Data and pipelines are up to date" in again
    assert "Running stage" not in again


def test_a_clone_elsewhere_writes_the_same_hashes(dvc_repo, tmp_path):
    """Outputs depend on neither where the checkout lives nor when it ran: a clone at another path
    reruns every stage and writes the same dvc.lock and the same report (wall-clock facts live in
    perf.csv, run_info.json and run_info.md, which DVC does not hash)."""
    sh(dvc_repo, "git", "add", "-A")
    sh(dvc_repo, "git", "commit", "-qm", "first run")
    clone = tmp_path / "somewhere" / "else"
    sh(tmp_path, "git", "clone", "-q", str(dvc_repo), str(clone))
    out = sh(clone, "dvc", "repro").stdout
    for stage in ("embedded_data", "tokenizer", "tokenize", "train"):  # their cached outputs are not in git
        assert f"Running stage '{stage}'" in out
    # the retrained checkpoints hash the same, so evaluation and report are already up to date
    assert "Stage 'evaluate' didn't change" in out and "Stage 'report' didn't change" in out
    assert (clone / "dvc.lock").read_text() == (dvc_repo / "dvc.lock").read_text()
    changed = sh(clone, "git", "status", "--porcelain").stdout.split("\n")
    assert sorted(line[3:] for line in changed if line) == ["metrics/perf.csv", "metrics/run_info.json"]
    info = json.loads((clone / "metrics/run_info.json").read_text())
    assert info["machine"]["numerics"] == "portable" and len(info["invocations"]) == 2  # the original + this


def changed_stages(repo) -> set[str]:
    return set(json.loads(sh(repo, "dvc", "status", "--json").stdout))


@pytest.mark.parametrize("module, stages", [
    ("pico/diagnose.py", {"report"}),
    ("pico/monitor.py", {"train"}),
    ("pico/data/tokens_dir.py", {"tokenize", "train", "evaluate"}),
    ("pico/config.py", {"embedded_data", "tokenizer", "tokenize", "train", "evaluate", "report"}),
])
def test_editing_a_module_a_stage_imports_changes_that_stage(dvc_repo, module, stages):
    path = dvc_repo / module
    before = path.read_text()
    path.write_text(before + "\n# an edit\n")
    try:
        assert changed_stages(dvc_repo) == stages
    finally:
        path.write_text(before)
    assert changed_stages(dvc_repo) == set()


def test_exp_run_changes_only_training_and_after(dvc_repo):
    sh(dvc_repo, "git", "add", "-A")
    sh(dvc_repo, "git", "commit", "-qm", "baseline run", "--allow-empty")
    out = sh(dvc_repo, "dvc", "exp", "run", "-n", "lower-lr", "-S", "optim.lr=1.0e-3").stdout
    assert "Running stage 'train'" in out and "Running stage 'evaluate'" in out
    for stage in ("embedded_data", "tokenizer", "tokenize"):
        assert f"Running stage '{stage}'" not in out
    assert "belongs to another run" in out  # the old checkpoints are not resumed
    shown = json.loads(sh(dvc_repo, "dvc", "exp", "show", "--json").stdout)
    text = json.dumps(shown)
    assert "lower-lr" in text and "token_perplexity" in text

    # the training log of the two runs side by side, read from git (HEAD) and the experiment's commit
    sh(dvc_repo, "pico", "compare", "HEAD", "lower-lr", "--out", "compare.md")
    md = (dvc_repo / "compare.md").read_text()
    assert "# Training logs compared: HEAD vs lower-lr" in md
    assert "learning rate 0.003 → 0.001 (−67 %)" in md
    assert md.count("\n## What happened") == 0 and md.count("\n### What happened") == 2


def test_bad_override_fails_before_any_work(dvc_repo):
    proc = sh(dvc_repo, "dvc", "exp", "run", "-S", "model.dropout=1.5", check=False)
    assert proc.returncode != 0
    assert "model.dropout" in proc.stdout + proc.stderr
    sh(dvc_repo, "git", "checkout", "--", "params.yaml")
