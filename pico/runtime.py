"""What a run is assembled from on this machine: the model's dimensions (params plus the
tokenizer's vocabulary), the device it trains on, the compiled model. Shared by the trainer and
the planner, so neither imports the other."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from pico.config import Params
from pico.data import tokenizer as tokenizer_stage
from pico.model import ModelDims, PicoDecoder


def model_dims(params: Params) -> ModelDims:
    info = json.loads((Path(params.tokenizer.out_dir) / tokenizer_stage.META_FILE).read_text())
    return ModelDims.from_config(params.model, info["vocab_size"])


def build_model(params: Params) -> PicoDecoder:
    return PicoDecoder(model_dims(params))


def pick_device(params: Params, d: Any) -> torch.device:
    want = params.training.device
    if want == "cuda" or (want == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", d.local_rank) if d.world > 1 else torch.device("cuda")
    return torch.device("cpu")


def compile_model(model: PicoDecoder, mode: str = "default", per_block: bool = False) -> None:
    """torch.compile the model's trunk (embedding, blocks, final norm) as one graph — fewer kernel
    launches and guards per step, which matters at small batches where the host is the bottleneck —
    or, under FSDP, each block (as torchtitan does), since FSDP's hooks sit between blocks. In place:
    parameter names and checkpoints are unchanged, and the chunked/fused loss stays eager (pico.loss)."""
    if per_block:
        for layer in model.layers:
            layer.compile(mode=mode)
    else:
        model.hidden_states = torch.compile(model.hidden_states, mode=mode)  # shadows the method


def peak_memory_mib(device: torch.device) -> tuple[float, float] | None:
    """This process's peak GPU memory since the last call, allocated and reserved by torch's caching
    allocator, in MiB (None off CUDA): perf.csv's per-interval OOM margin. Resets the peaks, so each
    log interval reports its own."""
    if device.type != "cuda":
        return None
    peaks = torch.cuda.max_memory_allocated(device) / 2**20, torch.cuda.max_memory_reserved(device) / 2**20
    torch.cuda.reset_peak_memory_stats(device)
    return peaks
