"""Crash recovery under fire: SIGKILL `pico train` at N random moments, rerun it each time, and
compare the finished run with one that was never interrupted (issue "Never lose a run").

    python benchmarks/kill_resume.py [--kills 20] [--seed 0]      # after `dvc repro` (uses data/tokens)

A small model on the embedded default's tokens checkpoints every 7 steps and evaluates every 40,
so kills land mid-step, mid-evaluation and mid-checkpoint-write. Each rerun must resume from the
newest complete checkpoint; at the end the weights, the optimizer/RNG state and the metric files
must equal the uninterrupted run's byte for byte. Prints one line per kill and the verdict.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
COMPARED = ("metrics/train.csv", "metrics/eval_history.csv")


def project(root: Path, name: str) -> Path:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["data"]["tokens_dir"] = str(REPO / raw["data"]["tokens_dir"])
    raw["tokenizer"]["out_dir"] = str(REPO / raw["tokenizer"]["out_dir"])
    raw["model"].update(d_model=32, hidden_dim=64, n_layers=2, n_heads=4, n_kv_heads=2)
    raw["optim"]["warmup_steps"] = 20
    raw["training"].update(max_steps=1000, micro_batch_size=4, grad_accum_steps=1, log_every=5, eval_every=40,
                           checkpoint_every=7, keep_checkpoints=2, eval_at_start=False, num_threads=1,
                           checkpoint_dir=str(root / name / "checkpoints"), metrics_dir=str(root / name / "metrics"))
    raw["evaluation"]["max_windows_per_source"] = 16
    (root / name).mkdir(parents=True)
    path = root / name / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def train(params: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pico.cli", "--params", str(params), "train"], cwd=params.parent,
                            env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def newest_step(folder: Path) -> int:
    steps = [int(p.name.split("_")[1]) for p in (folder / "checkpoints").glob("step_*")]
    return max(steps, default=0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        clean = project(root, "clean")
        started = time.time()
        proc = train(clean)
        if proc.wait() != 0:
            raise SystemExit(f"the clean run failed:\n{proc.stdout.read()[-2000:]}")
        print(f"clean run: {time.time() - started:.1f} s")
        killed, kills = project(root, "killed"), 0
        while True:
            proc = train(killed)
            if kills < args.kills:
                time.sleep(rng.uniform(4.0, 9.0))  # start-up takes ~4 s: most kills land in training
                if proc.poll() is None:
                    proc.send_signal(signal.SIGKILL)
                    proc.wait()
                    kills += 1
                    print(f"kill {kills:2d}: newest checkpoint step {newest_step(killed.parent)}", flush=True)
                    continue
            code = proc.wait()
            if code != 0:
                raise SystemExit(f"a rerun failed:\n{proc.stdout.read()[-2000:]}")
            if newest_step(killed.parent) == 1000:
                break
        ckpt = "checkpoints/step_00001000"
        same = {f: (clean.parent / f).read_bytes() == (killed.parent / f).read_bytes()
                for f in (f"{ckpt}/model.safetensors", f"{ckpt}/trainer.pt", *COMPARED)}
        for f, ok in same.items():
            print(f"{f}: {'identical' if ok else 'DIFFERS'}")
        print(f"{kills} SIGKILLs at random moments: {'resumed bit-identical' if all(same.values()) else 'NOT identical'}")
        sys.exit(0 if all(same.values()) else 1)


if __name__ == "__main__":
    main()
