"""Multi-process training plumbing: torchrun's environment, DDP, and the few collectives the
trainer needs. With one process every helper is a no-op, so the single-process path is unchanged.

`pico train` with ``training.nproc: N`` re-launches itself under
``torchrun --standalone --nproc_per_node N``; a multi-node run calls torchrun directly with its
rendezvous flags (see docs/scaling-and-gpus.md). Each rank reads its slice of the seeded global row order, so
N processes with the same effective batch follow the same batches as one.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    cpu_group: Any = field(default=None, compare=False)  # gloo group for host-side flags (None: the default group)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """The mean over ranks of a tensor, on its device (no host sync)."""
        if self.world == 1:
            return value
        t = value.detach().clone()
        dist.all_reduce(t)
        return t / self.world

    def any(self, flag: bool) -> bool:
        """Whether any rank's flag is set: a one-integer collective on the CPU (gloo), so asking it
        every step never waits on the GPU's queue of work."""
        if self.world == 1:
            return flag
        t = torch.tensor([int(flag)], dtype=torch.int32)
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.cpu_group)
        return bool(t.item())

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
    cpu_group = None if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")
    d = Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), cpu_group)
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
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "pico.cli",
        "--params",
        params_path,
        "train",
    ]
    print(f"launching {nproc} processes: {' '.join(cmd[1:])}", flush=True)
    # torchrun in its own session, and this process passes SIGTERM/SIGINT on to the ranks themselves:
    # each finishes its step and saves (pico.preempt) and they end cleanly, where torchrun, signalled,
    # would shut them down on its own clock and print a failure report for every rank
    proc = subprocess.Popen(cmd, start_new_session=True)

    def forward(signum: int, frame: Any) -> None:
        ranks = _children(proc.pid)
        for pid in ranks or [proc.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        return proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _children(pid: int) -> list[int]:
    """The direct child processes of ``pid`` (Linux /proc; none elsewhere)."""
    try:
        return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


# ---- FSDP (fully_shard): parameters, gradients and optimizer state sharded across ranks ----
# Checkpoints stay in the single-process format (full weights, index-keyed optimizer state), gathered
# on rank 0, so they load on any number of processes, sharded or not.


def shard(model: torch.nn.Module) -> None:
    from torch.distributed.fsdp import fully_shard

    for layer in model.layers:
        fully_shard(layer)
    fully_shard(model)


def shard_with_optimizer(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, names: list[str], make_optimizer: Any
) -> torch.optim.Optimizer:
    """Shard a (possibly restored) model and return a new optimizer over the shards holding the
    old one's state. ``names``: parameter names in the optimizer's group order;
    ``make_optimizer(model)`` builds the optimizer."""
    full_state = optimizer.state_dict()
    shard(model)
    sharded = make_optimizer(model)
    for group, saved in zip(sharded.param_groups, full_state["param_groups"]):
        group.update({k: v for k, v in saved.items() if k != "params"})  # lr, initial_lr as restored
    if full_state["state"]:
        load_full_optimizer_state(model, sharded, full_state, names)
    return sharded


def _options():
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def full_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Gathered weights (a collective: every rank calls it; rank 0 gets them)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_options())


def full_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Gathered optimizer state in ``optimizer.state_dict()``'s index-keyed form (collective)."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    sd = get_optimizer_state_dict(model, optimizer, options=_options())
    if not sd:
        return sd
    names = [n for g in sd["param_groups"] for n in g["params"]]
    index = {n: i for i, n in enumerate(names)}
    return {
        "state": {index[n]: v for n, v in sd["state"].items()},
        "param_groups": [{**g, "params": [index[n] for n in g["params"]]} for g in sd["param_groups"]],
    }


def load_full_optimizer_state(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, sd: dict[str, Any], names: list[str]
) -> None:
    """Load an index-keyed full optimizer state into an optimizer over sharded parameters.
    ``names`` are the parameter names in the optimizer's group order."""
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    fqn = {
        "state": {names[i]: v for i, v in sd["state"].items()},
        "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in sd["param_groups"]],
    }
    set_optimizer_state_dict(model, optimizer, fqn, options=_options())


def total_norm(norm: torch.Tensor) -> torch.Tensor:
    """clip_grad_norm_'s result as a plain tensor on its device (a DTensor under FSDP)."""
    return norm.full_tensor() if hasattr(norm, "full_tensor") else norm
