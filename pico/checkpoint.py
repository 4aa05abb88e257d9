"""Checkpoints: everything needed to continue a run bit-identically, written atomically.

A checkpoint is a folder ``step_NNNNNNNN/`` holding

- ``model.safetensors``: the weights (no pickle),
- ``trainer.pt``: optimizer and scheduler state and RNG states (loaded with ``weights_only=True``,
  so no pickled code runs),
- ``state.json``: step, data position, the run fingerprint, the resolved config and the metric
  history up to this step (DVC deletes non-persistent metric files before a rerun; they are
  rebuilt from here on resume).

It is written into ``.tmp-…`` and renamed into place, so a folder named ``step_*`` is complete;
leftovers of a crash are removed on the next start. The newest ``keep`` are kept.

``restore`` decides where a run starts: the newest checkpoint of the *same* run (same
fingerprint), or ``training.restart_from``, or step 0. Checkpoints of another run are never
resumed and never deleted: they are moved aside to ``<checkpoint_dir>.superseded/<fingerprint>/``.
Only folders this module names (``step_*``, ``best``, ``.tmp-*``) are ever moved or removed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from pico.fsutil import fsync_path, replace_dir

STEP_DIR = re.compile(r"^step_(\d{8})$")
WEIGHTS, TRAINER, STATE = "model.safetensors", "trainer.pt", "state.json"
BEST = "best"  # the best-evaluating checkpoint of a run with early stopping; never pruned


def step_dir(root: Path, step: int) -> Path:
    return root / f"step_{step:08d}"


def list_checkpoints(root: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and STEP_DIR.match(p.name) and (p / STATE).is_file()]
    return sorted(found, key=lambda p: int(STEP_DIR.match(p.name).group(1)))


def latest_checkpoint(root: str | Path) -> Path | None:
    found = list_checkpoints(root)
    return found[-1] if found else None


def remove_partial(root: str | Path) -> list[str]:
    """Delete temp folders a crashed save left behind."""
    root = Path(root)
    removed = []
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith(".tmp-"):
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p.name)
    return removed


def read_state(path: str | Path) -> dict[str, Any]:
    return json.loads((Path(path) / STATE).read_text())


def save(root: str | Path, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
         scheduler: Any, state: dict[str, Any], keep: int, name: str | None = None,
         weights: dict[str, torch.Tensor] | None = None, optimizer_state: dict[str, Any] | None = None) -> Path:
    """Write a checkpoint atomically as ``step_NNNNNNNN`` (or ``name``); keep the newest ``keep``.
    ``weights`` / ``optimizer_state`` replace the model's and optimizer's own (gathered FSDP state)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / name if name else step_dir(root, step)
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    weights = {k: v.detach().to("cpu").contiguous() for k, v in (weights or model.state_dict()).items()}
    # one metadata key: safetensors stores metadata in a hash map, so several keys come out in any order
    meta = json.dumps({"step": step, "fingerprint": state["fingerprint"]}, sort_keys=True)
    save_file(weights, str(tmp / WEIGHTS), metadata={"pico": meta})
    trainer = {
        "optimizer": optimizer_state if optimizer_state is not None else optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "torch_rng": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        trainer["cuda_rng"] = torch.cuda.get_rng_state_all()
    torch.save(trainer, tmp / TRAINER)
    (tmp / STATE).write_text(json.dumps({**state, "step": step}, indent=1) + "\n")
    for f in (WEIGHTS, TRAINER, STATE):
        fsync_path(tmp / f)
    fsync_path(tmp)
    replace_dir(tmp, final)
    for old in list_checkpoints(root)[:-keep]:
        shutil.rmtree(old)
    return final


def load_weights(path: str | Path, model: torch.nn.Module) -> None:
    weights = load_file(str(Path(path) / WEIGHTS), device="cpu")
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise ValueError(f"{path}/{WEIGHTS} does not fit this model: missing {missing[:5]}, unexpected {unexpected[:5]}")


def load(path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Weights, optimizer state and RNG states into place; returns (state.json, scheduler state)."""
    path = Path(path)
    load_weights(path, model)
    trainer = torch.load(path / TRAINER, map_location="cpu", weights_only=True)
    optimizer.load_state_dict(trainer["optimizer"])
    torch.set_rng_state(trainer["torch_rng"])
    if "cuda_rng" in trainer and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(trainer["cuda_rng"])
    return read_state(path), trainer["scheduler"]


@dataclass
class Restored:
    """Where a run continues from: ``state`` (state.json) and the lr schedule's saved state, or,
    after ``restart_from`` (another run's checkpoint), ``rebase`` the schedule on the current lr."""

    path: Path
    state: dict[str, Any]
    scheduler_state: dict[str, Any]
    rebase: bool


def superseded_dir(root: Path, fingerprint: str | None) -> Path:
    base = root.resolve()
    return base.with_name(f"{base.name}.superseded") / (fingerprint or "unknown")


def move_aside(root: Path, fingerprint: str | None) -> Path:
    """Move another run's checkpoints (and only them) out of the way; returns where they went."""
    dest = superseded_dir(root, fingerprint)
    if dest.exists():
        n = 2
        while dest.with_name(f"{dest.name}-{n}").exists():
            n += 1
        dest = dest.with_name(f"{dest.name}-{n}")
    dest.mkdir(parents=True)
    for p in sorted(root.iterdir()):
        if p.is_dir() and (STEP_DIR.match(p.name) or p.name == BEST):
            os.replace(p, dest / p.name)
    fsync_path(root)
    return dest


def restore(root: str | Path, fingerprint: str, restart_from: str | None, model: torch.nn.Module,
            optimizer: torch.optim.Optimizer, d: Any) -> Restored | None:
    """Resume the same run from its newest checkpoint, or restart from ``restart_from``, or None
    (step 0). ``d`` is the process group (``pico.distributed.Dist``): only rank 0 changes the
    folder; every rank reads what it needs first."""
    root = Path(root)
    if d.is_main:
        for name in remove_partial(root):
            print(f"removed an incomplete checkpoint left by a crash: {root / name}")
    d.barrier()
    latest = latest_checkpoint(root)
    found = read_state(latest).get("fingerprint") if latest is not None else None
    if found == fingerprint:
        state, sched = load(latest, model, optimizer)
        print(f"resuming from {latest} (step {state['step']}, {state['position']} rows consumed)")
        return Restored(latest, state, sched, rebase=False)
    restored = None
    if restart_from:
        source = Path(restart_from)
        if not (source / STATE).is_file():
            raise FileNotFoundError(f"training.restart_from: no checkpoint at {source}")
        state, sched = load(source, model, optimizer)
        restored = Restored(source, state, sched, rebase=True)
    d.barrier()  # every rank has read what it needs before rank 0 moves the old run aside
    if latest is not None and d.is_main:
        dest = move_aside(root, found)
        print(f"{latest} belongs to another run (fingerprint {found} != {fingerprint}); starting fresh. "
              f"Its checkpoints were moved to {dest} (delete that folder when you no longer need them)")
    d.barrier()
    return restored
