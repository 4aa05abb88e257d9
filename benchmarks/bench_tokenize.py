"""Tokenize-stage throughput as a ratio to raw `Tokenizer.encode_batch` on the same text.

    python benchmarks/bench_tokenize.py [--params params.yaml] [--scale 8] [--rounds 7] [--workers 2]

Needs the tokenizer stage's output (run `dvc repro tokenizer` first). Each training shard is
repeated ``--scale`` times into a temporary shard (the embedded corpus alone encodes in half a
second, shorter than this machine's noise). Both sides read the same documents: the baseline
encodes pre-loaded text in one call, the stage streams from the gzipped shards, packs rows and
writes (and fsyncs) the token file. Each round times both, in alternating order, so load and clock
changes hit both alike; the figure is the median of the rounds' ratios, with their range.
"""

from __future__ import annotations

import argparse
import platform
import resource
import statistics
import tempfile
import time
from pathlib import Path

import torch

from pico.config import load_params
from pico.data import tokenizer as tokenizer_stage
from pico.data.documents import ReadStats, expand_paths, iter_documents
from pico.data.encoding import available_cores
from pico.data.packing import write_train_tokens
from pico.data.parallel import pack_shards_parallel
from pico.data.tokens_dir import TokenLayout, TokensDir


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def scaled_shards(files: list[str], scale: int, into: Path) -> list[str]:
    """Each shard ``scale`` times over, as one shard (gzip members concatenate into a valid gzip
    file): a bigger corpus with the same number of shards, as real Dolma shards are large."""
    out = []
    for i, f in enumerate(files):
        if not f.endswith(".gz"):
            raise SystemExit(f"{f}: bench_tokenize scales gzip shards only")
        dst = into / f"{i:03d}-{Path(f).name}"
        data = Path(f).read_bytes()
        with open(dst, "wb") as fh:
            for _ in range(scale):
                fh.write(data)
        out.append(str(dst))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--scale", type=int, default=8, help="copies of the training shards to tokenize")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--workers", type=int, nargs="*", default=[2], help="also time the parallel path with these")
    args = ap.parse_args()
    params = load_params(args.params)
    tok, info = tokenizer_stage.load(params.tokenizer.out_dir)
    layout = TokenLayout.of(params.data.seq_len, info)

    with tempfile.TemporaryDirectory() as shards_dir:
        files = scaled_shards(expand_paths(params.data.train_paths), args.scale, Path(shards_dir))
        texts = [d.text for d in iter_documents(files)]
        mb = sum(len(t.encode()) for t in texts) / 1e6
        tokens = sum(len(e) + 1 for e in tok.encode_batch(texts, add_special_tokens=False))

        def raw() -> float:
            t0 = time.perf_counter()
            tok.encode_batch(texts, add_special_tokens=False)
            return time.perf_counter() - t0

        def stage() -> float:
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.perf_counter()
                stats = ReadStats()
                write_train_tokens(
                    iter_documents(files, stats),
                    stats,
                    tok,
                    TokensDir(tmp),
                    layout,
                    params.data.encode_batch_size,
                    progress=False,
                )
                return time.perf_counter() - t0

        timed = {"raw": raw, "stage": stage}
        times: dict[str, list[float]] = {"raw": [], "stage": []}
        cpu: dict[str, list[float]] = {"raw": [], "stage": []}  # CPU-seconds of this process, all threads
        for r in range(args.rounds):
            for name in ("raw", "stage") if r % 2 == 0 else ("stage", "raw"):
                c0 = cpu_seconds()
                times[name].append(timed[name]())
                cpu[name].append(cpu_seconds() - c0)
        ratios = [r / s for r, s in zip(times["raw"], times["stage"])]
        med = {k: statistics.median(v) for k, v in times.items()}

        print(
            f"machine: {platform.machine()} {platform.processor() or ''}, {torch.get_num_threads()} threads; "
            f"corpus {len(texts)} documents in {len(files)} shards (each training shard {args.scale}x), {mb:.2f} MB, "
            f"{tokens:,} tokens; {args.rounds} paired rounds"
        )
        print(f"raw encode_batch : {mb / med['raw']:7.2f} MB/s  {tokens / med['raw']:12,.0f} tokens/s (median)")
        print(
            f"tokenize stage   : {mb / med['stage']:7.2f} MB/s  {tokens / med['stage']:12,.0f} tokens/s "
            f"(read + decompress + encode + pack + write)"
        )
        print(
            f"ratio stage/raw  : {statistics.median(ratios):.3f} median of rounds "
            f"(range {min(ratios):.3f}-{max(ratios):.3f})"
        )
        c = {k: statistics.median(v) for k, v in cpu.items()}
        cores = available_cores()  # as many as the stage encodes on
        print(
            f"CPU-seconds      : raw {c['raw']:.2f} ({c['raw'] / med['raw']:.2f} cores busy), stage {c['stage']:.2f} "
            f"({c['stage'] / med['stage']:.2f}); the stage's CPU spread over all {cores} cores would take "
            f"{c['stage'] / cores:.2f} s: at most {med['raw'] * cores / c['stage']:.3f} of raw on this machine"
        )
        for workers in args.workers:
            best = float("inf")
            for _ in range(min(args.rounds, 3)):
                with tempfile.TemporaryDirectory() as tmp:
                    t0 = time.perf_counter()
                    pack_shards_parallel(
                        files,
                        str(Path(params.tokenizer.out_dir) / "tokenizer.json"),
                        TokensDir(tmp),
                        layout,
                        workers,
                        False,
                        params.data.encode_batch_size,
                    )
                    best = min(best, time.perf_counter() - t0)
            print(
                f"{workers} worker processes: {mb / best:7.2f} MB/s  {tokens / best:12,.0f} tokens/s "
                f"(best of {min(args.rounds, 3)}; ratio to the raw median {med['raw'] / best:.3f})"
            )


if __name__ == "__main__":
    main()
