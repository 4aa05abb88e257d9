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
"""

from __future__ import annotations

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


def load(path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any) -> dict[str, Any]:
    path = Path(path)
    load_weights(path, model)
    trainer = torch.load(path / TRAINER, map_location="cpu", weights_only=True)
    optimizer.load_state_dict(trainer["optimizer"])
    scheduler.load_state_dict(trainer["scheduler"])
    torch.set_rng_state(trainer["torch_rng"])
    if "cuda_rng" in trainer and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(trainer["cuda_rng"])
    return read_state(path)
