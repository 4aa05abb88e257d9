"""Learning dynamics: what pico-analyze reads, captured at chosen steps of a run.

At a capture step N (step 0, every ``learning_dynamics.every`` steps — by default each checkpoint —,
the listed ``learning_dynamics.steps`` and the last; after N optimizer steps: the weights of
checkpoint N) the layers whose name
contains one of ``learning_dynamics.layer_suffixes`` (pico-train's defaults: ``attention.v_proj``,
``attention.o_proj``, ``swiglu.w_2``) are hooked and, for each split,

- ``activations[name]``: the layer's output at the last input position, ``[rows, out_features]``;
- ``weights[name]``: the layer's weight, ``[out, in]``;
- ``gradients[name]``: the gradient of the cross-entropy with respect to that weight, summed over
  sub-batches of ``learning_dynamics.batch_size`` rows of mean loss, as pico-train computes it.

Split ``train`` is the batch of step N+1 (the rows the next update trains on, in the order the
trainer reads them; none after the last step); split ``val`` is a fixed subset of the evaluation
windows, spread over the sources. Every tensor is fp32 on the CPU, row n is sample n, keys are
module names (``layers.{i}.attention.v_proj``), each file a plain ``dict[str, Tensor]``
(``torch.load(weights_only=True)`` reads it). The capture runs in eval mode (no dropout) and leaves
the model, the optimizer and every random state as they were: a run with capture on trains the
same bits as one without.

This module owns the on-disk layout: ``<checkpoint_dir>/learning_dynamics/step_NNNNNNNN/``
``{train,val}_{activations,weights,gradients}.pt`` plus ``rows.json`` (which train rows / eval
windows were used) and ``training_config.yaml`` (pico-train's config shape) beside the step folders.
The folder is not pruned with the checkpoints and moves aside with its run. ``pico export-analysis
OUT`` (pico/export_analysis.py) links it into the layout pico-analyze expects.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from pico.checkpoint import (
    LEARNING_DYNAMICS as DIR,  # inside the checkpoint folder: never pruned, moves aside with the run
)
from pico.fsutil import atomic_open, atomic_write_json, atomic_write_text, fsync_path

SPLITS = ("train", "val")
KINDS = ("activations", "weights", "gradients")
CONFIG_FILE = "training_config.yaml"
ROWS_FILE = "rows.json"
STEP_DIR = re.compile(r"^step_(\d{8})$")


def store(checkpoint_dir: str | Path) -> Path:
    return Path(checkpoint_dir) / DIR


def step_folder(checkpoint_dir: str | Path, step: int) -> Path:
    return store(checkpoint_dir) / f"step_{step:08d}"


def captured_steps(checkpoint_dir: str | Path) -> list[int]:
    root = store(checkpoint_dir)
    if not root.is_dir():
        return []
    return sorted(int(m.group(1)) for p in root.iterdir() if p.is_dir() and (m := STEP_DIR.match(p.name)))


def hooked_modules(model: torch.nn.Module, suffixes: Sequence[str]) -> dict[str, torch.nn.Module]:
    """The modules pico-train hooks: every one whose name contains a suffix and that has a weight."""
    found = {
        name: m
        for name, m in model.named_modules()
        if any(s in name for s in suffixes) and isinstance(getattr(m, "weight", None), torch.Tensor)
    }
    if not found:
        raise ValueError(
            f"learning_dynamics.layer_suffixes {list(suffixes)} match no layer of the model "
            "(names look like layers.0.attention.v_proj)"
        )
    return found


def pwcca_width(model: torch.nn.Module, suffixes: Sequence[str], n_heads: int) -> tuple[int, str]:
    """The widest activation matrix pico-analyze's PWCCA may be asked to compare, and what it is.
    CCA needs more rows (datapoints) than columns (neurons): pico-analyze asserts it. A hooked
    layer's activations are ``out_features`` wide; where ``attention.v_proj`` and
    ``attention.o_proj`` are both hooked, its OV circuit (the demo config's PWCCA) concatenates
    every head's ``d_model``-wide output: ``n_heads x d_model`` columns."""
    modules = hooked_modules(model, suffixes)
    name, layer = max(modules.items(), key=lambda kv: kv[1].weight.shape[0])
    widest = (layer.weight.shape[0], f"{name} ({layer.weight.shape[0]} outputs)")
    for name, m in modules.items():
        if name.endswith("attention.o_proj") and name.replace("o_proj", "v_proj") in modules:
            d_model = m.weight.shape[0]
            ov = (
                n_heads * d_model,
                f"the OV circuit of {name.rsplit('.', 2)[0]} (n_heads {n_heads} x d_model {d_model})",
            )
            return max(widest, ov)
    return widest


def pwcca_shortfall(rows: int, width: tuple[int, str]) -> str | None:
    """One line when the val split has too few rows for PWCCA (every other metric runs anyway)."""
    if rows > width[0]:
        return None
    return (
        f"learning dynamics: the val split has {rows} rows, but pico-analyze's PWCCA needs more rows than "
        f"the widest activations it compares, {width[1]} = {width[0]}; the other metrics are unaffected. "
        f"More evaluation windows (learning_dynamics.val_windows: null takes all; more data.eval_paths or a "
        f"shorter data.seq_len make more) let it run."
    )


@contextlib.contextmanager
def _hooks(
    modules: dict[str, torch.nn.Module], last: dict[str, torch.Tensor | None], acts: dict[str, list[torch.Tensor]]
) -> Iterator[None]:
    """Forward hooks that keep each module's output at each row's last input position
    (``last["index"]``: per-row positions, or None for the final position)."""

    def hook(name: str):
        def keep(_module, _inputs, out):
            idx = last["index"]
            picked = out[:, -1, :] if idx is None else out[torch.arange(out.shape[0], device=out.device), idx]
            acts[name].append(picked.detach().float().cpu())

        return keep

    handles = [m.register_forward_hook(hook(n)) for n, m in modules.items()]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def capture(
    model: torch.nn.Module,
    rows: Sequence[np.ndarray],
    suffixes: Sequence[str],
    batch_size: int,
    device: torch.device,
    autocast: Any = None,
) -> dict[str, dict[str, torch.Tensor]]:
    """Activations, weights and gradients of the hooked layers over ``rows`` (token sequences; each
    predicts ``row[1:]`` from ``row[:-1]``; rows may differ in length). The model's gradients must
    be empty (set to None) on entry and are again on exit; its train/eval mode is restored."""
    modules = hooked_modules(model, suffixes)
    acts: dict[str, list[torch.Tensor]] = {n: [] for n in modules}
    last: dict[str, Any] = {"index": None}
    was_training = model.training
    model.eval()
    try:
        with _hooks(modules, last, acts):
            for b in range(0, len(rows), batch_size):
                seqs = rows[b : b + batch_size]
                width = max(len(s) for s in seqs)
                ids = torch.zeros((len(seqs), width), dtype=torch.long)
                labels = torch.full((len(seqs), width - 1), -100, dtype=torch.long)
                for r, s in enumerate(seqs):
                    ids[r, : len(s)] = torch.as_tensor(np.asarray(s, dtype=np.int64))
                    labels[r, : len(s) - 1] = ids[r, 1 : len(s)]
                lengths = torch.tensor([len(s) for s in seqs])
                last["index"] = None if bool((lengths == width).all()) else (lengths - 2).to(device)
                with autocast or contextlib.nullcontext():
                    loss = model(ids[:, :-1].to(device), labels.to(device))  # mean over the sub-batch's tokens
                loss.backward()  # accumulates: the sum of sub-batch mean-loss gradients (pico-train)
        weights = {n: m.weight.detach().float().cpu().clone() for n, m in modules.items()}
        grads = {}
        for n, m in modules.items():
            if m.weight.grad is None:
                raise RuntimeError(f"learning dynamics: no gradient reached {n}.weight")
            grads[n] = m.weight.grad.detach().float().cpu().clone()
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    return {"activations": {n: torch.cat(a) for n, a in acts.items()}, "weights": weights, "gradients": grads}


def _save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """``torch.save`` through a file handle (the archive's inner name is then fixed, so equal tensors
    give equal bytes), written atomically."""
    with atomic_open(path, "wb") as fh:
        torch.save({k: v.contiguous() for k, v in sorted(tensors.items())}, fh)


def write_split(
    checkpoint_dir: str | Path,
    step: int,
    split: str,
    states: dict[str, dict[str, torch.Tensor]],
    row_ids: Sequence[int],
) -> Path:
    """Write one split's three files (and its rows in ``rows.json``) into the step's folder."""
    folder = step_folder(checkpoint_dir, step)
    folder.mkdir(parents=True, exist_ok=True)
    for kind in KINDS:
        _save_tensors(folder / f"{split}_{kind}.pt", states[kind])
    rows_file = folder / ROWS_FILE
    rows = json.loads(rows_file.read_text()) if rows_file.is_file() else {}
    rows[split] = [int(i) for i in row_ids]
    atomic_write_json(rows_file, dict(sorted(rows.items())))
    fsync_path(folder)
    return folder


def val_subset(windows: Any, n: int | None) -> np.ndarray:
    """A fixed subset of ``n`` evaluation windows taken round-robin over the sources (all when None)."""
    if n is None or n >= len(windows.table):
        return np.arange(len(windows.table))
    per_source = [list(np.flatnonzero(windows.table["source"] == s)) for s in range(len(windows.sources))]
    picked: list[int] = []
    while len(picked) < n:
        for lst in per_source:
            if lst and len(picked) < n:
                picked.append(int(lst.pop(0)))
    return np.sort(np.array(picked, dtype=np.int64))


def training_config(params: Any, dims: Any, run_name: str) -> dict[str, Any]:
    """The run described in pico-train's ``training_config.yaml`` shape (pico-analyze reads
    ``model.d_model``, ``model.attention_n_heads``, ``model.attention_n_kv_heads`` and
    ``checkpointing.run_name``), with this pipeline's full params under ``pico_pipeline``."""
    t, o, ld = params.training, params.optim, params.learning_dynamics
    return {
        "checkpointing": {
            "run_name": run_name,
            "save_every_n_steps": ld.every or t.checkpoint_every,
            "learning_dynamics": {
                "layer_suffixes": list(ld.layer_suffixes),
                "sequence_idx": -1,
                "batch_size": ld.batch_size,
                "eval_data": "evaluation windows",
            },
        },
        "model": {
            "model_type": "pico_decoder",
            "d_model": dims.d_model,
            "n_layers": dims.n_layers,
            "vocab_size": dims.vocab_size,
            "batch_size": t.micro_batch_size,
            "max_seq_len": dims.max_seq_len,
            "attention_n_heads": dims.n_heads,
            "attention_n_kv_heads": dims.n_kv_heads,
            "activation_hidden_dim": dims.hidden_dim,
            "norm_eps": dims.norm_eps,
            "position_emb_theta": dims.rope_theta,
        },
        "training": {
            "max_steps": t.max_steps,
            "optimization": {
                "optimizer": "adamw",
                "lr": o.lr,
                "lr_scheduler": o.schedule,
                "lr_warmup_steps": o.warmup_steps,
                "gradient_accumulation_steps": t.grad_accum_steps,
            },
        },
        "data": {"dataloader": {"batch_size": t.effective_batch_rows()}},
        "evaluation": {},
        "monitoring": {"logging": {"log_every_n_steps": t.log_every}},
        "pico_pipeline": params.model_dump(mode="json"),
    }


def write_training_config(checkpoint_dir: str | Path, config: dict[str, Any]) -> None:
    atomic_write_text(store(checkpoint_dir) / CONFIG_FILE, yaml.safe_dump(config, sort_keys=False))


class Capture:
    """The trainer's side: when a capture is due and what it writes (rank 0 of a one-process run)."""

    def __init__(
        self,
        params: Any,
        dims: Any,
        windows: Any,
        rows: np.ndarray,
        loader: Any,
        device: torch.device,
        autocast: Any,
        root: str | Path,
        model: torch.nn.Module,
    ):
        self.ld, self.root = params.learning_dynamics, root  # the run's folder in the run store (pico.runstore)
        self.every = self.ld.every or params.training.checkpoint_every
        self.max_steps = params.training.max_steps
        self.windows, self.rows, self.loader = windows, rows, loader
        self.device, self.autocast = device, autocast
        self.val_ids = val_subset(windows, self.ld.val_windows)
        self.pwcca_width = pwcca_width(model, self.ld.layer_suffixes, dims.n_heads)
        self.config = training_config(params, dims, params.report.run_name)
        self.seconds = 0.0

    @classmethod
    def for_run(
        cls, params: Any, dims: Any, data: Any, model: torch.nn.Module, world: int, **kw: Any
    ) -> Capture | None:
        """The capture a run asked for (``learning_dynamics.enabled``), or None; refused at once,
        not at step 1000, when it cannot run: several processes, or no module to hook."""
        if not params.learning_dynamics.enabled:
            return None
        if world > 1:  # a replica's backward outside DDP's wrapper would stall its gradient sync
            raise ValueError(
                f"learning_dynamics.enabled needs a one-process run (training.nproc 1); this run has {world} processes"
            )
        return cls(params, dims, data.windows, data.rows, data.loader, model=model, **kw)

    def shortfall(self) -> str | None:
        """Said as the run starts: the val split is too small for PWCCA (pico.dynamics.pwcca_width)."""
        return pwcca_shortfall(len(self.val_ids), self.pwcca_width)

    def due(self, step: int) -> bool:
        return step == 0 or step % self.every == 0 or step == self.max_steps or step in self.ld.steps

    def __call__(self, model: torch.nn.Module, step: int, position: int) -> Path:
        started = time.perf_counter()
        write_training_config(self.root, self.config)
        splits = {"val": (self.val_ids, [self.windows.window(int(i)) for i in self.val_ids])}
        if step < self.max_steps:  # after the last step there is no next batch (pico-train: val only)
            ids = self.loader.step_indices(position)  # the next step's rows, as the trainer reads them
            splits["train"] = (ids, [np.asarray(self.rows[i], dtype=np.int64) for i in ids])
        folder = None
        for split in SPLITS:
            if split in splits:
                ids, seqs = splits[split]
                states = capture(model, seqs, self.ld.layer_suffixes, self.ld.batch_size, self.device, self.autocast)
                folder = write_split(self.root, step, split, states, ids)
        self.seconds += time.perf_counter() - started
        return folder
