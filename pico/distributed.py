"""Multi-process training plumbing: torchrun's environment, DDP, and the few collectives the
trainer needs. With one process every helper is a no-op, so the single-process path is unchanged.

`pico train` with ``training.nproc: N`` re-launches itself under
``torchrun --standalone --nproc_per_node N``; a multi-node run calls torchrun directly with its
rendezvous flags (see the README). Each rank reads its slice of the seeded global row order, so
N processes with the same effective batch follow the same batches as one.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def mean(self, value: float) -> float:
        if self.world == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(t)
        return float(t.item()) / self.world

    def broadcast(self, obj: Any) -> Any:
        if self.world == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def all_equal(self, text: str) -> bool:
        if self.world == 1:
            return True
        got: list[Any] = [None] * self.world
        dist.all_gather_object(got, text)
        return len(set(got)) == 1


def setup(backend: str) -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist()
    if not dist.is_initialized():
        if backend == "auto":
            backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
    d = Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    if torch.cuda.is_available():
        torch.cuda.set_device(d.local_rank)
    return d


def teardown(d: Dist) -> None:
    if d.world > 1 and dist.is_initialized():
        dist.destroy_process_group()


def quiet_unless_main(d: Dist):
    """Only rank 0 prints: N copies of every line help nobody."""
    if d.is_main:
        return contextlib.nullcontext()
    return contextlib.redirect_stdout(open(os.devnull, "w"))


def weights_digest(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def under_torchrun() -> bool:
    return "LOCAL_RANK" in os.environ


def launch(params_path: str, nproc: int) -> int:
    """Re-run `pico train` as ``nproc`` processes on this node."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "pico.cli", "--params", params_path, "train"]
    print(f"launching {nproc} processes: {' '.join(cmd[1:])}", flush=True)
    return subprocess.run(cmd).returncode
