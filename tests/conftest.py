"""Fixtures for every layer (helpers live in tests/helpers.py). Tests are layered by folder:
tests/unit (no subprocess, no training), tests/integration (in-process tiny runs), tests/e2e (real
dvc, Prefect server, S3, signals, a browser); each item gets its folder's marker."""

from __future__ import annotations

import copy
import os
import shutil
from pathlib import Path

import pytest

from pico import numerics

# before anything imports torch: in-process runs compute as `pico` does in its own processes (the
# portable AVX2 kernels on any x86-64), so the tests may compare the two bit for bit on any CPU
numerics.apply("portable")

from tests.helpers import copy_dvc_repo, kill_started, make_corpus, make_dvc_repo, sh, tiny_params  # noqa: E402

LAYERS = ("unit", "integration", "e2e")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        layer = next((p for p in Path(item.fspath).parts if p in LAYERS), None)
        if layer:
            item.add_marker(layer)


@pytest.fixture
def corpus(tmp_path: Path) -> dict[str, str]:
    return make_corpus(tmp_path / "corpus")


@pytest.fixture
def params_dict(tmp_path: Path, corpus: dict[str, str]) -> dict:
    return copy.deepcopy(tiny_params(tmp_path, corpus))


@pytest.fixture(scope="session")
def tokenized_once(tmp_path_factory, worker_id) -> Path:
    """The synthetic corpus through the tokenizer and tokenize stages, once per test run (shared by
    the xdist workers). Its manifests name this folder's corpus, which has the same documents as
    every test's."""
    from pico.config import parse_params
    from pico.data import tokenize as tokenize_stage
    from pico.data import tokenizer

    def build(root: Path) -> None:
        root.mkdir()
        params = parse_params(tiny_params(root, make_corpus(root / "corpus")))
        tokenizer.run(params)
        tokenize_stage.run(params, progress=False)

    return built_once(run_root(tmp_path_factory, worker_id) / "tokenized", build)


@pytest.fixture
def prepared(params_dict: dict, tmp_path: Path, tokenized_once: Path):
    """Params with the tokenizer and tokenize stages already run: the session's outputs, copied
    into this test's folder (a test may damage them)."""
    from pico.config import parse_params

    for name in ("data/tokenizer", "data/tokens"):
        shutil.copytree(tokenized_once / name, tmp_path / name)
    return parse_params(params_dict)


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


@pytest.fixture(autouse=True)
def _no_leftovers():
    """What a test started with ``tests.helpers.start`` and left running (it failed half-way) is
    killed, so no DVC or trainer holds the next test's locks."""
    yield
    kill_started()


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
        # send what this process still holds (events, logs) while the server is up: afterwards
        # Prefect's workers retry a dead server at exit for over a minute
        from prefect._internal.concurrency.services import QueueService

        QueueService.drain_all(timeout=30)
        os.environ.pop("PREFECT_API_URL", None)
        server.stop()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    from tests.s3server import SeaweedS3

    server = SeaweedS3(tmp_path_factory.mktemp("seaweedfs")).start()
    yield server
    server.stop()


def built_once(folder: Path, build) -> Path:
    """``build(folder)`` once per test run, shared by the xdist workers: the first to ask builds it
    under a lock, the others wait and use it (read only: tests copy it)."""
    import fcntl

    folder.parent.mkdir(parents=True, exist_ok=True)
    done = folder.with_name(folder.name + ".built")
    with open(folder.with_name(folder.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)  # a half-built one, from a worker that died
            build(folder)
            done.touch()
    return folder


def run_root(tmp_path_factory, worker_id: str) -> Path:
    """The folder every xdist worker of this run shares (each worker's own basetemp is inside it)."""
    base = tmp_path_factory.getbasetemp()
    return base if worker_id == "master" else base.parent


@pytest.fixture(scope="session")
def dvc_template(tmp_path_factory, worker_id) -> Path:
    """This project as a git + DVC repository (tiny params on the embedded corpus) with its data
    stages run and committed, once per test run: end-to-end tests start from copies of it."""

    def build(repo: Path) -> None:
        make_dvc_repo(repo)
        sh(repo, "dvc", "repro", "tokenize")
        sh(repo, "git", "add", "-A")
        sh(repo, "git", "commit", "-qm", "data stages")

    return built_once(run_root(tmp_path_factory, worker_id) / "dvc-template" / "repo", build)


@pytest.fixture
def new_repo(dvc_template: Path):
    """``new_repo(path, overrides)``: a copy of the prepared repository, the data stages up to date."""

    def make(path: Path, overrides: dict | None = None) -> Path:
        return copy_dvc_repo(dvc_template, path, overrides)

    return make
