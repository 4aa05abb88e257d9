"""Peak memory (RSS) of `pico train` and `pico evaluate` at pico-train's vocabulary, this checkout vs
a baseline revision, in one run.

    python benchmarks/bench_memory.py [--baseline 64b027f] [--seq-len 512] [--batch 8] [--vocab 50304]

Makes a tokenizer and tokens from the embedded corpus with the pipeline's own stages, then runs
each revision's `pico train` (a few steps, an evaluation at the end) and `pico evaluate` as child
processes on the same params and data, and reports each child's peak RSS. The baseline runs from a
temporary `git worktree` of the given revision (64b027f: before the chunked loss, full logits).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
PEAK = (
    "import resource, runpy, sys; sys.argv = ['pico'] + sys.argv[1:]; "
    "code = 0\ntry: runpy.run_module('pico.cli', run_name='__main__')\n"
    "except SystemExit as e: code = e.code or 0\n"
    "print('PEAK_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(code)"
)


def peak_mb(code_dir: Path, work: Path, *args: str) -> float:
    out = subprocess.run(
        [sys.executable, "-c", PEAK, "--params", "params.yaml", *args],
        cwd=work,
        env={"PYTHONPATH": str(code_dir), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed in {code_dir}:\n{out.stderr[-2000:]}")
    return int(out.stdout.rsplit("PEAK_KB", 1)[1].split()[0]) / 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--baseline", default="64b027f")
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=50_304)
    ap.add_argument("--steps", type=int, default=3)
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench_memory_"))
    base = tmp / "baseline"
    try:
        subprocess.run(
            ["git", "-C", str(REPO), "worktree", "add", "-q", "--detach", str(base), args.baseline], check=True
        )
        params = {
            "embedded": {"out_dir": "data/embedded"},
            "data": {
                "train_paths": ["data/embedded/dolma/*.json.gz"],
                "eval_paths": ["data/embedded/paloma/*/val.jsonl.gz"],
                "seq_len": args.seq_len,
                "tokens_dir": "data/tokens",
            },
            "tokenizer": {"out_dir": "data/tokenizer"},
            "model": {"preset": "tiny", "vocab_size": args.vocab},
            "optim": {"warmup_steps": 1},
            "training": {
                "max_steps": args.steps,
                "micro_batch_size": args.batch,
                "eval_every": 10**6,
                "eval_at_start": False,
                "checkpoint_every": 10**6,
                "log_every": 1,
            },
            "evaluation": {"batch_size": 32},
        }
        results: dict[str, dict[str, float]] = {}
        for name, code in (("this checkout", REPO), (f"baseline {args.baseline}", base)):
            work = tmp / name.replace(" ", "_")
            work.mkdir()
            (work / "params.yaml").write_text(yaml.safe_dump(params))
            for stage in ("build-embedded", "tokenizer", "tokenize"):
                subprocess.run(
                    [sys.executable, "-m", "pico.cli", "--params", "params.yaml", stage],
                    cwd=work,
                    env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
                    check=True,
                    capture_output=True,
                )
            results[name] = {stage: peak_mb(code, work, stage) for stage in ("train", "evaluate")}
        print(
            f"tiny, vocab {args.vocab}, seq {args.seq_len}, micro-batch {args.batch}, {args.steps} steps "
            f"+ evaluation; peak RSS of each child process:"
        )
        (mine, theirs) = results.values()
        for stage in ("train", "evaluate"):
            print(
                f"  pico {stage:8s}: {mine[stage]:7,.0f} MB here vs {theirs[stage]:7,.0f} MB at {args.baseline}: "
                f"{mine[stage] / theirs[stage]:.2f}"
            )
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(base)], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
