"""``pico publish``: a run on the Hugging Face hub the way pico-train publishes one, so pico's tools
(pico-analyze's remote mode, ``from_pretrained(repo, revision=run)``) read it unchanged.

pico-train (``checkpointing.save_to_hf``) pushes to the branch named after the run: each checkpoint
as a commit titled ``Saving HF Model -- Step N`` (the model folder, with the tokenizer and
``training_config.yaml`` beside it) and its learning dynamics as ``Saving Learning Dynamics Data
(train|val) -- Step N`` (``learning_dynamics/{split}_{activations,weights,gradients}.pt``);
pico-analyze finds steps by parsing exactly those titles. Here, per checkpoint in the run store:

- ``Saving HF Model -- Step N``: the folder ``pico export-hf`` writes (a plain ``LlamaForCausalLM``:
  ``config.json``, ``model.safetensors``, ``generation_config.json``, ``tokenizer.json``,
  ``tokenizer_config.json``), ``training_config.yaml`` in pico-train's shape (pico.dynamics), and
  ``README.md``: a model card with the honest figures first (token-weighted perplexity and bits per
  byte per source), pico-train's number beside them, labelled, the data and the params;
- ``Saving Learning Dynamics Data (train|val) -- Step N`` for each split captured at step N.

The plan is built first (``commit_plan``) and shown with ``--dry-run``. Pushing creates the repo and
the branch if needed, reads the branch's commit titles and pushes only the commits missing there, so
a publish that crashed continues where it stopped; each commit is retried. A run can be published
while it trains (it reads the run store, never writes it) and again later for its new checkpoints.
"""

from __future__ import annotations

import json
import re
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import CommitOperationAdd

from pico import checkpoint, dynamics, export_hf, runstore
from pico.config import Params
from pico.model import ModelDims

MODEL_TITLE = "Saving HF Model -- Step {step}"
DYNAMICS_TITLE = "Saving Learning Dynamics Data ({split}) -- Step {step}"


@dataclass
class Commit:
    """One hub commit; its files are prepared (a checkpoint exported) only when it is pushed or shown."""

    title: str
    make: Callable[[], list[CommitOperationAdd]]
    _operations: list[CommitOperationAdd] | None = None

    @property
    def operations(self) -> list[CommitOperationAdd]:
        if self._operations is None:
            self._operations = self.make()
        return self._operations

    def paths(self) -> list[str]:
        return sorted(op.path_in_repo for op in self.operations)


def run_folder(params: Params, fingerprint: str | None = None) -> Path:
    """The run to publish: the one ``checkpoint_dir`` shows (or ``fingerprint``), in the run store."""
    if fingerprint is None:
        shown = runstore.shown_run(Path(params.training.checkpoint_dir))
        if not shown:
            raise FileNotFoundError(f"{params.training.checkpoint_dir} shows no run; train first (`dvc repro`)")
        fingerprint = shown[0]
    folder = runstore.run_dir(params, fingerprint)
    if not checkpoint.list_checkpoints(folder):
        raise FileNotFoundError(f"{folder}: no checkpoint of run {fingerprint} in the run store")
    return folder


def commit_plan(params: Params, folder: Path, staging: Path, eval_result: dict | None = None) -> list[Commit]:
    """Every commit of the run, oldest step first (a step's model, then its captures; step 0 has
    captures and no checkpoint); a model commit's files are exported into ``staging`` when needed."""
    ckpts = {checkpoint.read_state(p)["step"]: p for p in checkpoint.list_checkpoints(folder)}
    last = max(ckpts)
    commits: list[Commit] = []
    for step in sorted(set(ckpts) | set(dynamics.captured_steps(folder))):
        if step in ckpts:
            result = eval_result if step == last else None

            def make(path=ckpts[step], result=result, card=step == last) -> list[CommitOperationAdd]:
                return model_operations(params, path, staging, result, card)

            commits.append(Commit(MODEL_TITLE.format(step=step), make))
        captured = dynamics.step_folder(folder, step)
        for split in dynamics.SPLITS:
            pts = sorted(captured.glob(f"{split}_*.pt")) if captured.is_dir() else []
            if pts:
                ops = [CommitOperationAdd(f"learning_dynamics/{p.name}", str(p)) for p in pts]
                commits.append(Commit(DYNAMICS_TITLE.format(split=split, step=step), lambda ops=ops: ops))
    return commits


