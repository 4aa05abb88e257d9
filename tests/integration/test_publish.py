"""`pico publish`: the hub commit plan of a run in pico-train's protocol (titles pico-analyze parses,
paths, branch), as huggingface_hub's own CommitOperationAdd objects, and a push that resumes by
title and retries. The hub is out of reach here: pushes go to a recording stand-in for HfApi."""

import copy
import json
import re
from types import SimpleNamespace

import pytest
import yaml
from huggingface_hub import CommitOperationAdd

from pico import evaluate, publish, train
from pico.cli import main
from pico.config import parse_params

MODEL_FILES = [
    "README.md",
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "training_config.yaml",
]
DYNAMICS = [
    "learning_dynamics/{s}_activations.pt",
    "learning_dynamics/{s}_gradients.pt",
    "learning_dynamics/{s}_weights.pt",
]


class RecordingHub:
    """What pico publish calls on HfApi, recorded; ``fail`` makes the next create_commit calls raise."""

    def __init__(self, existing=(), fail=0):
        self.commits = [SimpleNamespace(title=t) for t in existing]
        self.pushed, self.fail, self.calls = [], fail, []

    def create_repo(self, repo_id, private, exist_ok):
        self.calls.append(("create_repo", repo_id, private))

    def create_branch(self, repo_id, branch, exist_ok):
        self.calls.append(("create_branch", repo_id, branch))

    def list_repo_commits(self, repo_id, revision):
        return list(reversed(self.commits))  # newest first, as the hub lists them

    def create_commit(self, repo_id, operations, commit_message, revision):
        if self.fail:
            self.fail -= 1
            raise OSError("503 Service Unavailable")
        assert all(isinstance(op, CommitOperationAdd) for op in operations)
        self.pushed.append((revision, commit_message, sorted(op.path_in_repo for op in operations)))
        self.commits.append(SimpleNamespace(title=commit_message))


@pytest.fixture(scope="module")
def published_run(tmp_path_factory):
    """A 12-step run with three checkpoints (4, 8, 12) and learning dynamics, evaluated."""
    from pico.data import tokenize as tokenize_stage
    from pico.data import tokenizer
    from tests.helpers import make_corpus, tiny_params

    root = tmp_path_factory.mktemp("publish")
    raw = tiny_params(root, make_corpus(root / "corpus"))
    raw["training"]["keep_checkpoints"] = 3
    raw["learning_dynamics"] = {"enabled": True, "val_windows": 8}
    params = parse_params(raw)
    tokenizer.run(params)
    tokenize_stage.run(params, progress=False)
    train.run(params, progress=False)
    evaluate.run(params)
    return params


def expected_plan():
    plan = [
        (f"Saving Learning Dynamics Data ({s}) -- Step 0", [p.format(s=s) for p in DYNAMICS]) for s in ("train", "val")
    ]
    for step in (4, 8, 12):
        files = MODEL_FILES if step == 12 else [f for f in MODEL_FILES if f != "README.md"]
        plan.append((f"Saving HF Model -- Step {step}", files))
        for s in ("train", "val") if step < 12 else ("val",):  # after the last step: val only, as pico-train
            plan.append((f"Saving Learning Dynamics Data ({s}) -- Step {step}", [p.format(s=s) for p in DYNAMICS]))
    return plan


def test_the_commit_plan_is_pico_trains(published_run, tmp_path):
    commits = publish.commit_plan(
        published_run,
        publish.run_folder(published_run),
        tmp_path,
        json.loads(open(published_run.evaluation.out).read()),
    )
    assert [(c.title, c.paths()) for c in commits] == expected_plan()
    # pico-analyze's remote mode finds steps with exactly this pattern (src/utils/data.py)
    found = [
        int(m.group(1))
        for c in commits
        if (m := re.search(r"Saving Learning Dynamics Data \(val\) -- Step (\d+)", c.title))
    ]
    assert found == [0, 4, 8, 12]
    last = {op.path_in_repo: op for op in commits[-2].operations}
    config = yaml.safe_load(last["training_config.yaml"].path_or_fileobj)
    assert config["model"]["d_model"] == 24 and config["checkpointing"]["run_name"] == "test run"
    card = last["README.md"].path_or_fileobj.decode()
    assert card.index("token perplexity") < card.index("pico-train's Paloma number")
    assert "| alpha |" in card and "library_name: transformers" in card


