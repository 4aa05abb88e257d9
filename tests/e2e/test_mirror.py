"""Losing the machine: a `dvc repro` mirroring to S3 (SeaweedFS) is SIGKILLed right after its
second checkpoint; a fresh clone at another path, with an empty run store and checkpoint folder,
resumes from the mirror with `dvc repro` and ends with the weights and metric files of an
uninterrupted run, byte for byte. A file in the mirror's prefix that the run did not write stays."""

import json
import subprocess
from pathlib import Path

from pico.mirror import MANIFEST
from tests.helpers import copy_dvc_repo, sh, sh_env


def run(repo: Path, *cmd: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=repo, env=sh_env(PYTHONPATH=str(repo), **env), capture_output=True, text=True)


def test_a_run_resumes_on_a_fresh_machine_from_its_s3_mirror(dvc_template, s3_server, tmp_path):
    fs = s3_server.filesystem()
    if not fs.exists("pico-mirror"):
        fs.mkdir("pico-mirror")
    fs.pipe_file("pico-mirror/runs/README.txt", b"the team's notes: not the run's")
    training = {"max_steps": 12, "checkpoint_every": 4, "keep_checkpoints": 2, "mirror": "s3://pico-mirror/runs"}
    first = copy_dvc_repo(dvc_template, tmp_path / "machine-a" / "repo", {"training": training})
    s3 = s3_server.env()

    killed = run(first, "dvc", "repro", PICO_FAULT_KILL_AT_STEP="8", **s3)
    assert killed.returncode != 0 and "step 8" in killed.stdout + killed.stderr

    # another machine: a clone elsewhere, the data from the DVC cache, no run store, no checkpoints
    clone = tmp_path / "machine-b" / "work" / "repo"
    sh(tmp_path, "git", "clone", "-q", str(first), str(clone))
    sh(clone, "dvc", "cache", "dir", "--local", str(first / ".dvc" / "cache"))
    sh(clone, "dvc", "checkout", "-q", "tokenize")
    assert not (clone / ".pico").exists() and not (clone / "checkpoints").exists()
    resumed = run(clone, "dvc", "repro", **s3)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "mirror: downloaded step_0000000" in resumed.stdout and "(verified)" in resumed.stdout
    assert "resuming from" in resumed.stdout

    # the same run, never interrupted, without a mirror
    plain = copy_dvc_repo(dvc_template, tmp_path / "plain" / "repo", {"training": {**training, "mirror": None}})
    assert run(plain, "pico", "train").returncode == 0
    for name in ("checkpoints/step_00000012/model.safetensors", "metrics/train.csv", "metrics/eval_history.csv"):
        assert (clone / name).read_bytes() == (plain / name).read_bytes(), name
    fingerprint = json.loads((clone / "checkpoints/step_00000012/state.json").read_text())["fingerprint"]
    assert fs.cat_file("pico-mirror/runs/README.txt") == b"the team's notes: not the run's"
    objects = fs.find(f"pico-mirror/runs/{fingerprint}")  # objects: SeaweedFS may list emptied folders
    kept = sorted({p.split("/")[3] for p in objects})
    assert kept == ["metrics", "step_00000008", "step_00000012"], objects
    assert fs.exists(f"pico-mirror/runs/{fingerprint}/step_00000012/{MANIFEST}")
