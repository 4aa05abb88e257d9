"""Training as several processes (torchrun, DDP over gloo on CPU) follows the same batches as one."""

import copy
import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from pico import train
from pico.config import parse_params
from tests.helpers import REPO, tiny_params, write_params


def train_cli(project: Path, raw: dict, **env) -> subprocess.CompletedProcess:
    write_params(project / "params.yaml", raw)
    return subprocess.run(
        [sys.executable, "-m", "pico.cli", "--params", str(project / "params.yaml"), "train"],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **env},
    )


def variant(params_dict, tmp_path, name, nproc, micro, accum):
    raw = copy.deepcopy(params_dict)
    raw["training"].update(
        nproc=nproc,
        micro_batch_size=micro,
        grad_accum_steps=accum,
        checkpoint_dir=str(tmp_path / name / "checkpoints"),
        metrics_dir=str(tmp_path / name / "metrics"),
    )
    (tmp_path / name).mkdir()
    return raw


def losses(root: Path) -> list[float]:
    with open(root / "metrics/train.csv") as fh:
        return [float(r["loss"]) for r in csv.DictReader(fh)]


def weights(root: Path, step: int = 12):
    return load_file(str(root / f"checkpoints/step_{step:08d}/model.safetensors"))


def assert_close_runs(a: Path, b: Path) -> None:
    assert losses(a) == pytest.approx(losses(b), rel=1e-5)
    wa, wb = weights(a), weights(b)
    for k in wa:
        assert (wa[k] - wb[k]).abs().max().item() < 1e-5, k


def session_data_params(tokenized_once: Path, root: Path, **training) -> dict:
    """Tiny params on the session's tokenized data (``tokenized_once``), writing under ``root``."""
    corpus = tokenized_once / "corpus"
    raw = tiny_params(tokenized_once, {"train": f"{corpus}/dolma/*.json.gz", "eval": f"{corpus}/paloma/*/val.jsonl.gz"})
    raw["training"].update(checkpoint_dir=str(root / "checkpoints"), metrics_dir=str(root / "metrics"), **training)
    return raw


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tokenized_once) -> Path:
    """One process, micro-batch 4 x accumulation 2 (8 rows a step), trained once, in this process
    (its numerics are pico's own: tests/conftest.py): what every multi-process run here must match."""
    root = tmp_path_factory.mktemp("reference")
    raw = session_data_params(tokenized_once, root, nproc=1, micro_batch_size=4, grad_accum_steps=2)
    train.run(parse_params(raw), progress=False)
    return root


def test_two_processes_match_one(params_dict, prepared, tmp_path, reference):
    two = variant(params_dict, tmp_path, "two", nproc=2, micro=4, accum=1)  # same effective batch: 8 rows
    proc = train_cli(tmp_path / "two", two)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "launching 2 processes" in proc.stdout
    summary = json.loads((tmp_path / "two/metrics/train_summary.json").read_text())
    assert summary["processes"] == 2 and summary["weights_identical_across_ranks"] is True
    assert summary["effective_batch_rows"] == 8
    assert_close_runs(reference, tmp_path / "two")


def test_multi_process_checkpoint_resumes_on_one_process(params_dict, prepared, tmp_path, reference):
    two = variant(params_dict, tmp_path, "moved", nproc=2, micro=4, accum=1)
    crashed = train_cli(tmp_path / "moved", two, PICO_FAULT_KILL_AT_STEP="4")  # every rank dies after step 4
    assert crashed.returncode != 0
    assert (tmp_path / "moved/checkpoints/step_00000004").is_dir()
    one = copy.deepcopy(two)
    one["training"].update(nproc=1, micro_batch_size=4, grad_accum_steps=2)
    resumed = train_cli(tmp_path / "moved", one)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resuming from" in resumed.stdout and "step 4" in resumed.stdout
    assert_close_runs(reference, tmp_path / "moved")


@pytest.fixture(scope="module")
def fsdp_crashed(tmp_path_factory, tokenized_once) -> tuple[Path, dict]:
    """fully_shard over 2 processes, every rank killed after step 4's checkpoint: once per module,
    each test resuming a copy of it."""
    root = tmp_path_factory.mktemp("fsdp")
    raw = session_data_params(tokenized_once, root, nproc=2, micro_batch_size=4, grad_accum_steps=1, parallelism="fsdp")
    crashed = train_cli(root, raw, PICO_FAULT_KILL_AT_STEP="4")
    assert crashed.returncode != 0 and (root / "checkpoints/step_00000004").is_dir(), crashed.stdout
    return root, raw


@pytest.mark.parametrize("resume_nproc", [1, 2])
def test_fsdp_matches_one_process_and_resumes_anywhere(fsdp_crashed, tmp_path, reference, resume_nproc):
    """fully_shard over 2 processes: same losses and weights as 1 process; its gathered checkpoint
    resumes on 1 process (plain) or on 2 (sharded again)."""
    crashed, raw = fsdp_crashed
    shutil.copytree(crashed, tmp_path / "fsdp", symlinks=True)
    again = copy.deepcopy(raw)
    again["training"].update(
        checkpoint_dir=str(tmp_path / "fsdp/checkpoints"), metrics_dir=str(tmp_path / "fsdp/metrics")
    )
    if resume_nproc == 1:
        again["training"].update(nproc=1, grad_accum_steps=2)
    done = train_cli(tmp_path / "fsdp", again)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "resuming from" in done.stdout
    if resume_nproc == 2:
        summary = json.loads((tmp_path / "fsdp/metrics/train_summary.json").read_text())
        assert summary["parallelism"] == "fsdp" and summary["processes"] == 2
    assert_close_runs(reference, tmp_path / "fsdp")


def test_sigterm_to_one_rank_stops_every_rank_at_the_same_step_with_one_line(params_dict, prepared, tmp_path):
    """Under torchrun a signal may reach any rank (a node's agent, a scheduler): all ranks agree to stop
    after the same step, rank 0 saves it, and `pico train` ends with one line, not torchrun's report."""
    import re
    import signal
    import time

    raw = variant(params_dict, tmp_path, "two", nproc=2, micro=4, accum=1)
    raw["training"].update(max_steps=200, log_every=1, checkpoint_every=1000, eval_every=1000)
    project = tmp_path / "two"
    write_params(project / "params.yaml", raw)
    proc = subprocess.Popen(
        [sys.executable, "-m", "pico.cli", "--params", str(project / "params.yaml"), "train"],
        cwd=project,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PICO_FAULT_STEP_SECONDS": "0.2"},
    )
    deadline = time.time() + 180
    while not (project / "metrics/train.csv").is_file() or len(losses(project)) < 3:
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read() if proc.poll() is not None else ""
        time.sleep(0.1)

    def rank_one(p: Path) -> bool:
        try:
            return b"LOCAL_RANK=1\0" in (p / "environ").read_bytes() and os.readlink(p / "cwd") == str(project)
        except OSError:
            return False

    rank1 = [p for p in Path("/proc").glob("[0-9]*") if rank_one(p)]
    assert len(rank1) == 1
    os.kill(int(rank1[0].name), signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 143, out
    [line] = [x for x in out.splitlines() if "stopped at step" in x]
    step = int(re.search(r"stopped at step (\d+) of 200", line).group(1))
    assert "Traceback" not in out and "ChildFailedError" not in out, out
    assert (project / f"checkpoints/step_{step:08d}").is_dir()
