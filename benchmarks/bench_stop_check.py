"""What preemption safety costs the loop: the trainer asks "stop now?" before every step (a signal,
its DVC gone; pico.preempt) and publishes each checkpoint from the run store (pico.runstore).
This times the default run's model and data, interleaved: the real trainer against the same
trainer with the per-step question answered "no" without asking. Prints ms per step and the ratio.

    python benchmarks/bench_stop_check.py [--steps 60] [--rounds 3]    # after `dvc repro` (data/tokens)
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import yaml

from pico import train
from pico.config import parse_params

REPO = Path(__file__).resolve().parents[1]


def params(root: Path, steps: int):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    for key in ("tokens_dir",):
        raw["data"][key] = str(REPO / raw["data"][key])
    raw["tokenizer"]["out_dir"] = str(REPO / raw["tokenizer"]["out_dir"])
    raw["training"].update(
        max_steps=steps,
        eval_every=10_000,
        eval_at_start=False,
        checkpoint_every=20,
        log_every=10,
        num_threads=2,
        checkpoint_dir=str(root / "checkpoints"),
        metrics_dir=str(root / "metrics"),
    )
    return parse_params(raw)


def one(steps: int, check: bool) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        p = params(Path(tmp), steps)
        original = train.Trainer.interrupted
        if not check:
            train.Trainer.interrupted = lambda self: None
        try:
            started = time.perf_counter()
            train.run(p, progress=False)
            return (time.perf_counter() - started) / steps
        finally:
            train.Trainer.interrupted = original


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    one(25, True)  # warm-up: imports, allocator
    with_check, without = [], []
    for _ in range(args.rounds):
        without.append(one(args.steps, False))
        with_check.append(one(args.steps, True))
    a, b = statistics.median(with_check), statistics.median(without)
    print(
        f"per step, {args.steps} steps x {args.rounds} rounds (incl. start-up and {args.steps // 20} saves): "
        f"with the stop check {a * 1e3:.1f} ms, without {b * 1e3:.1f} ms; ratio {a / b:.3f} "
        f"(rounds: {', '.join(f'{x * 1e3:.1f}' for x in with_check)} vs {', '.join(f'{x * 1e3:.1f}' for x in without)})"
    )


if __name__ == "__main__":
    main()
