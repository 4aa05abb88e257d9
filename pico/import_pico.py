"""``pico import-pico``: a pico-train checkpoint as a checkpoint of this pipeline.

pico-train saves, in every ``runs/<run>/checkpoints/step_<N>/``, its model in Hugging Face form
(``config.json`` of ``PicoDecoderHFConfig``, ``model.safetensors`` or ``pytorch_model.bin`` with keys
``pico_decoder.<name>``) and usually the tokenizer. Its parameter names are this model's
(``embedding_proj``, ``layers.{i}.attention.q_proj`` …, ``de_embedding_proj``), so the weights load
as they are once the prefix is gone; the dimensions come from ``config.json``. The result is a
folder ``step_NNNNNNNN`` holding ``model.safetensors`` and a ``state.json`` that says where it came
from, which ``pico evaluate`` (and then ``pico report``) scores with honest Paloma figures.

Accepted sources: a step folder, a run folder (its ``checkpoints/latest`` or newest ``step_<N>``),
or any HF folder with that ``config.json`` (e.g. a downloaded ``pico-lm/pico-decoder-tiny``).
Nothing is fetched from the hub here. A checkpoint folder that already holds a run has that run
moved aside first (``pico.runfolder.move_aside``), never deleted.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from pico import checkpoint, runfolder
from pico.config import Params
from pico.data.tokenizer import behaviour_hash, read_tokenizer, tokenizer_hash
from pico.model import ModelDims, PicoDecoder

PREFIXES = ("pico_decoder.", "_forward_module.", "module.")  # HF wrapper, Lightning Fabric, DDP
NOT_WEIGHTS = re.compile(r"(^|\.)_freqs_cis$")  # pico-train's RoPE buffer, recomputed here
PICO_STEP = re.compile(r"^step_(\d+)$")


def resolve_source(source: Path) -> Path:
    """The folder holding ``config.json``: the source itself, or a pico-train run's newest step."""
    if (source / "config.json").is_file():
        return source
    ckpts = source / "checkpoints"
    if (ckpts / "latest" / "config.json").is_file():
        return (ckpts / "latest").resolve()
    steps = (
        sorted(
            (int(m.group(1)), p)
            for p in ckpts.glob("step_*")
            if (m := PICO_STEP.match(p.name)) and (p / "config.json").is_file()
        )
        if ckpts.is_dir()
        else []
    )
    if not steps:
        raise FileNotFoundError(
            f"{source}: no config.json here nor in {ckpts}/latest or {ckpts}/step_<N> "
            "(expected a pico-train step folder, run folder or HF checkpoint)"
        )
    return steps[-1][1]


def dims_of(config: dict[str, Any], source: Path) -> ModelDims:
    """pico-train's ``PicoDecoderHFConfig`` fields as this model's dimensions."""
    if config.get("model_type", "pico_decoder") != "pico_decoder":
        raise ValueError(f"{source}/config.json: model_type {config.get('model_type')!r} is not pico_decoder")
    try:
        return ModelDims(
            vocab_size=int(config["vocab_size"]),
            d_model=int(config["d_model"]),
            hidden_dim=int(config["activation_hidden_dim"]),
            n_layers=int(config["n_layers"]),
            n_heads=int(config["attention_n_heads"]),
            n_kv_heads=int(config.get("attention_n_kv_heads") or config["attention_n_heads"]),
            max_seq_len=int(config["max_seq_len"]),
            norm_eps=float(config.get("norm_eps", 1e-6)),
            rope_theta=float(config.get("position_emb_theta", 10000.0)),
            init="pico",
        )
    except KeyError as err:
        raise ValueError(f"{source}/config.json lacks {err.args[0]!r} (not a pico-train model config)") from None


def read_weights(source: Path) -> dict[str, torch.Tensor]:
    """The state dict with pico-train's wrapper prefixes stripped and its RoPE buffers dropped."""
    if (source / "model.safetensors").is_file():
        raw = load_file(str(source / "model.safetensors"), device="cpu")
    elif (source / "pytorch_model.bin").is_file():
        raw = torch.load(source / "pytorch_model.bin", map_location="cpu", weights_only=True)
    else:
        raise FileNotFoundError(f"{source}: neither model.safetensors nor pytorch_model.bin")
    out = {}
    for key, value in raw.items():
        name = key
        for prefix in PREFIXES:
            name = name.removeprefix(prefix)
        if not NOT_WEIGHTS.search(name):
            out[name] = value
    return out


def import_pico(source: str | Path, out_dir: str | Path, params: Params | None = None) -> Path:
    src = resolve_source(Path(source))
    config = json.loads((src / "config.json").read_text())
    dims = dims_of(config, src)
    model = PicoDecoder(dims)
    weights = read_weights(src)
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(weights)), sorted(set(weights) - set(own))
    wrong = [
        f"{k} {tuple(weights[k].shape)} != {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(weights))
        if weights[k].shape != own[k].shape
    ]
    if missing or unexpected or wrong:
        raise ValueError(
            f"{src}: the weights do not fit a pico decoder of config.json's size: "
            f"missing {missing[:3]}, unexpected {unexpected[:3]}, shapes {wrong[:2]}"
        )
    model.load_state_dict(weights)
    m = PICO_STEP.match(src.name)
    step = int(m.group(1)) if m else 0
    tok = src / "tokenizer.json"
    tok_sha = tok_behaviour = None
    if tok.is_file():  # pico-train's copy, re-saved through transformers: compared by what it does
        loaded = read_tokenizer(tok)
        tok_sha, tok_behaviour = tokenizer_hash(loaded), behaviour_hash(loaded)
    digest = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        digest.update(k.encode() + v.float().numpy().tobytes())
    fingerprint = f"pico-train-{digest.hexdigest()[:16]}"

    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    newest = checkpoint.latest_checkpoint(root)
    if newest is not None:
        found = checkpoint.read_state(newest).get("fingerprint")
        if found != fingerprint:
            dest = runfolder.move_aside(root, found)
            print(f"{root} held another run ({found}); moved to {dest}")
    state = {
        "fingerprint": fingerprint,
        "status": "imported",
        "model_dims": dims.to_dict(),
        "imported_from": str(src),
        "pico_train_config": config,
        "tokenizer_sha256": tok_sha,
        "tokenizer_behaviour": tok_behaviour,
        "config": params.model_dump(mode="json") if params else None,
    }
    final = checkpoint.save(root, step, model, None, None, state, keep=None)  # weights only, nothing pruned
    print(
        f"pico-train checkpoint {src}: {model.num_parameters():,} parameters, step {step}"
        + ("" if tok_sha else "; no tokenizer.json beside it, so the evaluation data's tokenizer is not checked")
    )
    return final
