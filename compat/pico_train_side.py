"""pico-train's side of compat/pico_train.py, run in a Python that has pico-train's dependencies, with
a pico-train checkout on PYTHONPATH (its `src` package). Nothing of this pipeline is imported.

1. Builds pico-train's own PicoDecoder (src/model/pico_decoder.py) and trains it a few AdamW steps
   on the given texts, so its weights are not an initialisation.
2. Writes the checkpoint with pico-train's own `save_checkpoint` (src/checkpointing/training.py):
   the HF wrapper's files, the tokenizer re-saved through transformers, Fabric's state.
3. Scores the texts as pico-train's Paloma evaluation does (src/evaluation/tasks/paloma.py):
   Hugging Face evaluate's perplexity metric, loaded from its own code (the metric pico-lm/perplexity
   forks; the hub is out of reach here), `add_start_token=False`, `max_length=2048`. pico-train's
   model classes are registered with transformers' Auto classes, which is what the fork's
   `trust_remote_code=True` achieves.

Writes OUT/pico_train_eval.json: the step folder, mean_perplexity and every per-text perplexity.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
from pathlib import Path

import evaluate
import torch
import torch.nn.functional as F
from lightning.fabric import Fabric
from src.checkpointing.training import save_checkpoint
from src.config import (
    CheckpointingConfig,
    DataConfig,
    EvaluationConfig,
    ModelConfig,
    MonitoringConfig,
    TrainingConfig,
)
from src.model.pico_decoder import PicoDecoder, PicoDecoderHF, PicoDecoderHFConfig
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast


def read_texts(paths: list[Path]) -> list[str]:
    texts = []
    for path in paths:
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            texts += [json.loads(line)["text"] for line in fh if line.strip()]
    return texts


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokenizer", type=Path, required=True, help="a tokenizer.json")
    ap.add_argument("--texts", type=Path, nargs="+", required=True, help="Paloma-format .jsonl.gz files")

    ap.add_argument("--metric", type=Path, required=True, help="evaluate's metrics/perplexity/perplexity.py")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=40)
    args = ap.parse_args()

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_file=str(args.tokenizer), eos_token="<|endoftext|>", pad_token="<|padding|>"
    )
    texts = read_texts(args.texts)
    vocab = math.ceil(len(tokenizer) / 64) * 64
    model_config = ModelConfig(
        d_model=96, n_layers=2, vocab_size=vocab, max_seq_len=2048, attention_n_heads=12,
        attention_n_kv_heads=4, activation_hidden_dim=384, batch_size=4,
    )  # fmt: skip
    torch.manual_seed(0)
    model = PicoDecoder(model_config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    ids = torch.tensor([i for t in texts for i in tokenizer(t, add_special_tokens=False)["input_ids"]])
    g = torch.Generator().manual_seed(0)
    for _ in range(args.steps):  # weights that have learned something: larger than an initialisation
        starts = torch.randint(0, len(ids) - 129, (8,), generator=g)
        batch = torch.stack([ids[s : s + 129] for s in starts])
        logits, _ = model(batch[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, vocab).float(), batch[:, 1:].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    print(f"pico-train model trained {args.steps} steps, loss {loss.item():.3f}")

    fabric = Fabric(accelerator="cpu", devices=1, precision="32-true")
    fabric.launch()
    model, optimizer = fabric.setup(model, optimizer)
    configs = {
        "data": DataConfig(),
        "model": model_config,
        "training": TrainingConfig(),
        "evaluation": EvaluationConfig(),
        "monitoring": MonitoringConfig(),
        "checkpointing": CheckpointingConfig(run_name="compat", runs_dir=str(args.out / "runs")),
    }
    step = args.steps
    save_checkpoint(configs, step, fabric, model, optimizer, scheduler, tokenizer)
    folder = args.out / "runs" / "compat" / "checkpoints" / f"step_{step}"

    AutoConfig.register("pico_decoder", PicoDecoderHFConfig)
    AutoModelForCausalLM.register(PicoDecoderHFConfig, PicoDecoderHF)
    perplexity = evaluate.load(str(args.metric))
    result = perplexity.compute(
        model_id=str(folder), predictions=texts, add_start_token=False, max_length=2048, batch_size=16
    )
    lengths = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
    out = {
        "step_folder": str(folder),
        "mean_perplexity": float(result["mean_perplexity"]),
        "perplexities": [float(x) for x in result["perplexities"]],
        "texts": len(texts),
        "longer_than_2048": sum(n > 2048 for n in lengths),
    }
    (args.out / "pico_train_eval.json").write_text(json.dumps(out, indent=1))
    print(f"pico-train's Paloma evaluation: {out['mean_perplexity']:.6f} over {len(texts)} texts")


if __name__ == "__main__":
    main()
