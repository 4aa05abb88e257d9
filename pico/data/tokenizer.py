"""The tokenizer stage: a HF `tokenizers` tokenizer from one of three places.

- ``tokenizer.source: train`` (the embedded default): a byte-level BPE trained on the training
  documents, with EOS and padding as special tokens.
- a local ``tokenizer.json`` path.
- a Hugging Face hub id (e.g. ``allenai/OLMo-7B-0724-hf``, pico's GPT-NeoX-style BPE whose EOS
  is ``<|endoftext|>`` = 50279); needs the hub, so it is not exercised offline.

The result is always ``<out_dir>/tokenizer.json`` plus ``tokenizer_meta.json`` (EOS/pad ids,
vocabulary size and a content hash that the token manifests and checkpoints record).

Two tokenizers are the same tokenizer when they turn text into the same ids (``same_behaviour``),
whatever their files say: transformers re-saves a ``tokenizer.json`` with another post-processor
(pico-train's checkpoints hold such a copy), which changes the content hash but not one id this
pipeline writes (it encodes without special-token templates).
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
    """The file's content: what the manifests, the checkpoints and the run fingerprint record."""
    return hashlib.sha256(tok.to_str().encode()).hexdigest()


# What the vocabulary alone does not show: the normalizer (Unicode forms, case, accents,
# compatibility characters, invisible ones) and the pre-tokenizer (spaces, tabs, newlines, digits,
# punctuation, contractions), in scripts and byte ranges a byte-level BPE splits differently, with
# special tokens written inline as documents hold them.
PROBE = (
    "The quick brown fox's 2 jumps -- over 1,234,567.89 lazy dogs!? It'll be done; we've said 'yes'.\n"
    "  Leading spaces,\ttabs,\r\nCRLF and   runs of   spaces.\n\n"
    "Caf\u00e9 vs Cafe\u0301 (NFC/NFD), \ufb01ne \uff21\uff22\uff23 \u2460 \u00bd (NFKC), STRASSE stra\u00dfe "
    "\u0130stanbul \u03a3\u03bf\u03c6\u03af\u03b1, \u00a0nbsp\u200bzwsp\ufeffbom\u00ad.\n"
    "\u4e2d\u6587\u5b57\u7b26 \u65e5\u672c\u8a9e\u306e\u6587 \ud55c\uad6d\uc5b4 "
    "\u0627\u0644\u0639\u0631\u0628\u064a\u0629 \u05e2\u05d1\u05e8\u05d9\u05ea "
    "\u0939\u093f\u0928\u094d\u0926\u0940 \U0001f600\U0001f469\u200d\U0001f4bb \u00e9\u0301\u0301\n"
    "def f(x):\n    return x**2 + 0x1F  # code\n<|endoftext|>next document<|padding|> <unk> [CLS] </s>\x00\x7f"
)


def behaviour_hash(tok: Tokenizer) -> str:
    """What the tokenizer does, not how its file is written: its vocabulary (token to id, added and
    special tokens included), its merges in rank order, and the ids it gives ``PROBE`` without a
    special-token template (as this pipeline encodes; a post-processor changes nothing here)."""
    spec = json.loads(tok.to_str())
    model = spec.get("model") or {}
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]  # both spellings
    added = sorted((t["id"], t["content"], bool(t.get("special"))) for t in spec.get("added_tokens") or [])
    what = {
        "model": model.get("type"),
        "vocab": sorted(tok.get_vocab(with_added_tokens=True).items(), key=lambda kv: (kv[1], kv[0])),
        "merges": merges,
        "added": added,
        "probe": tok.encode(PROBE, add_special_tokens=False).ids,
    }
    return hashlib.sha256(json.dumps(what, ensure_ascii=False).encode()).hexdigest()


def recorded_behaviour(sha256: str | None, folder: str | Path) -> str | None:
    """The behaviour of the tokenizer a checkpoint or manifest records by content hash, when
    ``folder`` holds that very file (else None: nothing to compare with)."""
    path = Path(folder) / TOKENIZER_FILE
    if not sha256 or not path.is_file():
        return None
    tok = read_tokenizer(path)
    return behaviour_hash(tok) if tokenizer_hash(tok) == sha256 else None


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
    return info_of(tok, cfg.eos_token, cfg.pad_token, cfg.source)


def info_of(tok: Tokenizer, eos_token: str, pad_token: str, source: str) -> TokenizerInfo:
    eos = tok.token_to_id(eos_token)
    if eos is None:
        raise ValueError(f"tokenizer.eos_token={eos_token!r} is not in the tokenizer's vocabulary")
    return TokenizerInfo(
        eos_id=eos,
        pad_id=tok.token_to_id(pad_token),
        vocab_size=tok.get_vocab_size(with_added_tokens=True),
        sha256=tokenizer_hash(tok),
        source=source,
    )


def run(params: Params) -> TokenizerInfo:
    out = Path(params.tokenizer.out_dir)
    tok = obtain_tokenizer(params)
    info = describe(tok, params)
    atomic_write_text(out / TOKENIZER_FILE, tok.to_str(pretty=True))
    atomic_write_text(out / META_FILE, json.dumps(info.__dict__, indent=2) + "\n")
    print(f"tokenizer: vocab {info.vocab_size}, eos id {info.eos_id}, sha256 {info.sha256[:12]} -> {out}")
    return info


def from_folder(folder: str | Path, eos_token: str, pad_token: str) -> tuple[Tokenizer, TokenizerInfo]:
    """A folder this stage wrote (its ``tokenizer_meta.json`` is checked), or any folder holding a
    ``tokenizer.json`` (a pico-train checkpoint, a HF model): then the ids come from the token names."""
    folder = Path(folder)
    if (folder / META_FILE).is_file():
        return load(folder)
    if not (folder / TOKENIZER_FILE).is_file():
        raise FileNotFoundError(f"{folder}: no {TOKENIZER_FILE} here")
    tok = read_tokenizer(folder / TOKENIZER_FILE)
    return tok, info_of(tok, eos_token, pad_token, str(folder))


def load(out_dir: str | Path) -> tuple[Tokenizer, TokenizerInfo]:
    out = Path(out_dir)
    tok = read_tokenizer(out / TOKENIZER_FILE)
    info = TokenizerInfo(**json.loads((out / META_FILE).read_text()))
    if tokenizer_hash(tok) != info.sha256:
        raise ValueError(
            f"{out / TOKENIZER_FILE} does not match the hash in {out / META_FILE}; rerun the tokenizer stage"
        )
    return tok, info
