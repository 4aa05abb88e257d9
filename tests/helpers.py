"""What the tests share besides fixtures (those live in conftest.py): a synthetic Dolma/Paloma
corpus and tiny params, git + DVC repositories of this project, run folders, training subprocesses
and the comparison that says two runs ended bit-identical."""

from __future__ import annotations

import copy
import gzip
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import torch
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


def sh_env(**extra: str) -> dict[str, str]:
    """The environment of the commands a test runs: this interpreter's scripts first, a fixed git
    identity, no analytics, one thread each (two workers share two cores)."""
    return {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "DVC_NO_ANALYTICS": "1",
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
        "OMP_NUM_THREADS": "1",
        **extra,
    }


def sh(cwd: Path, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=sh_env(), capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def start_queue(repo: Path, **env: str) -> None:
    """``dvc queue start``, back once the worker is spawned. The worker inherits the command's
    output: read through a pipe (as ``sh`` reads), the call would last until the worker exits, its
    tasks done and 10 s idle after them. ``env``: extra variables, which the worker inherits."""
    with tempfile.TemporaryFile() as out:
        proc = subprocess.run(["dvc", "queue", "start"], cwd=repo, env=sh_env(**env), stdout=out, stderr=out)
        out.seek(0)
        assert proc.returncode == 0, f"dvc queue start failed ({proc.returncode}):\n{out.read().decode()}"


def make_dvc_repo(repo: Path, overrides: dict | None = None) -> Path:
    """A git + DVC repo holding this project's dvc.yaml and code, with a tiny config on the embedded corpus."""
    shutil.copytree(REPO / "pico", repo / "pico", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "dvc.yaml", repo / "dvc.yaml")
    params = tiny_params(
        Path("."), {"train": "data/embedded/dolma/*.json.gz", "eval": "data/embedded/paloma/*/val.jsonl.gz"}
    )
    # 3 % held out: ~1,000 evaluation windows, not 3,000 (every end-to-end run evaluates them all)
    params["embedded"] = {"out_dir": "data/embedded", "min_chars": 400, "eval_fraction": 0.03}
    params["training"]["max_steps"] = 8
    params["evaluation"]["max_windows_per_source"] = 20
    params["evaluation"]["batch_size"] = 64  # the evaluate stage scores every window: fewer, larger batches
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


def copy_dvc_repo(template: Path, repo: Path, overrides: dict | None = None) -> Path:
    """A copy of a repository ``make_dvc_repo`` made (git history, DVC cache and outputs included),
    with ``overrides`` ({section: {key: value}}) written into params.yaml and committed."""
    shutil.copytree(template, repo, symlinks=True)
    if overrides:
        params = yaml.safe_load((repo / "params.yaml").read_text())
        for section, values in overrides.items():
            params.setdefault(section, {}).update(values)
        full = parse_params(params).model_dump(mode="json")
        (repo / "params.yaml").write_text(yaml.safe_dump(full, sort_keys=False))
        sh(repo, "git", "commit", "-qam", "overrides")
    return repo


def copy_presets(repo: Path, max_steps: int = 60) -> None:
    """The project's presets (presets/*.yaml) into ``repo``, each shrunk to ``max_steps`` steps with
    proportionate warmup and intervals: the lr, batch and regularisation they set stay as they are
    (the end-to-end tests need the mechanism and the differences between presets, not 200 steps)."""
    (repo / "presets").mkdir()
    for path in sorted((REPO / "presets").glob("*.yaml")):
        preset = yaml.safe_load(path.read_text())
        o = preset["overrides"]
        o.update(
            {
                "training.max_steps": max_steps,
                "optim.warmup_steps": min(o.get("optim.warmup_steps", 0), max_steps // 4),
                "training.eval_every": max_steps // 3,
                "training.checkpoint_every": 10,
            }
        )
        (repo / "presets" / path.name).write_text(yaml.safe_dump(preset, sort_keys=False))


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


def tiny_model_and_optimizer(seed=0):
    """A two-layer model, its AdamW and a schedule, three steps in: state worth checkpointing."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (s + 1))
    for _ in range(3):
        model(torch.randn(5, 4)).sum().backward()
        opt.step()
        sched.step()
    return model, opt, sched


def save_checkpoint(root, step, fingerprint="run-a", keep=3, name=None):
    """A checkpoint of the tiny model at ``step`` in ``root`` (pico.checkpoint's format)."""
    from pico import checkpoint

    model, opt, sched = tiny_model_and_optimizer()
    state = {"fingerprint": fingerprint, "position": step * 8, "history": {}}
    return checkpoint.save(root, step, model, opt, sched, state, keep, name=name)


def latest_flow_task_runs():
    """Task runs of the most recently started flow run, by name. Only runs that started: START_TIME
    sorts by start time or else expected start, so a future run a served deployment scheduled
    (test_scheduled_runs_...) would otherwise come first."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, FlowRunFilterStartTime
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(start_time=FlowRunFilterStartTime(is_null_=False)),
            sort=FlowRunSort.START_TIME_DESC,
            limit=1,
        )[0]
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run.id])))
        return {r.name: r for r in runs}


def exp_refs(repo: Path) -> set[str]:
    """The experiments DVC has saved (git refs under refs/exps): a git process, ~5 ms."""
    out = subprocess.run(["git", "for-each-ref", "--format=%(refname)", "refs/exps"], cwd=repo, capture_output=True)
    return set(re.findall(r"^refs/exps/[0-9a-f]{2}/[0-9a-f]{38}/\S+$", out.stdout.decode(), re.M))


def wait_for_queue(repo: Path, before: set[str], done: int, timeout: float = 400) -> str:
    """Wait until ``done`` queued experiments have been saved since ``before`` (``exp_refs``), then
    return ``dvc queue status``. Refs are watched, not the queue: each ``dvc queue status`` costs
    ~1.5 s of CPU, so the queue is asked every 30 s only, to fail early on a failed task."""
    deadline, asked = time.time() + timeout, time.time()
    while len(exp_refs(repo) - before) < done:
        assert time.time() < deadline, sh(repo, "dvc", "queue", "status").stdout
        if time.time() - asked > 30:
            status, asked = sh(repo, "dvc", "queue", "status").stdout, time.time()
            assert "Failed" not in status, status
        time.sleep(0.5)
    return sh(repo, "dvc", "queue", "status").stdout


def prefect_events(name: str, since: datetime, timeout: float = 30.0) -> list[dict]:
    """Events of one name that occurred since ``since``, from the server's events API (they arrive
    asynchronously; the session's server also holds earlier tests' events)."""
    from prefect.client.orchestration import get_client

    deadline = time.time() + timeout
    while True:
        with get_client(sync_client=True) as client:
            response = client.request(
                "POST",
                "/events/filter",
                json={"filter": {"event": {"name": [name]}, "occurred": {"since": since.isoformat()}}},
            )
        found = response.json()["events"]
        if found or time.time() > deadline:
            return found
        time.sleep(1)


# ---- commands interrupted mid-run (e2e: SIGKILL, SIGTERM, a killed queue) ----
STARTED: list[subprocess.Popen] = []


def start(repo: Path, *cmd: str, step_seconds: float = 0.15) -> subprocess.Popen:
    """A command in its own process group (as a shell runs a job), its training slowed down; the
    test module's fixture calls ``kill_started`` after each test."""
    # the repository's own pico/ runs, not the checkout's (an editable install)
    env = sh_env(PYTHONPATH=str(repo), PICO_FAULT_STEP_SECONDS=str(step_seconds))
    proc = subprocess.Popen(
        cmd, cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    STARTED.append(proc)
    return proc


def kill_started() -> None:
    """What ``start`` started and is still running, SIGKILLed: a test that failed half-way leaves no
    DVC or trainer holding the next test's locks."""
    while STARTED:
        proc = STARTED.pop()
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()


def store_steps(repo: Path, since: float = 0.0) -> list[int]:
    """Steps of the checkpoints in the repository's run store (written since ``since``); a folder
    pruned while this reads it is passed over."""
    from pico import checkpoint

    found = []
    for p in (repo / ".pico/runs").glob("*/step_*"):
        try:
            if p.stat().st_mtime >= since:
                found.append(checkpoint.read_state(p)["step"])
        except (OSError, ValueError):
            continue
    return sorted(found)


def wait_for_step(repo: Path, proc: subprocess.Popen | None, step: int, timeout: float = 240) -> None:
    """Until a checkpoint of ``step`` is written into the run store (``proc`` still alive)."""
    started, deadline = time.time(), time.time() + timeout
    while step not in store_steps(repo, started):
        assert proc is None or proc.poll() is None, proc.stdout.read()
        assert time.time() < deadline, f"no new step_{step} in the run store"
        time.sleep(0.05)


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL to the command's process group, back once every process in it is gone: the others
    (DVC, the trainer) are reaped by init a moment after the leader, and until then DVC's lock,
    which names them, reports the repository busy to the next command."""
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 30
    while True:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        assert time.time() < deadline, f"process group {proc.pid} still has processes 30 s after SIGKILL"
        time.sleep(0.05)


def resumed_at(out: str) -> int:
    """The step a trainer's output says it resumed from (the last such line)."""
    found = re.findall(r"resuming from \S+ \(step (\d+),", out)
    assert found, out
    return int(found[-1])