def model_operations(
    params: Params, step_path: Path, staging: Path, result: dict | None, card: bool
) -> list[CommitOperationAdd]:
    """``Saving HF Model -- Step N``'s files: the export, training_config.yaml and (the newest) the card."""
    state = checkpoint.read_state(step_path)
    out = export_hf.export(step_path, staging / step_path.name, params.tokenizer.out_dir)
    files = sorted(p for p in out.iterdir() if p.is_file() and p.name != export_hf.MARKER)
    ops = [CommitOperationAdd(path_in_repo=p.name, path_or_fileobj=str(p)) for p in files]
    config = dynamics.training_config(params, ModelDims(**state["model_dims"]), params.report.run_name)
    ops.append(CommitOperationAdd("training_config.yaml", yaml.safe_dump(config, sort_keys=False).encode()))
    if card:  # the card describes the run as published
        ops.append(CommitOperationAdd("README.md", model_card(params, state, result).encode()))
    return ops


def branch_name(run_name: str) -> str:
    """pico-train's branch is the run name; characters a git ref cannot hold become '-'."""
    return re.sub(r"-{2,}", "-", re.sub(r"[^A-Za-z0-9._-]", "-", run_name)).strip("-.") or "run"


def model_card(params: Params, state: dict[str, Any], result: dict | None) -> str:
    """README.md: what the model is, its honest figures first, pico-train's number labelled."""
    dims, t = state["model_dims"], params.training
    lines = [
        "---",
        "library_name: transformers",
        "tags: [pico, pico-decoder, llama]",
        "---",
        "",
        f"# {params.report.run_name}",
        "",
        f"A Pico decoder trained by pico pipeline: {dims['n_layers']} layers, d_model {dims['d_model']}, "
        f"{dims['n_heads']}/{dims['n_kv_heads']} heads, vocabulary {dims['vocab_size']}, context {dims['max_seq_len']}; "
        f"step {state['step']} of {t.max_steps}, run fingerprint `{state['fingerprint']}`. It loads as a plain "
        "`LlamaForCausalLM`; each checkpoint is a commit on this branch (`Saving HF Model -- Step N`).",
        "",
    ]
    if result:
        lines += [
            f"## Evaluation (step {result.get('step')})",
            "",
            "Token-weighted perplexity (exp of Σ NLL / Σ tokens) and bits per byte, per source — the figures to read:",
            "",
            "| source | token perplexity | bits per byte |",
            "|---|---|---|",
        ]
        for name, m in result.get("sources", {}).items():
            lines.append(f"| {name} | {m['token_perplexity']:.4g} | {m['bits_per_byte']:.4f} |")
        mac = result.get("macro", {})
        lines.append(
            f"| **macro** | {mac.get('token_perplexity', float('nan')):.4g} | {mac.get('bits_per_byte', float('nan')):.4f} |"
        )
        pico = result.get("pico_train_paloma")
        if pico:
            lines += [
                "",
                f"pico-train's Paloma number, for comparison with pico-train logs only (mean over {pico['documents']} "
                f"documents of per-document perplexity, each truncated to {pico['max_length']} tokens; a few bad "
                f"documents dominate it): {pico['mean_perplexity']:.4g}.",
            ]
    lines += [
        "",
        "## Data and params",
        "",
        f"- train: {', '.join(params.data.train_paths)}; evaluation: {', '.join(params.data.eval_paths)}",
        f"- tokenizer: {params.tokenizer.source}; sequence length {params.data.seq_len}",
        f"- optimizer: AdamW lr {params.optim.lr:g}, warmup {params.optim.warmup_steps}, {params.optim.schedule}, "
        f"weight decay {params.optim.weight_decay:g}, clipping {params.optim.max_grad_norm}",
        f"- batch: {t.effective_batch_rows()} rows x {params.data.seq_len} tokens per step; seed {t.seed}",
        "",
        "```yaml",
        yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False).rstrip(),
        "```",
        "",
    ]
    return "\n".join(lines)


