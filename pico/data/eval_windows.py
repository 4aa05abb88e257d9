"""Evaluation windows: documents cut into scored windows, and the reader of them.

The evaluation documents are in Paloma's format, but nothing here is specific to Paloma.

Each evaluation document (``text``, ``source``, ``subdomain``) becomes ``[EOS] + tokens``; the EOS
is context only, so every token of the document is predicted exactly once. Documents longer than
``seq_len`` predicted tokens are cut into consecutive windows that overlap by one context token.
No window crosses a document. Each window keeps its source, subdomain and the UTF-8 byte count of
the text its predicted tokens cover (the byte counts of a document's windows sum to the
document's bytes), which is what bits per byte divides by.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Encoding, Tokenizer
from tqdm import tqdm

from pico.data.documents import Document, ReadStats
from pico.data.encoding import encoded_batches
from pico.data.tokens_dir import EVAL_BIN, EVAL_WINDOWS, TokenLayout, TokensDir
from pico.fsutil import atomic_open

WINDOW_DTYPE = np.dtype(
    [
        ("start", np.int64),  # offset of the window's first token in eval.bin
        ("length", np.int32),  # tokens in the window (predictions = length - 1)
        ("source", np.int16),  # index into manifest["sources"]
        ("subdomain", np.int16),  # index into manifest["subdomains"]
        ("doc", np.int32),  # document number, in reading order
        ("n_bytes", np.int64),  # UTF-8 bytes of the text the predicted tokens cover
    ]
)


def document_windows(text: str, enc: Encoding, eos_id: int, seq_len: int) -> list[tuple[list[int], int]]:
    """Split one document into (window tokens, predicted-text bytes) pairs."""
    ids = enc.ids
    if not ids:
        return []
    seq = [eos_id, *ids]
    char_starts = [o[0] for o in enc.offsets]
    out = []
    for start in range(0, len(ids), seq_len):
        end = min(start + seq_len, len(ids))  # predicted ids[start:end]
        a = 0 if start == 0 else char_starts[start]
        b = len(text) if end == len(ids) else char_starts[end]
        out.append((seq[start : end + 1], len(text[a:b].encode("utf-8"))))
    return out


def write_eval_windows(
    docs: Iterable[Document],
    stats: ReadStats,
    tok: Tokenizer,
    out: TokensDir,
    layout: TokenLayout,
    batch_size: int,
    progress: bool = True,
) -> dict[str, Any]:
    sources: dict[str, int] = {}
    subdomains: dict[str, int] = {}
    windows: list[tuple] = []
    offset = doc_no = 0
    digest = hashlib.sha256()
    bar = tqdm(desc="tokenize eval", unit=" docs", disable=not progress, mininterval=2)

    def cut(batch: list[Document], encodings: list[Encoding]) -> tuple[list[Document], list]:
        """On the encoding thread: each document's windows (offsets give their bytes)."""
        return batch, [document_windows(d.text, enc, layout.eos_id, layout.seq_len) for d, enc in zip(batch, encodings)]

    with atomic_open(out.file(EVAL_BIN), "wb") as fh:
        for batch, doc_windows in encoded_batches(docs, tok, batch_size, cut, with_offsets=True):
            for doc, cut_windows in zip(batch, doc_windows):
                src = sources.setdefault(doc.source, len(sources))
                sub_name = f"{doc.source}/{doc.subdomain or doc.source}"
                sub = subdomains.setdefault(sub_name, len(subdomains))
                for window, n_bytes in cut_windows:
                    block = np.asarray(window, dtype=layout.dtype).tobytes()
                    fh.write(block)
                    digest.update(block)
                    windows.append((offset, len(window), src, sub, doc_no, n_bytes))
                    offset += len(window)
                doc_no += 1
            bar.update(len(batch))
    bar.close()
    return save_windows(out, layout, windows, stats.to_dict(), list(sources), list(subdomains), digest.hexdigest())


def save_windows(
    out: TokensDir,
    layout: TokenLayout,
    windows: list[tuple],
    read_stats: dict[str, Any],
    sources: list[str],
    subdomains: list[str],
    sha256: str,
    **extra: Any,
) -> dict[str, Any]:
    """Write the window table beside ``eval.bin`` and the manifest that describes both."""
    table = np.array(windows, dtype=WINDOW_DTYPE)
    with atomic_open(out.file(EVAL_WINDOWS), "wb") as fh:
        np.save(fh, table, allow_pickle=False)
    return out.write_eval_manifest(layout, read_stats, table, sources, subdomains, sha256, **extra)


class EvalWindows:
    """The tokenized evaluation set: windows, their tokens and labels."""

    def __init__(self, tokens_dir: str | Path | TokensDir):
        out = tokens_dir if isinstance(tokens_dir, TokensDir) else TokensDir(tokens_dir)
        self.manifest = out.eval_manifest()
        self.table = np.load(out.file(self.manifest["windows_file"]), allow_pickle=False)
        self.tokens = np.memmap(out.file(self.manifest["file"]), dtype=self.manifest["dtype"], mode="r")
        if len(self.table) == 0:
            raise ValueError(f"{out.path}: the evaluation set holds no windows")
        self.sources: list[str] = self.manifest["sources"]
        self.subdomains: list[str] = self.manifest["subdomains"]

    def __len__(self) -> int:
        return len(self.table)

    def select(self, max_per_source: int | None) -> np.ndarray:
        """Window indices, all or the first ``max_per_source`` of each source (a fixed subset)."""
        if max_per_source is None:
            return np.arange(len(self.table))
        keep = [np.flatnonzero(self.table["source"] == s)[:max_per_source] for s in range(len(self.sources))]
        return np.sort(np.concatenate(keep))

    def window(self, i: int) -> np.ndarray:
        row = self.table[i]
        return np.asarray(self.tokens[row["start"] : row["start"] + row["length"]], dtype=np.int64)
