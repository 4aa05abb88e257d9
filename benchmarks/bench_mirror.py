"""training.mirror: the step time of a run that uploads every checkpoint in the background vs the same
run without a mirror.

    dvc repro tokenize   # the embedded default's data, once
    python benchmarks/bench_mirror.py [--max-steps 200] [--rounds 3] [--mirror URL]

Runs the embedded default (params.yaml: tiny model, 16 x 128-token rows per step, a checkpoint every
50 steps) in scratch folders, each run in a fresh process, alternating plain and mirrored runs and
which goes first in a round, so machine drift (and a process's second run, slower here) hits both alike.
The mirror defaults to a scratch folder on this disk (the upload's cost is the copy and its sha256,
on a thread beside the training loop); pass an s3:// URL to measure a network mirror. Step time is
the median over log intervals of seconds per step (perf.csv: tokens/s over tokens per step), the
figure a person steering a run reads; the wall time of the whole run is printed beside it.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from pico import numerics
from pico.config import parse_params


def one_run(raw: dict, scratch: Path, mirror: str | None, max_steps: int) -> tuple[float, float]:
    """(median seconds per step, wall seconds) of one run."""
    raw = {
        **raw,
        "training": {
            **raw["training"],
            "max_steps": max_steps,
            "checkpoint_dir": str(scratch / "ckpt"),
            "metrics_dir": str(scratch / "metrics"),
            "run_store": str(scratch / "runs"),
            "mirror": mirror,
        },
    }
    params = parse_params(raw)
    numerics.apply(params.training.numerics)  # a fresh process: before torch loads
    from pico import train  # after numerics.apply: torch loads here

    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        train.run(params, progress=False)
    wall = time.perf_counter() - t0
    tokens_per_step = params.training.effective_batch_rows() * params.data.seq_len
    with (scratch / "metrics" / "perf.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    step_s = statistics.median(tokens_per_step / float(r["tokens_per_s"]) for r in rows[1:])  # the first: warm-up
    return step_s, wall


def in_fresh_process(scratch: str, mirror: str | None, max_steps: int) -> tuple[float, float]:
    cmd = [sys.executable, __file__, "--one", scratch, "--max-steps", str(max_steps)] + (
        ["--mirror", mirror] if mirror else []
    )
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return tuple(json.loads(done.stdout.strip().splitlines()[-1]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--max-steps", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--mirror", default=None, help="default: a scratch folder on this disk")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)  # one run in this process: its scratch folder
    args = ap.parse_args()
    raw = yaml.safe_load(Path("params.yaml").read_text())
    if args.one:
        print(json.dumps(one_run(raw, Path(args.one), args.mirror, args.max_steps)))
        return
    plain, mirrored = [], []
    for r in range(args.rounds):
        with (
            tempfile.TemporaryDirectory(prefix="bench-mirror-", dir=".") as a,
            tempfile.TemporaryDirectory(prefix="bench-mirror-", dir=".") as b,
        ):
            mirror = args.mirror or str(Path(b) / "mirror")
            if r % 2 == 0:
                plain.append(in_fresh_process(a, None, args.max_steps))
                mirrored.append(in_fresh_process(b, mirror, args.max_steps))
            else:
                mirrored.append(in_fresh_process(b, mirror, args.max_steps))
                plain.append(in_fresh_process(a, None, args.max_steps))
        (ps, pw), (ms, mw) = plain[-1], mirrored[-1]
        print(
            f"round {r + 1}: step {1e3 * ps:.1f} ms plain, {1e3 * ms:.1f} ms mirrored ({100 * (ms / ps - 1):+.1f} %); "
            f"wall {pw:.1f} s vs {mw:.1f} s",
            flush=True,
        )
    ps = statistics.median(x[0] for x in plain)
    ms = statistics.median(x[0] for x in mirrored)
    pw = statistics.median(x[1] for x in plain)
    mw = statistics.median(x[1] for x in mirrored)
    print(
        f"median: step {1e3 * ps:.1f} ms plain vs {1e3 * ms:.1f} ms with the mirror -> {100 * (ms / ps - 1):+.1f} %; "
        f"wall {pw:.1f} s vs {mw:.1f} s ({100 * (mw / pw - 1):+.1f} %) ({args.max_steps} steps, checkpoint_every "
        f"{raw['training']['checkpoint_every']}, mirror {args.mirror or 'a folder on this disk'})"
    )


if __name__ == "__main__":
    main()
