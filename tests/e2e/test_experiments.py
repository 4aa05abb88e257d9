"""Experiments and reproducibility on a real DVC repo: presets v1/v2 as named experiments (one killed
and continued), an ablation ladder of queued experiments (killed and resumed), a fork at a step,
bad overrides, `dvc exp apply` + repro, and an S3 remote (SeaweedFS) round trip."""

import csv
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.helpers import (
    copy_dvc_repo,
    copy_presets,
    exp_refs,
    kill_group,
    resumed_at,
    sh,
    sh_env,
    start,
    wait_for_step,
)

METRICS = ("metrics/eval.json", "metrics/train_summary.json", "metrics/train.csv", "metrics/eval_history.csv")


@pytest.fixture(scope="module")
def repo(tmp_path_factory, dvc_template) -> Path:
    root = copy_dvc_repo(dvc_template, tmp_path_factory.mktemp("exps") / "repo")
    copy_presets(root)
    sh(root, "dvc", "repro")
    sh(root, "git", "add", "-A")
    sh(root, "git", "commit", "-qm", "baseline run")
    return root


def _commit(repo: Path, ref: str) -> str:
    return subprocess.run(["git", "rev-parse", ref], cwd=repo, capture_output=True, text=True).stdout.strip()


def exps(repo: Path) -> dict[str, dict]:
    """Experiment name -> its params and metrics, from `dvc exp show --json`."""
    out = {}
    for commit in json.loads(sh(repo, "dvc", "exp", "show", "--json").stdout):
        for exp in commit.get("experiments") or []:
            for rev in exp["revs"]:
                data = rev["data"]
                out[rev.get("name") or data["rev"]] = {
                    "params": data["params"]["params.yaml"]["data"],
                    "metrics": {k: v["data"] for k, v in data["metrics"].items()},
                }
    return out


def test_presets_v1_and_v2_side_by_side(repo):
    """Two presets as named experiments, compared; v1 first killed mid-run (its process group
    SIGKILLed after step 50's checkpoint), and `pico preset v1` again continues from there."""
    killed = start(repo, "pico", "preset", "v1", step_seconds=0.05)
    wait_for_step(repo, killed, 50)
    kill_group(killed)
    for name in ("v1", "v2"):
        out = sh(repo, "pico", "preset", name).stdout
        assert "Running stage 'train'" in out and "Running stage 'tokenize'" not in out
        assert name == "v2" or resumed_at(out) >= 50, out
    table = exps(repo)
    v1, v2 = table["v1"], table["v2"]
    assert v1["params"]["optim"]["lr"] == 3.0e-4 and v2["params"]["optim"]["lr"] == 1.0e-4
    assert v1["params"]["training"]["grad_accum_steps"] == 4 and v2["params"]["model"]["dropout"] == 0.1
    for run in (v1, v2):  # the headline only: per-source detail lives in files DVC does not list as metrics
        assert set(run["metrics"]) == {"metrics/headline.json"}
        head = run["metrics"]["metrics/headline.json"]
        assert head["status"] == "completed" and head["ppl"] > 1 and head["tokens"] > 0 and head["wall_h"] > 0
    diff = sh(repo, "dvc", "metrics", "diff", "v1", "v2").stdout
    assert len(diff.splitlines()) <= 12, diff
    # compared by tokens seen, written outside every stage's outputs (dvc status stays clean)
    out = sh(repo, "pico", "compare", "v1", "v2").stdout
    md = (repo / "comparisons/v1-vs-v2/compare.md").read_text()
    assert "comparisons/v1-vs-v2/compare.md" in out
    assert "learning rate 0.0003 → 0.0001 (−67 %)" in md and "effective batch 4 → 16 rows per step (4×)" in md
    assert "| wall time (planned → actual) |" in md and "](plots/loss.png)" in md
    assert (repo / "comparisons/v1-vs-v2/plots/loss.png").stat().st_size > 1000
    assert "changed" not in sh(repo, "dvc", "status").stdout


