"""The GPU check: the real `pico train` path against a synthetic loop and plain transformers, in one run.

    python benchmarks/gpu_check.py --prepare .gpudata          # any machine: the data, by the pipeline's stages
    python benchmarks/gpu_check.py --data .gpudata --out results.jsonl [--peak-flops 989e12]

The data folder holds ``tokenizer/`` and ``tokens/`` at seq_len 2,048 made from the embedded corpus.
The model vocabulary is set to 50,304 (pico-train's) whatever the tokenizer's, so shapes and FLOPs
are a real run's. Per preset and batch size (``--plan``), for ``pico train`` (``Trainer.fit`` in this
process: data loader, loss watch, logging, a checkpoint and an evaluation at the end), bf16 autocast,
compiled blocks, fused AdamW, the loss kernel ``auto`` picks:

- tokens/s and MFU of the steady state (the first log interval, which compiles, is left out), peak
  GPU memory, or "out of memory" when the batch does not fit;
- trainer ÷ synthetic loop: the same model, loss and optimizer on random tokens, no data or logging;
- at the first plan entry, the trainer with the plain-PyTorch chunked loss, and plain transformers
  ``LlamaForCausalLM`` (same dims, sdpa, bf16, torch.compile, fused AdamW, its own loss over full
  logits), so pico ÷ transformers at the same batch;
- the torch (chunked) and liger (fused) losses and gradients against each other and against fp32
  full logits;
- a kernel-time breakdown (torch.profiler) of a few synthetic steps at the largest batch;
- attention alone (``--attention``, e.g. ``small:64``): forward + backward of one layer's attention at
  that preset's shapes through each SDPA backend (``training.attention_kernel``) and FlexAttention,
  then ``pico train`` with the fastest SDPA backend if it beats PyTorch's own choice — is a faster
  kernel for the preset's head_dim among the kept libraries?

Every result is one JSON line on stdout and appended to ``--out``. MFU = (6N + 12·L·d·T) x tokens/s ÷
peak (default 989e12: H100/H200 SXM dense bf16). ``--device cpu --no-compile --vocab 4096 --plan
tiny:2`` is a dry run of the whole script on a CPU. Not a test: CI has no GPU.
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import sys
import tempfile
import time
import traceback
from collections import defaultdict
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pico import train  # noqa: E402
from pico.config import ModelConfig, parse_params  # noqa: E402
from pico.loss import liger_available  # noqa: E402
from pico.model import ModelDims, PicoDecoder  # noqa: E402
from pico.train_metrics import PERF_CSV, parse_csv  # noqa: E402

SEQ = 2048


class Check:
    def __init__(self, args: argparse.Namespace):
        self.a = args
        self.device = torch.device(args.device)
        self.cuda = self.device.type == "cuda"
        self.kernel = "liger" if self.cuda and liger_available() else "torch"

    # ---- helpers ----
    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def reset(self) -> None:
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

    def peak_gib(self) -> float | None:
        return torch.cuda.max_memory_allocated() / 2**30 if self.cuda else None

    def dims(self, preset: str) -> ModelDims:
        return ModelDims.from_config(ModelConfig(preset=preset, vocab_size=self.a.vocab), self.a.vocab)

    def model(self, preset: str, kernel: str, mode: str = "default", per_block: bool = False) -> PicoDecoder:
        torch.manual_seed(0)
        model = PicoDecoder(self.dims(preset)).to(self.device)
        model.loss_kernel = kernel
        if self.a.compile:
            train.compile_model(model, mode, per_block)  # as the trainer does
        return model

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def seconds_per_call(self, call, seconds: float) -> float:
        """Mean time of ``call`` over about ``seconds`` (at least 3 calls) after 3 warm-up calls."""
        for _ in range(3):
            call()
        self.sync()
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds or n < 3:
            call()
            n += 1
            if n % 10 == 0:
                self.sync()
        self.sync()
        return (time.perf_counter() - t0) / n

    def timed(self, step, batch: int) -> float:
        """Tokens/s of a training step over ``--seconds``."""
        return batch * SEQ / self.seconds_per_call(step, self.a.seconds)

    # ---- the measurements ----
    def trainer(self, preset: str, batch: int, kernel: str, mode: str = "default", attention: str = "auto") -> dict:
        """``pico train``'s own loop on the pipeline's data; steady-state tokens/s from perf.csv."""
        work = Path(tempfile.mkdtemp(prefix="gpu_check_"))
        data = self.a.data
        raw = {
            "data": {
                "train_paths": ["unused"],
                "eval_paths": ["unused"],
                "seq_len": SEQ,
                "tokens_dir": str(data / "tokens"),
            },
            "tokenizer": {"out_dir": str(data / "tokenizer")},
            "model": {"preset": preset, "vocab_size": self.a.vocab},
            "optim": {"lr": 3.0e-4, "warmup_steps": 2},
            "training": {
                "max_steps": self.a.steps,
                "micro_batch_size": batch,
                "log_every": self.a.log_every,
                "eval_every": 10**6,
                "eval_at_start": False,
                "checkpoint_every": 10**6,
                "checkpoint_dir": str(work / "ckpt"),
                "metrics_dir": str(work / "metrics"),
                "precision": "bf16",
                "compile": self.a.compile,
                "compile_mode": mode,
                "loss_kernel": kernel,
                "attention_kernel": attention,
                "device": self.device.type,
            },
            "evaluation": {"batch_size": 8, "max_windows_per_source": 2, "out": str(work / "eval.json")},
        }
        try:
            self.reset()
            t0 = time.perf_counter()
            summary = train.run(parse_params(raw), progress=False)
            wall = time.perf_counter() - t0
            perf = parse_csv((work / "metrics" / PERF_CSV).read_text())
            steady = perf[1:-1] or perf[1:] or perf  # the first interval compiles; the last holds the final save
            rate = sum(float(r["tokens_per_s"]) for r in steady) / len(steady)
            return {
                "tokens_per_s": rate,
                "final_loss": summary.final_loss,
                "wall_s": round(wall, 1),
                "parameters": summary.parameters,
                "peak_gib": self.peak_gib(),
            }
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def synthetic(self, preset: str, batch: int, kernel: str, mode: str = "default", per_block: bool = False) -> float:
        """The same model, loss and optimizer on random tokens: no loader, no logging, no reads."""
        self.reset()
        model = self.model(preset, kernel, mode, per_block)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
        x = torch.randint(0, self.a.vocab, (batch, SEQ + 1), device=self.device)

        def step() -> None:
            with self.autocast():
                loss = model(x[:, :-1], x[:, 1:])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)

        rate = self.timed(step, batch)
        self.last_step = step
        return rate

    def transformers(self, preset: str, batch: int) -> float:
        """Plain transformers LlamaForCausalLM with pico's dims, compiled whole, bf16, fused AdamW."""
        from transformers import LlamaConfig, LlamaForCausalLM

        from pico.export_hf import hf_config

        self.reset()
        cfg = LlamaConfig(**{k: v for k, v in hf_config(self.dims(preset), None, None).items() if k != "architectures"})
        cfg._attn_implementation = "sdpa"
        model = LlamaForCausalLM(cfg).to(self.device)
        fwd = torch.compile(model) if self.a.compile else model
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
        x = torch.randint(0, self.a.vocab, (batch, SEQ), device=self.device)

        def step() -> None:
            with self.autocast():
                loss = fwd(input_ids=x, labels=x).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)

        return self.timed(step, batch)

    def loss_paths(self, preset: str = "small", batch: int = 8) -> dict:
        """Loss and gradients of the loss kernels in bf16, and against fp32 full logits."""
        import torch.nn.functional as F

        self.reset()
        torch.manual_seed(0)
        model = PicoDecoder(self.dims(preset)).to(self.device)
        x = torch.randint(0, self.a.vocab, (batch, SEQ + 1), device=self.device)
        grads = {}
        losses = {}
        for kernel in ["torch"] + (["liger"] if self.kernel == "liger" else []):
            model.loss_kernel = kernel
            model.zero_grad(set_to_none=True)
            with self.autocast():
                loss = model(x[:, :-1], x[:, 1:])
            loss.backward()
            losses[kernel] = loss.item()
            grads[kernel] = [
                p.grad.float().clone() for p in (model.de_embedding_proj.weight, model.layers[0].swiglu.w_0.weight)
            ]
        model.zero_grad(set_to_none=True)
        ref = F.cross_entropy(model(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten())  # fp32, full logits
        ref.backward()
        grads["fp32"] = [p.grad.clone() for p in (model.de_embedding_proj.weight, model.layers[0].swiglu.w_0.weight)]

        def rel(a: str, b: str) -> list[float]:
            return [round(((ga - gb).norm() / gb.norm()).item(), 6) for ga, gb in zip(grads[a], grads[b])]

        row = {
            "check": "loss_paths",
            "preset": preset,
            "batch": batch,
            "loss_fp32_full_logits": ref.item(),
            "loss_torch_bf16": losses["torch"],
            "abs_diff_torch_bf16_vs_fp32": abs(losses["torch"] - ref.item()),
            "grad_rel_diff_torch_bf16_vs_fp32 [head, block0.w_0]": rel("torch", "fp32"),
        }
        if "liger" in losses:
            row.update(
                {
                    "loss_liger_bf16": losses["liger"],
                    "abs_diff_torch_vs_liger": abs(losses["torch"] - losses["liger"]),
                    "grad_rel_diff_liger_vs_torch [head, block0.w_0]": rel("liger", "torch"),
                }
            )
        return row

    def profile(self, preset: str, batch: int) -> dict:
        """Where a synthetic step's device time goes, by kernel family."""
        from torch.profiler import ProfilerActivity, profile

        step = self.last_step
        acts = [ProfilerActivity.CUDA] if self.cuda else [ProfilerActivity.CPU]
        with profile(activities=acts) as prof:
            for _ in range(3):
                step()
            self.sync()
        fam: dict[str, float] = defaultdict(float)
        top = []
        for e in prof.key_averages():
            t = e.self_device_time_total if self.cuda else e.self_cpu_time_total
            if t <= 0:
                continue
            name = e.key.lower()
            kind = (
                "attention"
                if any(k in name for k in ("flash", "fmha", "attention", "cudnn"))
                else "cross-entropy (liger)"
                if "liger" in name or "cross_entropy" in name or "_kernel_fwd" in name
                else "matmul"
                if any(k in name for k in ("gemm", "sm90", "cutlass", "nvjet", "matmul", "mm"))
                else "optimizer"
                if "adam" in name or "foreach" in name or "multi_tensor" in name
                else "fused elementwise (triton)"
                if "triton" in name
                else "other"
            )
            fam[kind] += t
            top.append((t, e.key[:90]))
        total = sum(fam.values())
        top.sort(reverse=True)
        return {
            "check": "profile",
            "preset": preset,
            "batch": batch,
            "device_ms_per_step": round(total / 3 / 1e3, 2),
            "share": {k: round(v / total, 3) for k, v in sorted(fam.items(), key=lambda kv: -kv[1])},
            "top_kernels_ms_per_step": [[round(t / 3 / 1e3, 3), k] for t, k in top[:12]],
        }

    def attention(self, preset: str, batch: int) -> dict:
        """One layer's attention (forward + backward, causal, grouped-query) at the preset's shapes,
        bf16, through each SDPA backend and compiled FlexAttention; ms per call and model TFLOP/s
        (causal: half of 4·B·H·T²·head_dim forward, backward 2.5 x forward)."""
        import torch.nn.functional as F
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        from pico.model import ATTENTION_BACKENDS, attention_backend

        d = self.dims(preset)
        dtype = torch.bfloat16
        self.reset()
        q = torch.randn(batch, d.n_heads, SEQ, d.head_dim, device=self.device, dtype=dtype, requires_grad=True)
        k, v = (
            torch.randn(batch, d.n_kv_heads, SEQ, d.head_dim, device=self.device, dtype=dtype, requires_grad=True)
            for _ in range(2)
        )
        grad = torch.randn_like(q)
        flops = 3.5 * 2 * batch * d.n_heads * SEQ * SEQ * d.head_dim
        mask = create_block_mask(lambda b, h, qi, ki: qi >= ki, None, None, SEQ, SEQ, device=self.device)
        flex = torch.compile(flex_attention) if self.a.compile or self.cuda else flex_attention

        def sdpa(kernel):
            def call():
                with attention_backend(kernel):
                    out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
                out.backward(grad)

            return call

        def flex_call():
            flex(q, k, v, block_mask=mask, enable_gqa=True).backward(grad)

        row: dict = {
            "check": "attention",
            "preset": preset,
            "batch": batch,
            "head_dim": d.head_dim,
            "heads": f"{d.n_heads} q / {d.n_kv_heads} kv",
        }
        calls = {name: sdpa(name) for name in ("auto", *ATTENTION_BACKENDS)} | {"flex": flex_call}
        for name, call in calls.items():

            def timed_ms(call=call) -> dict:
                ms = self.seconds_per_call(call, min(self.a.seconds, 3.0)) * 1e3
                return {"ms": round(ms, 3), "tflops": round(flops / ms / 1e9, 2)}

            self.attempt(row, name, timed_ms)
        ok = {n: r["ms"] for n, r in row.items() if n in ATTENTION_BACKENDS and isinstance(r, dict)}
        if ok and isinstance(row.get("auto"), dict):
            best = min(ok, key=ok.get)
            row["fastest_sdpa_backend"] = best
            row["fastest_over_auto"] = round(row["auto"]["ms"] / ok[best], 3)
        return row

    def attention_check(self, preset: str, batch: int) -> None:
        row: dict = {"check": "attention"}
        if self.attempt(row, "result", self.attention, preset, batch):
            row = row["result"]
        self.emit(row)
        best = row.get("fastest_sdpa_backend")
        if best and row.get("fastest_over_auto", 1.0) > 1.10:  # beyond timing noise: worth a whole trainer run
            train_row = {
                "check": "train",
                "preset": preset,
                "batch": batch,
                "seq": SEQ,
                "loss_kernel": self.kernel,
                "attention_kernel": best,
            }
            if self.attempt(train_row, "trainer", self.trainer, preset, batch, self.kernel, "default", best):
                train_row["mfu"] = round(
                    train_row["trainer"]["tokens_per_s"] * self.flops_per_token(preset) / self.a.peak_flops, 4
                )
            self.emit(train_row)

    def flops_per_token(self, preset: str) -> int:
        with torch.device("meta"):
            return PicoDecoder(self.dims(preset)).flops_per_token(SEQ)

    # ---- the run ----
    def emit(self, row: dict) -> None:
        print(json.dumps(row), flush=True)
        if self.a.out:
            with self.a.out.open("a") as fh:
                fh.write(json.dumps(row) + "\n")

    def attempt(self, row: dict, key: str, fn, *args) -> bool:
        try:
            row[key] = fn(*args)
            return True
        except torch.OutOfMemoryError:
            row[key] = "out of memory"
        except Exception as err:  # a broken measurement must not cost the others (one device call)
            traceback.print_exc()
            row[key] = f"error: {type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"
        self.reset()
        return False

    def compile_variants(self, preset: str, batch: int) -> None:
        """The synthetic loop with each way of compiling, and the trainer with reduce-overhead."""
        row: dict = {"check": "compile_variants", "preset": preset, "batch": batch}
        for name, mode, per_block in (
            ("trunk", "default", False),
            ("per_block", "default", True),
            ("trunk_reduce_overhead", "reduce-overhead", False),
        ):
            self.attempt(row, name, self.synthetic, preset, batch, self.kernel, mode, per_block)
        self.attempt(row, "trainer_reduce_overhead", self.trainer, preset, batch, self.kernel, "reduce-overhead")
        self.emit(row)

    def run(self) -> None:
        t0 = time.perf_counter()
        self.emit(
            {
                "device": torch.cuda.get_device_name() if self.cuda else "cpu",
                "torch": torch.__version__,
                "loss_kernel": self.kernel,
                "compile": self.a.compile,
                "date": time.strftime("%Y-%m-%d"),
            }
        )
        if self.a.compile_variants:
            self.compile_variants(*self.a.plan[0])
        for preset, batch in self.a.attention:
            self.attention_check(preset, batch)
        if not self.a.skip_loss_paths:
            row: dict = {"check": "loss_paths"}
            if self.attempt(row, "result", self.loss_paths, self.a.plan[0][0]):
                row = row["result"]
            self.emit(row)
        biggest = None
        for i, (preset, batch) in enumerate(self.a.plan):
            row = {"check": "train", "preset": preset, "batch": batch, "seq": SEQ, "loss_kernel": self.kernel}
            if self.attempt(row, "trainer", self.trainer, preset, batch, self.kernel):
                row["mfu"] = round(row["trainer"]["tokens_per_s"] * self.flops_per_token(preset) / self.a.peak_flops, 4)
                if self.attempt(row, "synthetic_tokens_per_s", self.synthetic, preset, batch, self.kernel):
                    row["trainer_over_synthetic"] = round(
                        row["trainer"]["tokens_per_s"] / row["synthetic_tokens_per_s"], 3
                    )
                    biggest = (preset, batch)
                if i == 0 and self.kernel != "torch" and not self.a.skip_loss_paths:
                    self.attempt(row, "trainer_torch_loss", self.trainer, preset, batch, "torch")
                if (preset, batch) in (self.a.transformers_plan or self.a.plan[:1]):
                    if self.attempt(row, "transformers_tokens_per_s", self.transformers, preset, batch):
                        row["pico_over_transformers"] = round(
                            row["trainer"]["tokens_per_s"] / row["transformers_tokens_per_s"], 3
                        )
            row["elapsed_s"] = round(time.perf_counter() - t0, 1)
            self.emit(row)
            if biggest == (preset, batch) and preset == self.a.profile_preset:
                prof: dict = {"check": "profile"}
                if self.attempt(prof, "result", self.profile, preset, batch):
                    prof = prof["result"]
                self.emit(prof)


def prepare(data: Path) -> None:
    """Tokenizer and tokens at seq_len 2,048, made by the pipeline's stages from the embedded corpus."""
    from pico.data import embedded, tokenizer
    from pico.data import tokenize as tokenize_stage

    params = parse_params(
        {
            "embedded": {"out_dir": str(data / "embedded")},
            "data": {
                "train_paths": [str(data / "embedded/dolma/*.json.gz")],
                "eval_paths": [str(data / "embedded/paloma/*/val.jsonl.gz")],
                "seq_len": SEQ,
                "tokens_dir": str(data / "tokens"),
            },
            "tokenizer": {"out_dir": str(data / "tokenizer")},
        }
    )
    embedded.run(params)
    tokenizer.run(params)
    tokenize_stage.run(params, progress=False)
    shutil.rmtree(data / "embedded")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=REPO / ".gpudata")
    ap.add_argument("--prepare", type=Path, help="make the data folder (on any machine) and exit")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--peak-flops", type=float, default=989e12)
    ap.add_argument("--vocab", type=int, default=50_304)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--seconds", type=float, default=6.0, help="timed seconds per synthetic/transformers loop")
    ap.add_argument("--no-compile", dest="compile", action="store_false")
    ap.add_argument(
        "--plan",
        default="small:16,small:64,tiny:64,medium:32",
        type=lambda s: [(p, int(b)) for p, b in (x.split(":") for x in s.split(","))],
    )
    ap.add_argument("--profile-preset", default="small")
    ap.add_argument("--compile-variants", action="store_true", help="first: the synthetic loop compiled each way")
    ap.add_argument("--skip-loss-paths", action="store_true")
    ap.add_argument(
        "--attention",
        default=[],
        type=lambda s: [(p, int(b)) for p, b in (x.split(":") for x in s.split(","))],
        help="first: attention alone through each kernel at these preset:batch entries (e.g. small:64)",
    )
    ap.add_argument(
        "--transformers-plan",
        default=None,
        type=lambda s: [(p, int(b)) for p, b in (x.split(":") for x in s.split(","))],
        help="plan entries also run with plain transformers (default: the first)",
    )
    args = ap.parse_args()
    if args.prepare:
        return prepare(args.prepare)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this check is for a GPU machine (--prepare works anywhere)")
    if args.device == "cuda":
        torch.set_float32_matmul_precision("high")
    Check(args).run()


if __name__ == "__main__":
    main()
