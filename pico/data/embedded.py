"""The embedded default corpus: real English that ships with every CPython, nothing committed.

Two sources, both read from the running interpreter's standard library:

- ``pydoc_topics``: the language reference topics behind ``help('if')`` (``pydoc_data.topics``),
  cut into paragraph-aligned documents;
- ``stdlib_docstrings``: module, class and function docstrings of the pure-Python stdlib,
  read with ``ast`` (nothing is imported or executed).

Documents are de-duplicated by text, sorted by id and split train/eval by a seeded hash of the
id, so the two sets are disjoint. Training documents are written as Dolma shards
(``dolma/<source>-NNNN.json.gz``), evaluation documents in Paloma's layout
(``paloma/<source>/val.jsonl.gz`` with ``text``, ``source``, ``subdomain``). gzip headers carry
no timestamp, so the same interpreter gives byte-identical files.
"""

from __future__ import annotations

import ast
import gc
import gzip
import hashlib
import json
import keyword
import os
import shutil
import sys
import sysconfig
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from pico.config import EmbeddedConfig, Params
from pico.fsutil import atomic_open, atomic_write_json

ADDED = "2026-01-01T00:00:00.000Z"  # Dolma's "added" field; fixed so outputs are reproducible
SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "__pycache__", "lib2to3"}


def _chunks(text: str, target: int) -> list[str]:
    """Paragraph-aligned pieces of roughly ``target`` characters."""
    pieces, current = [], ""
    for para in text.split("\n\n"):
        if current and len(current) + len(para) > target:
            pieces.append(current)
            current = ""
        current = f"{current}\n\n{para}" if current else para
    if current.strip():
        pieces.append(current)
    return pieces


def pydoc_topic_documents(min_chars: int) -> list[dict]:
    from pydoc_data.topics import topics

    docs = []
    for name in sorted(topics):
        subdomain = "keywords" if keyword.iskeyword(name) else "language"
        for k, piece in enumerate(_chunks(topics[name].strip(), 2000)):
            if len(piece) >= min_chars:
                docs.append(
                    {
                        "id": f"pydoc:{name}:{k}",
                        "text": piece,
                        "source": "pydoc_topics",
                        "subdomain": subdomain,
                        "metadata": {"topic": name},
                    }
                )
    return docs


def _stdlib_files(lib: Path) -> list[Path]:
    """The stdlib's ``.py`` files in sorted order, not descending into SKIP_DIRS (site-packages
    alone may hold many times the stdlib)."""
    found = []
    for folder, dirs, files in os.walk(lib):
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS]
        found += [Path(folder, f) for f in files if f.endswith(".py")]
    return sorted(found)


def _definitions(body: list[ast.stmt]) -> Iterator[ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef]:
    """Every class and function defined in a statement list, nested ones included. Definitions are
    statements, so only statement lists are walked, not the expressions (most of a tree)."""
    for node in body:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node
        for name in ("body", "orelse", "finalbody"):
            inner = getattr(node, name, None)
            if isinstance(inner, list):
                yield from _definitions(inner)
        for block in getattr(node, "handlers", None) or getattr(node, "cases", None) or ():
            yield from _definitions(block.body)


def stdlib_docstring_documents(min_chars: int) -> list[dict]:
    lib = Path(sysconfig.get_paths()["stdlib"])
    docs: list[dict] = []
    # a syntax tree holds no reference cycles (refcounting frees it), yet its nodes trigger the
    # cycle collector over and over: a quarter of this loop's time, so it is off meanwhile
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        for path in _stdlib_files(lib):
            docs += _docstrings(path, lib, min_chars)
    finally:
        if was_enabled:
            gc.enable()
    return docs


def _docstrings(path: Path, lib: Path, min_chars: int) -> list[dict]:
    """The module, class and function docstrings of one stdlib file, read with ``ast``."""
    rel = path.relative_to(lib)
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return []
    module = rel.parts[0].removesuffix(".py")
    docs = []
    for node in (tree, *_definitions(tree.body)):
        text = ast.get_docstring(node)
        if text and len(text) >= min_chars:
            name = getattr(node, "name", "<module>")
            docs.append(
                {
                    "id": f"docstring:{rel.as_posix()}:{name}:{getattr(node, 'lineno', 0)}",
                    "text": text,
                    "source": "stdlib_docstrings",
                    "subdomain": module,
                    "metadata": {"path": rel.as_posix(), "name": name},
                }
            )
    return docs


def _is_eval(doc_id: str, cfg: EmbeddedConfig) -> bool:
    h = hashlib.sha256(f"{cfg.split_seed}:{doc_id}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64 < cfg.eval_fraction


def _write_jsonl_gz(path: Path, records: list[dict]) -> None:
    with atomic_open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
        for r in records:
            gz.write((json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n").encode("utf-8"))


def run(params: Params) -> dict:
    return build(params.embedded)


def build(cfg: EmbeddedConfig) -> dict:
    docs = pydoc_topic_documents(cfg.min_chars) + stdlib_docstring_documents(cfg.min_chars)
    seen: set[str] = set()
    unique = []
    for d in sorted(docs, key=lambda d: d["id"]):
        key = hashlib.sha256(d["text"].encode()).hexdigest()
        if key not in seen:
            seen.add(key)
            unique.append(d)

    created = f"cpython-{sys.version_info.major}.{sys.version_info.minor}.{sys.version_info.micro}"
    train: dict[str, list[dict]] = {}
    evals: dict[str, list[dict]] = {}
    for d in unique:
        if _is_eval(d["id"], cfg):
            evals.setdefault(d["source"], []).append(
                {"id": d["id"], "text": d["text"], "source": d["source"], "subdomain": d["subdomain"]}
            )
        else:
            meta = {**d["metadata"], "subdomain": d["subdomain"]}
            train.setdefault(d["source"], []).append(
                {
                    "id": d["id"],
                    "text": d["text"],
                    "source": d["source"],
                    "added": ADDED,
                    "created": created,
                    "metadata": meta,
                }
            )

    out = Path(cfg.out_dir)
    for ours in ("dolma", "paloma"):  # only what this stage writes: out_dir may hold anything else
        if (out / ours).is_dir():
            shutil.rmtree(out / ours)
    for source, records in sorted(train.items()):
        n = min(cfg.train_shards, len(records))
        for shard in range(n):
            _write_jsonl_gz(out / "dolma" / f"{source}-{shard:04d}.json.gz", records[shard::n])
    for source, records in sorted(evals.items()):
        _write_jsonl_gz(out / "paloma" / source / "val.jsonl.gz", records)

    summary = {
        "python": created,
        "train": {s: {"documents": len(r), "chars": sum(len(x["text"]) for x in r)} for s, r in sorted(train.items())},
        "eval": {
            s: {
                "documents": len(r),
                "chars": sum(len(x["text"]) for x in r),
                "subdomains": dict(sorted(Counter(x["subdomain"] for x in r).items())),
            }
            for s, r in sorted(evals.items())
        },
        "duplicates_dropped": len(docs) - len(unique),
    }
    atomic_write_json(out / "summary.json", summary)
    for split, table in (("train", summary["train"]), ("eval", summary["eval"])):
        for s, v in table.items():
            print(f"embedded {split}: {s}: {v['documents']} documents, {v['chars']:,} chars")
    return summary
