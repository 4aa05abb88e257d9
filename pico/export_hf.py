"""Export a checkpoint as a standard Hugging Face ``LlamaForCausalLM`` folder.

    pico export-hf CHECKPOINT OUT_DIR

Writes ``config.json``, ``model.safetensors`` and the tokenizer files, loadable with plain
``transformers`` (``AutoModelForCausalLM.from_pretrained(OUT_DIR)``), no remote code. The Pico
decoder is a Llama with untied head, no biases, RMSNorm eps 1e-6 and GQA. One real difference:
pico rotates *adjacent* pairs of each head's q/k dimensions (Meta's complex RoPE), HF Llama rotates
the two *halves*; the q/k projection rows are permuted per head (as HF's own Llama conversion does)
so that both models compute the same attention scores and the same logits.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from pico import checkpoint
from pico.config import TokenizerConfig
from pico.data import tokenizer
from pico.model import ModelDims

MARKER = "pico_checkpoint.json"  # written into every export: the folder is ours to replace


def interleaved_to_halves(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Reorder each head's output rows from (x0, x1), (x2, x3), ... pairs to [evens | odds]."""
    out_dim, in_dim = w.shape
    head_dim = out_dim // n_heads
    return w.view(n_heads, head_dim // 2, 2, in_dim).transpose(1, 2).reshape(out_dim, in_dim)


def convert_state_dict(sd: dict[str, torch.Tensor], dims: ModelDims) -> dict[str, torch.Tensor]:
    out = {
        "model.embed_tokens.weight": sd["embedding_proj.weight"],
        "model.norm.weight": sd["output_norm.weight"],
        "lm_head.weight": sd["de_embedding_proj.weight"],
    }
    for i in range(dims.n_layers):
        p, q = f"layers.{i}.", f"model.layers.{i}."
        out[q + "self_attn.q_proj.weight"] = interleaved_to_halves(sd[p + "attention.q_proj.weight"], dims.n_heads)
        out[q + "self_attn.k_proj.weight"] = interleaved_to_halves(sd[p + "attention.k_proj.weight"], dims.n_kv_heads)
        out[q + "self_attn.v_proj.weight"] = sd[p + "attention.v_proj.weight"]
        out[q + "self_attn.o_proj.weight"] = sd[p + "attention.o_proj.weight"]
        out[q + "mlp.gate_proj.weight"] = sd[p + "swiglu.w_0.weight"]
        out[q + "mlp.up_proj.weight"] = sd[p + "swiglu.w_1.weight"]
        out[q + "mlp.down_proj.weight"] = sd[p + "swiglu.w_2.weight"]
        out[q + "input_layernorm.weight"] = sd[p + "attention_norm.weight"]
        out[q + "post_attention_layernorm.weight"] = sd[p + "swiglu_norm.weight"]
    return {k: v.contiguous() for k, v in out.items()}


def hf_config(dims: ModelDims, eos_id: int | None, pad_id: int | None) -> dict:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": dims.vocab_size,
        "hidden_size": dims.d_model,
        "intermediate_size": dims.hidden_dim,
        "num_hidden_layers": dims.n_layers,
        "num_attention_heads": dims.n_heads,
        "num_key_value_heads": dims.n_kv_heads,
        "head_dim": dims.head_dim,
        "max_position_embeddings": dims.max_seq_len,
        "rms_norm_eps": dims.norm_eps,
        "rope_theta": dims.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": dims.rope_theta},
        "rope_scaling": None,
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        "attention_bias": False,
        "mlp_bias": False,
        "attention_dropout": 0.0,
        "initializer_range": dims.init_std,
        "bos_token_id": None,
        "eos_token_id": eos_id,
        "pad_token_id": pad_id,
        "torch_dtype": "float32",
    }


