"""A plan before the run: what a training run will cost, from its params, its data and a short
calibration on this machine — so a person learns "2–3 days, not 1.5 hours" before starting it.

    pico plan                       # the run params.yaml describes (needs the tokenize stage's output)
    pico plan --device h100         # projected from a stored throughput figure instead of calibrating

Figures: tokens per step, steps per epoch and epochs over the training rows (warning above one),
training and evaluation FLOPs, projected wall time, checkpoint disk, device-hours and their price
(``report.device_hour_price``). The wall time is ``max_steps`` x the calibrated seconds per
optimizer step (the real model, micro-batch, accumulation, precision and dropout, timed over a few
steps after warm-up) + the evaluations x their calibrated time + the checkpoint writes. The plan is
saved to ``metrics/plan.json`` (a wall-clock fact of this machine, like ``run_info.json``: not a
DVC output), where the report and ``pico compare`` find it to set planned beside actual.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pico.config import Params
from pico.fsutil import atomic_write_json
from pico.runtime import model_dims, pick_device

PLAN_JSON = "plan.json"
# Stored throughput for a named device: sustained model FLOP/s as a fraction of its bf16 dense peak
# (measured: benchmarks/results/gpu_check_h200_run*.jsonl reached 16-20 % MFU on small; 0.3 is the
# target of the GPU work). A projection from these is a stated assumption, not a measurement.
DEVICES = {"h100": 989e12, "h200": 989e12, "a100": 312e12, "l4": 121e12}
ASSUMED_MFU = 0.3
DISK_BYTES_PER_S = 200e6  # checkpoint writes (fsynced), a conservative local-disk figure
HASH_BYTES_PER_S = 500e6  # sha256 of the training rows at start


@dataclass
class Plan:
    tokens_per_step: int
    steps: int
    rows: int
    steps_per_epoch: float
    epochs: float
    params: int
    train_flops: float
    evaluations: int
    eval_tokens: int
    eval_flops: float
    checkpoint_bytes: float
    checkpoints_kept: int
    dynamics_captures: int  # learning-dynamics captures (0: off)
    dynamics_bytes: float  # per capture
    seconds_per_step: float | None  # None: not projected (the trainer's own first lines)
    seconds_per_eval: float | None
    seconds_per_checkpoint: float
    wall_s: float | None
    processes: int
    device_hours: float | None
    price: float | None
    basis: str  # how the time was projected

    def lines(self) -> list[str]:
        from pico.train_metrics import duration

        out = [
            f"plan: {self.steps:,} steps x {self.tokens_per_step:,} tokens/step = {self.steps * self.tokens_per_step:,} tokens; "
            f"{self.steps_per_epoch:,.1f} steps per epoch of {self.rows:,} rows -> {self.epochs:.3g} epochs",
            f"plan: {self.params:,} parameters; {self.train_flops:.3g} training FLOPs + {self.evaluations} evaluations x "
            f"{self.eval_tokens:,} tokens ({self.eval_flops:.3g} FLOPs)",
            f"plan: checkpoints {self.checkpoint_bytes / 2**20:,.0f} MiB each, {self.checkpoints_kept} kept = "
            f"{self.checkpoint_bytes * self.checkpoints_kept / 2**30:,.2f} GiB",
        ]
        if self.dynamics_captures:
            out.append(
                f"plan: learning dynamics: {self.dynamics_captures} captures x {self.dynamics_bytes / 2**20:,.1f} MiB = "
                f"{self.dynamics_captures * self.dynamics_bytes / 2**30:,.2f} GiB (kept: never pruned)"
            )
        if self.wall_s is None:
            out.append(f"plan: wall time: {self.basis}")
        else:
            out.append(
                f"plan: wall time {duration(self.wall_s)} ({self.seconds_per_step * 1e3:,.1f} ms/step, "
                f"{self.seconds_per_eval:,.1f} s/evaluation, {self.seconds_per_checkpoint:,.1f} s/checkpoint; "
                f"{self.basis}); {self.device_hours:,.3g} device-hours"
                + (
                    f" x {self.price / self.device_hours:g} = {self.price:,.2f}"
                    if self.price is not None and self.device_hours
                    else ""
                )
            )
        if self.epochs > 1:
            out.append(
                f"plan: WARNING the run goes {self.epochs:.2f} times over its training rows: repeated data "
                "(the eval loss then measures memorisation as well as learning)"
            )
        return out


def _evaluations(t: Any) -> int:
    return t.max_steps // t.eval_every + (t.max_steps % t.eval_every != 0) + bool(t.eval_at_start)


def _checkpoints(t: Any) -> int:
    return t.max_steps // t.checkpoint_every + (t.max_steps % t.checkpoint_every != 0)


def dynamics_cost(params: Params, dims: Any, batch_rows: int, n_windows: int) -> tuple[int, float, int]:
    """Learning dynamics (pico.dynamics): captures, bytes per capture (activations of both splits,
    weights and gradients of each) and rows per capture (each a forward and backward, like training)."""
    import torch

    from pico.dynamics import hooked_modules
    from pico.model import PicoDecoder

    ld, t = params.learning_dynamics, params.training
    if not ld.enabled:
        return 0, 0.0, 0
    every = ld.every or t.checkpoint_every
    steps = {0, t.max_steps, *range(every, t.max_steps + 1, every), *(s for s in ld.steps if s <= t.max_steps)}
    with torch.device("meta"):  # shapes only, no memory
        modules = hooked_modules(PicoDecoder(dims), ld.layer_suffixes)
    outs = sum(m.weight.shape[0] for m in modules.values())
    numel = sum(m.weight.numel() for m in modules.values())
    val = min(ld.val_windows or n_windows, n_windows)
    return len(steps), 4.0 * ((batch_rows + val) * outs + 2 * 2 * numel), batch_rows + val


def announce(params: Params, sizes: tuple[int, int]) -> None:
    """The plan's lines as a run starts (``pico train`` hands this to the trainer, which knows the
    model's size; the planner stays out of the train stage's code)."""
    for line in make_plan(params, calibrate_s=None, sizes=sizes).lines():
        print(line)


def make_plan(
    params: Params, device: str | None = None, calibrate_s: float | None = 3.0, sizes: tuple[int, int] | None = None
) -> Plan:
    """The plan for these params on this machine: ``device`` None calibrates here for
    ``calibrate_s`` seconds; ``calibrate_s`` None projects no time (what the trainer prints first)."""
    import torch

    from pico.data.eval_windows import EvalWindows
    from pico.data.tokens_dir import TokensDir
    from pico.model import PicoDecoder

    started = time.perf_counter()
    t, seq = params.training, params.data.seq_len
    world = t.nproc
    dims = model_dims(params)
    tokens = TokensDir(params.data.tokens_dir)
    rows, _ = tokens.open_rows(seq)
    windows = EvalWindows(tokens)
    eval_windows = len(windows.select(params.evaluation.max_windows_per_source))
    batch_rows = t.effective_batch_rows(world)
    model = None
    if sizes is None or (device is None and calibrate_s is not None):
        torch.manual_seed(t.seed)
        model = PicoDecoder(dims)
    # (parameters, training FLOPs per token: forward + backward), given by a trainer that has its model
    n_params, flops_token = sizes or (model.num_parameters(), model.flops_per_token(seq))
    tokens_per_step = batch_rows * seq
    evals, ckpts = _evaluations(t), _checkpoints(t)
    eval_tokens = eval_windows * seq
    ckpt_bytes = n_params * 4 * 3 + 1e5  # fp32 weights + Adam's two moments
    if device:
        if device not in DEVICES:
            raise ValueError(f"--device {device!r}: stored figures exist for {', '.join(DEVICES)}")
        rate = DEVICES[device] * ASSUMED_MFU * world
        per_step, per_eval = tokens_per_step * flops_token / rate, eval_tokens * flops_token / 3 / rate
        basis = f"stored figure: {device} at {ASSUMED_MFU:.0%} MFU (an assumption; calibrate on the machine itself)"
        startup = 0.0
    elif calibrate_s is None:
        per_step = per_eval = None
        basis = "`pico plan` projects it (a short calibration); the ETA follows at each log line"
    else:
        # start-up as a run pays it: opening the data and building the model, plus hashing the
        # training rows (the trainer verifies them before its first step)
        startup = time.perf_counter() - started + rows.nbytes / HASH_BYTES_PER_S
        per_step, per_eval = calibrate(params, model, dims.vocab_size, windows, calibrate_s)
        basis = f"calibrated on this machine ({_machine()})"
    per_ckpt = ckpt_bytes / DISK_BYTES_PER_S
    captures, capture_bytes, capture_rows = dynamics_cost(params, dims, batch_rows, len(windows))
    wall = (
        startup
        + t.max_steps * per_step
        + evals * per_eval
        + ckpts * per_ckpt
        + captures * (per_step * capture_rows / batch_rows + capture_bytes / DISK_BYTES_PER_S)
        if per_step is not None
        else None
    )
    hours = wall * world / 3600 if wall is not None else None
    price = params.report.device_hour_price
    return Plan(
        tokens_per_step=tokens_per_step,
        steps=t.max_steps,
        rows=len(rows),
        steps_per_epoch=len(rows) / batch_rows,
        epochs=t.max_steps * batch_rows / len(rows),
        params=n_params,
        train_flops=t.max_steps * tokens_per_step * flops_token,
        evaluations=evals,
        eval_tokens=eval_tokens,
        eval_flops=evals * eval_tokens * flops_token / 3,
        checkpoint_bytes=ckpt_bytes,
        checkpoints_kept=t.keep_checkpoints + int(params.early_stop.enabled),
        dynamics_captures=captures,
        dynamics_bytes=capture_bytes,
        seconds_per_step=per_step,
        seconds_per_eval=per_eval,
        seconds_per_checkpoint=per_ckpt,
        wall_s=wall,
        processes=world,
        device_hours=hours,
        price=hours * price if price is not None and hours is not None else None,
        basis=basis,
    )


def calibrate(params: Params, model: Any, vocab: int, windows: Any, budget_s: float) -> tuple[float, float]:
    """Seconds per optimizer step (the run's micro-batch, accumulation, precision, dropout; after
    two warm-up steps) and per evaluation (a sample of the real windows, scaled to all of them)."""
    import contextlib

    import torch

    from pico import optim
    from pico.eval_metrics import evaluate_model

    t, seq = params.training, params.data.seq_len
    if t.num_threads:
        torch.set_num_threads(t.num_threads)
    device = pick_device(params, type("OneProcess", (), {"world": 1, "local_rank": 0})())
    model = model.to(device).train()
    opt = optim.make_optimizer(model, params, device.type == "cuda", t.compile)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if t.precision == "bf16" else contextlib.nullcontext()
    batch = torch.randint(0, vocab, (t.micro_batch_size, seq + 1), device=device)

    def step() -> None:
        for _ in range(t.grad_accum_steps):
            with autocast:
                loss = model(batch[:, :-1], batch[:, 1:])
            (loss / t.grad_accum_steps).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), params.optim.max_grad_norm or math.inf)
        opt.step()
        opt.zero_grad(set_to_none=True)

    def timed(fn: Any, budget: float, least: int) -> float:
        fn()  # warm-up (allocations, kernel selection)
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        n, start = 0, time.perf_counter()
        while n < least or time.perf_counter() - start < budget:
            fn()
            n += 1
            if device.type == "cuda":
                torch.cuda.synchronize()
        return (time.perf_counter() - start) / n

    per_step = timed(step, budget_s * 2 / 3, 3)
    model.eval()
    sample = max(1, min(params.evaluation.batch_size * 2, len(windows)))
    sources = max(1, len(windows.sources))
    per_sample = timed(
        lambda: evaluate_model(model, windows, params.evaluation.batch_size, math.ceil(sample / sources), device),
        budget_s / 3,
        1,
    )
    sampled = len(windows.select(math.ceil(sample / sources)))
    total = len(windows.select(params.evaluation.max_windows_per_source))
    return per_step, per_sample * total / sampled


def _machine() -> str:
    from pico import numerics

    info = numerics.describe()
    return str(info.get("cuda") or f"{info.get('cpu')}, {info.get('threads')} threads")


def save(plan: Plan, metrics_dir: str | Path) -> Path:
    path = Path(metrics_dir) / PLAN_JSON
    atomic_write_json(path, {**asdict(plan), "made": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    return path


def read(metrics_dir: str | Path) -> dict[str, Any] | None:
    try:
        plan = json.loads((Path(metrics_dir) / PLAN_JSON).read_text())
        return plan if isinstance(plan, dict) else None
    except (OSError, ValueError):
        return None


def run(params: Params, device: str | None = None) -> Plan:
    plan = make_plan(params, device)
    for line in plan.lines():
        print(line)
    print(f"saved {save(plan, params.training.metrics_dir)}")
    return plan
