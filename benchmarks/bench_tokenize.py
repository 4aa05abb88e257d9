"""Tokenize-stage throughput as a ratio to raw `Tokenizer.encode_batch` on the same text.

    python benchmarks/bench_tokenize.py [--params params.yaml] [--repeat 3] [--workers 1 2]

Needs the tokenizer stage's output (run `dvc repro tokenizer` first). Both sides read the
same documents; the baseline encodes pre-loaded text in one call, the stage streams from the
gzipped shards, packs rows and writes the token file. Prints MB/s, tokens/s and the ratio.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import torch

from pico.config import load_params
from pico.data import tokenizer as tokenizer_stage
from pico.data.documents import ReadStats, iter_documents
from pico.data.packing import write_train_tokens
from pico.data.parallel import pack_shards_parallel
from pico.data.tokens_dir import TokenLayout, TokensDir
from pico.data.documents import expand_paths


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--workers", type=int, nargs="*", default=[2], help="also time the parallel path with these")
    args = ap.parse_args()
    params = load_params(args.params)
    tok, info = tokenizer_stage.load(params.tokenizer.out_dir)
    texts = [d.text for d in iter_documents(params.data.train_paths)]
    mb = sum(len(t.encode()) for t in texts) / 1e6

    raw_best = stage_best = float("inf")
    tokens = 0
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        encs = tok.encode_batch(texts, add_special_tokens=False)
        raw_best = min(raw_best, time.perf_counter() - t0)
        tokens = sum(len(e.ids) + 1 for e in encs)
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            stats = ReadStats()
            docs = iter_documents(params.data.train_paths, stats)
            write_train_tokens(docs, stats, tok, TokensDir(tmp), TokenLayout.of(params.data.seq_len, info),
                               params.data.encode_batch_size, progress=False)
            stage_best = min(stage_best, time.perf_counter() - t0)

    print(f"machine: {platform.machine()} {platform.processor() or ''}, {torch.get_num_threads()} threads; "
          f"corpus {len(texts)} documents, {mb:.2f} MB, {tokens:,} tokens; best of {args.repeat}")
    print(f"raw encode_batch : {mb / raw_best:7.2f} MB/s  {tokens / raw_best:12,.0f} tokens/s")
    print(f"tokenize stage   : {mb / stage_best:7.2f} MB/s  {tokens / stage_best:12,.0f} tokens/s "
          f"(read + decompress + encode + pack + write)")
    print(f"ratio stage/raw  : {raw_best / stage_best:.3f}")
    files = expand_paths(params.data.train_paths)
    for workers in args.workers:
        best = float("inf")
        for _ in range(args.repeat):
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.perf_counter()
                pack_shards_parallel(files, str(Path(params.tokenizer.out_dir) / "tokenizer.json"), TokensDir(tmp),
                                     TokenLayout.of(params.data.seq_len, info), workers, False,
                                     params.data.encode_batch_size)
                best = min(best, time.perf_counter() - t0)
        print(f"{workers} worker processes: {mb / best:7.2f} MB/s  {tokens / best:12,.0f} tokens/s "
              f"(ratio to raw {raw_best / best:.3f}, to the 1-stream stage {stage_best / best:.2f}x)")


if __name__ == "__main__":
    main()