def tokenizer_folder(ckpt: Path, state: dict, given: str | Path | None) -> Path:
    """The folder named on the command line, else the tokenizer folder of the run's params, else
    (an import without params) the pico-train folder the checkpoint came from."""
    if given:
        return Path(given)
    recorded = ((state.get("config") or {}).get("tokenizer") or {}).get("out_dir")
    if recorded:
        return Path(recorded)
    if state.get("imported_from") and (Path(state["imported_from"]) / tokenizer.TOKENIZER_FILE).is_file():
        return Path(state["imported_from"])
    raise FileNotFoundError(f"{ckpt} names no tokenizer folder; pass --tokenizer-dir (a folder with tokenizer.json)")


def check_tokenizer(ckpt: Path, state: dict, dims: ModelDims, tok, info, tok_dir: Path) -> None:
    """The export's tokenizer is the checkpoint's: the same file, or one that gives the same ids
    (pico.data.tokenizer.behaviour_hash). A checkpoint that records none (a pico-train import
    without a tokenizer.json) takes any whose ids fit the model, and the export says so."""
    top = max(tok.get_vocab(with_added_tokens=True).values())
    if top >= dims.vocab_size:
        raise ValueError(
            f"{tok_dir}: the tokenizer has token id {top}, more than {ckpt}'s vocabulary of {dims.vocab_size} holds"
        )
    recorded = state.get("tokenizer_sha256")
    if recorded is None:
        print(f"export-hf: {ckpt} records no tokenizer; {tok_dir / tokenizer.TOKENIZER_FILE} goes with it unchecked")
    elif info.sha256 != recorded and state.get("tokenizer_behaviour") != tokenizer.behaviour_hash(tok):
        raise ValueError(f"{tok_dir} is not the tokenizer this checkpoint was trained with (pass --tokenizer-dir)")


def export(ckpt: str | Path, out_dir: str | Path, tokenizer_dir: str | Path | None = None) -> Path:
    ckpt, out = Path(ckpt), Path(out_dir)
    if out.exists() and not (out / MARKER).is_file() and (not out.is_dir() or any(out.iterdir())):
        # only a folder this command wrote (it holds the marker) is ever replaced
        raise FileExistsError(f"{out} exists and is not an export of pico's; choose a new folder")
    state = checkpoint.verify(ckpt)
    dims = ModelDims(**state["model_dims"])
    sd = load_file(str(ckpt / checkpoint.WEIGHTS))
    names = TokenizerConfig(
        **{
            k: v
            for k, v in ((state.get("config") or {}).get("tokenizer") or {}).items()
            if k in ("eos_token", "pad_token")
        }
    )
    tok_dir = tokenizer_folder(ckpt, state, tokenizer_dir)
    tok, info = tokenizer.from_folder(tok_dir, names.eos_token, names.pad_token)
    check_tokenizer(ckpt, state, dims, tok, info, tok_dir)

    tmp = out.with_name(f".tmp-{out.name}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    save_file(convert_state_dict(sd, dims), str(tmp / "model.safetensors"), metadata={"format": "pt"})
    config = hf_config(dims, info.eos_id, info.pad_id)
    (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (tmp / "generation_config.json").write_text(
        json.dumps({"eos_token_id": info.eos_id, "pad_token_id": info.pad_id}, indent=2) + "\n"
    )
    shutil.copy(tok_dir / tokenizer.TOKENIZER_FILE, tmp / tokenizer.TOKENIZER_FILE)
    eos, pad = names.eos_token, names.pad_token if info.pad_id is not None else None
    (tmp / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "eos_token": eos,
                "pad_token": pad,
                "bos_token": None,
                "model_max_length": dims.max_seq_len,
                "add_bos_token": False,
                "add_eos_token": False,
            },
            indent=2,
        )
        + "\n"
    )
    (tmp / MARKER).write_text(
        json.dumps(
            {
                "checkpoint": str(ckpt),
                "step": state["step"],
                "fingerprint": state["fingerprint"],
                "code_version": state.get("code_version"),
            },
            indent=2,
        )
        + "\n"
    )
    if out.exists():
        shutil.rmtree(out)  # an earlier export (it has the marker) or an empty folder
    tmp.rename(out)
    return out
