"""Learning-dynamics capture: the cost of a run with capture on at every checkpoint vs the same run without.

    dvc repro tokenize   # the embedded default's data, once
    python benchmarks/bench_dynamics.py [--max-steps 200] [--rounds 2]

Runs the embedded default (params.yaml: tiny model, 16 x 128-token rows per step, evaluation and a
checkpoint every 50 steps) in scratch folders, each run in a fresh process, alternating plain and
captured runs and which goes first (machine drift hits both alike), and prints each wall time and
the ratio. Capture writes pico-analyze's train/val activations, weights and gradients at step 0, every checkpoint and the last step; the
peer is the identical run with ``learning_dynamics.enabled: false`` (which trains the same bits).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from pico import numerics
from pico.config import parse_params


def one_run(raw: dict, scratch: Path, capture: bool, max_steps: int) -> tuple[float, float]:
    """Wall seconds of the run, and the seconds its captures took (the trainer's own count)."""
    raw = {
        **raw,
        "training": {
            **raw["training"],
            "max_steps": max_steps,
            "checkpoint_dir": str(scratch / "ckpt"),
            "metrics_dir": str(scratch / "metrics"),
            "run_store": str(scratch / "runs"),  # not the repository's store, which may hold this run ended
        },
        "learning_dynamics": {**raw["learning_dynamics"], "enabled": capture},
    }
    params = parse_params(raw)
    numerics.apply(params.training.numerics)  # a fresh process: before torch loads
    from pico import dynamics, train

    t0 = time.perf_counter()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        train.run(params, progress=False)
    wall = time.perf_counter() - t0
    spent = re.search(r"^learning dynamics: ([\d.]+) s of", out.getvalue(), re.M)
    if capture:
        steps = dynamics.captured_steps(params.training.checkpoint_dir)
        size = sum(f.stat().st_size for f in dynamics.store(params.training.checkpoint_dir).rglob("*.pt"))
        print(f"  captured steps {steps}: {size / 2**20:.1f} MiB in {spent.group(1)} s", flush=True)
    return wall, float(spent.group(1)) if spent else 0.0


def in_fresh_process(scratch: str, capture: bool, max_steps: int) -> tuple[float, float]:
    """One run in its own interpreter: a process's second run is ~10 % slower here (bench_mirror.py)."""
    cmd = [sys.executable, __file__, "--one", scratch, "--max-steps", str(max_steps)] + (
        ["--capture"] if capture else []
    )
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    lines = done.stdout.strip().splitlines()
    print("\n".join(lines[:-1]), flush=True)
    return tuple(json.loads(lines[-1]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--max-steps", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)  # one run in this process: its scratch folder
    ap.add_argument("--capture", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    raw = yaml.safe_load(Path("params.yaml").read_text())
    if args.one:
        print(json.dumps(one_run(raw, Path(args.one), args.capture, args.max_steps)))
        return
    plain, captured, spent = [], [], []
    for r in range(args.rounds):  # the order alternates, so drift hits both alike
        with (
            tempfile.TemporaryDirectory(prefix="bench-ld-", dir=".") as a,
            tempfile.TemporaryDirectory(prefix="bench-ld-", dir=".") as b,
        ):
            if r % 2:
                wall, s = in_fresh_process(b, True, args.max_steps)
                plain.append(in_fresh_process(a, False, args.max_steps)[0])
            else:
                plain.append(in_fresh_process(a, False, args.max_steps)[0])
                wall, s = in_fresh_process(b, True, args.max_steps)
            captured.append(wall)
            spent.append(s)
        print(
            f"round {r + 1}: plain {plain[-1]:.1f} s, capture at every checkpoint {captured[-1]:.1f} s "
            f"(+{100 * (captured[-1] / plain[-1] - 1):.1f} %; the captures themselves {spent[-1]:.1f} s = "
            f"{100 * spent[-1] / plain[-1]:.1f} % of the plain run)",
            flush=True,
        )
    p, c, s = statistics.median(plain), statistics.median(captured), statistics.median(spent)
    print(
        f"median: plain {p:.1f} s, with capture {c:.1f} s -> {100 * (c / p - 1):+.1f} %; capture time "
        f"{s:.1f} s = {100 * s / p:.1f} % of the plain run ({args.max_steps} steps, checkpoint_every "
        f"{raw['training']['checkpoint_every']})"
    )


if __name__ == "__main__":
    main()
