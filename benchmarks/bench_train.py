"""Training step: pico's model and loss vs plain transformers LlamaForCausalLM, steps interleaved.

    python benchmarks/bench_train.py [--preset tiny] [--vocab 4096] [--seq-len 128] [--batch 16] [--steps 10] [--compile]

Both models get the same dims (pico's export mapping), the same random tokens, AdamW and clipping
at 1.0; each round times one pico step then one transformers step, so machine noise (load, clock)
hits both alike. pico computes the loss chunked (``pico.loss``: never the full logits); transformers
its own way (full logits, fp32 upcast). Prints tokens/s of each, the ratio, and model FLOP/s
against a measured fp32 2048^3 matmul on the same machine. ``--compile`` compiles both trunks
(pico's ``training.compile``: ``pico.train.compile_model``; transformers' ``LlamaModel``), the loss
heads staying eager on both sides; compilation is done before timing starts.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from pico.config import ModelConfig
from pico.data.tokens_dir import row_len
from pico.export_hf import hf_config
from pico.model import ModelDims, PicoDecoder


def matmul_flops(n: int = 2048, repeat: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def main() -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="tiny", choices=["tiny", "small", "medium", "large"])
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--compile", action="store_true", help="torch.compile both trunks")
    args = ap.parse_args()

    torch.manual_seed(0)
    dims = ModelDims.from_config(ModelConfig(preset=args.preset), args.vocab)
    pico = PicoDecoder(dims)
    cfg = LlamaConfig(**{k: v for k, v in hf_config(dims, None, None).items() if k != "architectures"})
    cfg._attn_implementation = "sdpa"
    hf = LlamaForCausalLM(cfg)
    x = torch.randint(0, dims.vocab_size, (args.batch, row_len(args.seq_len)))
    if args.compile:
        from pico.train import compile_model

        compile_model(pico)
        hf.model = torch.compile(hf.model)

    def stepper(model, loss_fn):
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def step() -> float:
            t0 = time.perf_counter()
            loss_fn().backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            return time.perf_counter() - t0

        return step

    pico_step = stepper(pico, lambda: pico(x[:, :-1], x[:, 1:]))
    hf_step = stepper(hf, lambda: hf(input_ids=x[:, :-1], labels=x[:, :-1]).loss)
    for _ in range(2):  # warm-up (and compilation)
        pico_step(), hf_step()
    times = {"pico": [], "transformers": []}
    for _ in range(args.steps):
        times["pico"].append(pico_step())
        times["transformers"].append(hf_step())
    tokens = args.batch * args.seq_len
    rate = {k: tokens / statistics.median(v) for k, v in times.items()}
    achieved = rate["pico"] * pico.flops_per_token(args.seq_len)
    peak = matmul_flops()
    print(
        f"preset {args.preset}: {pico.num_parameters():,} params (vocab {dims.vocab_size}), batch {args.batch} x seq "
        f"{args.seq_len}, {args.steps} interleaved steps each on cpu, {torch.get_num_threads()} threads, "
        f"{'both trunks compiled' if args.compile else 'eager'}"
    )
    for name, r in rate.items():
        print(f"{name:13s}: {r:10,.0f} tokens/s (median step {tokens / r * 1000:.0f} ms)")
    print(f"pico / transformers: {rate['pico'] / rate['transformers']:.2f}")
    print(
        f"pico achieved {achieved / 1e9:.2f} GFLOP/s (6N + 12*L*d*T per token) vs fp32 matmul 2048^3 "
        f"{peak / 1e9:.2f} GFLOP/s: {achieved / peak:.3f}"
    )


if __name__ == "__main__":
    main()
