"""The train stage: AdamW, warmup + decay, gradient accumulation, real clipping, resumable.

Read top to bottom: build the model and optimizer from params, resume from the newest checkpoint
of the *same* run (same fingerprint) or start fresh, then loop over optimizer steps. Every
``log_every`` steps the loss, lr and pre-clip gradient norm go to ``metrics/train.csv``; every
``eval_every`` steps the Paloma-format set is evaluated with the evaluate stage's code into
``metrics/eval_history.csv``; every ``checkpoint_every`` steps (and at the end) a checkpoint is
written atomically. On CPU a resumed run ends bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import math
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from pico import checkpoint, distributed
from pico.config import Params
from pico.data import tokenizer as tokenizer_stage
from pico.data.loader import RowLoader
from pico.data.packing import open_rows
from pico.data.paloma import EvalWindows
from pico.distributed import Dist
from pico.errors import TrainingDiverged
from pico.evaluate import evaluate_model
from pico.fsutil import atomic_write_json, atomic_write_text
from pico.model import ModelDims, PicoDecoder
from pico.monitor import LossWatch, eval_verdict

# Params that change what is trained; logging/checkpoint cadence does not.
# (micro-batch and accumulation enter only through the effective batch, so a run may resume on
# another number of processes with the same effective batch)
RUN_DEFINING_TRAINING_KEYS = ("max_steps", "seed", "shuffle", "precision", "compile")
FSDP_PRESETS = ("medium", "large")  # training.parallelism auto shards these across processes
TRAIN_COLUMNS = ("step", "loss", "loss_mean", "lr", "grad_norm", "grad_norm_max", "tokens")
PERF_COLUMNS = ("step", "tokens_per_s", "elapsed_s", "model_flops_per_s", "mfu")


# The code that decides what a run computes (the train stage's code deps in dvc.yaml): a change
# here is a different run, so it is part of the fingerprint; editing the report is not.
TRAINING_CODE = ("model.py", "train.py", "checkpoint.py", "evaluate.py", "data/loader.py")


def code_version() -> str:
    h = hashlib.sha256()
    for name in TRAINING_CODE:
        h.update(name.encode())
        h.update((Path(__file__).parent / name).read_bytes())
    return h.hexdigest()[:16]


def model_dims(params: Params) -> ModelDims:
    info = json.loads((Path(params.tokenizer.out_dir) / tokenizer_stage.META_FILE).read_text())
    return ModelDims.from_config(params.model, info["vocab_size"])


def build_model(params: Params) -> PicoDecoder:
    return PicoDecoder(model_dims(params))


def lr_lambda(params: Params):
    """Multiplier of optim.lr after ``step`` optimizer steps; step 0 is already > 0."""
    o, total = params.optim, params.training.max_steps
    warmup, floor = o.warmup_steps, o.min_lr_ratio

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup  # pico uses step/warmup, whose first step runs at lr 0
        if o.schedule == "constant" or total == warmup:
            return 1.0
        progress = min(1.0, (step - warmup) / (total - warmup))
        if o.schedule == "cosine":
            return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
        return floor + (1.0 - floor) * (1.0 - progress)

    return factor


def param_groups(model: torch.nn.Module) -> tuple[list[str], list[str]]:
    """Names of the parameters that get weight decay (matrices, embeddings) and those that don't
    (RMSNorm gains: pico decays everything, but gains should stay ~1), in the optimizer's order."""
    named = list(model.named_parameters())
    return [n for n, p in named if p.ndim >= 2], [n for n, p in named if p.ndim < 2]


def make_optimizer(model: torch.nn.Module, params: Params, fused: bool = False) -> torch.optim.AdamW:
    by_name = dict(model.named_parameters())
    decay_names, no_decay_names = param_groups(model)
    decay, no_decay = [by_name[n] for n in decay_names], [by_name[n] for n in no_decay_names]
    o = params.optim
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=o.lr, betas=o.betas, eps=o.eps, **({"fused": True} if fused else {"foreach": False}),
    )


