"""Tokenizing many shards at once with identical output.

Each worker process turns one shard into its token stream (documents' tokens + EOS, in line order)
in a temporary file; the main process feeds the streams, in shard order, to the same RowPacker the
sequential path uses. Packing only concatenates and cuts, so the rows, the manifest and every byte
equal a sequential run's, whatever the number of workers. Each worker encodes on its share of the
cores (``pico.data.encoding.encode_threads``). Memory stays flat: a worker holds a few encode
batches (one per thread), the merge one block.
"""

from __future__ import annotations

import multiprocessing
import shutil
import tempfile
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from pico.data.budgets import SourceTally, tally_only
from pico.data.documents import ReadStats, iter_file
from pico.data.encoding import encode_threads
from pico.data.packing import RowPacker, encoded_chunks
from pico.data.tokenizer import read_tokenizer
from pico.data.tokens_dir import TRAIN_BIN, TokenLayout, TokensDir
from pico.fsutil import atomic_open

MERGE_BLOCK = 1 << 22  # tokens read per step while merging a shard's stream


def tokenize_shard(
    path: str,
    tokenizer_file: str,
    eos_id: int,
    dtype_name: str,
    out_path: str,
    strict: bool,
    batch_size: int,
    threads: int = 1,
) -> dict[str, Any]:
    """Worker: one shard -> its token stream file, encoded on ``threads`` cores; returns the shard's
    read stats."""
    tok = read_tokenizer(tokenizer_file)
    stats, tally = ReadStats(), tally_only()
    with open(out_path, "wb") as fh:
        for chunk, _ in encoded_chunks(
            iter_file(path, stats, strict), tok, eos_id, np.dtype(dtype_name), batch_size, tally, threads
        ):
            fh.write(chunk.tobytes())
    return {**stats.to_dict(), "sources": tally.tally.to_dict()}


def _process_pool_results(jobs: list[tuple], workers: int) -> Iterator[dict[str, Any]]:
    ctx = multiprocessing.get_context("spawn")  # no fork of a process that holds tokenizer threads
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        futures = [pool.submit(tokenize_shard, *job) for job in jobs]
        for future in futures:  # in shard order: the first bad shard's error wins
            yield future.result()


def _dask_results(jobs: list[tuple], address: str | None) -> Iterator[dict[str, Any]]:
    """Shards as Prefect tasks on a Dask cluster (prefect-dask's DaskTaskRunner): the scheduler at
    ``address``, or a temporary local cluster. Workers on other machines need ``data.tokens_dir`` on
    storage they share with this one."""
    from prefect import flow, task
    from prefect.cache_policies import NO_CACHE
    from prefect_dask import DaskTaskRunner

    shard_task = task(tokenize_shard, name="tokenize-shard", cache_policy=NO_CACHE)

    @flow(name="pico-tokenize-shards", task_runner=DaskTaskRunner(address=address) if address else DaskTaskRunner())
    def tokenize_all() -> list[dict[str, Any]]:
        futures = [shard_task.submit(*job) for job in jobs]
        return [f.result() for f in futures]

    yield from tokenize_all()


def pack_shards_parallel(
    files: list[str],
    tokenizer_file: str,
    out: TokensDir,
    layout: TokenLayout,
    workers: int,
    strict: bool,
    batch_size: int,
    dask_address: str | None = None,
    use_dask: bool = False,
) -> dict[str, Any]:
    """Pack the shards into ``train.bin`` (see the module docstring) and write its manifest."""
    dtype, out_path = layout.dtype, out.file(TRAIN_BIN)
    stats, tally = ReadStats(files=list(files)), SourceTally()
    scratch = Path(tempfile.mkdtemp(prefix=".shards-", dir=out_path.parent))
    # worker processes here share this machine's cores; a Dask cluster runs as many tasks as it has
    # threads, so each task takes one core
    threads = 1 if use_dask else encode_threads(workers)
    jobs = [
        (f, tokenizer_file, layout.eos_id, dtype.name, str(scratch / f"{i:06d}.bin"), strict, batch_size, threads)
        for i, f in enumerate(files)
    ]
    try:
        results = _dask_results(jobs, dask_address) if use_dask else _process_pool_results(jobs, workers)
        with atomic_open(out_path, "wb") as fh:
            packer = RowPacker(fh, layout.row_len, dtype)
            for i, shard in enumerate(results):
                stats.merge(ReadStats.from_dict(shard))
                tally.merge(shard["sources"])
                path = scratch / f"{i:06d}.bin"
                stream = np.memmap(path, dtype=dtype, mode="r") if path.stat().st_size else np.empty(0, dtype=dtype)
                for start in range(0, len(stream), MERGE_BLOCK):
                    packer.add(np.asarray(stream[start : start + MERGE_BLOCK]))
                del stream
                path.unlink()
        return out.write_train_manifest(
            layout, stats.to_dict(), {"documents_packed": stats.documents, **packer.result()}, sources=tally.to_dict()
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
