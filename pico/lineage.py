"""A run's identity and lineage: what makes two invocations one run (``run_fingerprint``), and how a
run continues when what does not define it changes — its plan (``continue_plan``: more steps,
other cadences, early stopping) or the pipeline's training code (``continue_code``).

A checkpoint's ``state.json`` carries both records: ``lineage``, the plan segments the lr schedule
follows (pico.schedule), and ``code_lineage``, one segment per training-code version the run trained
under (``{"step", "code_version"}``), which the summary, the report and ``pico reproduce`` show.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pico import schedule
from pico.config import Params, flatten

# Params that define the trajectory so far: changing one starts a new run (the old one stays in the
# run store, and continues if they come back). Micro-batch and accumulation enter only through the effective
# batch, so a run may resume on another number of processes with the same effective batch.
RUN_DEFINING_TRAINING_KEYS = ("seed", "shuffle", "precision", "compile", "loss_kernel", "attention_kernel", "numerics")
# Params that only extend or watch a run (its plan): changing them continues the same run from its
# newest checkpoint, recorded as a new plan segment in its lineage (``continue_plan``).
PLAN_TRAINING_KEYS = ("max_steps", "log_every", "eval_every", "eval_at_start", "checkpoint_every", "keep_checkpoints")


def run_fingerprint(params: Params, data_manifest: dict, eval_manifest: dict, code: str, world: int = 1) -> str:
    """What defines a run: params that change the computation, the data and the tokenizer (and,
    with ``training.on_code_change: new_run``, the train stage's code, ``pico.codedeps``). Two
    invocations with one fingerprint are one run: the run store keys runs by it (pico.runstore)."""
    t = params.training.model_dump()
    defining = {
        "model": params.model.model_dump(mode="json"),
        "optim": params.optim.model_dump(mode="json"),
        "training": {k: t[k] for k in RUN_DEFINING_TRAINING_KEYS},
        "effective_batch_rows": params.training.effective_batch_rows(world),
        "train_data": data_manifest["sha256"],
        "eval_data": eval_manifest["sha256"],
        "eval_max_windows_per_source": params.evaluation.max_windows_per_source,
        "eval_seen_rows": params.evaluation.seen_rows,
        "tokenizer": data_manifest["tokenizer_sha256"],
        # the code only under on_code_change: new_run; by default a code change continues the run as
        # a recorded segment (``continue_code``)
        "code": code if params.training.on_code_change == "new_run" else None,
        "restart_from": params.training.restart_from,
    }
    return hashlib.sha256(json.dumps(defining, sort_keys=True).encode()).hexdigest()[:16]


def run_plan(params: Params) -> dict[str, Any]:
    """The params that extend or watch a run without changing its trajectory so far, flat."""
    t = params.training.model_dump()
    return {
        **{f"training.{k}": t[k] for k in PLAN_TRAINING_KEYS},
        **{f"early_stop.{k}": v for k, v in params.early_stop.model_dump(mode="json").items()},
        **{f"learning_dynamics.{k}": v for k, v in params.learning_dynamics.model_dump(mode="json").items()},
    }


def _plan_of_config(config: dict[str, Any]) -> dict[str, Any]:
    return {
        **{f"training.{k}": config["training"].get(k) for k in PLAN_TRAINING_KEYS},
        **{f"early_stop.{k}": v for k, v in config.get("early_stop", {}).items()},
        **{f"learning_dynamics.{k}": v for k, v in config.get("learning_dynamics", {}).items()},
    }


def continue_plan(params: Params, state: dict[str, Any]) -> str | None:
    """Bring a checkpoint's state.json (``plan``, ``lineage``, status) to the current plan; returns
    what changed, saying exactly what happens to the lr, or None when the plan is the same."""
    step = state["step"]
    old = state.get("plan") or _plan_of_config(state["config"])  # a checkpoint written before plans
    lineage = state.get("lineage") or [{"step": 0, "max_steps": old["training.max_steps"], "kind": "retarget"}]
    new = run_plan(params)
    changed = {k: (old.get(k), v) for k, v in new.items() if old.get(k) != v}
    state["plan"], state["lineage"] = new, lineage
    if not changed:
        return None
    o, max_steps = params.optim, params.training.max_steps
    if "training.max_steps" in changed:
        seg = schedule.continued_segment(params, lineage, step, max_steps)
        lineage.append(seg)
        lr_now = o.lr * seg["factor_at_step"]
        if seg["kind"] == "retarget" or o.schedule == "constant":
            lr = f"the lr schedule ({o.schedule}, warmup {o.warmup_steps}) now ends at step {max_steps}"
        elif seg["factor_at_step"] <= o.min_lr_ratio:
            lr = f"the lr stays at {lr_now:.3g} (the schedule had reached its floor)"
        else:
            lr = f"the lr decays ({o.schedule}) from {lr_now:.3g} at step {step} to {o.lr * o.min_lr_ratio:.3g} at step {max_steps}"
    else:
        lr = "the lr schedule is unchanged"
    if state.get("status") in ("completed", "early_stopped") and step < max_steps:
        state["status"], state["reason"] = "running", None
    what = ", ".join(f"{k} {json.dumps(a)} -> {json.dumps(b)}" for k, (a, b) in changed.items())
    return f"continued at step {step} under a changed plan: {what}; {lr}"


def continue_code(state: dict[str, Any], code: str) -> str | None:
    """Record in a checkpoint's state.json that the run goes on under training code ``code``; returns
    what changed (None when the code is the one the run last trained under)."""
    segments = state.get("code_lineage") or [{"step": 0, "code_version": state.get("code_version")}]
    state["code_lineage"] = segments
    if segments[-1]["code_version"] == code:
        return None
    step = state["step"]
    if segments[-1]["step"] == step:  # no step trained under the last version: replace it
        segments.pop()
    previous = segments[-1]["code_version"] if segments else state.get("code_version")
    segments.append({"step": step, "code_version": code})
    return (
        f"continued at step {step} under changed training code ({previous} -> {code}); recorded as "
        f"segment {len(segments)} of the run's code lineage (training.on_code_change: new_run starts a "
        "new run instead)"
    )


def param_changes(config: dict[str, Any], params: Params) -> list[str]:
    """What a run started from another run's checkpoint changed: its params against the config the
    checkpoint recorded, flat (``optim.lr 0.003 -> 0.001``); paths and the report are not changes."""
    old, new = flatten(config), flatten(params.model_dump(mode="json"))
    return [
        f"{k} {json.dumps(old.get(k))} -> {json.dumps(v)}"
        for k, v in new.items()
        if old.get(k) != v and k in old and not k.startswith(NOT_CHANGES)
    ]


# where a run's files go and where it came from are not changes to what it computes
NOT_CHANGES = ("training.restart_from", "training.checkpoint_dir", "training.metrics_dir", "evaluation.out", "report.")
