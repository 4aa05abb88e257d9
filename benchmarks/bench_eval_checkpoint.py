"""Evaluation throughput and checkpoint save / resume time for a preset.

    python benchmarks/bench_eval_checkpoint.py [--params params.yaml] [--preset tiny] [--vocab 4096]

Evaluation runs the evaluate stage's code over the tokenized evaluation set (run `dvc repro
tokenize` first); the checkpoint figures time `checkpoint.save` (safetensors + optimizer state,
fsync, atomic rename) and `checkpoint.load` of a model with a filled AdamW state.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from pico import checkpoint
from pico.config import ModelConfig, load_params
from pico.data.eval_windows import EvalWindows
from pico.eval_metrics import evaluate_model
from pico.model import ModelDims, PicoDecoder


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--vocab", type=int, default=4096)
    args = ap.parse_args()
    params = load_params(args.params)
    torch.manual_seed(0)
    dims = ModelDims.from_config(ModelConfig(preset=args.preset), args.vocab)
    model = PicoDecoder(dims)
    windows = EvalWindows(params.data.tokens_dir)

    t0 = time.perf_counter()
    metrics = evaluate_model(model, windows, params.evaluation.batch_size)
    elapsed = time.perf_counter() - t0
    tokens = metrics["overall"]["tokens"]
    print(
        f"evaluation: {len(windows)} windows, {tokens:,} predicted tokens in {elapsed:.2f} s -> "
        f"{tokens / elapsed:,.0f} tokens/s ({torch.get_num_threads()} threads, {model.num_parameters():,} params)"
    )

    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randint(0, dims.vocab_size, (2, 65))
    torch.nn.functional.cross_entropy(model(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten()).backward()
    opt.step()  # fills exp_avg / exp_avg_sq, as in a real checkpoint
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    state = {"fingerprint": "bench", "position": 0, "history": {}, "model_dims": dims.to_dict()}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        path = checkpoint.save(tmp, 1, model, opt, sched, state, keep=1)
        save_s = time.perf_counter() - t0
        size = sum(p.stat().st_size for p in path.iterdir())
        fresh = PicoDecoder(dims)
        opt2 = torch.optim.AdamW(fresh.parameters(), lr=1e-4)
        sched2 = torch.optim.lr_scheduler.LambdaLR(opt2, lambda s: 1.0)
        t0 = time.perf_counter()
        checkpoint.load(path, fresh, opt2, sched2)
        load_s = time.perf_counter() - t0
    print(
        f"checkpoint: {size / 2**20:.1f} MB, save {save_s:.3f} s ({size / 2**20 / save_s:.0f} MB/s), "
        f"resume (load) {load_s:.3f} s"
    )


if __name__ == "__main__":
    main()
