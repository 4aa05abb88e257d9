"""Which CPU settings change the default run's numbers: the experiment behind docs/experiments.md's
reproducibility section (issue "Reproducing past results anywhere").

    python benchmarks/numerics.py [--steps 30] [--only baseline,mkl-compatible]   # after `dvc repro`

Trains the embedded default model (this checkout's params.yaml, data/tokens, data/tokenizer) for a
few steps in child processes, each under one setting (environment variables read when torch and
MKL load), and prints per setting: the sha256 of the final weights, the last logged loss with every
digit, whether both equal the baseline's, and the seconds per step. Settings:

- ATen's CPU kernels: ``ATEN_CPU_CAPABILITY`` (default = scalar, avx2, avx512): ATen picks the widest
  the CPU has, and vector width changes the order of reductions (sum, softmax, norms);
- MKL's GEMM code path: ``MKL_CBWR`` (AUTO = by CPU, COMPATIBLE = SSE2 everywhere, AVX2, AVX512);
- oneDNN's ISA: ``ONEDNN_MAX_CPU_ISA``;
- threads (``training.num_threads`` 1 vs 2) and MKL's dynamic threading (``MKL_DYNAMIC``);
- load: the baseline again while another process keeps every core busy;
- ``portable``: what ``training.numerics: portable`` sets.

Run it on two machines and compare the printed digests: equal digests mean bit-identical runs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from pico.numerics import PORTABLE_ENV  # noqa: E402

SETTINGS: dict[str, dict[str, str]] = {
    "baseline": {},
    "aten-default(scalar)": {"ATEN_CPU_CAPABILITY": "default"},
    "aten-avx2": {"ATEN_CPU_CAPABILITY": "avx2"},
    "aten-avx512": {"ATEN_CPU_CAPABILITY": "avx512"},
    "mkl-compatible": {"MKL_CBWR": "COMPATIBLE"},
    "mkl-avx2": {"MKL_CBWR": "AVX2"},
    "mkl-avx512": {"MKL_CBWR": "AVX512"},
    "mkl-avx2-strict": {"MKL_CBWR": "AVX2,STRICT"},
    "onednn-avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2"},
    "mkl-dynamic-false": {"MKL_DYNAMIC": "FALSE"},
    "threads-1": {"PICO_NUM_THREADS": "1"},
    "loaded": {"PICO_LOAD": "1"},
    "portable": dict(PORTABLE_ENV),
    "portable-loaded": {**PORTABLE_ENV, "PICO_LOAD": "1"},
}


def _burn(stop_at: float) -> None:
    x = 1.0001
    while time.time() < stop_at:
        for _ in range(100_000):
            x = x * 1.0000001 % 7.0


def run(setting: str, env_extra: dict[str, str], steps: int, work: Path) -> dict:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    folder = work / setting.replace("(", "_").replace(")", "")
    raw["data"]["tokens_dir"] = str(REPO / raw["data"]["tokens_dir"])
    raw["tokenizer"]["out_dir"] = str(REPO / raw["tokenizer"]["out_dir"])
    raw["training"].update(
        max_steps=steps,
        log_every=steps,
        eval_every=10**6,
        checkpoint_every=steps,
        eval_at_start=False,
        checkpoint_dir=str(folder / "ckpt"),
        metrics_dir=str(folder / "metrics"),
        numerics="native",
    )
    raw["optim"]["warmup_steps"] = min(raw["optim"]["warmup_steps"], steps)
    if "PICO_NUM_THREADS" in env_extra:
        raw["training"]["num_threads"] = int(env_extra["PICO_NUM_THREADS"])
    folder.mkdir(parents=True)
    (folder / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    env = {k: v for k, v in os.environ.items() if k not in ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "ONEDNN_MAX_CPU_ISA")}
    env.update({k: v for k, v in env_extra.items() if not k.startswith("PICO_")}, PYTHONPATH=str(REPO))
    hogs = []
    if env_extra.get("PICO_LOAD"):
        stop_at = time.time() + 3600
        hogs = [multiprocessing.Process(target=_burn, args=(stop_at,), daemon=True) for _ in range(os.cpu_count() or 2)]
        for h in hogs:
            h.start()
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "pico.cli", "--params", str(folder / "params.yaml"), "train"],
        env=env,
        capture_output=True,
        text=True,
        cwd=folder,
    )
    seconds = time.perf_counter() - started
    for h in hogs:
        h.terminate()
    if proc.returncode != 0:
        return {"setting": setting, "error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"}
    ckpt = sorted((folder / "ckpt").glob("step_*"))[-1]
    rows = (folder / "metrics/train.csv").read_text().splitlines()
    loss = rows[-1].split(",")[1]
    return {
        "setting": setting,
        "weights_sha256": hashlib.sha256((ckpt / "model.safetensors").read_bytes()).hexdigest()[:16],
        "loss": loss,
        "s_per_step": round(seconds / steps, 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--only", help="comma-separated setting names (default: all)")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    names = args.only.split(",") if args.only else list(SETTINGS)
    import torch

    print(
        f"# {platform.processor() or platform.machine()} | torch {torch.__version__} | "
        f"ATen capability {torch.backends.cpu.get_cpu_capability()} | {os.cpu_count()} cores | {time.strftime('%Y-%m-%d')}"
    )
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        base = None
        for name in ["baseline"] + [n for n in names if n != "baseline"]:
            r = run(name, SETTINGS[name], args.steps, Path(tmp))
            base = base or r
            same = "error" not in r and r.get("weights_sha256") == base.get("weights_sha256")
            r["same_as_baseline"] = same
            results.append(r)
            print(
                f"{name:22s} "
                + (
                    f"ERROR {r['error']}"
                    if "error" in r
                    else f"weights {r['weights_sha256']}  loss {r['loss']:<20s} {'==' if same else '!='} baseline  "
                    f"{r['s_per_step']:.3f} s/step"
                ),
                flush=True,
            )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
