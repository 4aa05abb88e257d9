"""Pack training documents the way pico's pretokenized Dolma is packed.

Each document's tokens + EOS, concatenated in reading order, cut into rows of ``row_len``
tokens, tail dropped. Output: ``train.bin`` and its manifest in the tokens folder
(``pico.data.tokens_dir`` owns the layout). Streaming: memory holds a few encode batches (one
per encoding thread, ``pico.data.encoding``) and less than one row of carry-over, whatever the
corpus size.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer
from tqdm import tqdm

from pico.data.budgets import Budgets, tally_only
from pico.data.documents import Document, ReadStats
from pico.data.encoding import encoded_batches
from pico.data.tokens_dir import TRAIN_BIN, TokenLayout, TokensDir
from pico.fsutil import atomic_open


def encoded_chunks(
    docs: Iterable[Document],
    tok: Tokenizer,
    eos_id: int,
    dtype: np.dtype,
    batch_size: int,
    budgets: Budgets | None = None,
    threads: int | None = None,
) -> Iterator[tuple[np.ndarray, int]]:
    """The token stream (each document's tokens + EOS, in order), one encode batch at a time, with
    the documents ``budgets`` keeps (and counts per source); encoded on ``threads`` cores
    (``pico.data.encoding``).

    A batch's ids (with each document's EOS) become one array on its encoding thread: building the
    Python ints of ``Encoding.ids`` costs about a tenth of the encoding, so it is built once per
    document (``len(enc)`` is its length). ``budgets`` decides here, in reading order, whichever
    thread encoded the batch. No offsets are computed: packing needs only the ids."""

    def to_array(batch: list[Document], encodings: list) -> tuple[list[Document], np.ndarray, np.ndarray]:
        ids: list[int] = []
        for enc in encodings:
            ids += enc.ids
            ids.append(eos_id)
        return batch, np.array([len(enc) + 1 for enc in encodings], dtype=np.int64), np.array(ids, dtype=dtype)

    for batch, lengths, ids in encoded_batches(docs, tok, batch_size, to_array, threads):
        if budgets is None:
            yield ids, len(batch)
            continue
        keep = [budgets.keep(doc, int(n)) for doc, n in zip(batch, lengths)]
        yield (ids if all(keep) else ids[np.repeat(keep, lengths)]), sum(keep)


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
        self.carry = stream[n_full * self.row_len :].copy()

    def result(self) -> dict[str, Any]:
        return {
            "tokens": self.tokens,
            "rows": self.rows,
            "tokens_dropped_tail": int(len(self.carry)),
            "sha256": self.digest.hexdigest(),
        }


def pack_documents(
    docs: Iterable[Document],
    tok: Tokenizer,
    eos_id: int,
    row_len: int,
    out_path: Path,
    dtype: np.dtype,
    batch_size: int = 512,
    progress: bool = True,
    budgets: Budgets | None = None,
) -> dict[str, Any]:
    """Write full rows to ``out_path`` atomically; return counts and the file's sha256."""
    docs_packed = 0
    bar = tqdm(desc=f"tokenize {out_path.name}", unit=" docs", disable=not progress, mininterval=2)
    with atomic_open(out_path, "wb") as fh:
        packer = RowPacker(fh, row_len, dtype)
        for chunk, n_docs in encoded_chunks(docs, tok, eos_id, dtype, batch_size, budgets):
            packer.add(chunk)
            docs_packed += n_docs
            bar.update(n_docs)
            bar.set_postfix(rows=packer.rows, refresh=False)
    bar.close()
    return {"documents_packed": docs_packed, **packer.result()}


def write_train_tokens(
    docs: Iterable[Document],
    stats: ReadStats,
    tok: Tokenizer,
    out: TokensDir,
    layout: TokenLayout,
    batch_size: int,
    progress: bool = True,
    budgets: Budgets | None = None,
) -> dict[str, Any]:
    """Pack the documents (those ``budgets`` keeps) into ``train.bin`` and write its manifest, with
    each source's documents and tokens."""
    budgets = budgets or tally_only()
    counts = pack_documents(
        docs, tok, layout.eos_id, layout.row_len, out.file(TRAIN_BIN), layout.dtype, batch_size, progress, budgets
    )
    return out.write_train_manifest(layout, stats.to_dict(), counts, sources=budgets.tally.to_dict(budgets.budgets))
