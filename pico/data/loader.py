"""The row loader: a seeded global order over packed rows (an OLMo-style global index), and the
training data a trainer opens (``open_train_data``).

Position ``p`` (rows consumed so far, counted over all ranks) maps to epoch ``p // n_rows`` and to
``permutation(seed, epoch)[p % n_rows]``. The order depends on the seed alone, not on the number
of processes; a checkpoint stores ``p`` and resumes exactly where it stopped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from pico.config import Params
from pico.data.eval_windows import EvalWindows
from pico.data.tokens_dir import TokensDir


class GlobalRowOrder:
    def __init__(self, n_rows: int, seed: int, shuffle: bool = True):
        if n_rows < 1:
            raise ValueError("no rows to train on")
        self.n_rows, self.seed, self.shuffle = n_rows, seed, shuffle
        self._epoch, self._perm = -1, np.empty(0, dtype=np.int64)

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._epoch:
            self._perm = (
                np.random.default_rng([self.seed, epoch]).permutation(self.n_rows)
                if self.shuffle
                else np.arange(self.n_rows)
            )
            self._epoch = epoch
        return self._perm

    def indices(self, position: int, count: int) -> np.ndarray:
        out = np.empty(count, dtype=np.int64)
        for i in range(count):
            p = position + i
            out[i] = self._permutation(p // self.n_rows)[p % self.n_rows]
        return out


class RowLoader:
    """Micro-batches for one optimizer step, with this rank's share of the global batch."""

    def __init__(
        self,
        rows: np.ndarray,
        seed: int,
        micro_batch_size: int,
        grad_accum_steps: int,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
    ):
        self.rows = rows
        self.order = GlobalRowOrder(len(rows), seed, shuffle)
        self.micro, self.accum = micro_batch_size, grad_accum_steps
        self.rank, self.world = rank, world_size

    @property
    def rows_per_step(self) -> int:
        return self.micro * self.accum * self.world

    def _micro_indices(self, position: int, j: int) -> np.ndarray:
        """Rows of the step's ``j``-th micro-batch over all ranks (j = accumulation step x world + rank),
        sorted: sorted reads are kinder to the page cache."""
        return np.sort(self.order.indices(position + j * self.micro, self.micro))

    def step_batches(self, position: int) -> list[torch.Tensor]:
        """The ``accum`` micro-batches (B, row_len) this rank trains on at the step starting at ``position``."""
        return [
            torch.from_numpy(
                np.asarray(self.rows[self._micro_indices(position, m * self.world + self.rank)], dtype=np.int64)
            )
            for m in range(self.accum)
        ]

    def step_indices(self, position: int) -> np.ndarray:
        """Every row of the step starting at ``position`` (all ranks, all micro-batches), in the order
        the micro-batches are drawn."""
        return np.concatenate([self._micro_indices(position, j) for j in range(self.accum * self.world)])


@dataclass
class TrainData:
    """What a trainer reads, opened and checked before any work."""

    rows: np.ndarray  # packed rows of seq_len + 1 tokens (memory-mapped)
    manifest: dict[str, Any]  # train_manifest.json: hashes, sources, tokenizer
    windows: EvalWindows  # the held-out evaluation windows
    loader: RowLoader  # this rank's micro-batches of each optimizer step
    # the first rows of the global order: a fixed sample every evaluation after they were trained
    # on scores in eval mode, so a train/held-out gap is not confounded with dropout
    seen_rows: np.ndarray
    batch_rows: int  # rows per optimizer step, over all ranks
    tokens_per_step: int


def open_train_data(params: Params, vocab_size: int, rank: int, world: int) -> TrainData:
    cfg, seq_len = params.training, params.data.seq_len
    tokens = TokensDir(params.data.tokens_dir)
    rows, manifest = tokens.open_rows(seq_len)
    tokens.check_consistent()
    tokens.verify_train(vocab_size)
    batch_rows = cfg.effective_batch_rows(world)
    if cfg.global_batch_size is not None and cfg.global_batch_size != batch_rows:
        raise ValueError(
            f"training.global_batch_size={cfg.global_batch_size} but micro_batch_size x "
            f"grad_accum_steps x world size = {batch_rows}"
        )
    if batch_rows > len(rows):
        raise ValueError(
            f"training: an optimizer step takes {batch_rows} rows (micro_batch_size x grad_accum_steps x "
            f"processes) but {params.data.tokens_dir}/train.bin holds {len(rows)} rows of {seq_len} tokens; "
            "lower training.micro_batch_size or training.grad_accum_steps, or add training data"
        )
    loader = RowLoader(rows, cfg.seed, cfg.micro_batch_size, cfg.grad_accum_steps, rank, world, cfg.shuffle)
    n_seen = min(params.evaluation.seen_rows, len(rows))
    seen_rows = np.sort(GlobalRowOrder(len(rows), cfg.seed, cfg.shuffle).indices(0, n_seen))
    return TrainData(rows, manifest, EvalWindows(tokens), loader, seen_rows, batch_rows, batch_rows * seq_len)
