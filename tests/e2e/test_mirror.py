"""Losing the machine: a `dvc repro` mirroring to a folder (a mounted volume) or to S3 (SeaweedFS) is
SIGKILLed right after its second checkpoint; a fresh clone at another path, with an empty run store
and checkpoint folder, resumes from the mirror with `dvc repro` and ends with the weights and metric
files of an uninterrupted run, byte for byte. A file in the mirror's prefix that the run did not
write stays."""

import json
import subprocess
from pathlib import Path

import fsspec
import pytest

from pico.mirror import MANIFEST
from tests.helpers import copy_dvc_repo, sh, sh_env


def run(repo: Path, *cmd: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=repo, env=sh_env(PYTHONPATH=str(repo), **env), capture_output=True, text=True)


@pytest.mark.parametrize("where", ["folder", "s3"])
def test_a_run_resumes_on_a_fresh_machine_from_its_mirror(dvc_template, tmp_path, request, where):
    if where == "s3":
        server = request.getfixturevalue("s3_server")
        fs, url, s3 = server.filesystem(), "s3://pico-mirror/runs", server.env()
        if not fs.exists("pico-mirror"):
            fs.mkdir("pico-mirror")
        root = "pico-mirror/runs"
    else:
        fs, root, s3 = fsspec.filesystem("file"), str(tmp_path / "volume" / "runs"), {}
        fs.makedirs(root)
        url = root
    fs.pipe_file(f"{root}/README.txt", b"the team's notes: not the run's")
    training = {"max_steps": 12, "checkpoint_every": 4, "keep_checkpoints": 2, "mirror": url}
    first = copy_dvc_repo(dvc_template, tmp_path / "machine-a" / "repo", {"training": training})

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
    assert fs.cat_file(f"{root}/README.txt") == b"the team's notes: not the run's"
    mirrored = f"{root}/{fingerprint}"
    objects = fs.find(mirrored)  # objects: SeaweedFS may list emptied folders
    kept = sorted({p[len(mirrored) + 1 :].split("/")[0] for p in objects})
    assert kept == ["metrics", "step_00000008", "step_00000012"], objects
    assert fs.exists(f"{mirrored}/step_00000012/{MANIFEST}")
