"""``pico fork EXP --step K [-S key=value ...]``: a new DVC experiment that starts from EXP's
checkpoint at step K — its weights, optimizer moments, data position, RNG state and history — under
changed params, so only the steps after K are paid for.

EXP is a DVC experiment or a git revision whose run trained in this repository's run store
(pico.runstore): its ``train_summary.json`` names the run (its fingerprint), and the run's folder
in the store holds its checkpoints. The fork is ``dvc exp run -n NAME -S <EXP's params> -S
training.restart_from=.pico/runs/<run>/step_<K> -S <your changes>``: the trainer restores that
checkpoint (``training.restart_from``, its lr schedule rebuilt from the fork's params at step K)
and records the lineage — the parent run, the step, what changed — in the fork's summary, which its
report and ``pico compare`` show. With no change the fork's steps after K are the parent's, bit
for bit (on a CPU; tested).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import yaml

from pico import checkpoint, presets, runs, runstore, train_metrics
from pico.config import Params, parse_params, with_overrides
from pico.errors import ConfigError, PipelineError
from pico.paramsfile import read_params_file


def parent_run(parent: str, repo: Path = Path(".")) -> tuple[Params, str]:
    """EXP's params and the fingerprint of the run it trained."""
    try:
        raw = runs.load_params_at(parent)
    except ValueError as err:
        raise PipelineError(f"pico fork: {err}") from None
    params = parse_params(raw, f"params.yaml at {parent}")
    path = train_metrics.summary_path(Path(params.training.metrics_dir))
    text = runs.read_file(str(path), runs.resolve_revision(parent, repo), repo)
    if not text:
        raise PipelineError(f"pico fork: {parent} has no {path}: it never trained")
    return params, json.loads(text)["fingerprint"]


def source_checkpoint(workspace: Params, fingerprint: str, step: int) -> Path:
    """The parent's checkpoint at ``step`` in the run store, verified; a missing step names those kept."""
    run = runstore.run_dir(workspace, fingerprint)
    found = checkpoint.step_dir(run, step)
    if not (found / checkpoint.STATE).is_file():
        kept = [int(p.name.split("_")[1]) for p in checkpoint.list_checkpoints(run)]
        raise PipelineError(
            f"pico fork: run {fingerprint} has no checkpoint at step {step} in {run} (kept: "
            f"{', '.join(map(str, kept)) or 'none'}); fork at a kept step, or keep more "
            "(training.keep_checkpoints: null keeps every one)"
        )
    checkpoint.verify(found)
    return found


def command(
    parent: str,
    step: int,
    changes: dict[str, Any],
    name: str | None = None,
    queue: bool = False,
    params_path: Path = Path("params.yaml"),
) -> list[str]:
    raw = read_params_file(params_path)
    workspace = parse_params(raw, str(params_path))
    params, fingerprint = parent_run(parent)
    found = source_checkpoint(workspace, fingerprint, step)
    repo = runstore.repository_of(Path(workspace.training.checkpoint_dir))
    try:  # relative to the repository: the same params.yaml in a queued experiment's copy of it
        source = str(found.resolve().relative_to(repo.resolve()))
    except ValueError:
        source = str(found.resolve())
    overrides = presets.overrides_between(workspace, params)
    overrides.pop("training.restart_from", None)
    overrides.update({"training.restart_from": source, **changes})
    with_overrides(raw, overrides, f"pico fork {parent} --step {step}")  # fails here, before DVC starts
    cmd = ["dvc", "exp", "run", "-n", name or f"{parent}-fork{step}"] + (["--queue"] if queue else [])
    return cmd + presets.set_args(overrides)


def parse_sets(items: list[str]) -> dict[str, Any]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"-S {item!r}: expected KEY=VALUE (e.g. optim.lr=1.0e-4)")
        out[key.strip()] = yaml.safe_load(value)
    return out


def run(args: Any, params_path: Path) -> int:
    cmd = command(args.parent, args.step, parse_sets(args.set), args.exp_name, args.queue, params_path)
    print(presets.quoted(cmd))
    if args.dry_run:
        return 0
    return subprocess.run(cmd).returncode
