"""Reading Dolma-format documents from local paths, any fsspec URL (s3://...) or a HF dataset.

One document per JSON line (gzip/zstd by extension), fields ``id``, ``text``, ``source`` (plus
optional ``added``, ``created``, ``metadata``). Shards are read in sorted order and lines in file
order, so the stream is deterministic. A bad line is skipped and counted by reason, or, in strict
mode, stops the run with the file and line number. S3 endpoint and credentials come from the
environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL / PICO_S3_ENDPOINT_URL),
never from params.yaml.
"""

from __future__ import annotations

import gzip
import json
import os
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import fsspec

from pico.errors import BadDocumentError

HF_PREFIX = "hf://datasets/"
SKIP_REASONS = ("bad_json", "missing_text", "empty_text", "undecodable_bytes", "truncated_gzip")


@dataclass
class Document:
    text: str
    source: str
    id: str
    metadata: dict[str, Any] = field(default_factory=dict)
    subdomain: str | None = None


@dataclass
class ReadStats:
    files: list[str] = field(default_factory=list)
    documents: int = 0
    skipped: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)  # first few skip locations, for the manifest

    def skip(self, reason: str, where: str, detail: str, strict: bool) -> None:
        if strict:
            raise BadDocumentError(f"{where}: {reason.replace('_', ' ')}: {detail}")
        self.skipped[reason] += 1
        if len(self.examples) < 20:
            self.examples.append(f"{where}: {reason}: {detail}")

    def merge(self, other: "ReadStats") -> None:
        """Fold in a later shard's counts (shards merged in reading order keep the examples' order)."""
        self.documents += other.documents
        self.skipped.update(other.skipped)
        self.examples.extend(other.examples[: 20 - len(self.examples)])

    def to_dict(self) -> dict[str, Any]:
        return {
            "files": self.files,
            "documents": self.documents,
            "skipped": {r: self.skipped.get(r, 0) for r in SKIP_REASONS},
            "skipped_total": sum(self.skipped.values()),
            "skip_examples": self.examples,
        }


def storage_options(url: str) -> dict[str, Any]:
    """fsspec options from the environment; S3 endpoints for self-hosted servers (SeaweedFS, MinIO)."""
    if url.startswith("s3://"):
        endpoint = os.environ.get("PICO_S3_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL")
        return {"client_kwargs": {"endpoint_url": endpoint}} if endpoint else {}
    return {}


def _is_file(fs, path: str) -> bool:
    # not fs.isfile(): it answers False on a refused request, hiding bad credentials as "no match"
    try:
        return fs.info(path)["type"] == "file"
    except FileNotFoundError:
        return False


def expand_paths(patterns: list[str]) -> list[str]:
    """Expand globs on any fsspec filesystem; sorted per pattern, patterns in the given order."""
    out: list[str] = []
    for pattern in patterns:
        if pattern.startswith(HF_PREFIX):
            out.append(pattern)
            continue
        try:
            fs, _, paths = fsspec.get_fs_token_paths(pattern, storage_options=storage_options(pattern))
            paths = sorted(p for p in paths if _is_file(fs, p))
        except PermissionError as err:
            raise PermissionError(f"access denied listing {pattern}: {err} (check AWS_ACCESS_KEY_ID / "
                                  f"AWS_SECRET_ACCESS_KEY and the endpoint in AWS_ENDPOINT_URL)") from None
        if not paths:
            raise FileNotFoundError(f"no documents match {pattern!r}")
        protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
        out.extend(p if protocol == "file" else f"{protocol}://{p}" for p in paths)
    return out


def _compression(path: str) -> str | None:
    if path.endswith(".gz"):
        return "gzip"
    if path.endswith(".zst"):
        return "zstd"
    return None


def parse_line(raw: bytes, where: str, stats: ReadStats, strict: bool, default_source: str) -> Document | None:
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        stats.skip("undecodable_bytes", where, str(err), strict)
        return None
    if not line.strip():
        return None  # blank lines are not documents
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        stats.skip("bad_json", where, str(err), strict)
        return None
    if not isinstance(record, dict):
        stats.skip("bad_json", where, f"expected a JSON object, got {type(record).__name__}", strict)
        return None
    return record_to_document(record, where, stats, strict, default_source)


def record_to_document(record: dict, where: str, stats: ReadStats, strict: bool, default_source: str) -> Document | None:
    text = record.get("text")
    if not isinstance(text, str):
        what = "no 'text' field" if text is None else f"'text' is {type(text).__name__}, not a string"
        stats.skip("missing_text", where, what, strict)
        return None
    if not text.strip():
        stats.skip("empty_text", where, "'text' is empty or whitespace", strict)
        return None
    metadata = record.get("metadata") if isinstance(record.get("metadata"), dict) else {}
    subdomain = record.get("subdomain") or metadata.get("subdomain")
    return Document(
        text=text,
        source=str(record.get("source") or default_source),
        id=str(record.get("id", where)),
        metadata=metadata,
        subdomain=str(subdomain) if subdomain is not None else None,
    )


def iter_file(path: str, stats: ReadStats, strict: bool) -> Iterator[Document]:
    """The documents of one shard, in line order."""
    default_source = os.path.basename(path).split(".")[0]
    lineno = 0
    try:
        with fsspec.open(path, "rb", compression=_compression(path), **storage_options(path)) as fh:
            for lineno, raw in enumerate(fh, start=1):
                doc = parse_line(raw, f"{path}:{lineno}", stats, strict, default_source)
                if doc is not None:
                    stats.documents += 1
                    yield doc
    except (EOFError, gzip.BadGzipFile, zlib.error) as err:
        # a truncated or corrupt shard: keep what was read, count the rest as one skip
        stats.skip("truncated_gzip", f"{path}:{lineno + 1}", f"{type(err).__name__}: {err}", strict)


def _iter_hf(spec: str, stats: ReadStats, strict: bool) -> Iterator[Document]:
    # hf://datasets/ID[@split], streamed through `datasets`; needs the hub, so not run offline
    import datasets

    name, _, split = spec[len(HF_PREFIX):].partition("@")
    stream = datasets.load_dataset(name, split=split or "train", streaming=True)
    for i, record in enumerate(stream):
        doc = record_to_document(dict(record), f"{spec}#{i}", stats, strict, name)
        if doc is not None:
            stats.documents += 1
            yield doc


def iter_documents(patterns: list[str], stats: ReadStats | None = None, strict: bool = False,
                   max_documents: int | None = None) -> Iterator[Document]:
    """Stream documents from every matching shard in a fixed order, counting what is skipped."""
    stats = stats if stats is not None else ReadStats()
    files = expand_paths(patterns)
    stats.files = files
    produced = 0
    for path in files:
        reader = _iter_hf(path, stats, strict) if path.startswith(HF_PREFIX) else iter_file(path, stats, strict)
        for doc in reader:
            yield doc
            produced += 1
            if max_documents is not None and produced >= max_documents:
                return
