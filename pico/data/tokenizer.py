"""The tokenizer stage: a HF `tokenizers` tokenizer from one of three places.

- ``tokenizer.source: train`` (the embedded default): a byte-level BPE trained on the training
  documents, with EOS and padding as special tokens.
- a local ``tokenizer.json`` path.
- a Hugging Face hub id (e.g. ``allenai/OLMo-7B-0724-hf``, pico's GPT-NeoX-style BPE whose EOS
  is ``<|endoftext|>`` = 50279); needs the hub, so it is not exercised offline.

The result is always ``<out_dir>/tokenizer.json`` plus ``tokenizer_meta.json`` (EOS/pad ids,
vocabulary size and a content hash that the token manifests and checkpoints record).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from pico.config import Params
from pico.data.documents import iter_documents
from pico.fsutil import atomic_write_text

TOKENIZER_FILE = "tokenizer.json"
META_FILE = "tokenizer_meta.json"


@dataclass(frozen=True)
class TokenizerInfo:
    eos_id: int
    pad_id: int | None
    vocab_size: int
    sha256: str
    source: str


def read_tokenizer(path: str | Path) -> Tokenizer:
    """A ``tokenizer.json`` file, or one line naming it and why it cannot be used (tokenizers' own
    error for an empty or broken file names neither the file nor the fix)."""
    path = Path(path)
    try:
        return Tokenizer.from_file(str(path))
    except Exception as err:  # tokenizers raises a bare Exception carrying serde's message
        if isinstance(err, OSError) and not path.exists():
            raise FileNotFoundError(f"{path}: tokenizer file not found") from None
        size = path.stat().st_size if path.is_file() else 0
        why = "it is empty" if size == 0 else f"not a tokenizers JSON file ({str(err).splitlines()[0][:120]})"
        raise ValueError(
            f"{path}: cannot load the tokenizer: {why}; rerun the tokenizer stage "
            "(`dvc repro tokenizer`) or point tokenizer.source at a valid tokenizer.json"
        ) from None


def tokenizer_hash(tok: Tokenizer) -> str:
    return hashlib.sha256(tok.to_str().encode()).hexdigest()


def train_bpe(texts, vocab_size: int, min_frequency: int, special_tokens: list[str]) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def obtain_tokenizer(params: Params) -> Tokenizer:
    cfg = params.tokenizer
    if cfg.source == "train":
        texts = (
            d.text
            for d in iter_documents(
                params.data.train_paths, strict=params.data.strict, max_documents=cfg.train_max_documents
            )
        )
        return train_bpe(texts, cfg.vocab_size, cfg.min_frequency, [cfg.eos_token, cfg.pad_token])
    if Path(cfg.source).is_file():
        return read_tokenizer(cfg.source)
    if Path(cfg.source).is_dir() and (Path(cfg.source) / TOKENIZER_FILE).is_file():
        return read_tokenizer(Path(cfg.source) / TOKENIZER_FILE)
    if cfg.source.endswith(".json"):
        raise FileNotFoundError(f"tokenizer.source: file not found: {cfg.source}")
    return Tokenizer.from_pretrained(cfg.source)  # a hub id


def describe(tok: Tokenizer, params: Params) -> TokenizerInfo:
    cfg = params.tokenizer
    eos = tok.token_to_id(cfg.eos_token)
    if eos is None:
        raise ValueError(f"tokenizer.eos_token={cfg.eos_token!r} is not in the tokenizer's vocabulary")
    return TokenizerInfo(
        eos_id=eos,
        pad_id=tok.token_to_id(cfg.pad_token),
        vocab_size=tok.get_vocab_size(with_added_tokens=True),
        sha256=tokenizer_hash(tok),
        source=cfg.source,
    )


def run(params: Params) -> TokenizerInfo:
    out = Path(params.tokenizer.out_dir)
    tok = obtain_tokenizer(params)
    info = describe(tok, params)
    atomic_write_text(out / TOKENIZER_FILE, tok.to_str(pretty=True))
    atomic_write_text(out / META_FILE, json.dumps(info.__dict__, indent=2) + "\n")
    print(f"tokenizer: vocab {info.vocab_size}, eos id {info.eos_id}, sha256 {info.sha256[:12]} -> {out}")
    return info


def load(out_dir: str | Path) -> tuple[Tokenizer, TokenizerInfo]:
    out = Path(out_dir)
    tok = read_tokenizer(out / TOKENIZER_FILE)
    info = TokenizerInfo(**json.loads((out / META_FILE).read_text()))
    if tokenizer_hash(tok) != info.sha256:
        raise ValueError(
            f"{out / TOKENIZER_FILE} does not match the hash in {out / META_FILE}; rerun the tokenizer stage"
        )
    return tok, info
