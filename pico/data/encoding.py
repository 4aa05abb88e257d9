"""Documents to encodings, in order, on every core this process has: the tokenize stage's engine.

Batches of documents are read on one thread (``read_ahead``: reading and decompressing overlap the
encoding) and encoded on ``encode_threads()`` threads at once, each batch whole on one core
(``encode_batch`` releases the GIL), and handed back in reading order.

Why not the tokenizer's own thread pool (one ``encode_batch`` call fanned out over all cores, as a
plain ``encode_batch`` does): its threads busy-wait at every call's tail for the slowest document,
and a streaming stage makes one call per batch. Measured with ``benchmarks/bench_tokenize.py``'s
corpus on a 2-core x86-64 (tokenizers 0.23, 2026-11-28), against one ``encode_batch`` call on the
whole text (rounds interleaved, medians): the pool fanned out per batch 0.74-0.80 of its speed;
two threads with the pool off 0.88-0.91, and 1.075 without offsets (below), at 5.6 CPU-seconds
against raw's 5.4; three threads on two cores 0.85.
The pool is switched off through ``TOKENIZERS_PARALLELISM``, which tokenizers reads at each call,
only while encoding runs (``serial_tokenizer``). Which thread encodes a batch changes nothing in its
ids: the output bytes are the same for any number of threads.
"""

from __future__ import annotations

import contextlib
import math
import os
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from tokenizers import Encoding, Tokenizer

from pico.data.documents import Document

# Above this many threads the GIL-held part (turning encodings into Python ids) bounds the speed
# and each thread only adds a batch of memory; many cores are for ``data.tokenize_workers``.
MAX_ENCODE_THREADS = 8
PARALLELISM_ENV = "TOKENIZERS_PARALLELISM"
Result = TypeVar("Result")


def batched(items: Iterable, size: int) -> Iterator[list]:
    batch: list = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def read_ahead(batches: Iterable[list], depth: int = 2) -> Iterator[list]:
    """``batches``, read on a thread up to ``depth`` ahead: reading and decompressing the next batch
    overlaps the encoding of this one. An error while reading is raised here, in order."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def reader() -> None:
        try:
            for batch in batches:
                while not stop.is_set():
                    try:
                        q.put(batch, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(done)
        except BaseException as err:  # handed to the consumer
            q.put(err)

    thread = threading.Thread(target=reader, name="pico-read-ahead", daemon=True)
    thread.start()
    try:
        while (item := q.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join()


def available_cores(cpu_max: Path = Path("/sys/fs/cgroup/cpu.max")) -> int:
    """The cores this process may run on: its CPU affinity (``taskset``, cpusets), and no more than
    its container's CPU quota (cgroup v2 ``cpu.max``, as ``docker --cpus`` sets), rounded up."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        quota, period = cpu_max.read_text().split()
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):  # no cgroup v2 here, or a form this does not know: affinity only
        pass
    return cores


def encode_threads(processes: int = 1) -> int:
    """Encoding threads for each of ``processes`` tokenizing processes sharing this machine."""
    return max(1, min(MAX_ENCODE_THREADS, available_cores() // max(1, processes)))


_serial = threading.Lock()
_serial_users = 0
_serial_before: str | None = None


@contextlib.contextmanager
def serial_tokenizer() -> Iterator[None]:
    """The tokenizer's own thread pool off while the block runs (``TOKENIZERS_PARALLELISM``, read
    by tokenizers at each call), then the variable as it was. Counted, so streams encoding at once
    in one process (Dask tasks on a worker's threads) share one setting: it is set when the first
    starts and restored when the last ends, never while one of them is encoding."""
    global _serial_users, _serial_before
    with _serial:
        if _serial_users == 0:
            _serial_before = os.environ.get(PARALLELISM_ENV)
            os.environ[PARALLELISM_ENV] = "false"
        _serial_users += 1
    try:
        yield
    finally:
        with _serial:
            _serial_users -= 1
            if _serial_users == 0:
                if _serial_before is None:
                    os.environ.pop(PARALLELISM_ENV, None)
                else:
                    os.environ[PARALLELISM_ENV] = _serial_before


def encoded_batches(
    docs: Iterable[Document],
    tok: Tokenizer,
    batch_size: int,
    then: Callable[[list[Document], list[Encoding]], Result],
    threads: int | None = None,
    with_offsets: bool = False,
) -> Iterator[Result]:
    """``then(batch, encodings)`` for each batch of ``batch_size`` documents, in reading order.

    ``then`` runs on the encoding thread right after its batch (what it returns is usually much
    smaller than the encodings, which are dropped there); at most ``threads`` + 1 batches are held
    at once. An error from reading, encoding or ``then`` is raised here, in order; abandoning the
    iterator stops the reader and lets the batches in flight finish.

    Without ``with_offsets`` the encodings' character offsets are not computed
    (``encode_batch_fast``: the same ids, 4-8 % less CPU here); their ``offsets`` are then not
    meaningful."""
    threads = threads or encode_threads()
    encode_batch = tok.encode_batch if with_offsets else tok.encode_batch_fast

    def encode(batch: list[Document]) -> Result:
        return then(batch, encode_batch([d.text for d in batch], add_special_tokens=False))

    with serial_tokenizer(), ThreadPoolExecutor(threads, thread_name_prefix="pico-encode") as pool:
        pending: deque[Future] = deque()
        for batch in read_ahead(batched(docs, batch_size)):
            pending.append(pool.submit(encode, batch))
            if len(pending) > threads:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