def test_an_ablation_ladder_killed_midway_finishes_without_rerunning_its_finished_rungs(repo, prefect_server, capsys):
    """`pico ablate` over a change with a large effect (lr x10) and one with none (the logging
    interval): queued DVC experiments, two seeds; the waiting command killed after two runs and the
    ladder continued by the Prefect flow (the same entry point), which shows its progress and the
    report; the verdicts and their spread in the report and the CSV."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    from flows.ablate import ablate_flow

    sh(repo, "git", "checkout", "--", "params.yaml")
    raw = yaml.safe_load((repo / "params.yaml").read_text())
    (repo / "A.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    raw["optim"]["lr"] *= 10
    raw["training"]["log_every"] *= 2
    (repo / "B.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    before = exp_refs(repo)
    first = subprocess.Popen(
        ["pico", "ablate", "A.yaml", "B.yaml"], cwd=repo, env=sh_env(), start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.time() + 300
    while len(exp_refs(repo) - before) < 2:
        assert first.poll() is None and time.time() < deadline, "the ladder ended or stalled before two runs"
        time.sleep(0.5)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    finished = {ref: _commit(repo, ref) for ref in exp_refs(repo) - before}
    capsys.readouterr()
    ablate_flow("A.yaml", "B.yaml", repo=str(repo))
    out = capsys.readouterr().out
    assert "the run HEAD holds" in out  # A's first seed is the committed baseline run
    assert all(_commit(repo, ref) == sha for ref, sha in finished.items())  # not rerun
    assert not any(f"queueing {ref.rsplit('/', 1)[-1]}" in out for ref in finished), out
    table = list(csv.DictReader((repo / "reports/ablation-A-B.csv").open()))
    verdict = {(r["change"], r["metric"]): r for r in table}
    lr = verdict[("lr", "token perplexity (macro)")]
    assert lr["verdict"] in ("helps", "hurts") and float(lr["noise_margin"]) > 0, lr
    quiet = verdict[("log_every", "token perplexity (macro)")]
    assert quiet["verdict"] == "inside seed noise", quiet
    md = (repo / "reports/ablation-A-B.md").read_text()
    assert "| lr | token perplexity (macro) |" in md and "seed spread of these runs" in md
    assert "## The forecast, back-tested on every run of the ladder" in md and "final eval loss" in md
    assert "- **Priced before it ran**: 7 runs to train of 8:" in md and "over its 7 runs" in md  # HEAD's reused
    with get_client(sync_client=True) as client:
        [report, bar] = [
            client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
                sort=ArtifactSort.CREATED_DESC,
                limit=1,
            )[0]
            for key in ("pico-ablation", "pico-ablation-progress")
        ]
    assert report.data == md and bar.data == 100.0, bar
    assert re.match(r"(\d+) of \1 experiments of the ladder A.yaml -> B.yaml finished", bar.description), bar


def test_a_fork_with_no_change_ends_with_its_parents_weights(repo, tmp_path):
    sh(repo, "git", "checkout", "--", "params.yaml")
    parent = json.loads(sh(repo, "git", "show", "HEAD:metrics/train_summary.json").stdout)
    sh(repo, "pico", "fork", "HEAD", "--step", "4")
    child = json.loads((repo / "metrics/train_summary.json").read_text())
    assert child["forked_from"] == {"fingerprint": parent["fingerprint"], "step": 4, "changes": []}
    store = repo / ".pico/runs"
    want = load_file(store / parent["fingerprint"] / "step_00000008/model.safetensors")
    got = load_file(store / child["fingerprint"] / "step_00000008/model.safetensors")
    assert all(torch.equal(want[k], got[k]) for k in want)
    assert "restarted from .pico/runs/" in (repo / "reports/report.md").read_text()
    sh(repo, "pico", "compare", "HEAD", "HEAD-fork4", "--out", str(tmp_path / "compare.md"))
    lineage = next(r for r in (tmp_path / "compare.md").read_text().splitlines() if r.startswith("| run (lineage)"))
    want = f"`{child['fingerprint']}`, forked from `{parent['fingerprint']}` at step 4 (no change) |"
    assert lineage.endswith(want), lineage
    sh(repo, "git", "checkout", "--", "params.yaml")
    missing = sh(repo, "pico", "fork", "HEAD", "--step", "3", check=False)
    assert missing.returncode == 1 and "no checkpoint at step 3" in missing.stderr and "kept: 4, 8" in missing.stderr


@pytest.mark.parametrize(
    "override, message",
    [
        ("optim.lr=-1", "optim.lr: Input should be greater than 0 (got -1)"),
        ("model.dropout=1.5", "model.dropout: Input should be less than 1 (got 1.5)"),
        ("+optim.learning_rate=0.1", "optim.learning_rate: unknown key"),
    ],
)
def test_bad_overrides_fail_before_any_work(repo, override, message):
    kept = [
        "metrics/train.csv",
        "metrics/eval_history.csv",
        "metrics/perf.csv",
        "metrics/train_summary.json",
        "metrics/eval.json",
    ]
    before = {m: (repo / m).read_bytes() for m in kept}
    proc = sh(repo, "dvc", "exp", "run", "-S", override, check=False)
    sh(repo, "git", "checkout", "--", "params.yaml")
    assert proc.returncode != 0
    assert message in proc.stdout + proc.stderr
    assert "Running stage 'train'" not in proc.stdout or "error" in proc.stdout + proc.stderr
    # the committed run's files (uncached: DVC could not restore them) are all still there
    assert {m: (repo / m).read_bytes() for m in kept} == before


def test_exp_apply_then_repro_reproduces_the_metrics(repo):
    sh(repo, "dvc", "exp", "apply", "v1")
    before = {m: (repo / m).read_bytes() for m in METRICS}
    final = f"checkpoints/step_{yaml.safe_load((repo / 'params.yaml').read_text())['training']['max_steps']:08d}"
    model = (repo / final / "model.safetensors").read_bytes()
    shutil.rmtree(repo / "checkpoints")
    for m in METRICS:
        (repo / m).unlink()
    out = sh(repo, "dvc", "repro").stdout
    assert "Running stage 'train'" in out
    assert {m: (repo / m).read_bytes() for m in METRICS} == before  # same params + data => same numbers
    assert (repo / final / "model.safetensors").read_bytes() == model
    sh(repo, "git", "checkout", "--", ".")
    sh(repo, "dvc", "checkout", "--force")


def _cache_is_sound(repo: Path) -> None:
    """Every object in DVC's cache hashes to its name: nothing half-written."""
    for path in (repo / ".dvc/cache/files/md5").glob("*/*"):
        if path.suffix == ".dir":
            continue
        digest = hashlib.md5(path.read_bytes()).hexdigest()
        assert digest == path.parent.name + path.name.split(".")[0], path


