"""Shared fixtures: a synthetic Dolma/Paloma corpus and tiny params, all made by the tests."""

from __future__ import annotations

import copy
import gzip
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pico.config import parse_params

REPO = Path(__file__).resolve().parents[1]

WORDS = (
    "the model reads text and learns to predict the next token of each document while the loss "
    "falls slowly as training goes on with small batches of data from many sources such as code "
    "books news papers and forums where people write about science history music food travel"
).split()


def sentence(rng: random.Random, n: int | None = None) -> str:
    words = [rng.choice(WORDS) for _ in range(n or rng.randint(5, 14))]
    return " ".join(words).capitalize() + "."


def document(rng: random.Random, sentences: int | None = None) -> str:
    return " ".join(sentence(rng) for _ in range(sentences or rng.randint(2, 8)))


def write_jsonl_gz(path: Path, records: list, raw_lines: list[bytes] | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.GzipFile(path, "wb", mtime=0) as fh:
        for r in records:
            fh.write((json.dumps(r) + "\n").encode())
        for line in raw_lines or []:
            fh.write(line)
    return path


def make_corpus(root: Path, n_train: int = 240, n_eval: int = 24, seed: int = 0) -> dict[str, str]:
    """Dolma shards under root/dolma and two Paloma sources under root/paloma."""
    rng = random.Random(seed)
    for shard in range(3):
        docs = [
            {
                "id": f"d{shard}-{i}",
                "text": document(rng),
                "source": "synthetic",
                "added": "2026-01-01T00:00:00Z",
                "metadata": {"shard": shard},
            }
            for i in range(n_train // 3)
        ]
        write_jsonl_gz(root / "dolma" / f"part-{shard:04d}.json.gz", docs)
    for source in ("alpha", "beta"):
        docs = [
            {
                "id": f"{source}-{i}",
                "text": document(rng, 12 if i % 5 == 0 else None),
                "source": source,
                "subdomain": f"{source}-{i % 2}",
            }
            for i in range(n_eval)
        ]
        write_jsonl_gz(root / "paloma" / source / "val.jsonl.gz", docs)
    return {"train": str(root / "dolma" / "*.json.gz"), "eval": str(root / "paloma" / "*" / "val.jsonl.gz")}


def tiny_params(root: Path, corpus: dict[str, str] | None = None) -> dict:
    """A config that trains in seconds: 2 layers, d_model 24, seq_len 32, vocab ~300."""
    corpus = corpus or {"train": "data/corpus/dolma/*.json.gz", "eval": "data/corpus/paloma/*/val.jsonl.gz"}
    return {
        "embedded": {"out_dir": str(root / "data/embedded")},
        "data": {
            "train_paths": [corpus["train"]],
            "eval_paths": [corpus["eval"]],
            "seq_len": 32,
            "tokens_dir": str(root / "data/tokens"),
            "encode_batch_size": 64,
        },
        "tokenizer": {"source": "train", "vocab_size": 300, "out_dir": str(root / "data/tokenizer")},
        "model": {"preset": "tiny", "d_model": 24, "hidden_dim": 48, "n_layers": 2, "max_seq_len": 64},
        "optim": {
            "lr": 3.0e-3,
            "betas": [0.9, 0.95],
            "warmup_steps": 3,
            "schedule": "cosine",
            "max_grad_norm": 1.0,
            "weight_decay": 0.01,
        },
        "training": {
            "max_steps": 12,
            "micro_batch_size": 4,
            "grad_accum_steps": 2,
            "log_every": 2,
            "eval_every": 6,
            "checkpoint_every": 4,
            "keep_checkpoints": 2,
            "checkpoint_dir": str(root / "checkpoints"),
            "metrics_dir": str(root / "metrics"),
            "num_threads": 1,
        },
        "evaluation": {
            "batch_size": 8,
            "out": str(root / "metrics/eval.json"),
            "domains_out": str(root / "metrics/eval_domains.csv"),
        },
        "report": {"out_dir": str(root / "reports"), "run_name": "test run"},
    }


def write_params(path: Path, params: dict) -> Path:
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


@pytest.fixture
def corpus(tmp_path: Path) -> dict[str, str]:
    return make_corpus(tmp_path / "corpus")


@pytest.fixture
def params_dict(tmp_path: Path, corpus: dict[str, str]) -> dict:
    return copy.deepcopy(tiny_params(tmp_path, corpus))


@pytest.fixture
def prepared(params_dict: dict):
    """Params with the tokenizer and tokenize stages already run."""
    from pico.config import parse_params
    from pico.data import tokenize as tokenize_stage
    from pico.data import tokenizer

    params = parse_params(params_dict)
    tokenizer.run(params)
    tokenize_stage.run(params, progress=False)
    return params


# Prefect: no telemetry, and a generous start-up time for any temporary server on 2 cores
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("DO_NOT_TRACK", "1")


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    # nothing in the tests may reach a hub
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")
    monkeypatch.setenv("DO_NOT_TRACK", "1")
    os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory):
    """One real server for the session (start-up takes ~20 s on 2 cores); flows in this process use it."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from tests.prefect_server import PrefectServer

    server = PrefectServer(tmp_path_factory.mktemp("prefect")).start()
    os.environ["PREFECT_API_URL"] = server.api_url  # for the subprocesses too
    try:
        with temporary_settings({PREFECT_API_URL: server.api_url}):
            yield server
    finally:
        os.environ.pop("PREFECT_API_URL", None)
        server.stop()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    from tests.s3server import SeaweedS3

    server = SeaweedS3(tmp_path_factory.mktemp("seaweedfs")).start()
    yield server
    server.stop()


def sh(cwd: Path, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "DVC_NO_ANALYTICS": "1",
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
        "OMP_NUM_THREADS": "1",
    }
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def make_dvc_repo(repo: Path, overrides: dict | None = None) -> Path:
    """A git + DVC repo holding this project's dvc.yaml and code, with a tiny config on the embedded corpus."""
    shutil.copytree(REPO / "pico", repo / "pico", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "dvc.yaml", repo / "dvc.yaml")
    params = tiny_params(
        Path("."), {"train": "data/embedded/dolma/*.json.gz", "eval": "data/embedded/paloma/*/val.jsonl.gz"}
    )
    params["embedded"] = {"out_dir": "data/embedded", "min_chars": 400}
    params["training"]["max_steps"] = 8
    params["evaluation"]["max_windows_per_source"] = 20
    for section, values in (overrides or {}).items():
        params.setdefault(section, {}).update(values)
    # every key written out: DVC insists that each param a stage lists exists in params.yaml
    full = parse_params(params).model_dump(mode="json")
    (repo / "params.yaml").write_text(yaml.safe_dump(full, sort_keys=False))
    shutil.copy(REPO / ".gitignore", repo / ".gitignore")  # the project's: run locks, moved-aside checkpoints
    sh(repo, "git", "init", "-q")
    sh(repo, "dvc", "init", "-q")
    sh(repo, "dvc", "config", "core.analytics", "false")
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "init")
    return repo
