"""Per-source data budgets: how much of each training source goes into the rows, and how often.

``data.budgets`` maps a Dolma ``source`` to caps and a weight, as Dolma's mixer does:

- ``max_documents`` / ``max_tokens``: the source's *unique* documents are taken in reading order
  until either cap would be passed (tokens count each document's tokens + EOS); the rest of the
  source is left out. This is how a fixed subset ("the first 29k documents") is expressed.
- ``weight``: copies of each kept document. Each document gets a fixed draw ``u`` in [0, 1) from a
  hash of (``data.budget_seed``, source, id, text) and appears in pass ``k`` of the inputs when
  ``k + u < weight``: weight 2 puts every kept document in twice (one corpus apart, never side by
  side in a row), 2.5 adds a seeded half a third time, 0.5 keeps a seeded half.

Sources without an entry are taken whole, once. The draw depends on the document alone, so the
selection is the same for any reading order within a pass. ``SourceTally`` counts, per source,
the unique documents and tokens kept and the tokens written with their copies: the train manifest
records them, and the trainer turns them into per-source epochs (``epochs x tokens / unique``).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Any

from pico.config import SourceBudget
from pico.data.documents import Document


@dataclass
class _Count:
    documents: int = 0
    tokens: int = 0
    closed: bool = False  # a cap was reached: no later document of the source is taken


@dataclass
class SourceTally:
    """Per source: unique documents/tokens kept (the first pass) and tokens written (all passes)."""

    unique_documents: dict[str, int] = field(default_factory=dict)
    unique_tokens: dict[str, int] = field(default_factory=dict)
    tokens: dict[str, int] = field(default_factory=dict)
    capped: dict[str, bool] = field(default_factory=dict)

    def add(self, source: str, n_tokens: int, unique: bool) -> None:
        self.tokens[source] = self.tokens.get(source, 0) + n_tokens
        if unique:
            self.unique_documents[source] = self.unique_documents.get(source, 0) + 1
            self.unique_tokens[source] = self.unique_tokens.get(source, 0) + n_tokens

    def merge(self, other: dict[str, Any]) -> None:
        """Fold in a shard's ``to_dict`` (shards merge in reading order)."""
        for name, s in other.items():
            self.tokens[name] = self.tokens.get(name, 0) + s["tokens"]
            self.unique_documents[name] = self.unique_documents.get(name, 0) + s["documents"]
            self.unique_tokens[name] = self.unique_tokens.get(name, 0) + s["unique_tokens"]

    def to_dict(self, budgets: dict[str, SourceBudget] | None = None) -> dict[str, Any]:
        out = {}
        for name in sorted(self.tokens.keys() | self.unique_tokens.keys()):
            unique = self.unique_tokens.get(name, 0)
            entry = {
                "documents": self.unique_documents.get(name, 0),
                "unique_tokens": unique,
                "tokens": self.tokens.get(name, 0),
                "copies": round(self.tokens.get(name, 0) / unique, 6) if unique else 0.0,
            }
            if budgets and name in budgets:
                entry.update(budget=budgets[name].model_dump(mode="json"), capped=self.capped.get(name, False))
            out[name] = entry
        return out


class Budgets:
    """Decides, document by document, whether it goes into the stream (``keep``)."""

    def __init__(self, budgets: dict[str, SourceBudget], seed: int):
        self.budgets, self.seed = budgets, seed
        self.passes = max([1, *(math.ceil(b.weight) for b in budgets.values())])
        self.tally = SourceTally()
        self._counts: dict[tuple[int, str], _Count] = {}

    def draw(self, doc: Document) -> float:
        h = hashlib.blake2b(digest_size=8)
        h.update(f"{self.seed}\0{doc.source}\0{doc.id}\0".encode())
        h.update(doc.text.encode("utf-8", "surrogatepass"))
        return int.from_bytes(h.digest(), "big") / 2.0**64

    def keep(self, doc: Document, n_tokens: int) -> bool:
        """Whether this document (in pass ``doc.copy``) is written; counts it either way it is."""
        b = self.budgets.get(doc.source)
        if b is None:
            if doc.copy == 0:
                self.tally.add(doc.source, n_tokens, unique=True)
            return doc.copy == 0
        u = self.draw(doc)
        if u >= min(b.weight, 1.0):  # not among the source's selected documents
            return False
        count = self._counts.setdefault((doc.copy, doc.source), _Count())
        if (
            count.closed
            or (b.max_documents is not None and count.documents + 1 > b.max_documents)
            or (b.max_tokens is not None and count.tokens + n_tokens > b.max_tokens)
        ):
            count.closed = True
            self.tally.capped[doc.source] = True
            return False
        count.documents += 1
        count.tokens += n_tokens
        if doc.copy + u >= b.weight:
            return False
        self.tally.add(doc.source, n_tokens, unique=doc.copy == 0)
        return True

    def unknown_sources(self) -> list[str]:
        """Budgeted sources no document carried (a misspelt name takes nothing from anything)."""
        return sorted(set(self.budgets) - set(self.tally.unique_tokens) - set(self.tally.capped))


def tally_only() -> Budgets:
    return Budgets({}, 0)
