"""The train stage: AdamW, warmup + decay, gradient accumulation, real clipping, resumable.

Read ``Trainer.fit`` first: resume, then one optimizer step at a time and whatever is due after it
(log, evaluate, save; ``pico.trainstate.due``). ``Trainer.__init__`` creates everything the trainer
has — data, run identity, model, optimizer, schedule — and reads no checkpoint; ``_resume`` (the
first thing ``fit`` does) continues the newest checkpoint of the *same* run (same fingerprint,
``pico.lineage``) or starts at step 0; ``_parallelize`` then compiles, shards (FSDP) or wraps
(DDP). ``TrainState`` is everything that moves and what a checkpoint's ``state.json`` carries. On
CPU a resumed run ends bit-identical to an uninterrupted one.

Every ``log_every`` steps the loss, lr and pre-clip gradient norm go to ``metrics/train.csv``;
every ``eval_every`` steps the evaluation set is scored with the evaluate stage's code into
``metrics/eval_history.csv``; every ``checkpoint_every`` steps (and at the end) a checkpoint is
written atomically into the run store (``pico.runstore``) and published into ``checkpoint_dir``.
``pico.train_metrics`` owns the metric files.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from pico import checkpoint, codedeps, distributed, dynamics, forecast, optim, train_metrics
from pico.checkpointer import Checkpointer
from pico.config import Params
from pico.data.loader import open_train_data
from pico.distributed import Dist
from pico.errors import TrainingDiverged, TrainingInterrupted
from pico.eval_metrics import evaluate_model, rows_loss
from pico.faults import Faults
from pico.lineage import continue_code, continue_plan, param_changes, run_fingerprint, run_plan
from pico.loss import resolve_kernel
from pico.model import PicoDecoder, check_attention_kernel
from pico.monitor import LossWatch, eval_verdict
from pico.parentwatch import ParentWatch
from pico.preempt import StopRequest
from pico.runlock import RunLock
from pico.runtime import build_model, compile_model, model_dims, peak_memory_mib, pick_device  # noqa: F401  (tests, benchmarks)
from pico.train_metrics import TrainSummary
from pico.trainstate import Interval, Invocation, RunFacts, TrainState, due, nonfinite

FSDP_PRESETS = ("medium", "large")  # training.parallelism auto shards these across processes


class Trainer:
    def __init__(
        self,
        params: Params,
        dist: Dist,
        progress: bool,
        stop: StopRequest | None = None,
        resources: contextlib.ExitStack | None = None,
        on_start: Callable[[Params, tuple], None] | None = None,
    ):
        cfg = self.cfg = params.training
        self.params, self.dist, self.progress, self.on_start = params, dist, progress, on_start
        self.stop = stop or StopRequest(cfg.stop_grace_s)  # SIGTERM/SIGINT (pico.preempt)
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        if cfg.compile:
            torch.use_deterministic_algorithms(True, warn_only=True)  # the flag, and inductor's copy of it
        else:  # the same flag, without importing the compiler to set its copy (~1.3 s of CPU; pico.optim)
            torch._C._set_deterministic_algorithms(True, warn_only=True)
        self.device = pick_device(params, dist)
        if self.device.type == "cuda":
            torch.set_float32_matmul_precision("high")  # TF32 matmuls
        bf16 = cfg.precision == "bf16"
        self.autocast = torch.autocast(self.device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        self.dims = model_dims(params)
        dtype = torch.bfloat16 if bf16 else torch.float32  # what attention sees under autocast
        self.attention_kernel = check_attention_kernel(cfg.attention_kernel, self.dims, self.device, dtype)

        self.data = open_train_data(params, self.dims.vocab_size, dist.rank, dist.world)

        # the run's identity, and its checkpoints in the run store (pico.checkpointer)
        self.code = codedeps.code_version("train")
        self.fingerprint = run_fingerprint(
            params, self.data.manifest, self.data.windows.manifest, self.code, dist.world
        )
        self.ckpt = Checkpointer(params, dist, self.fingerprint, resources)
        self.stop.on_deadline = self.ckpt.rerun_starts
        self.state = TrainState(
            LossWatch(params.early_stop),
            plan=run_plan(params),
            lineage=[{"step": 0, "max_steps": cfg.max_steps, "kind": "retarget"}],
            code_lineage=[{"step": 0, "code_version": self.code}],
        )

        # the model, optimizer and schedule as a fresh run starts them (_resume may load a checkpoint)
        torch.manual_seed(cfg.seed)
        self.model = PicoDecoder(self.dims).to(self.device)
        self.model.loss_kernel = resolve_kernel(cfg.loss_kernel, self.device)
        self.model.attention_kernel = self.attention_kernel
        self.n_params = self.model.num_parameters()
        self.flops_per_token = self.model.flops_per_token(params.data.seq_len)
        # fused AdamW can skip a non-finite step on the device, so the host need not read every loss
        self.guard_on_device = self.fused_optimizer(self.device)
        self.optimizer = optim.make_optimizer(self.model, params, self.guard_on_device, cfg.compile)
        self.scheduler = optim.make_scheduler(self.optimizer, params)
        auto_fsdp = cfg.parallelism == "auto" and params.model.preset in FSDP_PRESETS
        self.fsdp = dist.world > 1 and (cfg.parallelism == "fsdp" or auto_fsdp)
        self.wrapped_model: torch.nn.Module = self.model  # what the step calls: the DDP wrapper when there is one
        self.facts = RunFacts(
            max_steps=cfg.max_steps,
            fingerprint=self.fingerprint,
            parameters=self.n_params,
            rows=len(self.data.rows),
            batch_rows=self.data.batch_rows,
            tokens_per_step=self.data.tokens_per_step,
            processes=dist.world,
            parallelism="single" if dist.world == 1 else "fsdp" if self.fsdp else "ddp",
            manifest=self.data.manifest,
        )
        self.dynamics = dynamics.Capture.for_run(
            params, self.dims, self.data, self.model, dist.world,
            device=self.device, autocast=self.autocast, root=self.ckpt.run_dir,
        )  # fmt: skip

        self.metrics = train_metrics.Writer(cfg.metrics_dir) if dist.is_main else None
        self.supervisor = ParentWatch() if dist.is_main else None  # the dvc that started us, if any
        self.invocation = Invocation(cfg, self.fingerprint, self.device)
        self.interval = Interval()
        self.faults = Faults(fresh_run=True)
        self.eta_s: float | None = None

    @staticmethod
    def fused_optimizer(device: torch.device) -> bool:
        """Fused AdamW on GPUs; on CPUs the foreach implementation, whose results the committed runs hold."""
        return device.type == "cuda"

    # ---- before the first step ----
    def _resume(self) -> None:
        """Continue this run from its newest sound checkpoint (or ``training.restart_from``), else
        start at step 0 (pico.checkpointer), with the schedule the continued run runs under."""
        params = self.params
        r = self.ckpt.restore(self.model, self.optimizer)
        if r is None:
            return
        events = r.state["history"].setdefault("events", [])
        if r.rebase:  # another run's checkpoint: its weights and moments, this run's lr, plan and code
            self.scheduler = optim.rebased_scheduler(self.optimizer, params, r.state["step"])
            changes = param_changes(r.state["config"], params)
            forked = {"fingerprint": r.state["fingerprint"], "step": r.state["step"], "changes": changes}
            r.state.update(
                plan=self.state.plan,
                lineage=self.state.lineage,
                code_lineage=self.state.code_lineage,
                forked_from=forked,
            )
            what = ", ".join(changes) or "no change"
            events.append({"step": r.state["step"], "event": f"restarted from {r.path} (run {forked['fingerprint']} "
                           f"at step {forked['step']}; changed: {what}) with lr {params.optim.lr:g}"})  # fmt: skip
            print(f"restarting from {r.path} (step {r.state['step']}) with lr {params.optim.lr:g}")
        else:  # this run: its schedule under the plan segments it ran, plus any change of plan or code
            changes = [continue_plan(params, r.state)]
            if r.state.get("status") not in ("completed", "early_stopped"):  # it trains on: under this code
                changes.append(continue_code(r.state, self.code))
            for change in filter(None, changes):
                events.append({"step": r.state["step"], "event": change})
                print(change)
            self.scheduler = optim.make_scheduler(self.optimizer, params, r.scheduler_state, r.state["lineage"])
        self.state.load_state_dict(r.state)
        if self.dist.is_main:  # the wall-clock rows come from perf.csv, up to the checkpoint's step
            self.state.history["perf"] = train_metrics.read_perf(self.cfg.metrics_dir, r.state["step"])
        self.invocation.from_step = r.state["step"]
        self.faults = Faults(fresh_run=False)
        self.interval.resume(self.state.unlogged)

    def _parallelize(self) -> None:
        """Compile (before sharding, as torchtitan), shard (FSDP: a new optimizer over the shards, so
        the schedule is rebuilt on it at the same step) or wrap (DDP) the restored model."""
        params = self.params
        if self.cfg.compile:
            compile_model(self.model, self.cfg.compile_mode, per_block=self.fsdp)
        if self.fsdp:
            names = [n for group in optim.param_groups(self.model) for n in group]
            schedule = self.scheduler.state_dict()
            self.optimizer = distributed.shard_with_optimizer(
                self.model,
                self.optimizer,
                names,
                lambda m: optim.make_optimizer(m, params, self.guard_on_device, self.cfg.compile),
            )
            self.scheduler = optim.make_scheduler(self.optimizer, params, schedule, self.state.lineage)
        elif self.dist.world > 1:
            ids = [self.dist.local_rank] if self.device.type == "cuda" else None
            self.wrapped_model = DistributedDataParallel(self.model, device_ids=ids)

    # ---- the loop ----
    def fit(self) -> TrainSummary:
        s, cfg = self.state, self.cfg
        self._resume()
        self._parallelize()
        self._announce()
        if s.status in ("completed", "early_stopped"):
            print(f"this run already ended ({s.status}{': ' + s.reason if s.reason else ''}); nothing to train")
            return self.finish()
        if self.dist.is_main:  # the params are valid and the data sound: this run's files replace the last run's
            self.invocation.record(s)
            train_metrics.write(cfg.metrics_dir, s.history, self.summary(), self.invocation.wall_s())
        if s.step == 0 and cfg.eval_at_start:
            self.evaluate()
        if s.step == 0 and self.dynamics:
            self.capture_dynamics()
        self.model.train()
        bar = tqdm(
            total=cfg.max_steps, initial=s.step, desc="train", unit="step", disable=not self.progress, mininterval=2
        )
        interval = self.interval
        interval.restart_clock()
        while s.step < cfg.max_steps:
            why = self.interrupted()  # asked every step: a preempted machine gives seconds, not a log interval
            if why:
                bar.close()
                self.stop_interrupted(why)
            lr = self.scheduler.get_last_lr()[0]
            loss, grad_norm = self.forward_backward()
            loss = self.faults.loss(s.step + 1, loss)
            interval.add(s.step + 1, lr, loss, grad_norm)
            now = due(s.step + 1, cfg)
            # The host reads losses only when something is due (and on CPU, where it costs nothing, at
            # every step); between reads, fused AdamW skips on the device any step whose loss or gradient
            # norm is not finite. Either way no non-finite update lands, and nothing is logged, evaluated
            # or saved after a divergence.
            if self.guard_on_device:
                self.optimizer.found_inf = nonfinite(loss, grad_norm)
            diverged = interval.read(s.watch) if now.anything or not self.guard_on_device else None
            if diverged:  # the weights are the last good ones, or (read late) updated only by finite steps
                bar.close()
                return self.diverge(diverged)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            s.step, s.position = s.step + 1, s.position + self.data.batch_rows
            bar.update(1)
            if now.log:
                bar.set_postfix(loss=f"{interval.losses[-1]:.3f}", lr=f"{lr:.2e}", refresh=False)
                self.log(lr)
            stop = self.evaluate() if now.eval else None
            if stop:
                s.status, s.reason = "early_stopped", stop
                tqdm.write(f"early stop at step {s.step}: {stop}")
            elif now.last:
                s.status = "completed"
            if (now.log or stop) and self.dist.is_main:
                # `pico report` mid-run reads "in progress at step k", `dvc exp show` this run's headline
                self.metrics.submit(s.history, self.summary(), self.invocation.wall_s())
            if self.dynamics and (self.dynamics.due(s.step) or stop):
                self.capture_dynamics()  # before the checkpoint: a saved step has its capture
            if now.save or stop:
                self.save()
            self.faults.after_step(s.step)
            if stop:
                break
        bar.close()
        return self.finish()

    def forward_backward(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step's gradients over the accumulated micro-batches, clipped; returns the
        step's loss (mean over ranks, float64) and the gradient norm before clipping, both on the
        device: nothing here waits for the GPU."""
        batches = self.data.loader.step_batches(self.state.position)
        step_loss = torch.zeros((), dtype=torch.float64, device=self.device)
        for i, batch in enumerate(batches):
            if self.device.type == "cuda":  # pinned, so the copy is asynchronous and the host runs ahead
                batch = batch.pin_memory()
            batch = batch.to(self.device, non_blocking=True)
            sync = self.dist.world == 1 or i == len(batches) - 1  # all-reduce once, on the last micro-batch
            if self.fsdp:
                self.model.set_requires_gradient_sync(sync)
            no_sync = contextlib.nullcontext() if sync or self.fsdp else self.wrapped_model.no_sync()
            with no_sync, self.autocast:
                loss = self.wrapped_model(batch[:, :-1], batch[:, 1:])  # the chunked/fused loss (pico.loss)
                (loss / self.cfg.grad_accum_steps).backward()
            step_loss += loss.detach().double() / self.cfg.grad_accum_steps
        clip = self.params.optim.max_grad_norm if self.params.optim.max_grad_norm is not None else math.inf
        grad_norm = distributed.total_norm(torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip))
        return self.dist.mean(step_loss), grad_norm  # every rank sees the global loss, so all stop together

    # ---- what is due after a step ----
    def log(self, lr: float) -> None:
        s, interval, now = self.state, self.interval, time.perf_counter()
        row = interval.train_row(s.step, lr, s.step * self.data.tokens_per_step)
        s.history["train"].append(row)
        rate, elapsed = interval.rate(now, self.data.tokens_per_step), round(now - interval.started, 2)
        memory = peak_memory_mib(self.device)
        s.history["perf"].append(
            train_metrics.perf_row(
                s.step, rate, elapsed, self.flops_per_token, self.cfg.peak_flops, self.dist.world, memory
            )
        )
        self.eta_s = interval.eta_s(now, self.cfg.max_steps - s.step)
        if not self.progress and self.dist.is_main:  # no progress bar (output to a pipe: DVC, Prefect): a line
            line = train_metrics.progress_line(s.step, self.cfg.max_steps, row["loss_mean"], lr, rate, self.eta_s)
            print(line, flush=True)
        interval.reset(now)

    def evaluate(self) -> str | None:
        """Evaluate (rank 0 records; under FSDP every rank runs the sharded forward), keep the best
        checkpoint, and return every rank the same reason to stop early (or None)."""
        s, p, verdict = self.state, self.params, None
        if self.dist.is_main or self.fsdp:
            with self.eager():
                metrics = evaluate_model(
                    self.model,
                    self.data.windows,
                    p.evaluation.batch_size,
                    p.evaluation.max_windows_per_source,
                    self.device,
                )
                seen = None
                if len(self.data.seen_rows) and s.position >= len(self.data.seen_rows):
                    bs = p.evaluation.batch_size
                    seen = rows_loss(self.model, self.data.rows, self.data.seen_rows, bs, self.device, self.autocast)
            epochs = s.position / len(self.data.rows)
            s.history["eval"].append(
                train_metrics.eval_row(s.step, s.step * self.data.tokens_per_step, epochs, metrics, seen)
            )
            ahead = None
            if self.dist.is_main:  # on disk before the line announcing it: the Prefect flow reads the files then
                self.metrics.submit(s.history, self.summary(), self.invocation.wall_s())
                self.metrics.wait()
                ahead = self.forecast()
            tqdm.write(train_metrics.eval_line(s.step, metrics["macro"]))
            if ahead and ahead.get("fit"):  # (before the first fit, the live view says why there is none)
                tqdm.write(forecast.line(ahead))
            verdict = eval_verdict(s.history["eval"], p.early_stop)
        is_best, stop = self.dist.broadcast((verdict.is_best, verdict.stop_reason) if verdict else None)
        if p.early_stop.enabled and is_best:
            self.save(checkpoint.BEST)
        return stop

    def forecast(self) -> dict | None:
        """metrics/forecast.json from the evaluations so far (pico.forecast); the newest forecast."""
        left = self.cfg.max_steps - self.state.step
        per_step = self.eta_s / left if self.eta_s and left > 0 else None
        return forecast.write(
            self.cfg.metrics_dir, self.state.history["eval"], self.params, self.data.tokens_per_step, per_step,
            self.dist.world, self.state.lineage,
        )  # fmt: skip

    def capture_dynamics(self) -> None:
        """pico-analyze's activations, weights and gradients at this step (pico.dynamics)."""
        before = self.dynamics.seconds
        with self.eager():
            folder = self.dynamics(self.model, self.state.step, self.state.position)
        tqdm.write(f"learning dynamics at step {self.state.step}: {folder} ({self.dynamics.seconds - before:.2f} s)")

    def eager(self) -> Any:
        """Eager even when compiled: evaluation's and capture's varying batch shapes would each recompile."""
        return torch.compiler.set_stance("force_eager") if self.cfg.compile else contextlib.nullcontext()

    def save(self, name: str | None = None, interim: bool = False) -> None:
        """Rank 0 writes (DDP keeps every rank's weights and optimizer state equal; FSDP gathers them
        first, which every rank takes part in); all wait. ``interim``: written because the run was
        stopped between periodic checkpoints; pruned once a newer one exists (pico.checkpoint)."""
        gathered = {}
        if self.fsdp:
            gathered = {
                "weights": distributed.full_weights(self.model),
                "optimizer_state": distributed.full_optimizer_state(self.model, self.optimizer),
            }
        try:
            if self.dist.is_main:
                self.metrics.flush()  # the metric files are never behind a checkpoint
        finally:  # and an unwritable metrics folder does not lose the steps: state.json holds the history
            state = self.state_json()
            self.ckpt.save(
                self.state.step, self.model, self.optimizer, self.scheduler, state, name, interim, **gathered
            )
        self.dist.barrier()

    def state_json(self) -> dict[str, Any]:
        """A checkpoint's state.json: the train state plus what identifies the run. Saves come after
        the host read the interval's steps, whose losses a resumed run logs in the same means."""
        self.state.unlogged = {"losses": list(self.interval.losses), "norms": list(self.interval.norms)}
        return {
            "fingerprint": self.fingerprint,
            **self.state.state_dict(),
            "model_dims": self.dims.to_dict(),
            "config": self.params.model_dump(mode="json"),
            "code_version": self.state.code_version,
            "tokenizer_sha256": self.data.manifest["tokenizer_sha256"],
            "train_data_sha256": self.data.manifest["sha256"],
        }

    # ---- how a run ends ----
    def interrupted(self) -> str | None:
        """Why this run must stop now, agreed by every rank: a signal to any of them, or the DVC
        process that started rank 0 gone (pico.parentwatch); None to go on."""
        gone = bool(self.supervisor and self.supervisor.gone)
        if not self.dist.any(self.stop.signum is not None or gone):
            return None
        if self.stop.signum is not None:
            return self.stop.name
        if gone:
            return f"the dvc process that started this trainer ({self.supervisor.describe()}) has exited"
        return "another rank was stopped"

    def stop_interrupted(self, why: str) -> None:
        """Save the steps trained since the newest checkpoint (unless there are none) and stop with
        one line: where it stopped and how to continue. Raises ``TrainingInterrupted``."""
        s, started, wrote = self.state, time.perf_counter(), self.ckpt.saved_step != self.state.step
        if wrote:
            diverged = self.interval.read(s.watch)  # the steps not yet read belong in the checkpoint
            if diverged:
                self.diverge(diverged)
            self.save(interim=True)
        if self.dist.is_main:
            self.supervisor.close()
            self.metrics.submit(s.history, self.summary(), self.invocation.wall_s())
            self.metrics.close()
            self.invocation.record(s, ended=True)
        newest = self.ckpt.newest()
        took = time.perf_counter() - started
        saved = (
            f"checkpoint {newest} written in {took:.1f} s"
            if wrote
            else f"its newest checkpoint {newest} is at this step"
        )
        self.stop.uninstall()
        raise TrainingInterrupted(
            f"stopped at step {s.step} of {self.cfg.max_steps} ({why}): {saved}; "
            "rerun the same command (dvc repro, dvc exp run, pico train) to continue from it",
            self.stop.exit_code,
        )

    def diverge(self, why: str) -> TrainSummary:
        self.state.status, self.state.reason = "diverged", why
        summary = self.finish()
        last_good = Path(self.cfg.checkpoint_dir) / (summary.last_good_checkpoint or "none")
        raise TrainingDiverged(f"{why}; last good checkpoint: {last_good}")

    def finish(self) -> TrainSummary:
        dist = self.dist
        identical = None if self.fsdp else dist.all_equal(distributed.weights_digest(self.model))  # FSDP: shards
        summary = self.summary(identical)
        if dist.is_main:
            self.ckpt.publish()  # captures made since the last save
            if self.dynamics and self.dynamics.seconds:
                print(
                    f"learning dynamics: {self.dynamics.seconds:.1f} s of this invocation's "
                    f"{self.invocation.seconds():.1f} s, in "
                    f"{dynamics.store(self.ckpt.published)} (`pico export-analysis OUT` for pico-analyze)"
                )
            self.supervisor.close()
            self.metrics.close()
            self.invocation.record(self.state, ended=True)
            train_metrics.write(self.cfg.metrics_dir, self.state.history, summary, self.invocation.wall_s())
            self.forecast()  # a run that ended (or had already) has its forecasts too
        return summary

    def summary(self, identical: bool | None = None) -> TrainSummary:
        return self.state.summary(self.facts, self.params.early_stop, self.ckpt.last_good(), identical, self.eta_s)

    def _announce(self) -> None:
        p, dist = self.params, self.dist
        print(
            f"model: {p.model.preset} d_model={self.dims.d_model} vocab={self.dims.vocab_size} -> "
            f"{self.n_params:,} parameters; effective batch {self.data.batch_rows} rows x {p.data.seq_len} tokens = "
            f"{self.data.tokens_per_step:,} tokens/step; {len(self.data.rows)} rows of data; device {self.device}"
            + (f"; {dist.world} processes ({'FSDP' if self.fsdp else 'DDP'})" if dist.world > 1 else "")
        )
        print(f"run fingerprint {self.fingerprint} (params, data, tokenizer, training code {self.code})")
        if self.dynamics and (short := self.dynamics.shortfall()):
            print(short)
        if dist.is_main and self.state.step < self.cfg.max_steps and self.on_start:
            self.on_start(p, (self.n_params, self.flops_per_token))  # `pico train` prints the plan (pico.plan)


def run(
    params: Params,
    progress: bool | None = None,
    on_start: Callable[[Params, tuple], None] | None = None,
    stop: StopRequest | None = None,
) -> TrainSummary:
    """Train in this process, as one rank of a torchrun job when WORLD_SIZE > 1."""
    # signals are taken over first (``pico train`` does it before torch loads): a SIGTERM while the
    # data loads or the model compiles still stops the run cleanly (at its first step, or by the deadline)
    stop = stop or StopRequest(params.training.stop_grace_s).install()
    dist = distributed.setup(params.training.backend)
    try:
        with contextlib.ExitStack() as locks, distributed.quiet_unless_main(dist):
            if dist.is_main:  # one trainer per checkpoint folder (rank 0 holds the lock for the job)
                locks.enter_context(RunLock(params.training.checkpoint_dir))
            wants = os.isatty(2) if progress is None else progress
            return Trainer(params, dist, wants and dist.is_main, stop, locks, on_start).fit()
    finally:
        stop.uninstall()
        distributed.teardown(dist)
