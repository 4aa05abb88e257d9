"""The real thing: `dvc repro` of dvc.yaml in a temporary git repo, on a tiny config."""

import json
import shutil
from pathlib import Path

import pytest
import yaml

from tests.helpers import make_dvc_repo, sh


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
    perf.csv, run_info.json, headline.json and run_info.md, which DVC does not hash)."""
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
    # wall-clock files only (headline.json: its wall_h)
    assert sorted(line[3:] for line in changed if line) == [
        "metrics/headline.json",
        "metrics/perf.csv",
        "metrics/run_info.json",
    ]
    info = json.loads((clone / "metrics/run_info.json").read_text())
    assert info["machine"]["numerics"] == "portable" and len(info["invocations"]) == 2  # the original + this


def test_reproduce_says_identical_then_names_a_planted_difference(dvc_repo, tmp_path, prefect_server):
    """`pico reproduce HEAD` reruns the committed run in a scratch clone: every headline metric is
    identical, with the seed noise measured beside it. Then a commit whose logged numbers came from
    elsewhere (planted: one loss changed) is *not reproduced* — through the Prefect flow, which fails
    and publishes the verdicts — and the step is named."""
    import tempfile

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    from flows.reproduce import NotReproduced, reproduce_flow

    scratch_before = set(Path(tempfile.gettempdir()).glob("pico-reproduce-*"))
    proc = sh(
        dvc_repo, "pico", "reproduce", "HEAD", "--noise-seeds", "1", "--out", str(tmp_path / "same.md"), check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    md = (tmp_path / "same.md").read_text()
    assert md.splitlines()[0].endswith(": reproduced"), md
    assert md.count("| **identical** |") == 7 and "**First difference**: none" in md
    noise = [line.split("|")[5].strip() for line in md.splitlines() if line.startswith("| macro token perplexity")]
    assert noise and float(noise[0]) > 0  # another seed moves the metric: the noise scale is measured
    assert "numerics portable" in md

    csv_path = dvc_repo / "metrics/train.csv"
    original = csv_path.read_text()
    rows = original.splitlines()
    step4 = next(i for i, r in enumerate(rows) if r.startswith("4,"))
    cells = rows[step4].split(",")
    cells[1] = repr(float(cells[1]) + 1e-6)
    rows[step4] = ",".join(cells)
    csv_path.write_text("\n".join(rows) + "\n")
    sh(dvc_repo, "git", "commit", "-qam", "numbers logged on another machine")
    try:
        with pytest.raises(NotReproduced, match="first logged training loss that differs is at step 4"):
            reproduce_flow("HEAD", str(dvc_repo), from_stage="train", noise_seeds=0)
        with get_client(sync_client=True) as client:
            md = client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["pico-reproduce"])),
                sort=ArtifactSort.CREATED_DESC,
                limit=1,
            )[0].data
        assert "NOT reproduced" in md.splitlines()[0]
        assert "the first logged training loss that differs is at step 4" in md
        assert "| training loss, every logged step (largest difference): step 4 |" in md
        assert md.count("**not reproduced**") == 1 and md.count("| **identical** |") == 6
    finally:
        sh(dvc_repo, "git", "reset", "-q", "--hard", "HEAD~1")
    assert set(Path(tempfile.gettempdir()).glob("pico-reproduce-*")) == scratch_before  # scratch removed
    # the flow's report went to the default place, outside every stage's outputs
    assert sh(dvc_repo, "git", "status", "--porcelain").stdout == "?? reproductions/\n"
    [written] = (dvc_repo / "reproductions").glob("HEAD-*.md")
    assert "NOT reproduced" in written.read_text()
    shutil.rmtree(dvc_repo / "reproductions")


def changed_stages(repo) -> set[str]:
    return set(json.loads(sh(repo, "dvc", "status", "--json").stdout))


@pytest.mark.parametrize(
    "module, stages",
    [
        ("pico/diagnose.py", {"report"}),
        ("pico/monitor.py", {"train"}),
        ("pico/data/tokens_dir.py", {"tokenize", "train", "evaluate"}),
        ("pico/config.py", {"embedded_data", "tokenizer", "tokenize", "train", "evaluate", "report"}),
    ],
)
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
    assert "it stays in the run store" in out and "starts at step 0" in out  # the old run is not resumed
    shown = json.loads(sh(dvc_repo, "dvc", "exp", "show", "--json").stdout)
    text = json.dumps(shown)
    assert "lower-lr" in text and '"ppl"' in text

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
