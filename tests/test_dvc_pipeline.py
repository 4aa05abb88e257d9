"""The real thing: `dvc repro` of dvc.yaml in a temporary git repo, on a tiny config."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pico.config import parse_params
from tests.conftest import REPO, tiny_params

pytestmark = pytest.mark.slow


def sh(cwd: Path, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def dvc_repo(tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("dvcrepo")
    shutil.copytree(REPO / "pico", repo / "pico", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "dvc.yaml", repo / "dvc.yaml")
    params = tiny_params(Path("."), {"train": "data/embedded/dolma/*.json.gz",
                                     "eval": "data/embedded/paloma/*/val.jsonl.gz"})
    params["embedded"] = {"out_dir": "data/embedded", "min_chars": 400}
    params["training"]["max_steps"] = 8
    params["evaluation"]["max_windows_per_source"] = 20
    # every key written out: DVC insists that each param a stage lists exists in params.yaml
    full = parse_params(params).model_dump(mode="json")
    (repo / "params.yaml").write_text(yaml.safe_dump(full, sort_keys=False))
    (repo / ".gitignore").write_text("__pycache__/\n")
    sh(repo, "git", "init", "-q")
    sh(repo, "dvc", "init", "-q")
    sh(repo, "dvc", "config", "core.analytics", "false")
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "init")
    return repo


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


def test_exp_run_changes_only_training_and_after(dvc_repo):
    sh(dvc_repo, "git", "add", "-A")
    sh(dvc_repo, "git", "commit", "-qm", "baseline run")
    out = sh(dvc_repo, "dvc", "exp", "run", "-n", "lower-lr", "-S", "optim.lr=1.0e-3").stdout
    assert "Running stage 'train'" in out and "Running stage 'evaluate'" in out
    for stage in ("embedded_data", "tokenizer", "tokenize"):
        assert f"Running stage '{stage}'" not in out
    assert "belongs to another run" in out  # the old checkpoints are not resumed
    shown = json.loads(sh(dvc_repo, "dvc", "exp", "show", "--json").stdout)
    text = json.dumps(shown)
    assert "lower-lr" in text and "token_perplexity" in text


def test_bad_override_fails_before_any_work(dvc_repo):
    proc = sh(dvc_repo, "dvc", "exp", "run", "-S", "model.dropout=1.5", check=False)
    assert proc.returncode != 0
    assert "model.dropout" in proc.stdout + proc.stderr
    sh(dvc_repo, "git", "checkout", "--", "params.yaml")
