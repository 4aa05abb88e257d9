"""The train stage: AdamW, warmup + decay, gradient accumulation, real clipping, resumable.

Read ``Trainer.fit`` first: one optimizer step, then whatever is due — log, evaluate, save.
Around it: ``Trainer.__init__`` builds the model, optimizer and data from params and resumes from
the newest checkpoint of the *same* run (same fingerprint, ``run_fingerprint``) or starts fresh;
``TrainState`` is everything that moves (step, data position, status, metric history, the loss
watch) and is what a checkpoint's ``state.json`` carries. On CPU a resumed run ends bit-identical
to an uninterrupted one.

Every ``log_every`` steps the loss, lr and pre-clip gradient norm go to ``metrics/train.csv``;
every ``eval_every`` steps the evaluation set is scored with the evaluate stage's code into
``metrics/eval_history.csv``; every ``checkpoint_every`` steps (and at the end) a checkpoint is
written atomically (``pico.checkpoint``). ``pico.train_metrics`` owns those files.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from pico import (
    checkpoint,
    codedeps,
    distributed,
    dynamics,
    numerics,
    optim,
    runfolder,
    runstore,
    train_metrics,
)
from pico.config import Params
from pico.data.eval_windows import EvalWindows
from pico.data.loader import GlobalRowOrder, RowLoader
from pico.data.tokens_dir import TokensDir
from pico.distributed import Dist
from pico.errors import TrainingDiverged, TrainingFailed, TrainingInterrupted
from pico.evaluate import evaluate_model
from pico.faults import Faults
from pico.lineage import continue_code, continue_plan, run_fingerprint, run_plan
from pico.loss import resolve_kernel
from pico.model import PicoDecoder, check_attention_kernel
from pico.monitor import LossWatch, eval_verdict
from pico.parentwatch import ParentWatch
from pico.preempt import StopRequest
from pico.runlock import RunLock
from pico.runtime import build_model, model_dims, pick_device  # noqa: F401  (build_model: tests, benchmarks)
from pico.train_metrics import RunStatus, TrainSummary

FSDP_PRESETS = ("medium", "large")  # training.parallelism auto shards these across processes


def source_epochs(manifest: dict[str, Any], epochs: float) -> dict[str, dict[str, float]]:
    """Epochs over each source's unique documents after ``epochs`` over the packed rows."""
    return {
        name: {"epochs": round(epochs * s["copies"], 6), "copies": s["copies"], "unique_tokens": s["unique_tokens"]}
        for name, s in manifest.get("sources", {}).items()
        if s.get("unique_tokens")
    }


def compile_model(model: PicoDecoder, mode: str = "default", per_block: bool = False) -> None:
    """torch.compile the model's trunk (embedding, blocks, final norm) as one graph — fewer kernel
    launches and guards per step, which matters at small batches where the host is the bottleneck —
    or, under FSDP, each block (as torchtitan does), since FSDP's hooks sit between blocks. In place:
    parameter names and checkpoints are unchanged, and the chunked/fused loss stays eager (pico.loss)."""
    if per_block:
        for layer in model.layers:
            layer.compile(mode=mode)
    else:
        model.hidden_states = torch.compile(model.hidden_states, mode=mode)  # shadows the method