def push(
    api: Any, repo_id: str, branch: str, commits: list[Commit], private: bool, retries: int = 3, prefix: str = "publish"
) -> list[str]:
    """Push the commits the branch lacks (by title), oldest first; returns the titles pushed."""
    api.create_repo(repo_id, private=private, exist_ok=True)
    api.create_branch(repo_id, branch=branch, exist_ok=True)
    done = {c.title for c in api.list_repo_commits(repo_id, revision=branch)}
    pushed = []
    for commit in commits:
        if commit.title in done:
            continue
        for attempt in range(1, retries + 1):
            try:
                api.create_commit(repo_id, commit.operations, commit_message=commit.title, revision=branch)
                break
            except (OSError, ConnectionError) as err:  # huggingface_hub's HTTP errors are OSErrors
                if attempt == retries:
                    raise OSError(
                        f"pushing '{commit.title}' to {repo_id}@{branch} failed {retries} times: {err}"
                    ) from None
                time.sleep(2.0**attempt)
        pushed.append(commit.title)
        print(f"{prefix}: {repo_id}@{branch}: {commit.title}", flush=True)
    return pushed


def hub_api() -> Any:
    """huggingface_hub's client; the token from HF_TOKEN or `hf auth login`."""
    from huggingface_hub import HfApi

    return HfApi()


class HubPusher:
    """``training.hub``: after each checkpoint (and at start, for commits a crash left missing), the
    run's missing commits are pushed on one background thread. Training never waits for it: a
    checkpoint saved while a push runs is picked up when that push ends. A failure is one line and
    is retried with the next checkpoint; at exit the running push finishes first."""

    def __init__(self, params: Params, run_dir: Path):
        hub = params.training.hub
        self.params, self.run_dir = params, run_dir
        self.repo_id, self.private = hub.repo_id, hub.private
        self.branch = hub.branch or branch_name(params.report.run_name)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pico-hub")
        self._pending: Future | None = None
        self._again = False

    def submit(self) -> None:
        if self._pending is not None and not self._pending.done():
            self._again = True
            return
        self._pending = self._pool.submit(self._push_missing)

    def _push_missing(self) -> None:
        while True:
            self._again = False
            try:
                with tempfile.TemporaryDirectory(prefix="pico-hub-") as staging:
                    commits = commit_plan(self.params, self.run_dir, Path(staging))
                    push(hub_api(), self.repo_id, self.branch, commits, self.private, prefix="hub")
            except Exception as err:  # the hub's and the filesystem's errors alike: said, retried later
                why = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
                print(
                    f"hub: pushing to {self.repo_id}@{self.branch} failed ({why}); training goes on, "
                    "the next checkpoint (or the next start) retries",
                    flush=True,
                )
            if not self._again:
                return

    def close(self) -> None:
        if self._pending is not None and not self._pending.done():
            print(f"hub: waiting for the push to {self.repo_id}@{self.branch} before the run exits", flush=True)
        if self._pending is not None:
            self._pending.result()
        self._pool.shutdown(wait=True)


def publish(
    params: Params, repo_id: str, branch: str | None, private: bool, dry_run: bool, api: Any = None
) -> list[Commit]:
    folder = run_folder(params)
    result_file = Path(params.evaluation.out)
    result = json.loads(result_file.read_text()) if result_file.is_file() else None
    branch = branch or branch_name(params.report.run_name)
    with tempfile.TemporaryDirectory(prefix="pico-publish-") as staging:
        commits = commit_plan(params, folder, Path(staging), result)
        if dry_run:
            for c in commits:
                print(f"{repo_id}@{branch}: {c.title}: {', '.join(c.paths())}")
            return commits
        push(api or hub_api(), repo_id, branch, commits, private)
    return commits
