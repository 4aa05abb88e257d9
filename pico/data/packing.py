"""Pack training documents the way pico's pretokenized Dolma is packed.

Each document's tokens + EOS, concatenated in reading order, cut into rows of ``seq_len + 1``
tokens, tail dropped. Output: a raw token file (uint16 when the vocabulary fits, else uint32)
that ``numpy.memmap`` opens as ``(rows, seq_len + 1)``, and a JSON manifest. Streaming: memory
holds one encode batch and less than one row of carry-over, whatever the corpus size.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer
from tqdm import tqdm

from pico.data.documents import Document, ReadStats
from pico.fsutil import atomic_open, atomic_write_json


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= np.iinfo(np.uint16).max + 1 else np.dtype(np.uint32)


def batched(items: Iterable, size: int) -> Iterator[list]:
    batch: list = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def encoded_chunks(docs: Iterable[Document], tok: Tokenizer, eos_id: int, dtype: np.dtype,
                   batch_size: int) -> Iterator[tuple[np.ndarray, int]]:
    """The token stream (each document's tokens + EOS, in order), one encode batch at a time."""
    for batch in batched(docs, batch_size):
        encodings = tok.encode_batch([d.text for d in batch], add_special_tokens=False)
        pieces = []
        for enc in encodings:
            pieces.append(np.asarray(enc.ids, dtype=dtype))
            pieces.append(np.asarray([eos_id], dtype=dtype))
        yield np.concatenate(pieces), len(batch)


class RowPacker:
    """Cuts a token stream into rows of ``row_len`` and writes the full ones; the tail is dropped."""

    def __init__(self, fh, row_len: int, dtype: np.dtype):
        self.fh, self.row_len = fh, row_len
        self.carry = np.empty(0, dtype=dtype)
        self.tokens = self.rows = 0
        self.digest = hashlib.sha256()

    def add(self, chunk: np.ndarray) -> None:
        self.tokens += len(chunk)
        stream = np.concatenate([self.carry, chunk])
        n_full = len(stream) // self.row_len
        if n_full:
            block = stream[: n_full * self.row_len].tobytes()
            self.fh.write(block)
            self.digest.update(block)
            self.rows += n_full
        self.carry = stream[n_full * self.row_len:].copy()

    def result(self) -> dict[str, Any]:
        return {"tokens": self.tokens, "rows": self.rows, "tokens_dropped_tail": int(len(self.carry)),
                "sha256": self.digest.hexdigest()}


def pack_documents(docs: Iterable[Document], tok: Tokenizer, eos_id: int, row_len: int, out_path: Path,
                   dtype: np.dtype, batch_size: int = 512, progress: bool = True) -> dict[str, Any]:
    """Write full rows to ``out_path`` atomically; return counts and the file's sha256."""
    docs_packed = 0
    bar = tqdm(desc=f"tokenize {out_path.name}", unit=" docs", disable=not progress, mininterval=2)
    with atomic_open(out_path, "wb") as fh:
        packer = RowPacker(fh, row_len, dtype)
        for chunk, n_docs in encoded_chunks(docs, tok, eos_id, dtype, batch_size):
            packer.add(chunk)
            docs_packed += n_docs
            bar.update(n_docs)
            bar.set_postfix(rows=packer.rows, refresh=False)
    bar.close()
    return {"documents_packed": docs_packed, **packer.result()}


def open_rows(tokens_dir: str | Path, split: str = "train") -> tuple[np.memmap, dict[str, Any]]:
    """Memory-map a packed token file as (rows, row_len) using its manifest."""
    tokens_dir = Path(tokens_dir)
    manifest = json.loads((tokens_dir / f"{split}_manifest.json").read_text())
    path = tokens_dir / manifest["file"]
    expected = manifest["rows"] * manifest["row_len"] * np.dtype(manifest["dtype"]).itemsize
    if path.stat().st_size != expected:
        raise ValueError(f"{path} has {path.stat().st_size} bytes, its manifest promises {expected}; rerun the tokenize stage")
    if manifest["rows"] == 0:
        raise ValueError(f"{path} holds no complete row of {manifest['row_len']} tokens; more data or a smaller data.seq_len")
    rows = np.memmap(path, dtype=manifest["dtype"], mode="r", shape=(manifest["rows"], manifest["row_len"]))
    return rows, manifest


def write_train_manifest(out_dir: Path, stats: ReadStats, counts: dict[str, Any], dtype: np.dtype, seq_len: int,
                         tokenizer_sha: str, eos_id: int) -> dict[str, Any]:
    manifest = {
        "file": "train.bin",
        "dtype": dtype.name,
        "seq_len": seq_len,
        "row_len": seq_len + 1,
        **stats.to_dict(),
        **counts,
        "tokenizer_sha256": tokenizer_sha,
        "eos_id": eos_id,
    }
    atomic_write_json(out_dir / "train_manifest.json", manifest)
    return manifest


def write_train_tokens(docs: Iterable[Document], stats: ReadStats, tok: Tokenizer, eos_id: int,
                       tokenizer_sha: str, seq_len: int, out_dir: Path, batch_size: int,
                       progress: bool = True) -> dict[str, Any]:
    dtype = token_dtype(tok.get_vocab_size(with_added_tokens=True))
    counts = pack_documents(docs, tok, eos_id, seq_len + 1, out_dir / "train.bin", dtype, batch_size, progress)
    return write_train_manifest(out_dir, stats, counts, dtype, seq_len, tokenizer_sha, eos_id)
