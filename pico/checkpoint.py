"""Checkpoints: everything needed to continue a run bit-identically, written atomically.

A checkpoint is a folder ``step_NNNNNNNN/`` holding

- ``model.safetensors``: the weights (no pickle),
- ``trainer.pt``: optimizer and scheduler state and RNG states (loaded with ``weights_only=True``,
  so no pickled code runs),
- ``state.json``: step, data position, the run fingerprint, the resolved config and the metric
  history up to this step (DVC deletes non-persistent metric files before a rerun; they are
  rebuilt from here on resume).

It is written into ``.tmp-…`` and renamed into place, so a folder named ``step_*`` is complete;
leftovers of a crash are removed on the next start. The newest ``keep`` are kept. ``state.json``
records the size and sha256 of the other two files; before resuming, ``restore`` verifies the
newest checkpoint and falls back to the newest one that verifies and loads (``pico.runfolder``).

This module is the format alone (save, load, verify, list, prune). What a run does with a
folder of them — where it resumes, what it sets aside or quarantines — is ``pico.runfolder``'s.
Only folders this module names (``step_*``, ``best``, ``learning_dynamics``, ``.tmp-*``) are ever
moved, and only ``.tmp-*`` and pruned ``step_*`` removed.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from pico.fsutil import fsync_path, replace_dir

STEP_DIR = re.compile(r"^step_(\d{8})$")
WEIGHTS, TRAINER, STATE = "model.safetensors", "trainer.pt", "state.json"
BEST = "best"  # the best-evaluating checkpoint of a run with early stopping; never pruned
LEARNING_DYNAMICS = "learning_dynamics"  # pico.dynamics' captures of the run; never pruned, moved aside with it


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


def file_digest(path: Path) -> dict[str, Any]:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(1 << 22):
            h.update(block)
    return {"bytes": path.stat().st_size, "sha256": h.hexdigest()}


class DamagedCheckpoint(ValueError):
    """A checkpoint folder that cannot be resumed from; the message says which file and why."""


def verify(path: str | Path) -> dict[str, Any]:
    """The checkpoint's state.json, after checking its files against the sizes and sha256 it
    records (checkpoints written before checksums existed are taken as they are)."""
    path = Path(path)
    try:
        state = read_state(path)
    except (OSError, ValueError) as err:
        raise DamagedCheckpoint(f"{path / STATE} is unreadable ({type(err).__name__}: {err})") from None
    if not isinstance(state, dict) or "fingerprint" not in state or "step" not in state:
        raise DamagedCheckpoint(f"{path / STATE} is not a checkpoint state (no fingerprint/step)")
    for name, want in state.get("files", {}).items():
        f = path / name
        if not f.is_file():
            raise DamagedCheckpoint(f"{f} is missing")
        if f.stat().st_size != want["bytes"]:
            raise DamagedCheckpoint(f"{f} has {f.stat().st_size} bytes, {want['bytes']} were written")
        if file_digest(f)["sha256"] != want["sha256"]:
            raise DamagedCheckpoint(f"{f} does not match the sha256 recorded when it was written")
    return state


def save(
    root: str | Path,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    scheduler: Any,
    state: dict[str, Any],
    keep: int | None,
    name: str | None = None,
    weights: dict[str, torch.Tensor] | None = None,
    optimizer_state: dict[str, Any] | None = None,
    interim: bool = False,
) -> Path:
    """Write a checkpoint atomically as ``step_NNNNNNNN`` (or ``name``); keep the newest ``keep`` (None:
    prune nothing). ``weights`` / ``optimizer_state`` replace the model's and optimizer's own (gathered
    FSDP state). Without an optimizer it holds weights only (an imported model: evaluated, not resumed).
    ``interim``: a checkpoint off the periodic schedule (the run was stopped between two); it does not
    count towards ``keep`` and is removed once a newer checkpoint exists, so an interrupted run ends
    with the same checkpoints as an uninterrupted one."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / name if name else step_dir(root, step)
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        _write(
            tmp,
            step,
            model,
            optimizer,
            scheduler,
            {**state, "interim": True} if interim else state,
            weights,
            optimizer_state,
        )
    except (OSError, RuntimeError) as err:  # torch.save reports a full disk as RuntimeError("unexpected pos")
        shutil.rmtree(tmp, ignore_errors=True)  # at once: a failed checkpoint must not hold the space
        raise CheckpointWriteError(_write_failure(root, final, err)) from None
    replace_dir(tmp, final)
    if keep is not None:
        prune(root, keep)
    return final


