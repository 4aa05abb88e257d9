"""Peak memory of the tokenize stage at 1x and 10x the input: it should stay flat (streaming).

    python benchmarks/bench_tokenize_memory.py [--params params.yaml] [--scales 1 10] [--workers 1]

Copies the training shards k times into a temporary folder, runs the stage's packing in a fresh
process per scale and prints its peak RSS (ru_maxrss) next to the input size.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import resource, sys
from pathlib import Path
from pico.config import load_params
from pico.data import tokenizer as tokenizer_stage
from pico.data.documents import ReadStats, iter_documents, expand_paths
from pico.data.packing import write_train_tokens
from pico.data.parallel import pack_shards_parallel
from pico.data.tokens_dir import TokenLayout, TokensDir
params = load_params(sys.argv[1]); pattern, out, workers = sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
tok, info = tokenizer_stage.load(params.tokenizer.out_dir)
if workers > 1:
    pack_shards_parallel(expand_paths([pattern]), str(Path(params.tokenizer.out_dir) / "tokenizer.json"), TokensDir(out),
                         TokenLayout.of(params.data.seq_len, info), workers, False, params.data.encode_batch_size)
else:
    stats = ReadStats()
    write_train_tokens(iter_documents([pattern], stats), stats, tok, TokensDir(out), TokenLayout.of(params.data.seq_len, info),
                       params.data.encode_batch_size, progress=False)
self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
kids_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(self_kb, kids_kb, (out / "train.bin").stat().st_size)
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--scales", type=int, nargs="+", default=[1, 10])
    ap.add_argument("--workers", type=int, default=1)
    args = ap.parse_args()
    from pico.config import load_params
    from pico.data.documents import expand_paths

    shards = [Path(p) for p in expand_paths(load_params(args.params).data.train_paths)]
    for k in args.scales:
        with tempfile.TemporaryDirectory() as tmp:
            corpus = Path(tmp) / "corpus"
            corpus.mkdir()
            for i in range(k):
                for s in shards:
                    shutil.copy(s, corpus / f"{i:03d}-{s.name}")
            size = sum(p.stat().st_size for p in corpus.iterdir())
            out = subprocess.run(
                [sys.executable, "-c", CHILD, args.params, str(corpus / "*.json.gz"), tmp, str(args.workers)],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.split()
            self_mb, kids_mb, tokens_mb = int(out[0]) / 1024, int(out[1]) / 1024, int(out[2]) / 2**20
            print(
                f"{k:3d}x input: {size / 2**20:7.1f} MB gzipped, {tokens_mb:7.1f} MB of tokens -> peak RSS "
                f"{self_mb:6.0f} MB (largest worker {kids_mb:4.0f} MB), {args.workers} worker(s)"
            )


if __name__ == "__main__":
    main()
