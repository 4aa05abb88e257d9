"""Reading Dolma-format documents from local paths, any fsspec URL (s3://...) or a HF dataset.

One document per JSON line (``.gz`` / ``.zst`` decompressed by extension, checked against the
file's first bytes), fields ``id``, ``text``, ``source`` (plus
optional ``added``, ``created``, ``metadata``). Shards are read in sorted order and lines in file
order, so the stream is deterministic. A bad line is skipped and counted by reason, or, in strict
mode, stops the run with the file and line number. S3 endpoint and credentials come from the
environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL / PICO_S3_ENDPOINT_URL),
never from params.yaml.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import fsspec
import orjson

from pico.errors import BadDocumentError

HF_PREFIX = "hf://datasets/"
# why a line (or, for the last two, the rest of a file / a whole file) is not a document
SKIP_REASONS = ("bad_json", "missing_text", "empty_text", "undecodable_bytes", "truncated_file", "unreadable_file")
# compression by file extension, and the magic bytes every such file starts with
COMPRESSION = {".gz": ("gzip", b"\x1f\x8b"), ".zst": ("zstd", b"\x28\xb5\x2f\xfd")}


@dataclass
class Document:
    text: str
    source: str
    id: str
    metadata: dict[str, Any] = field(default_factory=dict)
    subdomain: str | None = None
    copy: int = 0  # which pass over the inputs yielded it (data budgets repeat sources: pico.data.budgets)


@dataclass
class ReadStats:
    files: list[str] = field(default_factory=list)
    documents: int = 0
    skipped: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)  # first few skip locations, for the manifest
    blank_lines: int = 0  # whitespace-only lines: not documents, not errors, but counted
    empty_files: list[str] = field(default_factory=list)  # shards with no line at all (after decompression)

    def skip(self, reason: str, where: str, detail: str, strict: bool) -> None:
        if strict:
            raise BadDocumentError(f"{where}: {reason.replace('_', ' ')}: {detail}")
        self.skipped[reason] += 1
        if len(self.examples) < 20:
            self.examples.append(f"{where}: {reason}: {detail}")

    def merge(self, other: ReadStats) -> None:
        """Fold in a later shard's counts (shards merged in reading order keep the examples' order)."""
        self.documents += other.documents
        self.skipped.update(other.skipped)
        self.examples.extend(other.examples[: 20 - len(self.examples)])
        self.blank_lines += other.blank_lines
        self.empty_files.extend(other.empty_files)

    def to_dict(self) -> dict[str, Any]:
        return {
            "files": self.files,
            "documents": self.documents,
            "skipped": {r: self.skipped.get(r, 0) for r in SKIP_REASONS},
            "skipped_total": sum(self.skipped.values()),
            "skip_examples": self.examples,
            "blank_lines": self.blank_lines,
            "empty_files": self.empty_files,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ReadStats:
        """The counts of ``to_dict`` back (a worker process's shard, merged in the main process)."""
        stats = cls(
            files=list(d["files"]),
            documents=d["documents"],
            examples=list(d["skip_examples"]),
            blank_lines=d["blank_lines"],
            empty_files=list(d["empty_files"]),
        )
        stats.skipped.update({k: v for k, v in d["skipped"].items() if v})
        return stats


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
            raise PermissionError(
                f"access denied listing {pattern}: {err} (check AWS_ACCESS_KEY_ID / "
                f"AWS_SECRET_ACCESS_KEY and the endpoint in AWS_ENDPOINT_URL)"
            ) from None
        if not paths:
            raise FileNotFoundError(f"no documents match {pattern!r}")
        protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
        out.extend(_portable(p) if protocol == "file" else f"{protocol}://{p}" for p in paths)
    return out


def _portable(path: str) -> str:
    """A local file as the manifest records it: relative to the working folder (the project) when
    inside it, so a checkout elsewhere writes the same manifest and DVC the same hashes."""
    rel = os.path.relpath(path)
    return path if rel == os.pardir or rel.startswith(os.pardir + os.sep) else rel


def parse_line(raw: bytes, where: str, stats: ReadStats, strict: bool, default_source: str) -> Document | None:
    try:
        # orjson parses the bytes (UTF-8 checked): reading a shard 1.5x faster than with json.loads;
        # anything it refuses goes through the standard library below, which decides what is kept
        # and why not
        record = orjson.loads(raw)
    except orjson.JSONDecodeError:
        record = _parse_slow(raw, where, stats, strict)
        if record is _SKIPPED:
            return None
    if not isinstance(record, dict):
        stats.skip("bad_json", where, f"expected a JSON object, got {type(record).__name__}", strict)
        return None
    return record_to_document(record, where, stats, strict, default_source)


_SKIPPED = object()


def _parse_slow(raw: bytes, where: str, stats: ReadStats, strict: bool) -> Any:
    """The standard library's reading of a line orjson refused (blank, not UTF-8, NaN, a lone
    surrogate escape …): its value, or ``_SKIPPED`` after counting why it is not a document."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        stats.skip("undecodable_bytes", where, str(err), strict)
        return _SKIPPED
    if not line.strip():
        stats.blank_lines += 1  # not a document, not an error
        return _SKIPPED
    try:
        return json.loads(line)
    except json.JSONDecodeError as err:
        stats.skip("bad_json", where, str(err), strict)
        return _SKIPPED


def record_to_document(
    record: dict, where: str, stats: ReadStats, strict: bool, default_source: str
) -> Document | None:
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


class NotCompressedAsNamed(ValueError):
    """A shard whose name promises compression its bytes do not have."""


@contextlib.contextmanager
def open_lines(path: str) -> Iterator[io.BufferedIOBase]:
    """A shard as a binary stream of lines, decompressed by extension (``.gz``, ``.zst``).

    The first bytes are checked against the extension, so a plain file named ``.gz`` is named as
    such instead of failing somewhere inside the decompressor."""
    kind = next(((name, magic) for ext, (name, magic) in COMPRESSION.items() if path.endswith(ext)), None)
    with fsspec.open(path, "rb", **storage_options(path)) as raw:
        if kind is None:
            yield raw
            return
        name, magic = kind
        head = raw.read(len(magic))
        raw.seek(0)
        if head and head != magic:
            raise NotCompressedAsNamed(
                f"named {os.path.splitext(path)[1]} but not {name} data (starts with {head!r}); rename or recompress it"
            )
        yield gzip.GzipFile(fileobj=raw, mode="rb") if name == "gzip" else _zstd_lines(raw)


def _zstd_lines(raw: io.BufferedIOBase, chunk_size: int = 1 << 20) -> Iterator[bytes]:
    """Lines of a zstd stream of one or more frames. zstandard's stream_reader neither reads lines
    nor notices a cut-off last frame, so frames are decoded here and a stream that ends mid-frame
    raises EOFError (a truncated shard, as with gzip)."""
    import zstandard  # a dependency; imported here so plain and gzip shards never load it

    dctx = zstandard.ZstdDecompressor()
    frame, pending, in_frame = dctx.decompressobj(), b"", False
    while chunk := raw.read(chunk_size):
        while chunk:
            pending += frame.decompress(chunk)
            in_frame = not frame.eof
            chunk = frame.unused_data if frame.eof else b""
            if frame.eof:
                frame = dctx.decompressobj()
            *lines, pending = pending.split(b"\n")
            yield from (line + b"\n" for line in lines)
    if in_frame:
        raise EOFError("the zstd stream ends in the middle of a frame")
    if pending:
        yield pending


def _truncation_errors() -> tuple[type[BaseException], ...]:
    errors: tuple[type[BaseException], ...] = (EOFError, gzip.BadGzipFile, zlib.error)
    with contextlib.suppress(ImportError):
        import zstandard

        errors += (zstandard.ZstdError,)
    return errors


def iter_file(path: str, stats: ReadStats, strict: bool) -> Iterator[Document]:
    """The documents of one shard, in line order."""
    default_source = os.path.basename(path).split(".")[0]
    lineno = 0
    try:
        with open_lines(path) as fh:
            for lineno, raw in enumerate(fh, start=1):
                doc = parse_line(raw, f"{path}:{lineno}", stats, strict, default_source)
                if doc is not None:
                    stats.documents += 1
                    yield doc
        if lineno == 0:
            stats.empty_files.append(path)
    except NotCompressedAsNamed as err:
        stats.skip("unreadable_file", path, str(err), strict)
    except _truncation_errors() as err:
        # a truncated or corrupt shard: keep what was read, count the rest as one skip
        stats.skip("truncated_file", f"{path}:{lineno + 1}", f"{type(err).__name__}: {err}", strict)


def _iter_hf(spec: str, stats: ReadStats, strict: bool) -> Iterator[Document]:
    # hf://datasets/ID[@split], streamed through `datasets`; needs the hub, so not run offline
    import datasets

    name, _, split = spec[len(HF_PREFIX) :].partition("@")
    stream = datasets.load_dataset(name, split=split or "train", streaming=True)
    for i, record in enumerate(stream):
        doc = record_to_document(dict(record), f"{spec}#{i}", stats, strict, name)
        if doc is not None:
            stats.documents += 1
            yield doc


def iter_documents(
    patterns: list[str], stats: ReadStats | None = None, strict: bool = False, max_documents: int | None = None
) -> Iterator[Document]:
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