def prune(root: Path, keep: int) -> None:
    """Keep the newest ``keep`` periodic checkpoints, and an interim one only while it is the newest."""
    found = list_checkpoints(root)
    interim = [p for p in found if read_state(p).get("interim")]
    periodic = [p for p in found if p not in interim]
    for old in [*(p for p in interim if p != found[-1]), *periodic[:-keep]]:
        shutil.rmtree(old)


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (full disk, unwritable folder); nothing half-written is left."""


def _write_failure(root: Path, final: Path, err: BaseException) -> str:
    free = shutil.disk_usage(root).free
    enospc = getattr(err, "errno", None) == errno.ENOSPC or "unexpected pos" in str(err) or free < (64 << 20)
    why = (
        f"no space left on the device ({free / 2**20:,.0f} MiB free)"
        if enospc
        else str(err).splitlines()[0][:200] or type(err).__name__
    )
    previous = latest_checkpoint(root)
    resume = f"the run resumes from {previous.name}" if previous else "the run starts from step 0"
    return f"could not write checkpoint {final}: {why}; free space (or fix the folder) and rerun: {resume}"


def _write(
    tmp: Path,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: dict[str, Any],
    weights: dict[str, torch.Tensor] | None,
    optimizer_state: dict[str, Any] | None,
) -> None:
    tmp.mkdir()
    weights = {k: v.detach().to("cpu").contiguous() for k, v in (weights or model.state_dict()).items()}
    # one metadata key: safetensors stores metadata in a hash map, so several keys come out in any order
    meta = json.dumps({"step": step, "fingerprint": state["fingerprint"]}, sort_keys=True)
    save_file(weights, str(tmp / WEIGHTS), metadata={"pico": meta})
    written = [WEIGHTS]
    if optimizer is not None:
        trainer = {
            "optimizer": optimizer_state if optimizer_state is not None else optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "torch_rng": torch.get_rng_state(),
        }
        if torch.cuda.is_available():
            trainer["cuda_rng"] = torch.cuda.get_rng_state_all()
        torch.save(trainer, tmp / TRAINER)
        written.append(TRAINER)
    files = {f: file_digest(tmp / f) for f in written}
    (tmp / STATE).write_text(json.dumps({**state, "step": step, "files": files}, indent=1) + "\n")
    for f in (*written, STATE):
        fsync_path(tmp / f)
    fsync_path(tmp)


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path / WEIGHTS), device="cpu")
    except (OSError, RuntimeError, ValueError) as err:  # safetensors' errors for a damaged header/body
        raise DamagedCheckpoint(f"{path / WEIGHTS} does not load: {str(err).splitlines()[0][:200]}") from None


def _apply_weights(path: Path, model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> None:
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{path}/{WEIGHTS} does not fit this model: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )


def load_weights(path: str | Path, model: torch.nn.Module) -> None:
    _apply_weights(Path(path), model, _read_weights(Path(path)))


def load(path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Weights, optimizer state and RNG states into place; returns (state.json, scheduler state).
    Both files are read before anything is changed, so a file that does not load (raising
    ``DamagedCheckpoint`` naming it) leaves the model and optimizer as they were."""
    path = Path(path)
    weights = _read_weights(path)
    try:
        trainer = torch.load(path / TRAINER, map_location="cpu", weights_only=True)
    except Exception as err:  # torch.load's errors for a damaged file vary (zip, unpickling, EOF)
        raise DamagedCheckpoint(f"{path / TRAINER} does not load ({type(err).__name__})") from None
    _apply_weights(path, model, weights)
    optimizer.load_state_dict(trainer["optimizer"])
    torch.set_rng_state(trainer["torch_rng"])
    if "cuda_rng" in trainer and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(trainer["cuda_rng"])
    return read_state(path), trainer["scheduler"]
