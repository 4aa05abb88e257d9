"""Helpers the tests share (fixtures stay in conftest.py): run folders, training subprocesses and the
comparison that says two runs ended bit-identical."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import torch

from tests.conftest import REPO, write_params


def run_folder(root: Path, raw: dict, name: str) -> Path:
    """``root/name`` with params whose checkpoints and metrics live inside it."""
    p = copy.deepcopy(raw)
    p["training"]["checkpoint_dir"] = str(root / name / "checkpoints")
    p["training"]["metrics_dir"] = str(root / name / "metrics")
    (root / name).mkdir()
    write_params(root / name / "params.yaml", p)
    return root / name


def pico(project: Path, *args: str, **env: str) -> subprocess.Popen:
    """``pico --params project/params.yaml ARGS`` as a subprocess running this checkout's code."""
    full = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **env}
    return subprocess.Popen(
        [sys.executable, "-m", "pico.cli", "--params", str(project / "params.yaml"), *args],
        cwd=project,
        env=full,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def assert_same_run(a: Path, b: Path, step: int) -> None:
    """Two run folders ended bit-identical: the final weights, the optimizer moments and the metric files."""
    ca, cb = a / f"checkpoints/step_{step:08d}", b / f"checkpoints/step_{step:08d}"
    assert (ca / "model.safetensors").read_bytes() == (cb / "model.safetensors").read_bytes()
    oa, ob = torch.load(ca / "trainer.pt", weights_only=True), torch.load(cb / "trainer.pt", weights_only=True)
    for sa, sb in zip(oa["optimizer"]["state"].values(), ob["optimizer"]["state"].values()):
        assert torch.equal(sa["exp_avg"], sb["exp_avg"]) and torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"])
    for name in ("train.csv", "eval_history.csv", "train_summary.json"):
        assert (a / "metrics" / name).read_text() == (b / "metrics" / name).read_text(), name
