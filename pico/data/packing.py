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


def pack_documents(docs: Iterable[Document], tok: Tokenizer, eos_id: int, row_len: int, out_path: Path,
                   dtype: np.dtype, batch_size: int = 512, progress: bool = True) -> dict[str, Any]:
    """Write full rows to ``out_path`` atomically; return counts and the file's sha256."""
    digest = hashlib.sha256()
    carry = np.empty(0, dtype=dtype)
    tokens = rows = docs_packed = 0
    bar = tqdm(desc=f"tokenize {out_path.name}", unit=" docs", disable=not progress, mininterval=2)
    with atomic_open(out_path, "wb") as fh:
        for batch in batched(docs, batch_size):
            encodings = tok.encode_batch([d.text for d in batch], add_special_tokens=False)
            pieces = [carry]
            for enc in encodings:
                pieces.append(np.asarray(enc.ids, dtype=dtype))
                pieces.append(np.asarray([eos_id], dtype=dtype))
                tokens += len(enc.ids) + 1
            stream = np.concatenate(pieces)
            n_full = len(stream) // row_len
            if n_full:
                block = stream[: n_full * row_len].tobytes()
                fh.write(block)
                digest.update(block)
                rows += n_full
            carry = stream[n_full * row_len:].copy()
            docs_packed += len(batch)
            bar.update(len(batch))
            bar.set_postfix(rows=rows, refresh=False)
    bar.close()
    return {"documents_packed": docs_packed, "tokens": tokens, "rows": rows,
            "tokens_dropped_tail": int(len(carry)), "sha256": digest.hexdigest()}


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


def write_train_tokens(docs: Iterable[Document], stats: ReadStats, tok: Tokenizer, eos_id: int,
                       tokenizer_sha: str, seq_len: int, out_dir: Path, batch_size: int,
                       progress: bool = True) -> dict[str, Any]:
    dtype = token_dtype(tok.get_vocab_size(with_added_tokens=True))
    counts = pack_documents(docs, tok, eos_id, seq_len + 1, out_dir / "train.bin", dtype, batch_size, progress)
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
