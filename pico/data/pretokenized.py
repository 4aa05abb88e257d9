"""pico's published, already tokenized data, read through `datasets` streaming.

- ``pico-lm/pretokenized-dolma``: parquet, ``input_ids`` rows of 2,049 tokens (Dolma v1.7, OLMo
  tokenizer, documents + EOS concatenated, tail dropped), meant to be consumed in order.
- ``pico-lm/pretokenized-paloma`` / ``-tinsy``: split ``val``, ``input_ids`` (chunks of up to
  2,048 tokens), ``text`` and ``source``.

A spec is ``hf://datasets/ORG/NAME@split`` (the hub: needs the network) or a local parquet
path/glob with the same columns. No tokenization happens: training rows are streamed once into
the memory-mapped ``train.bin`` the trainer reads (``data.pretokenized_max_rows`` bounds how many),
and each evaluation row becomes one window (its first token is context, as in pico-train; its
bytes are those of the row's ``text``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import numpy as np

from pico.data.documents import HF_PREFIX, ReadStats, expand_paths
from pico.data.eval_windows import save_windows
from pico.data.tokens_dir import EVAL_BIN, TRAIN_BIN, TokenLayout, TokensDir
from pico.fsutil import atomic_open


def stream_rows(spec: str, default_split: str) -> Iterator[dict[str, Any]]:
    import datasets

    if spec.startswith(HF_PREFIX):
        name, _, split = spec[len(HF_PREFIX) :].partition("@")
        return iter(datasets.load_dataset(name, split=split or default_split, streaming=True))
    files = expand_paths([spec])
    return iter(datasets.load_dataset("parquet", data_files=files, split="train", streaming=True))


def write_train_rows(spec: str, out: TokensDir, layout: TokenLayout, max_rows: int | None) -> dict[str, Any]:
    digest = hashlib.sha256()
    rows = 0
    with atomic_open(out.file(TRAIN_BIN), "wb") as fh:
        for i, record in enumerate(stream_rows(spec, "train")):
            if max_rows is not None and rows >= max_rows:
                break
            ids = np.asarray(record["input_ids"])
            if len(ids) != layout.row_len:
                raise ValueError(
                    f"{spec} row {i} has {len(ids)} tokens; data.seq_len={layout.seq_len} needs rows "
                    f"of {layout.row_len}"
                )
            if ids.max(initial=0) >= layout.vocab_size:
                raise ValueError(
                    f"{spec} row {i} holds token id {int(ids.max())}, outside the tokenizer's {layout.vocab_size}"
                )
            block = ids.astype(layout.dtype).tobytes()
            fh.write(block)
            digest.update(block)
            rows += 1
    counts = {
        "documents_packed": None,
        "tokens": rows * layout.row_len,
        "rows": rows,
        "tokens_dropped_tail": 0,
        "sha256": digest.hexdigest(),
    }
    return out.write_train_manifest(layout, ReadStats(files=[spec]).to_dict(), counts, source="pretokenized")


def write_eval_rows(spec: str, out: TokensDir, layout: TokenLayout) -> dict[str, Any]:
    sources: dict[str, int] = {}
    windows = []
    offset = 0
    digest = hashlib.sha256()
    with atomic_open(out.file(EVAL_BIN), "wb") as fh:
        for i, record in enumerate(stream_rows(spec, "val")):
            ids = np.asarray(record["input_ids"])[: layout.row_len]
            if len(ids) < 2:
                continue
            src = sources.setdefault(str(record.get("source") or "unknown"), len(sources))
            block = ids.astype(layout.dtype).tobytes()
            fh.write(block)
            digest.update(block)
            windows.append((offset, len(ids), src, src, i, len(str(record.get("text") or "").encode("utf-8"))))
            offset += len(ids)
    return save_windows(
        out,
        layout,
        windows,
        ReadStats(files=[spec]).to_dict(),
        list(sources),
        [f"{s}/{s}" for s in sources],
        digest.hexdigest(),
        source="pretokenized",
    )