def test_push_creates_the_branch_resumes_by_title_and_retries(published_run, monkeypatch):
    monkeypatch.setattr(publish.time, "sleep", lambda s: None)
    titles = [t for t, _ in expected_plan()]
    hub = RecordingHub(existing=titles[:3], fail=1)  # a publish that crashed after three commits
    publish.publish(published_run, "me/pico-tiny", None, private=True, dry_run=False, api=hub)
    assert ("create_repo", "me/pico-tiny", True) in hub.calls and (
        "create_branch",
        "me/pico-tiny",
        "test-run",
    ) in hub.calls
    assert [title for _, title, _ in hub.pushed] == titles[3:]  # the rest, in order, the first after one retry
    assert {branch for branch, _, _ in hub.pushed} == {"test-run"}
    again = RecordingHub(existing=titles)
    publish.publish(published_run, "me/pico-tiny", None, private=False, dry_run=False, api=again)
    assert again.pushed == []  # nothing twice


def test_the_command_prints_the_plan(published_run, tmp_path, capsys):
    p = copy.deepcopy(published_run.model_dump(mode="json"))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p))
    assert main(["--params", str(tmp_path / "params.yaml"), "publish", "me/pico-tiny", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "me/pico-tiny@test-run: Saving HF Model -- Step 12: README.md, config.json" in out
    assert "planned: 10 commits" in out


def test_branch_names_are_git_refs():
    assert publish.branch_name("pico-decoder-tiny (embedded default)") == "pico-decoder-tiny-embedded-default"
    assert publish.branch_name("my run") == "my-run"


def hub_params(params_dict, **hub):
    p = copy.deepcopy(params_dict)
    p["training"]["hub"] = {"repo_id": "me/live", **hub}
    return parse_params(p)


def test_training_hub_pushes_each_checkpoint_beside_training(params_dict, prepared, monkeypatch, capsys):
    hub = RecordingHub()
    monkeypatch.setattr(publish, "hub_api", lambda: hub)
    summary = train.run(hub_params(params_dict), progress=False)  # 12 steps, a checkpoint every 4, keep 2
    assert summary.status == "completed"
    titles = [title for _, title, _ in hub.pushed]
    assert len(titles) == len(set(titles))  # nothing pushed twice
    # step 4 is pushed unless pruned first (keep 2); 8 and 12 always are, oldest first
    assert titles[-1] == "Saving HF Model -- Step 12" and "Saving HF Model -- Step 8" in titles
    assert {b for b, _, _ in hub.pushed} == {"test-run"} and ("create_repo", "me/live", True) in hub.calls
    assert "hub: me/live@test-run: Saving HF Model -- Step 12" in capsys.readouterr().out


def test_a_failing_hub_never_stops_training_and_the_next_start_pushes_what_is_missing(
    params_dict, prepared, monkeypatch, capsys
):
    monkeypatch.setattr(publish.time, "sleep", lambda s: None)
    down = RecordingHub(fail=10_000)
    monkeypatch.setattr(publish, "hub_api", lambda: down)
    assert train.run(hub_params(params_dict), progress=False).status == "completed"
    out = capsys.readouterr().out
    assert down.pushed == [] and "hub: pushing to me/live@test-run failed" in out and "training goes on" in out
    up = RecordingHub()
    monkeypatch.setattr(publish, "hub_api", lambda: up)
    train.run(hub_params(params_dict), progress=False)  # the run has ended: nothing to train, the push catches up
    assert [title for _, title, _ in up.pushed] == ["Saving HF Model -- Step 8", "Saving HF Model -- Step 12"]
