"""The real pico-analyze, unchanged, on `pico export-analysis` of a run with the default
learning_dynamics params: every metric of its demo config must compute, every value finite.

    python compat/pico_analyze.py --pico-analyze /path/to/pico-analyze --python /path/to/its/venv/bin/python

Not part of the test suite: it needs a checkout of pico-lm/pico-analyze and a Python that has its
dependencies (torch, datasets, rich, wandb, huggingface-hub, click, pyyaml). The run: this
repository's params.yaml (the tiny preset, 12 layers, the embedded corpus) with learning dynamics on
and every learning_dynamics default, 100 steps with a checkpoint every 50 (the demo config compares
steps 0, 50 and 100), and 32-token rows, so that the evaluation windows (all of them: the default)
outnumber the 1,152 columns of tiny's OV circuit that PWCCA compares. Writes into a scratch folder;
prints each metric's values and exits 1 if any is missing or not finite.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from pico import numerics

numerics.apply("portable")

from pico import dynamics, train  # noqa: E402
from pico.config import parse_params  # noqa: E402
from pico.data import tokenize, tokenizer  # noqa: E402
from pico.export_analysis import export_analysis  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def run_with_captures(scratch: Path) -> Path:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["data"].update(seq_len=32, tokens_dir=str(scratch / "tokens"))
    raw["data"]["train_paths"] = [str(REPO / p) for p in raw["data"]["train_paths"]]
    raw["data"]["eval_paths"] = [str(REPO / p) for p in raw["data"]["eval_paths"]]
    raw["tokenizer"]["out_dir"] = str(scratch / "tokenizer")
    raw["training"].update(
        max_steps=100,
        checkpoint_every=50,
        eval_every=50,
        checkpoint_dir=str(scratch / "checkpoints"),
        metrics_dir=str(scratch / "metrics"),
        run_store=str(scratch / "runs"),
    )
    raw["learning_dynamics"] = {"enabled": True}  # every other learning_dynamics param: its default
    params = parse_params(raw)
    tokenizer.run(params)
    tokenize.run(params, progress=False)
    assert train.run(params, progress=False).status == "completed"
    out, steps = export_analysis(params.training.checkpoint_dir, scratch / "analysis")
    assert steps == [0, 50, 100], steps
    rows = json.loads((dynamics.step_folder(params.training.checkpoint_dir, 0) / dynamics.ROWS_FILE).read_text())
    print(f"exported {out}: steps {steps}, {len(rows['val'])} val rows, {len(rows['train'])} train rows")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pico-analyze", type=Path, required=True, help="a checkout of pico-lm/pico-analyze")
    ap.add_argument("--python", default=sys.executable, help="a Python with pico-analyze's dependencies")
    ap.add_argument("--scratch", type=Path, default=None)
    args = ap.parse_args()
    scratch = args.scratch or Path(tempfile.mkdtemp(prefix="pico-analyze-compat-"))
    run = scratch / "analysis" if (scratch / "analysis").is_dir() else run_with_captures(scratch)  # a rerun reuses it

    config = yaml.safe_load((args.pico_analyze / "configs" / "demo.yaml").read_text())
    config["monitoring"]["save_to_wandb"] = False  # nothing leaves this machine; the metrics are unchanged
    config["monitoring"]["output_dir"] = str(scratch / "analysis_results")
    (scratch / "demo.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    cmd = [args.python, "scripts/analyze.py", "--config_path", str(scratch / "demo.yaml"), "--run_path", str(run)]
    env = {**os.environ, "PYTHONPATH": str(args.pico_analyze), "WANDB_MODE": "disabled"}  # its `src` package
    done = subprocess.run(cmd, cwd=args.pico_analyze, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        print(done.stdout[-4000:], done.stderr[-4000:], sep="\n")
        print(f"pico-analyze exited {done.returncode}")
        return 1

    results = scratch / "analysis_results" / config["analysis_name"]
    bad = []
    for metric in config["metrics"]:
        name = metric["metric_name"]
        split = metric["data_split"]
        values = []
        for step in (0, 50, 100):
            f = results / f"step_{step}" / f"{name}_{split}.json"
            if f.is_file():
                values += [v for v in _numbers(json.loads(f.read_text()))]
        finite = bool(values) and all(math.isfinite(v) for v in values)
        bad += [] if finite else [name]
        shown = ", ".join(f"{v:.4g}" for v in values[:4])
        print(
            f"{name:17s} {split:5s} {len(values):3d} values, {'all finite' if finite else 'MISSING OR NOT FINITE'}: {shown} ..."
        )
    print("every demo metric computed, every value finite" if not bad else f"failed: {bad}")
    return 1 if bad else 0


def _numbers(obj) -> list[float]:
    if isinstance(obj, dict):
        return [x for v in obj.values() for x in _numbers(v)]
    if isinstance(obj, list):
        return [x for v in obj for x in _numbers(v)]
    return [float(obj)] if isinstance(obj, (int, float)) else []


if __name__ == "__main__":
    sys.exit(main())
