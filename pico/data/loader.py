"""The row loader: a seeded global order over packed rows (an OLMo-style global index).

Position ``p`` (rows consumed so far, counted over all ranks) maps to epoch ``p // n_rows`` and to
``permutation(seed, epoch)[p % n_rows]``. The order depends on the seed alone, not on the number
of processes; a checkpoint stores ``p`` and resumes exactly where it stopped.
"""

from __future__ import annotations

import numpy as np
import torch


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
