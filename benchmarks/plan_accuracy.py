"""How well `pico plan` predicts wall time: plan, then train, the scaled v1 and v2 presets on this
machine, one after the other, and compare the predicted v2/v1 wall-time ratio with the measured one
(issue bar: within +-25 %). Each run is a real `pico train` in a scratch folder on the embedded
default's tokens (run `dvc repro tokenize` first); nothing in the workspace changes.

    python benchmarks/plan_accuracy.py [--presets v1 v2] [--keep]

Run it on an otherwise idle machine: the measured side is wall time.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pico import presets  # noqa: E402
from pico.config import with_overrides  # noqa: E402


def preset_params(name: str, scratch: Path) -> Path:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    overrides = {
        **presets.load(name, REPO / "presets")["overrides"],
        "training.checkpoint_dir": str(scratch / name / "checkpoints"),
        "training.metrics_dir": str(scratch / name / "metrics"),
    }
    raw, _ = with_overrides(raw, overrides, f"preset {name}")
    path = scratch / name / "params.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def pico(*args: str) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pico.cli", *args], cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"pico {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return time.perf_counter() - start, proc.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs=2, default=["v1", "v2"])
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="pico-plan-"))
    rows = {}
    try:
        for name in args.presets:
            params = preset_params(name, scratch)
            _, out = pico("--params", str(params), "plan")
            planned = json.loads((scratch / name / "metrics/plan.json").read_text())
            wall, _ = pico("--params", str(params), "train")
            rows[name] = {"planned_s": round(planned["wall_s"], 1), "measured_s": round(wall, 1)}
            print(
                f"{name}: planned {planned['wall_s']:.1f} s, measured {wall:.1f} s "
                f"(ratio {wall / planned['wall_s']:.3f})",
                flush=True,
            )
            print("   " + "\n   ".join(out.strip().splitlines()), flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
    a, b = args.presets
    predicted = rows[b]["planned_s"] / rows[a]["planned_s"]
    measured = rows[b]["measured_s"] / rows[a]["measured_s"]
    error = predicted / measured - 1
    print(
        json.dumps(
            {
                "presets": rows,
                f"{b}/{a} predicted": round(predicted, 3),
                f"{b}/{a} measured": round(measured, 3),
                "error": round(error, 3),
                "within_25_percent": abs(error) <= 0.25,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
