"""What a run is assembled from on this machine: the model's dimensions (params plus the
tokenizer's vocabulary) and the device it trains on. Shared by the trainer and the planner, so
neither imports the other."""

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
