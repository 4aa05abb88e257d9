"""Train ↔ evaluation contamination: how many evaluation documents share a token 13-gram with the
training rows (Paloma's guideline is to report it; its paper removes evaluation documents whose
paragraphs a Bloom filter finds in the training data — here exact token 13-grams are counted, a
stricter-to-trigger and cheaper unit, and nothing is removed). Written by the tokenize stage as
``contamination.json`` beside the tokens; the evaluate stage copies it into ``eval.json`` and the
report states it.

Every evaluation document's 13-grams (its windows joined back together) are hashed (64-bit
polynomial hash); the training rows are scanned in chunks, each chunk's 13-grams hashed the same
way and looked up. Memory is the evaluation set's n-grams plus one chunk, so the scan scales to
any training set at the speed of a few numpy passes per token.
"""

from __future__ import annotations

from typing import Any

import numpy as np

NGRAM = 13
_BASE = np.uint64(1099511628211)  # the 64-bit FNV prime, as the polynomial's base
CHUNK_TOKENS = 1 << 24


def ngram_hashes(tokens: np.ndarray, n: int = NGRAM) -> np.ndarray:
    """The hash of every n-gram of ``tokens`` (uint64, wrapping arithmetic), in order."""
    t = np.asarray(tokens).astype(np.uint64)
    count = len(t) - n + 1
    if count <= 0:
        return np.empty(0, np.uint64)
    h = np.zeros(count, np.uint64)
    with np.errstate(over="ignore"):
        for j in range(n):
            h = h * _BASE + t[j : j + count] + np.uint64(1)
    return h


def document_tokens(eval_tokens: np.ndarray, table: np.ndarray) -> dict[int, np.ndarray]:
    """Each evaluation document's tokens, its windows joined (later windows repeat one context token)."""
    parts: dict[int, list[np.ndarray]] = {}
    for w in table:
        doc, start, length = int(w["doc"]), int(w["start"]), int(w["length"])
        first = doc not in parts
        parts.setdefault(doc, []).append(eval_tokens[start + (0 if first else 1) : start + length])
    return {doc: np.concatenate(p) for doc, p in parts.items()}


def count(
    train_rows: np.ndarray, eval_tokens: np.ndarray, table: np.ndarray, sources: list[str], n: int = NGRAM
) -> dict[str, Any]:
    """Evaluation documents (overall and per source) with at least one n-gram in the training rows."""
    docs = document_tokens(eval_tokens, table)
    hashes, owner = [], []
    for doc, toks in docs.items():
        h = ngram_hashes(toks, n)
        hashes.append(h)
        owner.append(np.full(len(h), doc, np.int64))
    eval_h = np.concatenate(hashes) if hashes else np.empty(0, np.uint64)
    eval_doc = np.concatenate(owner) if owner else np.empty(0, np.int64)
    wanted = np.unique(eval_h)
    seen = np.zeros(len(wanted), bool)
    flat = train_rows.reshape(-1)
    step = max(CHUNK_TOKENS, n)
    for start in range(0, len(flat), step):  # chunks overlap by n - 1 tokens: no n-gram is missed
        seen |= np.isin(wanted, ngram_hashes(flat[start : start + step + n - 1], n))
    hit_docs = set(np.unique(eval_doc[np.isin(eval_h, wanted[seen])]).tolist())
    source_of = {int(w["doc"]): sources[int(w["source"])] for w in table}
    by_source: dict[str, dict[str, int]] = {}
    for doc in docs:
        entry = by_source.setdefault(source_of[doc], {"documents": 0, "contaminated": 0})
        entry["documents"] += 1
        entry["contaminated"] += doc in hit_docs
    return {
        "ngram": n,
        "unit": "tokens",
        "documents": len(docs),
        "contaminated_documents": len(hit_docs),
        "by_source": dict(sorted(by_source.items())),
    }
