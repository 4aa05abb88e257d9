"""A run's checkpoint folder, as policy over pico.checkpoint's format: where a run resumes (the
newest sound checkpoint of the same run, ``training.restart_from``, or step 0), and what happens to
everything else in the folder — damaged checkpoints quarantined to ``<checkpoint_dir>.quarantine/``
with a note saying which file and why, another run's moved aside to
``<checkpoint_dir>.superseded/<fingerprint>/``. Nothing is ever deleted here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pico.checkpoint import (
    BEST,
    LEARNING_DYNAMICS,
    STATE,
    STEP_DIR,
    DamagedCheckpoint,
    list_checkpoints,
    load,
    remove_partial,
    verify,
)
from pico.fsutil import free_name, fsync_path


@dataclass
class Restored:
    """Where a run continues from: ``state`` (state.json) and the lr schedule's saved state, or,
    after ``restart_from`` (another run's checkpoint), ``rebase`` the schedule on the current lr."""

    path: Path
    state: dict[str, Any]
    scheduler_state: dict[str, Any]
    rebase: bool


def superseded_root(root: Path) -> Path:
    """``<checkpoint_dir>.superseded``: where other runs' checkpoints were moved (older versions)."""
    base = root.resolve()
    return base.with_name(f"{base.name}.superseded")


def superseded_dir(root: Path, fingerprint: str | None) -> Path:
    return superseded_root(root) / (fingerprint or "unknown")


def move_aside(root: Path, fingerprint: str | None) -> Path:
    """Move another run's checkpoints (and only them) out of the way; returns where they went."""
    dest = free_name(superseded_dir(root, fingerprint))
    dest.mkdir(parents=True)
    for p in sorted(root.iterdir()):
        if p.is_dir() and (STEP_DIR.match(p.name) or p.name in (BEST, LEARNING_DYNAMICS)):
            os.replace(p, dest / p.name)
    fsync_path(root)
    return dest


def quarantine(root: Path, path: Path, why: str) -> Path:
    """Move a damaged checkpoint out of the run's way (never deleted); returns where it went."""
    base = root.resolve()
    dest = free_name(base.with_name(f"{base.name}.quarantine") / path.name)
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.replace(path, dest)
    (dest / "QUARANTINED.txt").write_text(why + "\n")
    fsync_path(root)
    print(f"skipped a damaged checkpoint: {why}; moved to {dest}")
    return dest


def _newest_sound(root: Path, d: Any) -> tuple[Path, dict] | None:
    """The newest checkpoint whose files verify (rank 0 quarantines the others); None if none."""
    for path in reversed(list_checkpoints(root)):
        try:
            return path, verify(path)
        except DamagedCheckpoint as err:
            if d.is_main:
                quarantine(root, path, str(err))
    return None


def find_restart_point(source: Path, search: list[Path] = ()) -> Path:
    """``training.restart_from``: the checkpoint itself, or — once the folder that showed it shows
    another run — that checkpoint in a run of the run store (``search``) or, as older versions left
    it, ``<checkpoint_dir>.superseded/`` (newest first)."""
    if (source / STATE).is_file():
        return source
    for base in search:  # a run store's own folder, named by its relative path (``pico fork``'s)
        named = base / source.parent.name / source.name
        if not source.is_absolute() and (named / STATE).is_file():
            return named
    aside = superseded_root(source.parent)
    found = sorted(
        (p for base in (*search, aside) if base.is_dir() for p in base.glob(f"*/{source.name}/{STATE}")),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    if not found:
        where = " nor ".join(f"{base}/*/{source.name}" for base in (*search, aside))
        raise FileNotFoundError(f"training.restart_from: no checkpoint at {source} (nor {where})")
    print(f"training.restart_from: {source} now shows another run; using {found[0].parent}")
    return found[0].parent


def restore(
    root: str | Path,
    fingerprint: str,
    restart_from: str | None,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    d: Any,
    max_step: int | None = None,
    search: list[Path] = (),
) -> Restored | None:
    """Where a run starts, in this order: the newest sound checkpoint of the same run (same
    fingerprint, at most ``max_step``); else ``restart_from``; else step 0 (None). Another run's
    checkpoints — or this run's beyond a shortened plan — are then moved aside, never deleted. ``d``
    is the process group (``pico.distributed.Dist``): only rank 0 changes the folder, after every
    rank has read what it needs."""
    root = Path(root)
    if d.is_main:
        for name in remove_partial(root):
            print(f"removed an incomplete checkpoint left by a crash: {root / name}")
    d.barrier()

    def same_run(state: dict) -> bool:
        return state["fingerprint"] == fingerprint and (max_step is None or state["step"] <= max_step)

    resumed, other = _resume(root, same_run, model, optimizer, d)
    if resumed is not None:
        return resumed
    restarted = _restart(Path(restart_from), search, model, optimizer) if restart_from else None
    d.barrier()  # every rank has read what it needs before rank 0 moves the old run aside
    if other is not None and d.is_main:
        _set_aside(root, other, fingerprint, max_step)
    d.barrier()
    return restarted


def _resume(
    root: Path, same_run: Any, model: torch.nn.Module, optimizer: torch.optim.Optimizer, d: Any
) -> tuple[Restored | None, tuple[Path, dict] | None]:
    """This run's newest checkpoint that verifies and loads, or (None, the newest sound checkpoint
    of another run, or None when the folder holds none)."""
    while (newest := _newest_sound(root, d)) is not None:
        path, state = newest
        if not same_run(state):
            return None, newest
        try:
            state, sched = load(path, model, optimizer)
        except DamagedCheckpoint as err:  # verified but does not load (e.g. written before checksums)
            d.barrier()
            if d.is_main:
                quarantine(root, path, str(err))
            d.barrier()
            continue
        print(f"resuming from {path} (step {state['step']}, {state['position']} rows consumed)")
        return Restored(path, state, sched, rebase=False), None
    return None, None


def _restart(
    restart_from: Path, search: list[Path], model: torch.nn.Module, optimizer: torch.optim.Optimizer
) -> Restored:
    """``training.restart_from``: another run's checkpoint, its lr schedule rebased on the current lr."""
    source = find_restart_point(restart_from, search)
    try:
        verify(source)
        state, sched = load(source, model, optimizer)
    except DamagedCheckpoint as err:
        raise DamagedCheckpoint(f"training.restart_from: {err}") from None
    return Restored(source, state, sched, rebase=True)


def _set_aside(root: Path, other: tuple[Path, dict], fingerprint: str, max_step: int | None) -> None:
    latest, state = other
    dest = move_aside(root, state["fingerprint"])
    why = (
        f"belongs to another run (fingerprint {state['fingerprint']} != {fingerprint})"
        if state["fingerprint"] != fingerprint
        else f"is at step {state['step']}, beyond training.max_steps={max_step}"
    )
    print(
        f"{latest} {why}; starting fresh. Its checkpoints were moved to {dest} (listed by `pico "
        f"checkpoints`); to continue that run instead, stop this one and `mv {dest}/* {root}/` (with a "
        "plan that reaches its step)"
    )
