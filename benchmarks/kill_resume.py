"""Crash recovery under fire: interrupt `pico train` at N random moments — SIGKILL, SIGTERM or
SIGINT, drawn at random — rerun it each time, and compare the finished run with one that was never
interrupted (issues "Never lose a run", "A run survives whatever interrupts it").

    python benchmarks/kill_resume.py [--kills 20] [--seed 0] [--signals KILL,TERM,INT]   # after `dvc repro`

A SIGTERM or SIGINT must stop the trainer within 60 s with a checkpoint at the step it was on, and
the rerun must resume exactly there (no optimizer step computed twice); a SIGKILL loses at most the
steps since the newest checkpoint.

A small model on the embedded default's tokens checkpoints every 7 steps and evaluates every 40,
so kills land mid-step, mid-evaluation and mid-checkpoint-write. Each rerun must resume from the
newest complete checkpoint; at the end the weights, the optimizer/RNG state and the metric files
must equal the uninterrupted run's byte for byte. Prints one line per kill and the verdict.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
COMPARED = ("metrics/train.csv", "metrics/eval_history.csv")


def project(root: Path, name: str, steps: int) -> Path:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["data"]["tokens_dir"] = str(REPO / raw["data"]["tokens_dir"])
    raw["tokenizer"]["out_dir"] = str(REPO / raw["tokenizer"]["out_dir"])
    raw["model"].update(d_model=32, hidden_dim=64, n_layers=2, n_heads=4, n_kv_heads=2)
    raw["optim"]["warmup_steps"] = 20
    raw["training"].update(
        max_steps=steps,
        micro_batch_size=4,
        grad_accum_steps=1,
        log_every=5,
        eval_every=40,
        checkpoint_every=7,
        keep_checkpoints=2,
        eval_at_start=False,
        num_threads=1,
        checkpoint_dir=str(root / name / "checkpoints"),
        metrics_dir=str(root / name / "metrics"),
    )
    raw["evaluation"]["max_windows_per_source"] = 16
    (root / name).mkdir(parents=True)
    path = root / name / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def train(params: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "pico.cli", "--params", str(params), "train"],
        cwd=params.parent,
        env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def newest_step(folder: Path) -> int:
    steps = [int(p.name.split("_")[1]) for p in (folder / "checkpoints").glob("step_*")]
    return max(steps, default=0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=2000, help="the run's length (long enough for every signal)")
    ap.add_argument("--signals", default="KILL,TERM,INT", help="signals to draw from (default KILL,TERM,INT)")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    signals = [getattr(signal, f"SIG{name.strip()}") for name in args.signals.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        clean = project(root, "clean", args.steps)
        started = time.time()
        proc = train(clean)
        if proc.wait() != 0:
            raise SystemExit(f"the clean run failed:\n{proc.stdout.read()[-2000:]}")
        print(f"clean run: {time.time() - started:.1f} s")
        killed, kills, expect_resume, redone, stops = project(root, "killed", args.steps), 0, None, 0, []
        while True:
            proc = train(killed)
            if kills < args.kills:
                time.sleep(rng.uniform(4.0, 9.0))  # start-up takes ~4 s: most kills land in training
                if proc.poll() is None:
                    sig = rng.choice(signals)
                    sent = time.time()
                    proc.send_signal(sig)
                    out, _ = proc.communicate()
                    kills += 1
                    resumed = re.findall(r"\(step (\d+), \d+ rows consumed\)", out)
                    if expect_resume is not None and resumed and int(resumed[0]) != expect_resume:
                        redone += expect_resume - int(resumed[0])
                    stopped = re.findall(r"train: stopped at step (\d+) ", out)
                    expect_resume = None
                    if sig != signal.SIGKILL and proc.returncode in (130, 143):
                        if not stopped or newest_step(killed.parent) != int(stopped[0]):
                            raise SystemExit(f"{sig.name}: no checkpoint at the step it stopped on:\n{out[-2000:]}")
                        expect_resume = int(stopped[0])
                        stops.append(time.time() - sent)
                    print(
                        f"{sig.name:7s} {kills:2d}: exit {proc.returncode}, newest checkpoint step "
                        f"{newest_step(killed.parent)}",
                        flush=True,
                    )
                    continue
            out, _ = proc.communicate()
            if proc.returncode != 0:
                raise SystemExit(f"a rerun failed:\n{out[-2000:]}")
            resumed = re.findall(r"\(step (\d+), \d+ rows consumed\)", out)
            if expect_resume is not None and resumed and int(resumed[0]) != expect_resume:
                redone += expect_resume - int(resumed[0])
            if newest_step(killed.parent) == args.steps:
                break
        ckpt = f"checkpoints/step_{args.steps:08d}"
        same = {
            f: (clean.parent / f).read_bytes() == (killed.parent / f).read_bytes()
            for f in (f"{ckpt}/model.safetensors", f"{ckpt}/trainer.pt", *COMPARED)
        }
        for f, ok in same.items():
            print(f"{f}: {'identical' if ok else 'DIFFERS'}")
        if stops:
            print(
                f"{len(stops)} SIGTERM/SIGINT stops: exit after {min(stops):.1f}-{max(stops):.1f} s; optimizer "
                f"steps computed again after them: {redone}"
            )
        ok = all(same.values()) and redone == 0
        print(f"{kills} signals at random moments: {'resumed bit-identical' if ok else 'NOT identical'}")
        sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
