"""The tokenize stage's output folder (``data.tokens_dir``): the one owner of its file names,
row length, manifests and readers.

    train.bin            packed training rows, raw uint16/uint32, (rows, row_len) for numpy.memmap
    train_manifest.json  what was read, skipped and packed; the file's sha256; the tokenizer hash
    eval.bin             evaluation windows' tokens, back to back
    eval_windows.npy     one record per window (pico.data.eval_windows.WINDOW_DTYPE)
    eval_manifest.json   sources, subdomains, counts, sha256, tokenizer hash

A row holds ``seq_len + 1`` tokens: inputs ``row[:-1]``, labels ``row[1:]`` (pico's 2,049-token
rows for a 2,048 context). That arithmetic lives in ``TokenLayout.row_len`` and nowhere else.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pico.fsutil import atomic_write_json

TRAIN_BIN, TRAIN_MANIFEST = "train.bin", "train_manifest.json"
EVAL_BIN, EVAL_WINDOWS, EVAL_MANIFEST = "eval.bin", "eval_windows.npy", "eval_manifest.json"
CONTAMINATION = "contamination.json"  # pico.data.contamination: eval documents sharing 13-grams with train


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= np.iinfo(np.uint16).max + 1 else np.dtype(np.uint32)


def row_len(seq_len: int) -> int:
    """Tokens in one packed row: ``seq_len`` inputs and, shifted by one, ``seq_len`` labels."""
    return seq_len + 1


@dataclass(frozen=True)
class TokenLayout:
    """What every token file of one tokens folder shares: context length and tokenizer."""

    seq_len: int
    vocab_size: int
    eos_id: int
    tokenizer_sha256: str

    @classmethod
    def of(cls, seq_len: int, info: Any) -> TokenLayout:
        """From ``data.seq_len`` and the tokenizer stage's ``TokenizerInfo``."""
        return cls(seq_len, info.vocab_size, info.eos_id, info.sha256)

    @property
    def row_len(self) -> int:
        return row_len(self.seq_len)

    @property
    def dtype(self) -> np.dtype:
        return token_dtype(self.vocab_size)

    def manifest_fields(self) -> dict[str, Any]:
        return {
            "dtype": self.dtype.name,
            "seq_len": self.seq_len,
            "tokenizer_sha256": self.tokenizer_sha256,
            "eos_id": self.eos_id,
        }


class TokensDir:
    """``data.tokens_dir``: paths, manifests, and the readers the trainer and evaluation use."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def file(self, name: str) -> Path:
        return self.path / name

    # ---- manifests ----
    def _read_manifest(self, name: str) -> dict[str, Any]:
        path = self.file(name)
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing; run the tokenize stage (pico tokenize)")
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid JSON ({err}); rerun the tokenize stage") from None

    def train_manifest(self) -> dict[str, Any]:
        return self._read_manifest(TRAIN_MANIFEST)

    def eval_manifest(self) -> dict[str, Any]:
        return self._read_manifest(EVAL_MANIFEST)

    def write_train_manifest(
        self, layout: TokenLayout, read_stats: dict[str, Any], counts: dict[str, Any], **extra: Any
    ) -> dict[str, Any]:
        manifest = {
            "file": TRAIN_BIN,
            **layout.manifest_fields(),
            "row_len": layout.row_len,
            **read_stats,
            **extra,
            **counts,
        }
        atomic_write_json(self.file(TRAIN_MANIFEST), manifest)
        return manifest

    def write_eval_manifest(
        self,
        layout: TokenLayout,
        read_stats: dict[str, Any],
        table: np.ndarray,
        sources: list[str],
        subdomains: list[str],
        sha256: str,
        **extra: Any,
    ) -> dict[str, Any]:
        manifest = {
            "file": EVAL_BIN,
            "windows_file": EVAL_WINDOWS,
            **layout.manifest_fields(),
            **read_stats,
            **extra,
            "windows": len(table),
            "tokens": int(table["length"].sum()) if len(table) else 0,
            "predicted_tokens": int(table["length"].sum() - len(table)) if len(table) else 0,
            "bytes": int(table["n_bytes"].sum()) if len(table) else 0,
            "sources": sources,
            "subdomains": subdomains,
            "sha256": sha256,
        }
        atomic_write_json(self.file(EVAL_MANIFEST), manifest)
        return manifest

    def write_contamination(self, report: dict[str, Any]) -> None:
        atomic_write_json(self.file(CONTAMINATION), report)

    def contamination(self) -> dict[str, Any] | None:
        """The contamination count, or None for a tokens folder written before it existed."""
        path = self.file(CONTAMINATION)
        return json.loads(path.read_text()) if path.is_file() else None

    # ---- readers ----
    def open_rows(self, seq_len: int | None = None) -> tuple[np.memmap, dict[str, Any]]:
        """Memory-map ``train.bin`` as (rows, row_len); with ``seq_len``, check the rows fit it."""
        manifest = self.train_manifest()
        path = self.file(manifest["file"])
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing; rerun the tokenize stage")
        expected = manifest["rows"] * manifest["row_len"] * np.dtype(manifest["dtype"]).itemsize
        if path.stat().st_size != expected:
            raise ValueError(
                f"{path} has {path.stat().st_size} bytes, its manifest promises {expected}; rerun the tokenize stage"
            )
        if manifest["rows"] == 0:
            raise ValueError(
                f"{path} holds no complete row of {manifest['row_len']} tokens; more data or a smaller data.seq_len"
            )
        if seq_len is not None and manifest["row_len"] != row_len(seq_len):
            raise ValueError(
                f"{self.path} holds rows of {manifest['row_len']} tokens but data.seq_len={seq_len}; "
                "rerun the tokenize stage"
            )
        rows = np.memmap(path, dtype=manifest["dtype"], mode="r", shape=(manifest["rows"], manifest["row_len"]))
        return rows, manifest

    def verify_train(self, vocab_size: int) -> None:
        """Read ``train.bin`` once: its sha256 must be the manifest's (a flipped byte at the same size
        would otherwise train silently under the same run fingerprint) and every id must be below
        ``vocab_size``. About a second per GB; a training run does it once at start."""
        manifest = self.train_manifest()
        path = self.file(manifest["file"])
        digest, top = hashlib.sha256(), -1
        with path.open("rb") as fh:
            while block := fh.read(1 << 26):
                digest.update(block)
                top = max(top, int(np.frombuffer(block, dtype=manifest["dtype"]).max(initial=0)))
        if digest.hexdigest() != manifest["sha256"]:
            raise ValueError(
                f"{path} does not match the sha256 in {self.file(TRAIN_MANIFEST)} (damaged or "
                "replaced since it was tokenized); rerun the tokenize stage (dvc repro -f tokenize)"
            )
        if top >= vocab_size:
            raise ValueError(
                f"{path} holds token id {top}, outside the model's vocabulary of {vocab_size}; "
                "rerun the tokenize stage with this tokenizer"
            )

    def check_consistent(self) -> None:
        """The training rows and evaluation windows come from the same tokenize run: same context
        length and tokenizer (a tokenize stage killed half-way could leave one new and one old)."""
        train, ev = self.train_manifest(), self.eval_manifest()
        for key in ("seq_len", "tokenizer_sha256"):
            if train.get(key) != ev.get(key):
                raise ValueError(
                    f"{self.file(TRAIN_MANIFEST)} and {self.file(EVAL_MANIFEST)} disagree on {key} "
                    f"({train.get(key)} vs {ev.get(key)}); rerun the tokenize stage"
                )
