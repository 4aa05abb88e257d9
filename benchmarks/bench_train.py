"""Training throughput: tokens/s and achieved FLOP/s for a preset, vs the machine's matmul FLOP/s.

    python benchmarks/bench_train.py [--preset tiny] [--vocab 4096] [--seq-len 128] [--batch 16] [--steps 10]

Runs real optimizer steps (forward, backward, clipping, AdamW) on random tokens with the
trainer's own model and optimizer code, and compares model FLOP/s (6N + attention per token)
with a measured fp32 2048^3 matmul on the same machine in the same run.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from pico.config import ModelConfig
from pico.data.tokens_dir import row_len
from pico.model import ModelDims, PicoDecoder


def matmul_flops(n: int = 2048, repeat: int = 5, device: str = "cpu") -> float:
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    a @ b
    best = float("inf")
    for _ in range(repeat):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="tiny", choices=["tiny", "small", "medium", "large"])
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()

    torch.manual_seed(0)
    dims = ModelDims.from_config(ModelConfig(preset=args.preset), args.vocab)
    model = PicoDecoder(dims).to(args.device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randint(0, dims.vocab_size, (args.batch, row_len(args.seq_len)), device=args.device)

    def step() -> None:
        logits = model(x[:, :-1])
        F.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten()).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # warm-up
    if args.device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    if args.device == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0
    tokens_per_s = args.steps * args.batch * args.seq_len / elapsed
    achieved = tokens_per_s * model.flops_per_token(args.seq_len)
    peak = matmul_flops(device=args.device)
    print(f"preset {args.preset}: {model.num_parameters():,} params (vocab {dims.vocab_size}), "
          f"batch {args.batch} x seq {args.seq_len}, {args.steps} steps on {args.device}, {torch.get_num_threads()} threads")
    print(f"training         : {tokens_per_s:10,.0f} tokens/s, {elapsed / args.steps * 1000:.0f} ms/step")
    print(f"achieved         : {achieved / 1e9:10.2f} GFLOP/s (model FLOPs: 6N + 12*L*d*T per token)")
    print(f"fp32 matmul 2048^3: {peak / 1e9:9.2f} GFLOP/s")
    print(f"ratio achieved/matmul: {achieved / peak:.3f}")


if __name__ == "__main__":
    main()