@dataclass
class TrainState:
    """What changes as a run trains; saved in every checkpoint's state.json."""

    watch: LossWatch
    step: int = 0
    position: int = 0  # rows consumed, over all ranks (the global row order's cursor)
    status: RunStatus = "running"
    reason: str | None = None
    history: dict[str, list[dict]] = field(default_factory=lambda: {"train": [], "eval": [], "perf": [], "events": []})
    # the steps of the log interval a checkpoint fell inside, so a resumed run logs the same interval means
    unlogged: dict[str, list[float]] = field(default_factory=lambda: {"losses": [], "norms": []})
    plan: dict[str, Any] = field(default_factory=dict)  # run_plan of the params now in effect
    lineage: list[dict[str, Any]] = field(default_factory=list)  # plan segments (pico.optim.continued_segment)
    code_lineage: list[dict[str, Any]] = field(default_factory=list)  # training-code versions (pico.lineage)

    @property
    def code_version(self) -> str | None:
        """The training code the newest steps ran under (an ended run rerun under newer code keeps its own)."""
        return self.code_lineage[-1]["code_version"] if self.code_lineage else None

    def state_dict(self) -> dict[str, Any]:
        # perf rows are wall-clock: kept out of checkpoints so their hash is the same on every rerun
        history = {k: v for k, v in self.history.items() if k != "perf"}
        return {
            "step": self.step,
            "position": self.position,
            "status": self.status,
            "reason": self.reason,
            "history": history,
            "loss_running_mean": self.watch.mean,
            "unlogged": self.unlogged,
            "plan": self.plan,
            "lineage": self.lineage,
            "code_lineage": self.code_lineage,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step, self.position = state["step"], state["position"]
        self.history = {**state["history"], "perf": []}
        self.status, self.reason = state.get("status", "running"), state.get("reason")
        self.watch.mean = state.get("loss_running_mean")
        self.unlogged = state.get("unlogged", {"losses": [], "norms": []})
        self.plan, self.lineage = state["plan"], state["lineage"]  # set by continue_plan
        # set by continue_code; a checkpoint from before code lineages: the version it recorded
        self.code_lineage = state.get("code_lineage") or [{"step": 0, "code_version": state.get("code_version")}]


class Interval:
    """The steps since the last log line. Their losses and gradient norms stay on the device until
    ``read`` brings them to the host in one sync and checks them, in step order."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.reset(self.started)

    def reset(self, now: float) -> None:
        self.pending: list[tuple[int, float, torch.Tensor, torch.Tensor]] = []  # (step, lr, loss, norm), unread
        self.losses: list[float] = []
        self.norms: list[float] = []
        self.carried = 0  # steps of this interval run before a resume (not timed by this clock)
        self.clock = now

    def add(self, step: int, lr: float, loss: torch.Tensor, grad_norm: torch.Tensor) -> None:
        self.pending.append((step, lr, loss.detach(), grad_norm.detach()))

    def read(self, watch: LossWatch) -> str | None:
        """Read the pending steps into ``losses``/``norms``; why the run diverged, or None."""
        if not self.pending:
            return None
        values = torch.stack([torch.stack((loss.double(), norm.double())) for _, _, loss, norm in self.pending])
        pending, self.pending = self.pending, []
        for (step, lr, _, _), (loss, norm) in zip(pending, values.tolist()):
            self.losses.append(loss)
            self.norms.append(norm)
            why = watch.check(step, loss, norm)
            if why:
                return f"{why} (lr {lr:.3g})"
        return None


def nonfinite(loss: torch.Tensor, grad_norm: torch.Tensor) -> torch.Tensor:
    """1.0 where the step must not be applied (fused AdamW's ``found_inf``), computed on the device."""
    return (~(torch.isfinite(loss) & torch.isfinite(grad_norm))).to(torch.float32)


class Trainer:
    def __init__(
        self,
        params: Params,
        d: Dist,
        progress: bool,
        stop: StopRequest | None = None,
        resources: contextlib.ExitStack | None = None,
        on_start: Callable[[Params, tuple], None] | None = None,
    ):
        self.params, self.t, self.d, self.progress, self.on_start = params, params.training, d, progress, on_start
        self.stop = stop or StopRequest(params.training.stop_grace_s)  # SIGTERM/SIGINT (pico.preempt)
        if self.t.num_threads:
            torch.set_num_threads(self.t.num_threads)
        torch.use_deterministic_algorithms(True, warn_only=True)
        self.device = pick_device(params, d)
        if self.device.type == "cuda":
            torch.set_float32_matmul_precision("high")  # TF32 matmuls
        self.autocast = (
            torch.autocast(self.device.type, dtype=torch.bfloat16)
            if self.t.precision == "bf16"
            else contextlib.nullcontext()
        )
        self.dims = model_dims(params)
        dtype = torch.bfloat16 if self.t.precision == "bf16" else torch.float32  # what attention sees under autocast
        self.attention_kernel = check_attention_kernel(self.t.attention_kernel, self.dims, self.device, dtype)
        tokens = TokensDir(params.data.tokens_dir)
        self.rows, self.data_manifest = tokens.open_rows(params.data.seq_len)
        tokens.check_consistent()
        tokens.verify_train(self.dims.vocab_size)
        self.windows = EvalWindows(tokens)
        # the first rows of the global order: a fixed sample every evaluation after they were trained on
        # scores in eval mode, so a train/held-out gap is not confounded with dropout
        n_seen = min(params.evaluation.seen_rows, len(self.rows))
        self.seen_rows = np.sort(GlobalRowOrder(len(self.rows), self.t.seed, self.t.shuffle).indices(0, n_seen))
        self.code = codedeps.code_version("train")
        self.fingerprint = run_fingerprint(params, self.data_manifest, self.windows.manifest, self.code, d.world)
        # the run's own folder, outside every DVC output (pico.runstore); checkpoint_dir shows it
        self.run_dir, self.published = runstore.run_dir(params, self.fingerprint), Path(self.t.checkpoint_dir)
        self.stop.on_deadline = lambda: _newest_saved(self.run_dir)
        if d.is_main:  # one trainer per run, whichever workspace (or DVC experiment copy) it starts in
            (resources or contextlib.ExitStack()).enter_context(RunLock(self.run_dir))
        self.batch_rows = self.t.effective_batch_rows(d.world)
        if self.t.global_batch_size is not None and self.t.global_batch_size != self.batch_rows:
            raise ValueError(
                f"training.global_batch_size={self.t.global_batch_size} but micro_batch_size x "
                f"grad_accum_steps x world size = {self.batch_rows}"
            )
        if self.batch_rows > len(self.rows):
            raise ValueError(
                f"training: an optimizer step takes {self.batch_rows} rows (micro_batch_size x "
                f"grad_accum_steps x processes) but {params.data.tokens_dir}/train.bin holds "
                f"{len(self.rows)} rows of {params.data.seq_len} tokens; lower training.micro_batch_size "
                "or training.grad_accum_steps, or add training data"
            )
        self.tokens_per_step = self.batch_rows * params.data.seq_len
        self.loader = RowLoader(
            self.rows, self.t.seed, self.t.micro_batch_size, self.t.grad_accum_steps, d.rank, d.world, self.t.shuffle
        )
        self.state = TrainState(
            LossWatch(params.early_stop),
            plan=run_plan(params),
            lineage=[{"step": 0, "max_steps": self.t.max_steps, "kind": "retarget"}],
            code_lineage=[{"step": 0, "code_version": self.code}],
        )
        self.metrics = train_metrics.Writer(self.t.metrics_dir) if d.is_main else None
        self._build_model()
        self.dynamics = self._dynamics_capture()
        self.faults = Faults(fresh_run=self.restored is None)
        self.supervisor = ParentWatch() if d.is_main else None  # the dvc that started us, if any
        self.saved_step = self.restored.state["step"] if self.restored else None  # the newest step on disk

    def _build_model(self) -> None:
        """Model, optimizer and lr schedule, restored from a checkpoint when there is one to
        continue, sharded (FSDP) or wrapped (DDP) for several processes, compiled on request."""
        params, d = self.params, self.d
        torch.manual_seed(self.t.seed)
        self.model = PicoDecoder(self.dims).to(self.device)
        self.model.loss_kernel = resolve_kernel(self.t.loss_kernel, self.device)
        self.model.attention_kernel = self.attention_kernel
        self.n_params = self.model.num_parameters()
        # fused AdamW can skip a non-finite step on the device, so the host need not read every loss
        self.guard_on_device = fused = self.fused_optimizer(self.device)
        self.optimizer = optim.make_optimizer(self.model, params, fused=fused)
        self.scheduler = optim.make_scheduler(self.optimizer, params)
        shown = self._open_run_folder()
        self.restored = runfolder.restore(
            self.run_dir,
            self.fingerprint,
            self.t.restart_from,
            self.model,
            self.optimizer,
            d,
            max_step=self.t.max_steps,
            search=[runstore.store_root(params)],
        )
        if d.is_main:
            if shown and shown[0] != self.fingerprint:
                print(
                    f"{self.published} showed run {shown[0]} (step {shown[1]}); it stays in the run store "
                    f"({self.run_dir.with_name(shown[0])}) and continues from there when its params come back "
                    "(`git checkout REV -- params.yaml` or `dvc exp apply EXP`, then `dvc repro`). This run "
                    f"({self.fingerprint}) "
                    + (f"continues from step {self.restored.state['step']}" if self.restored else "starts at step 0")
                )
            runstore.publish(self.run_dir, self.published)  # checkpoint_dir shows this run from now on
        self.fsdp = d.world > 1 and (
            self.t.parallelism == "fsdp" or (self.t.parallelism == "auto" and params.model.preset in FSDP_PRESETS)
        )
        if self.t.compile:  # before sharding, as torchtitan
            compile_model(self.model, self.t.compile_mode, per_block=self.fsdp)
        if self.fsdp:
            names = [n for group in optim.param_groups(self.model) for n in group]
            self.optimizer = distributed.shard_with_optimizer(
                self.model, self.optimizer, names, lambda m: optim.make_optimizer(m, params, fused=fused)
            )
        r = self.restored
        if r is not None and r.rebase:
            self.scheduler = optim.rebased_scheduler(self.optimizer, params, r.state["step"])
            # a new run: a fresh plan and code lineage
            r.state.update(plan=self.state.plan, lineage=self.state.lineage, code_lineage=self.state.code_lineage)
            r.state["history"].setdefault("events", []).append(
                {"step": r.state["step"], "event": f"restarted from {r.path} with lr {params.optim.lr:g}"}
            )
            print(f"restarting from {r.path} (step {r.state['step']}) with lr {params.optim.lr:g}")
        elif r is not None or self.fsdp:
            changes = [continue_plan(params, r.state)] if r else []
            if r and r.state.get("status") not in ("completed", "early_stopped"):  # it trains on: under this code
                changes.append(continue_code(r.state, self.code))
            for change in changes:
                if change:
                    r.state["history"].setdefault("events", []).append({"step": r.state["step"], "event": change})
                    print(change)
            self.scheduler = optim.make_scheduler(
                self.optimizer,
                params,
                r.scheduler_state if r else self.scheduler.state_dict(),
                r.state["lineage"] if r else None,
            )
        if r is not None:
            self.state.load_state_dict(r.state)
            if d.is_main:  # the wall-clock rows come from perf.csv, up to the checkpoint's step
                self.state.history["perf"] = train_metrics.read_perf(self.t.metrics_dir, r.state["step"])
        self.forward = (
            self.model
            if d.world == 1 or self.fsdp
            else DistributedDataParallel(self.model, device_ids=[d.local_rank] if self.device.type == "cuda" else None)
        )
        self.flops_per_token = self.model.flops_per_token(self.params.data.seq_len)

    def _open_run_folder(self) -> tuple[str, int] | None:
        """Before restoring (rank 0 acts, all wait): what checkpoint_dir holds that the store lacks goes
        into the store, and a fresh start the flow asked for sets this run aside. Returns the run
        checkpoint_dir showed, (fingerprint, step), so the start can say what became of it."""
        shown = runstore.shown_run(self.published)
        if self.d.is_main:
            for line in runstore.adopt(self.published, runstore.store_root(self.params)):
                print(line)
            token = os.environ.get(runstore.FRESH_ENV)
            if token and (line := runstore.start_fresh(self.run_dir, token)):
                print(line)
        self.d.barrier()
        return shown

    def _dynamics_capture(self) -> dynamics.Capture | None:
        if not self.params.learning_dynamics.enabled:
            return None
        if self.d.world > 1:  # a replica's backward outside DDP's wrapper would stall its gradient sync
            raise ValueError(
                "learning_dynamics.enabled needs a one-process run (training.nproc 1); "
                f"this run has {self.d.world} processes"
            )
        dynamics.hooked_modules(self.model, self.params.learning_dynamics.layer_suffixes)  # fail now, not at step 1000
        return dynamics.Capture(
            self.params, self.dims, self.windows, self.rows, self.loader, self.device, self.autocast, self.run_dir
        )

    def capture_dynamics(self) -> None:
        """pico-analyze's activations, weights and gradients at this step (pico.dynamics)."""
        before = self.dynamics.seconds
        with self.eager():
            folder = self.dynamics(self.model, self.state.step, self.state.position)
        tqdm.write(f"learning dynamics at step {self.state.step}: {folder} ({self.dynamics.seconds - before:.2f} s)")

    def eager(self) -> Any:
        """Eager even when compiled: evaluation's and capture's varying batch shapes would each recompile."""
        return torch.compiler.set_stance("force_eager") if self.t.compile else contextlib.nullcontext()

    @staticmethod
    def fused_optimizer(device: torch.device) -> bool:
        """Fused AdamW on GPUs; on CPUs the foreach implementation, whose results the committed runs hold."""
        return device.type == "cuda"

    # ---- the loop ----
    def fit(self) -> TrainSummary:
        s, t = self.state, self.t
        self._announce()
        if s.status in ("completed", "early_stopped"):
            print(f"this run already ended ({s.status}{': ' + s.reason if s.reason else ''}); nothing to train")
            return self.finish()
        if self.d.is_main:  # the params are valid and the data sound: this run's files replace the last run's
            self.record_invocation()
            train_metrics.write(t.metrics_dir, s.history, self.summary(), self.wall_s())
        if s.step == 0 and t.eval_at_start:
            self.evaluate()
        if s.step == 0 and self.dynamics:
            self.capture_dynamics()
        self.model.train()
        bar = tqdm(
            total=t.max_steps, initial=s.step, desc="train", unit="step", disable=not self.progress, mininterval=2
        )
        interval = self.interval = Interval()
        interval.losses, interval.norms = list(s.unlogged["losses"]), list(s.unlogged["norms"])
        interval.carried = len(interval.losses)
        while s.step < t.max_steps:
            why = self.interrupted()  # asked every step: a preempted machine gives seconds, not a log interval
            if why:
                bar.close()
                self.stop_interrupted(why)
            lr = self.scheduler.get_last_lr()[0]
            loss, grad_norm = self.forward_backward()
            loss = self.faults.loss(s.step + 1, loss)
            interval.add(s.step + 1, lr, loss, grad_norm)
            n = s.step + 1
            last = n == t.max_steps
            log_due, eval_due = n % t.log_every == 0 or last, n % t.eval_every == 0 or last
            save_due = n % t.checkpoint_every == 0 or last
            # The host reads losses only when something is due (and on CPU, where it costs nothing, at
            # every step); between reads, fused AdamW skips on the device any step whose loss or gradient
            # norm is not finite. Either way no non-finite update lands, and nothing is logged, evaluated
            # or saved after a divergence.
            if self.guard_on_device:
                self.optimizer.found_inf = nonfinite(loss, grad_norm)
            diverged = interval.read(s.watch) if log_due or eval_due or save_due or not self.guard_on_device else None
            if diverged:  # the weights are the last good ones, or (read late) updated only by finite steps
                bar.close()
                return self.diverge(diverged)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            s.step, s.position = n, s.position + self.batch_rows
            bar.update(1)

            if log_due:
                bar.set_postfix(loss=f"{interval.losses[-1]:.3f}", lr=f"{lr:.2e}", refresh=False)
                self.log(interval, lr)
            stop = self.evaluate() if eval_due else None
            if stop:
                s.status, s.reason = "early_stopped", stop
                tqdm.write(f"early stop at step {s.step}: {stop}")
            elif last:
                s.status = "completed"
            if (log_due or stop) and self.d.is_main:
                # `pico report` mid-run reads "in progress at step k", `dvc exp show` this run's headline
                self.metrics.submit(s.history, self.summary(), self.wall_s())
            if self.dynamics and (self.dynamics.due(s.step) or stop):
                self.capture_dynamics()  # before the checkpoint: a saved step has its capture
            if save_due or stop:
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
        batches = self.loader.step_batches(self.state.position)
        step_loss = torch.zeros((), dtype=torch.float64, device=self.device)
        for i, batch in enumerate(batches):
            if self.device.type == "cuda":  # pinned, so the copy is asynchronous and the host runs ahead
                batch = batch.pin_memory()
            batch = batch.to(self.device, non_blocking=True)
            sync = self.d.world == 1 or i == len(batches) - 1  # all-reduce once, on the last micro-batch
            if self.fsdp:
                self.model.set_requires_gradient_sync(sync)
            with contextlib.nullcontext() if sync or self.fsdp else self.forward.no_sync(), self.autocast:
                loss = self.forward(batch[:, :-1], batch[:, 1:])  # the chunked/fused loss (pico.loss)
                (loss / self.t.grad_accum_steps).backward()
            step_loss += loss.detach().double() / self.t.grad_accum_steps
        clip = self.params.optim.max_grad_norm if self.params.optim.max_grad_norm is not None else math.inf
        grad_norm = distributed.total_norm(torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip))
        return self.d.mean(step_loss), grad_norm  # every rank sees the global loss, so all stop together

    # ---- what is due after a step ----
    def log(self, interval: Interval, lr: float) -> None:
        s, now = self.state, time.perf_counter()
        s.history["train"].append(
            {
                "step": s.step,
                "loss": interval.losses[-1],
                "loss_mean": math.fsum(interval.losses) / len(interval.losses),
                "lr": lr,
                "grad_norm": interval.norms[-1],
                "grad_norm_max": max(interval.norms),
                "tokens": s.step * self.tokens_per_step,
            }
        )
        rate = (len(interval.losses) - interval.carried) * self.tokens_per_step / (now - interval.clock)
        flops, peak = self.flops_per_token, self.t.peak_flops
        s.history["perf"].append(
            {
                "step": s.step,
                "tokens_per_s": round(rate, 1),
                "elapsed_s": round(now - interval.started, 2),
                "model_flops_per_s": round(rate * flops),
                "mfu": round(rate * flops / (peak * self.d.world), 5) if peak else "",
            }
        )
        timed = len(interval.losses) - interval.carried
        self.eta_s = round((self.t.max_steps - s.step) * (now - interval.clock) / timed, 1)
        if not self.progress and self.d.is_main:  # no progress bar (output to a pipe: DVC, Prefect): a line
            print(
                train_metrics.progress_line(
                    s.step, self.t.max_steps, s.history["train"][-1]["loss_mean"], lr, rate, self.eta_s
                ),
                flush=True,
            )
        interval.reset(now)

    def evaluate(self) -> str | None:
        """Evaluate (rank 0 records; under FSDP every rank runs the sharded forward), keep the best
        checkpoint, and return every rank the same reason to stop early (or None)."""
        s, es, verdict = self.state, self.params.early_stop, None
        if self.d.is_main or self.fsdp:
            with self.eager():
                metrics = evaluate_model(
                    self.model,
                    self.windows,
                    self.params.evaluation.batch_size,
                    self.params.evaluation.max_windows_per_source,
                    self.device,
                )
                seen = self.seen_loss() if len(self.seen_rows) and s.position >= len(self.seen_rows) else None
            s.history["eval"].append(
                train_metrics.eval_row(
                    s.step, s.step * self.tokens_per_step, s.position / len(self.rows), metrics, seen
                )
            )
            if self.d.is_main:  # on disk before the line announcing it: the Prefect flow reads the files then
                self.metrics.submit(s.history, self.summary(), self.wall_s())
                self.metrics.wait()
            tqdm.write(train_metrics.eval_line(s.step, metrics["macro"]))
            verdict = eval_verdict(s.history["eval"], es)
        is_best, stop = self.d.broadcast((verdict.is_best, verdict.stop_reason) if verdict else None)
        if es.enabled and is_best:
            self.save(checkpoint.BEST)
        return stop

    @torch.no_grad()
    def seen_loss(self) -> float:
        """Mean token loss of the fixed sample of already-seen training rows, in eval mode."""
        was_training = self.model.training
        self.model.eval()
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        bs = self.params.evaluation.batch_size
        for i in range(0, len(self.seen_rows), bs):
            batch = torch.from_numpy(np.asarray(self.rows[self.seen_rows[i : i + bs]], dtype=np.int64)).to(self.device)
            with self.autocast:
                total += self.model(batch[:, :-1], batch[:, 1:]).double() * len(batch)
        self.model.train(was_training)
        return float(total) / len(self.seen_rows)

    def save(self, name: str | None = None, interim: bool = False) -> None:
        """Rank 0 writes (DDP keeps every rank's weights and optimizer state equal; FSDP gathers them
        first, which every rank takes part in); all wait. ``interim``: written because the run was
        stopped between periodic checkpoints; pruned once a newer one exists (pico.checkpoint)."""
        gathered = (
            {
                "weights": distributed.full_weights(self.model),
                "optimizer_state": distributed.full_optimizer_state(self.model, self.optimizer),
            }
            if self.fsdp
            else {}
        )
        if self.d.is_main:
            try:
                self.metrics.flush()  # the metric files are never behind a checkpoint
            finally:  # and an unwritable metrics folder does not lose the steps: state.json holds the history
                checkpoint.save(
                    self.run_dir,
                    self.state.step,
                    self.model,
                    self.optimizer,
                    self.scheduler,
                    self.state_json(),
                    self.t.keep_checkpoints,
                    name=name,
                    interim=interim,
                    **gathered,
                )
                runstore.publish(self.run_dir, self.published)
        if name is None:
            self.saved_step = self.state.step
        self.d.barrier()

    def state_json(self) -> dict[str, Any]:
        """A checkpoint's state.json: the train state plus what identifies the run."""
        if hasattr(self, "interval"):  # saves come after the host read the interval's steps
            self.state.unlogged = {"losses": list(self.interval.losses), "norms": list(self.interval.norms)}
        return {
            "fingerprint": self.fingerprint,
            **self.state.state_dict(),
            "model_dims": self.dims.to_dict(),
            "config": self.params.model_dump(mode="json"),
            "code_version": self.state.code_version,
            "tokenizer_sha256": self.data_manifest["tokenizer_sha256"],
            "train_data_sha256": self.data_manifest["sha256"],
        }

    # ---- how a run ends ----
    def interrupted(self) -> str | None:
        """Why this run must stop now, agreed by every rank: a signal to any of them, or the DVC
        process that started rank 0 gone (pico.parentwatch); None to go on."""
        gone = bool(self.supervisor and self.supervisor.gone)
        if not self.d.any(self.stop.signum is not None or gone):
            return None
        if self.stop.signum is not None:
            return self.stop.name
        if gone:
            return f"the dvc process that started this trainer ({self.supervisor.describe()}) has exited"
        return "another rank was stopped"

    def stop_interrupted(self, why: str) -> None:
        """Save the steps trained since the newest checkpoint (unless there are none) and stop with
        one line: where it stopped and how to continue. Raises ``TrainingInterrupted``."""
        s, started, wrote = self.state, time.perf_counter(), self.saved_step != self.state.step
        if wrote:
            diverged = self.interval.read(s.watch)  # the steps not yet read belong in the checkpoint
            if diverged:
                self.diverge(diverged)
            self.save(interim=True)
        if self.d.is_main:
            self.supervisor.close()
            self.metrics.submit(s.history, self.summary(), self.wall_s())
            self.metrics.close()
            self.record_invocation(ended=True)
        newest = self.published / checkpoint.latest_checkpoint(self.run_dir).name
        saved = (
            f"checkpoint {newest} written in {time.perf_counter() - started:.1f} s"
            if wrote
            else f"its newest checkpoint {newest} is at this step"
        )
        self.stop.uninstall()
        raise TrainingInterrupted(
            f"stopped at step {s.step} of {self.t.max_steps} ({why}): {saved}; "
            "rerun the same command (dvc repro, dvc exp run, pico train) to continue from it",
            self.stop.exit_code,
        )

    def diverge(self, why: str) -> TrainSummary:
        self.state.status, self.state.reason = "diverged", why
        summary = self.finish()
        raise TrainingDiverged(
            f"{why}; last good checkpoint: {Path(self.t.checkpoint_dir) / (summary.last_good_checkpoint or 'none')}"
        )

    def finish(self) -> TrainSummary:
        d = self.d
        identical = None if self.fsdp else d.all_equal(distributed.weights_digest(self.model))  # FSDP: shards
        summary = self.summary(identical)
        if d.is_main:
            runstore.publish(self.run_dir, self.published)  # captures made since the last save
            if self.dynamics and self.dynamics.seconds:
                print(
                    f"learning dynamics: {self.dynamics.seconds:.1f} s of this invocation's "
                    f"{time.perf_counter() - self.invocation['clock']:.1f} s, in "
                    f"{dynamics.store(self.published)} (`pico export-analysis OUT` for pico-analyze)"
                )
            self.supervisor.close()
            self.metrics.close()
            self.record_invocation(ended=True)
            train_metrics.write(self.t.metrics_dir, self.state.history, summary, self.wall_s())
        return summary

    def wall_s(self) -> float:
        """The run's wall time so far: earlier invocations of this run plus this one."""
        return round(self.invocation["before_s"] + time.perf_counter() - self.invocation["clock"], 1)

    def record_invocation(self, ended: bool = False) -> None:
        """This invocation in run_info.json (machine, numerics, steps, wall time): not hashed by DVC."""
        if not hasattr(self, "invocation"):
            info = train_metrics.read_run_info(self.t.metrics_dir)
            before = (
                sum(c.get("wall_s") or 0 for c in info.get("invocations", []))
                if info.get("fingerprint") == self.fingerprint
                else 0.0
            )
            self.invocation = {
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "from_step": self.state.step,
                "clock": time.perf_counter(),
                "before_s": before,
            }
        inv = self.invocation
        record = {
            "started": inv["started"],
            "from_step": inv["from_step"],
            "to_step": self.state.step,
            "status": self.state.status,
        }
        if ended:
            ran = [r for r in self.state.history["perf"] if r["step"] > inv["from_step"]]
            record.update(
                wall_s=round(time.perf_counter() - inv["clock"], 1), median_tokens_per_s=train_metrics.median_rate(ran)
            )
        machine = {"numerics": self.t.numerics, "device": str(self.device), **numerics.describe()}
        train_metrics.record_invocation(self.t.metrics_dir, self.fingerprint, machine, record)

    def summary(self, identical: bool | None = None) -> TrainSummary:
        s, d = self.state, self.d
        verdict = eval_verdict(s.history["eval"], self.params.early_stop) if s.history["eval"] else None
        final_train = s.history["train"][-1] if s.history["train"] else {}
        return TrainSummary(
            status=s.status,
            reason=s.reason,
            step=s.step,
            max_steps=self.t.max_steps,
            final_loss=final_train.get("loss"),
            final_loss_mean=final_train.get("loss_mean"),
            min_loss_mean=min((r["loss_mean"] for r in s.history["train"]), default=None),
            best_eval_loss=verdict.best_loss if verdict else None,
            best_eval_step=verdict.best_step if verdict else None,
            # a folder name inside training.checkpoint_dir, so equal runs write equal summaries
            last_good_checkpoint=getattr(checkpoint.latest_checkpoint(self.run_dir), "name", None),
            tokens=s.step * self.tokens_per_step,
            epochs=s.position / len(self.rows),
            effective_batch_rows=self.batch_rows,
            effective_batch_tokens=self.tokens_per_step,
            processes=d.world,
            parallelism="single" if d.world == 1 else "fsdp" if self.fsdp else "ddp",
            weights_identical_across_ranks=identical if d.world > 1 else None,
            parameters=self.n_params,
            fingerprint=self.fingerprint,
            code_version=s.code_version,
            code_lineage=s.code_lineage,
            events=s.history.get("events", []),
            eta_s=getattr(self, "eta_s", None) if s.status == "running" else None,
            source_epochs=source_epochs(self.data_manifest, s.position / len(self.rows)),
        )

    def _announce(self) -> None:
        p, d = self.params, self.d
        print(
            f"model: {p.model.preset} d_model={self.dims.d_model} vocab={self.dims.vocab_size} -> "
            f"{self.n_params:,} parameters; effective batch {self.batch_rows} rows x {p.data.seq_len} tokens = "
            f"{self.tokens_per_step:,} tokens/step; {len(self.rows)} rows of data; device {self.device}"
            + (f"; {d.world} processes ({'FSDP' if self.fsdp else 'DDP'})" if d.world > 1 else "")
        )
        print(f"run fingerprint {self.fingerprint} (params, data, tokenizer, training code {self.code})")
        if d.is_main and self.state.step < self.t.max_steps and self.on_start:
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
    d = distributed.setup(params.training.backend)
    # one trainer per checkpoint folder (rank 0 holds the lock for the job)
    try:
        with contextlib.ExitStack() as locks, distributed.quiet_unless_main(d):
            if d.is_main:
                locks.enter_context(RunLock(params.training.checkpoint_dir))
            wants = os.isatty(2) if progress is None else progress
            return Trainer(params, d, wants and d.is_main, stop, locks, on_start).fit()
    finally:
        stop.uninstall()
        distributed.teardown(d)


def _newest_saved(run_dir: Path) -> str:
    newest = checkpoint.latest_checkpoint(run_dir)
    return f"the rerun resumes from {newest}" if newest else "the rerun starts from step 0"


# `pico train` with training.nproc > 1 names a file here for the ranks: a run stopped on request is
# reported through it by the launcher (one line), not as torchrun's failure report of every rank
STOP_REPORT_ENV = "PICO_STOP_REPORT"


def main(
    params: Params,
    params_path: str = "params.yaml",
    on_start: Callable[[Params, tuple], None] | None = None,
    stop: StopRequest | None = None,
) -> None:
    """``pico train``: this process, or ``training.nproc`` processes under torchrun."""
    t = params.training
    if t.nproc > 1 and not distributed.under_torchrun():
        if stop and stop.signum:  # signalled while starting: nothing launched, nothing trained
            raise TrainingInterrupted(f"stopped before training started ({stop.name}); rerun to train", stop.exit_code)
        report = Path(f"{Path(t.checkpoint_dir).resolve()}.stopped.json")
        report.unlink(missing_ok=True)
        os.environ[STOP_REPORT_ENV] = str(report)
        code = distributed.launch(params_path, t.nproc)
        if report.is_file():
            stopped = json.loads(report.read_text())
            report.unlink()
            raise TrainingInterrupted(stopped["message"], stopped["exit_code"])
        if code != 0:
            raise TrainingFailed(f"{t.nproc} training processes ended with exit code {code}")
        return
    try:
        summary = run(params, on_start=on_start, stop=stop)
    except TrainingInterrupted as stopped:
        if not os.environ.get(STOP_REPORT_ENV):
            raise
        if os.environ.get("RANK", "0") == "0":
            Path(os.environ[STOP_REPORT_ENV]).write_text(
                json.dumps({"message": str(stopped), "exit_code": stopped.exit_code})
            )
        return  # every rank ends cleanly; the launcher says where the run stopped
    final = f"{summary.final_loss:.4f}" if summary.final_loss is not None else "n/a"
    print(f"train: {summary.status} at step {summary.step}, final loss {final}")