def run_fingerprint(params: Params, data_manifest: dict, eval_manifest: dict, code: str, world: int = 1) -> str:
    t = params.training.model_dump()
    defining = {
        "model": params.model.model_dump(mode="json"),
        "optim": params.optim.model_dump(mode="json"),
        "training": {k: t[k] for k in RUN_DEFINING_TRAINING_KEYS},
        "effective_batch_rows": t["micro_batch_size"] * t["grad_accum_steps"] * world,
        "train_data": data_manifest["sha256"],
        "eval_data": eval_manifest["sha256"],
        "eval_max_windows_per_source": params.evaluation.max_windows_per_source,
        "tokenizer": data_manifest["tokenizer_sha256"],
        "code": code,
        "early_stop": params.early_stop.model_dump(mode="json"),
        "restart_from": params.training.restart_from,
    }
    return hashlib.sha256(json.dumps(defining, sort_keys=True).encode()).hexdigest()[:16]


def _csv(rows: list[dict], columns: tuple[str, ...]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def eval_row(step: int, metrics: dict) -> dict:
    row = {"step": step}
    for key in ("loss", "token_perplexity", "bits_per_byte", "pico_mean_seq_perplexity"):
        row[key] = metrics["macro"][key]
    for name, m in metrics["sources"].items():
        row[f"token_perplexity/{name}"] = m["token_perplexity"]
        row[f"bits_per_byte/{name}"] = m["bits_per_byte"]
    return row


class MetricsWriter:
    """Rewrites the DVC metric/plot files from the run's history (cheap at these sizes, and atomic)."""

    def __init__(self, metrics_dir: str):
        self.dir = Path(metrics_dir)

    def write(self, history: dict[str, list[dict]], summary: dict | None = None) -> None:
        atomic_write_text(self.dir / "train.csv", _csv(history["train"], TRAIN_COLUMNS))
        eval_cols: tuple[str, ...] = tuple(history["eval"][0]) if history["eval"] else ("step",)
        atomic_write_text(self.dir / "eval_history.csv", _csv(history["eval"], eval_cols))
        atomic_write_text(self.dir / "perf.csv", _csv(history["perf"], PERF_COLUMNS))
        if summary is not None:
            atomic_write_json(self.dir / "train_summary.json", summary)


def pick_device(params: Params) -> torch.device:
    want = params.training.device
    if want == "cuda" or (want == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def _restore(params: Params, fingerprint: str, model, optimizer, scheduler, d: Dist) -> dict[str, Any] | None:
    """Resume the same run from its newest checkpoint, or restart from ``training.restart_from``.

    Returns the checkpoint state to continue from, or None to start at step 0. Checkpoints of
    another run are never resumed; they are removed (their copies live in DVC's cache).
    """
    t = params.training
    root = Path(t.checkpoint_dir)
    if d.is_main:  # only rank 0 changes the checkpoint folder; the others wait, then read
        for name in checkpoint.remove_partial(root):
            print(f"removed an incomplete checkpoint left by a crash: {root / name}")
    d.barrier()
    latest = checkpoint.latest_checkpoint(root)
    found = checkpoint.read_state(latest).get("fingerprint") if latest is not None else None
    if found == fingerprint:
        state = checkpoint.load(latest, model, optimizer, scheduler)
        print(f"resuming from {latest} (step {state['step']}, {state['position']} rows consumed)")
        return state
    state = None
    if t.restart_from:
        source = Path(t.restart_from)
        if not (source / checkpoint.STATE).is_file():
            raise FileNotFoundError(f"training.restart_from: no checkpoint at {source}")
        state = checkpoint.load(source, model, optimizer, scheduler)
        # the restored scheduler remembers the old lr: rebase it on optim.lr
        factor = lr_lambda(params)(scheduler.last_epoch)
        scheduler.base_lrs = [params.optim.lr] * len(optimizer.param_groups)
        for group in optimizer.param_groups:
            group["initial_lr"], group["lr"] = params.optim.lr, params.optim.lr * factor
        scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]
        state["history"].setdefault("events", []).append(
            {"step": state["step"], "event": f"restarted from {source} with lr {params.optim.lr:g}"})
        print(f"restarting from {source} (step {state['step']}) with lr {params.optim.lr:g}")
    d.barrier()  # every rank has read what it needs before rank 0 clears the folder
    if latest is not None and d.is_main:
        print(f"{latest} belongs to another run (fingerprint {found} "
              f"!= {fingerprint}); starting fresh (the earlier run's outputs live on in DVC's cache)")
        shutil.rmtree(root)
    d.barrier()
    return state


def run(params: Params, progress: bool | None = None) -> dict[str, Any]:
    """Train in this process, as one rank of a torchrun job when WORLD_SIZE > 1."""
    d = distributed.setup(params.training.backend)
    try:
        with distributed.quiet_unless_main(d):
            return _train(params, d, progress)
    finally:
        distributed.teardown(d)


def _train(params: Params, d: Dist, progress: bool | None) -> dict[str, Any]:
    t, es = params.training, params.early_stop
    progress = os.isatty(2) and d.is_main if progress is None else progress and d.is_main
    if t.num_threads:
        torch.set_num_threads(t.num_threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    device = pick_device(params)
    if device.type == "cuda" and d.world > 1:
        device = torch.device("cuda", d.local_rank)
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")  # TF32 matmuls
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if t.precision == "bf16"
                else contextlib.nullcontext())

    rows, data_manifest = open_rows(params.data.tokens_dir, "train")
    if data_manifest["row_len"] != params.data.seq_len + 1:
        raise ValueError(f"{params.data.tokens_dir} holds rows of {data_manifest['row_len']} tokens but "
                         f"data.seq_len={params.data.seq_len}; rerun the tokenize stage")
    windows = EvalWindows(params.data.tokens_dir)
    code = code_version()
    fingerprint = run_fingerprint(params, data_manifest, windows.manifest, code, d.world)

    torch.manual_seed(t.seed)
    dims = model_dims(params)
    model = PicoDecoder(dims).to(device)
    optimizer = make_optimizer(model, params, fused=device.type == "cuda")
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(params))
    loader = RowLoader(rows, t.seed, t.micro_batch_size, t.grad_accum_steps, d.rank, d.world, t.shuffle)
    effective_batch = loader.rows_per_step
    if t.global_batch_size is not None and t.global_batch_size != effective_batch:
        raise ValueError(f"training.global_batch_size={t.global_batch_size} but micro_batch_size x grad_accum_steps "
                         f"x world size = {effective_batch}")
    tokens_per_step = effective_batch * params.data.seq_len

    n_params = model.num_parameters()
    state = _restore(params, fingerprint, model, optimizer, scheduler, d)
    fsdp = d.world > 1 and (t.parallelism == "fsdp" or (t.parallelism == "auto" and params.model.preset in FSDP_PRESETS))
    if fsdp:  # shard the restored model, then rebuild the optimizer over the shards with the same state
        opt_state, sched_state = optimizer.state_dict(), scheduler.state_dict()
        names = [n for group in param_groups(model) for n in group]
        distributed.shard(model)
        optimizer = make_optimizer(model, params, fused=device.type == "cuda")
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(params))  # adds initial_lr first
        if opt_state["state"]:
            distributed.load_full_optimizer_state(model, optimizer, opt_state, names)
        scheduler.load_state_dict(sched_state)
    ddp = model if d.world == 1 or fsdp else DistributedDataParallel(
        model, device_ids=[d.local_rank] if device.type == "cuda" else None)
    if t.compile:
        ddp = torch.compile(ddp)
    flops_per_token = model.flops_per_token(params.data.seq_len)
    step, position = (state["step"], state["position"]) if state else (0, 0)
    history: dict[str, list[dict]] = state["history"] if state else {"train": [], "eval": [], "perf": [], "events": []}
    status, reason = (state.get("status", "running"), state.get("reason")) if state else ("running", None)
    watch = LossWatch(es)
    watch.mean = state.get("loss_running_mean") if state else None

    print(f"model: {params.model.preset} d_model={dims.d_model} vocab={dims.vocab_size} -> {n_params:,} parameters; "
          f"effective batch {effective_batch} rows x {params.data.seq_len} tokens = {tokens_per_step:,} tokens/step; "
          f"{len(rows)} rows of data; device {device}"
          + (f"; {d.world} processes ({'FSDP' if fsdp else 'DDP'})" if d.world > 1 else ""))
    print(f"run fingerprint {fingerprint} (params, data, tokenizer, training code {code})")
    ckpt_root = Path(t.checkpoint_dir)
    writer = MetricsWriter(t.metrics_dir)

    def snapshot() -> dict[str, Any]:
        return {"fingerprint": fingerprint, "position": position, "history": history, "status": status,
                "reason": reason, "loss_running_mean": watch.mean, "model_dims": dims.to_dict(),
                "config": params.model_dump(mode="json"), "code_version": code,
                "tokenizer_sha256": data_manifest["tokenizer_sha256"], "train_data_sha256": data_manifest["sha256"]}

    def save_checkpoint(name: str | None = None) -> None:
        """Rank 0 writes (DDP keeps every rank's weights and optimizer state equal; FSDP gathers them
        first, which every rank takes part in); all wait."""
        gathered = {"weights": distributed.full_weights(model),
                    "optimizer_state": distributed.full_optimizer_state(model, optimizer)} if fsdp else {}
        if d.is_main:
            checkpoint.save(ckpt_root, step, model, optimizer, scheduler, snapshot(), t.keep_checkpoints,
                            name=name, **gathered)
        d.barrier()

    def evaluate_now() -> str | None:
        """Evaluate (rank 0 records; under FSDP every rank runs the sharded forward), keep the best
        checkpoint, and return every rank the same reason to stop early (or None)."""
        verdict = None
        if d.is_main or fsdp:
            metrics = evaluate_model(model, windows, params.evaluation.batch_size,
                                     params.evaluation.max_windows_per_source, device)
            history["eval"].append(eval_row(step, metrics))
            mac = metrics["macro"]
            tqdm.write(f"step {step}: eval loss {mac['loss']:.4f}, token ppl {mac['token_perplexity']:.3f}, bits/byte "
                       f"{mac['bits_per_byte']:.4f} (pico per-seq mean {mac['pico_mean_seq_perplexity']:.4g})")
            verdict = eval_verdict(history["eval"], es)
        is_best, stop = d.broadcast((verdict.is_best, verdict.stop_reason) if verdict else None)
        if es.enabled and is_best:
            save_checkpoint(checkpoint.BEST)
        return stop

    def finish(final_status: str, why: str | None) -> dict[str, Any]:
        identical = None if fsdp else d.all_equal(distributed.weights_digest(model))  # FSDP ranks hold shards
        verdict = eval_verdict(history["eval"], es) if history["eval"] else None
        final_train = history["train"][-1] if history["train"] else {}
        summary = {
            "status": final_status, "reason": why, "step": step, "max_steps": t.max_steps,
            "final_loss": final_train.get("loss"), "final_loss_mean": final_train.get("loss_mean"),
            "min_loss_mean": min((r["loss_mean"] for r in history["train"]), default=None),
            "best_eval_loss": verdict.best_loss if verdict else None,
            "best_eval_step": verdict.best_step if verdict else None,
            # a folder name inside training.checkpoint_dir, so equal runs write equal summaries
            "last_good_checkpoint": getattr(checkpoint.latest_checkpoint(ckpt_root), "name", None),
            "tokens": step * tokens_per_step, "epochs": position / len(rows),
            "effective_batch_rows": effective_batch, "effective_batch_tokens": tokens_per_step,
            "parameters": n_params, "fingerprint": fingerprint, "code_version": code,
            "events": history.get("events", []),
        }
        if d.world > 1:
            summary["processes"] = d.world
            summary["parallelism"] = "fsdp" if fsdp else "ddp"
            if identical is not None:
                summary["weights_identical_across_ranks"] = identical
        if d.is_main:
            writer.write(history, summary)
        return summary

    if status in ("completed", "early_stopped"):
        print(f"this run already ended ({status}{': ' + reason if reason else ''}); nothing to train")
        return finish(status, reason)
    if step == 0 and t.eval_at_start:
        evaluate_now()

    model.train()
    bar = tqdm(total=t.max_steps, initial=step, desc="train", unit="step", disable=not progress, mininterval=2)
    interval_losses: list[float] = []
    interval_norms: list[float] = []
    clip = params.optim.max_grad_norm if params.optim.max_grad_norm is not None else math.inf
    # test hooks, for runs that start at step 0 only: a NaN loss at one step; a SIGKILL right
    # after one step's checkpoint
    fault_step = int(os.environ.get("PICO_FAULT_NAN_AT_STEP", "0")) if state is None else 0
    kill_step = int(os.environ.get("PICO_FAULT_KILL_AT_STEP", "0")) if state is None else 0
    clock = started = time.perf_counter()
    steps_timed = 0
    while step < t.max_steps:
        lr_now = scheduler.get_last_lr()[0]
        step_loss = 0.0
        batches = loader.step_batches(position)
        for i, batch in enumerate(batches):
            if device.type == "cuda":
                batch = batch.pin_memory()
            batch = batch.to(device, non_blocking=True)
            # DDP: all-reduce gradients once per step, on the last micro-batch
            sync = d.world == 1 or i == len(batches) - 1
            if fsdp:
                model.set_requires_gradient_sync(sync)
            with contextlib.nullcontext() if sync or fsdp else ddp.no_sync(), autocast:
                logits = ddp(batch[:, :-1])
                loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), batch[:, 1:].reshape(-1))
                (loss / t.grad_accum_steps).backward()
            step_loss += loss.item() / t.grad_accum_steps
        step_loss = d.mean(step_loss)  # every rank sees the global loss, so all stop together
        if step + 1 == fault_step:
            step_loss = math.nan
        grad_norm = distributed.total_norm(torch.nn.utils.clip_grad_norm_(model.parameters(), clip))
        diverged = watch.check(step + 1, step_loss)
        if diverged:  # the weights are still the last good ones: this step's update is not applied
            bar.close()
            status = "diverged"
            summary = finish(status, f"{diverged} (lr {lr_now:.3g})")
            raise TrainingDiverged(f"{summary['reason']}; last good checkpoint: "
                                   f"{ckpt_root / (summary['last_good_checkpoint'] or 'none')}")
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        position += effective_batch
        steps_timed += 1
        interval_losses.append(step_loss)
        interval_norms.append(grad_norm)
        bar.update(1)
        bar.set_postfix(loss=f"{step_loss:.3f}", lr=f"{lr_now:.2e}", refresh=False)

        last = step == t.max_steps
        if step % t.log_every == 0 or last:
            now = time.perf_counter()
            history["train"].append({
                "step": step, "loss": step_loss, "loss_mean": math.fsum(interval_losses) / len(interval_losses),
                "lr": lr_now, "grad_norm": grad_norm, "grad_norm_max": max(interval_norms),
                "tokens": step * tokens_per_step,
            })
            rate = steps_timed * tokens_per_step / (now - clock)
            history["perf"].append({"step": step, "tokens_per_s": round(rate, 1), "elapsed_s": round(now - started, 2),
                                    "model_flops_per_s": round(rate * flops_per_token),
                                    "mfu": round(rate * flops_per_token / (t.peak_flops * d.world), 5) if t.peak_flops else ""})
            interval_losses, interval_norms, clock, steps_timed = [], [], now, 0
        stop_reason = evaluate_now() if (step % t.eval_every == 0 or last) else None
        if stop_reason:
            status, reason = "early_stopped", stop_reason
            tqdm.write(f"early stop at step {step}: {stop_reason}")
        elif last:
            status = "completed"
        if (step % t.log_every == 0 or last or stop_reason) and d.is_main:
            writer.write(history)
        if step % t.checkpoint_every == 0 or last or stop_reason:
            save_checkpoint()
        if step == kill_step:
            os.kill(os.getpid(), signal.SIGKILL)
        if stop_reason:
            break
    bar.close()
    return finish(status, reason)