def test_s3_remote_round_trip_and_failures(repo, s3_server, tmp_path, monkeypatch):
    fs = s3_server.filesystem()
    if not fs.exists("dvc-remote"):
        fs.mkdir("dvc-remote")
    sh(repo, "dvc", "remote", "add", "-f", "-d", "store", "s3://dvc-remote/pico")
    sh(repo, "dvc", "remote", "modify", "store", "endpointurl", s3_server.endpoint)

    def set_secret(value: str) -> None:
        sh(repo, "dvc", "remote", "modify", "--local", "store", "secret_access_key", value)

    # credentials only in the untracked local config
    sh(repo, "dvc", "remote", "modify", "--local", "store", "access_key_id", s3_server.env()["AWS_ACCESS_KEY_ID"])
    set_secret(s3_server.env()["AWS_SECRET_ACCESS_KEY"])
    assert "secret" not in (repo / ".dvc/config").read_text()
    sh(repo, "git", "add", ".dvc/config")
    sh(repo, "git", "commit", "-qm", "remote")

    # wrong credentials: a clear error, nothing pushed
    set_secret("wrong")
    bad = sh(repo, "dvc", "push", check=False)
    assert bad.returncode != 0
    assert "Forbidden" in bad.stderr and "403" in bad.stderr  # DVC names the refusal
    set_secret(s3_server.env()["AWS_SECRET_ACCESS_KEY"])

    sh(repo, "dvc", "push")

    # a clean clone + dvc pull + dvc repro reruns nothing and shows the same numbers
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(repo), str(clone)], check=True)
    shutil.copy(repo / ".dvc/config.local", clone / ".dvc/config.local")
    sh(clone, "dvc", "pull")
    out = sh(clone, "dvc", "repro").stdout
    assert "Running stage" not in out and "up to date" in out
    assert (clone / "metrics/eval.json").read_text() == (repo / "metrics/eval.json").read_text()
    _cache_is_sound(clone)

    # the server goes away mid-pull: a clear failure after retries, and a cache with no half objects
    again = tmp_path / "again"
    subprocess.run(["git", "clone", "-q", str(repo), str(again)], check=True)
    shutil.copy(repo / ".dvc/config.local", again / ".dvc/config.local")
    pull = subprocess.Popen(
        ["dvc", "pull"],
        cwd=again,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={
            **os.environ,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            "AWS_MAX_ATTEMPTS": "1",
        },
    )  # one attempt per request (botocore's default is 5, with backoff): the test waits for the failure
    time.sleep(0.3)
    s3_server.stop()
    try:
        output, _ = pull.communicate(timeout=300)
        if pull.returncode == 0:
            pytest.skip("the pull finished before the server stopped")  # nothing to judge then
        assert "ERROR" in output and ("failed to pull" in output or "Connect" in output or "connect" in output), output
        _cache_is_sound(again)
    finally:
        s3_server.start()
