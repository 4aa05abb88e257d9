"""A short GPU check: train tiny and small for about a minute each and print tokens/s and MFU.

    python benchmarks/gpu_check.py [--seconds 60] [--peak-flops 989e12] [--no-compile] [--presets tiny small]

Uses the trainer's GPU path: bf16 autocast, torch.compile, fused AdamW, TF32, SDPA (flash/cuDNN
kernels chosen by PyTorch), vocabulary 50,304 and 2,048-token sequences like pico-train. MFU =
model FLOPs per token (6N + 12·L·d·T) × tokens/s ÷ the device's peak (default: H100 SXM dense
bf16, 989 TFLOP/s; pass the right figure for other cards). Not a test: CI has no GPU.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from pico.config import ModelConfig
from pico.data.tokens_dir import row_len
from pico.model import ModelDims, PicoDecoder

BATCH = {"tiny": 32, "small": 16, "medium": 8, "large": 4}


def run(preset: str, seconds: float, peak: float, compile_model: bool, seq_len: int) -> None:
    torch.manual_seed(0)
    dims = ModelDims.from_config(ModelConfig(preset=preset), 50_280)
    model = PicoDecoder(dims).cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    fwd = torch.compile(model) if compile_model else model
    b = BATCH[preset]
    x = torch.randint(0, dims.vocab_size, (b, row_len(seq_len)), device="cuda")

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = fwd(x[:, :-1])
            loss = F.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    t0 = time.perf_counter()
    for _ in range(3):  # warm-up (and compilation)
        step()
    torch.cuda.synchronize()
    warm = time.perf_counter() - t0
    steps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        step()
        steps += 1
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0
    tps = steps * b * seq_len / elapsed
    flops = tps * model.flops_per_token(seq_len)
    print(f"{preset:6s} {model.num_parameters() / 1e6:7.1f} M params, batch {b} x {seq_len}: {tps:12,.0f} tokens/s, "
          f"{flops / 1e12:7.1f} TFLOP/s, MFU {flops / peak * 100:5.1f} % (warm-up {warm:.0f} s, "
          f"peak memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB)", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--peak-flops", type=float, default=989e12)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--presets", nargs="+", default=["tiny", "small"])
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this check is for a GPU machine")
    torch.set_float32_matmul_precision("high")
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, compile {not args.no_compile}")
    for preset in args.presets:
        run(preset, args.seconds, args.peak_flops, not args.no_compile, args.seq_len)


if __name__ == "__main__":
    main()
