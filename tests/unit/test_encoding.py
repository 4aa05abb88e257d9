"""The tokenize stage's encoding engine: order, errors, threads, and the tokenizer's pool."""

import os
import threading
import time

import numpy as np
import pytest
from tokenizers import Tokenizer

from pico.data import encoding
from pico.data.documents import Document
from pico.data.encoding import encode_threads, encoded_batches, read_ahead, serial_tokenizer
from pico.data.packing import encoded_chunks
from pico.data.tokenizer import train_bpe


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    texts = ["the quick brown fox jumps over the lazy dog", "héllo wörld — ünïcode ✓ text"] * 20
    return train_bpe(texts, 300, 1, ["<|endoftext|>", "<|padding|>"])


def docs(n: int = 50) -> list[Document]:
    return [Document(text=f"the fox {i} héllo " * (i % 7 + 1), source="s", id=str(i)) for i in range(n)]


def test_read_ahead_keeps_order_raises_in_place_and_stops_when_abandoned():
    assert list(read_ahead(iter([[1], [2], [3]]))) == [[1], [2], [3]]

    def failing():
        yield [1]
        raise ValueError("bad document in shard 2")

    got = []
    with pytest.raises(ValueError, match="shard 2"):
        for batch in read_ahead(failing()):
            got.append(batch)
    assert got == [[1]]

    before = threading.active_count()
    gen = read_ahead(iter([[i] for i in range(100)]))
    next(gen)
    gen.close()  # the consumer stops early: the reader thread ends too
    assert threading.active_count() == before


@pytest.mark.parametrize("threads", [1, 2, 5])
def test_token_stream_is_the_same_for_any_number_of_threads(tok, threads):
    expected = [t for d in docs() for t in tok.encode(d.text, add_special_tokens=False).ids + [0]]
    chunks = list(encoded_chunks(docs(), tok, 0, np.dtype(np.uint16), batch_size=4, threads=threads))
    assert np.concatenate([c for c, _ in chunks]).tolist() == expected
    assert [n for _, n in chunks] == [4] * 12 + [2]


def test_budgets_decide_in_reading_order_whatever_the_threads(tok):
    from pico.config import SourceBudget
    from pico.data.budgets import Budgets

    mixed = [Document(text=d.text, source="ab"[i % 2], id=d.id) for i, d in enumerate(docs(60))]

    def stream(threads: int):
        budgets = Budgets({"a": SourceBudget(max_tokens=200), "b": SourceBudget(weight=0.5)}, 7)
        chunks = list(
            encoded_chunks(mixed, tok, 0, np.dtype(np.uint16), batch_size=4, budgets=budgets, threads=threads)
        )
        return np.concatenate([c for c, _ in chunks]).tolist(), [n for _, n in chunks], budgets.tally.to_dict()

    one = stream(1)
    assert 0 < sum(one[1]) < len(mixed)  # the budgets did cut: a cap on a, a seeded half of b
    assert stream(4) == one


def test_batches_come_back_in_reading_order_when_later_ones_finish_first(tok):
    class SlowFirstBatches:
        """Batch k takes longer than batch k+1, so with 4 threads they finish in reverse order."""

        def encode_batch_fast(self, texts, add_special_tokens):
            first = int(texts[0].split()[2])
            time.sleep(0.02 * (12 - first // 4))
            return tok.encode_batch(texts, add_special_tokens=add_special_tokens)

    got = list(encoded_batches(docs(48), SlowFirstBatches(), 4, lambda batch, encs: [d.id for d in batch], threads=4))
    assert [i for batch in got for i in batch] == [str(i) for i in range(48)]


def test_the_first_failing_batch_raises_after_the_batches_before_it_and_threads_end(tok):
    class FailsOnBatch3:
        def encode_batch_fast(self, texts, add_special_tokens):
            if any(t.startswith("the fox 8 ") for t in texts):
                raise ValueError("cannot encode batch 3")
            return tok.encode_batch(texts, add_special_tokens=add_special_tokens)

    before = threading.active_count()
    got = []
    with pytest.raises(ValueError, match="batch 3"):
        for chunk, _ in encoded_chunks(docs(), FailsOnBatch3(), 0, np.dtype(np.uint16), batch_size=4, threads=2):
            got.append(chunk)
    assert len(got) == 2  # the batches before the failing one were packed, in order
    gen = encoded_chunks(docs(), tok, 0, np.dtype(np.uint16), batch_size=4, threads=2)
    next(gen)
    gen.close()  # abandoned early: the reader and encoder threads end too
    assert threading.active_count() == before


@pytest.mark.parametrize("before", [None, "true"])
def test_the_tokenizers_own_pool_is_off_while_encoding_and_the_setting_is_restored(tok, monkeypatch, before):
    if before is None:
        monkeypatch.delenv(encoding.PARALLELISM_ENV, raising=False)
    else:
        monkeypatch.setenv(encoding.PARALLELISM_ENV, before)
    seen = set()

    class Records:
        def encode_batch_fast(self, texts, add_special_tokens):
            seen.add(os.environ.get(encoding.PARALLELISM_ENV))
            return tok.encode_batch_fast(texts, add_special_tokens=add_special_tokens)

    list(encoded_batches(docs(), Records(), 4, lambda batch, encs: len(encs), threads=2))
    assert seen == {"false"}
    assert os.environ.get(encoding.PARALLELISM_ENV) == before
    with pytest.raises(RuntimeError):
        with serial_tokenizer():
            raise RuntimeError("stage failed")
    assert os.environ.get(encoding.PARALLELISM_ENV) == before


def test_streams_encoding_at_once_share_the_setting_until_the_last_ends(tok, monkeypatch):
    monkeypatch.setenv(encoding.PARALLELISM_ENV, "true")
    seen = []
    short_started, long_started, short_done = threading.Event(), threading.Event(), threading.Event()

    class Records:
        def encode_batch_fast(self, texts, add_special_tokens):
            seen.append(os.environ.get(encoding.PARALLELISM_ENV))
            return tok.encode_batch_fast(texts, add_special_tokens=add_special_tokens)

    def short_stream():  # starts first, ends while the long one is still encoding
        for _ in encoded_batches(docs(8), Records(), 4, lambda batch, encs: 0, threads=1):
            short_started.set()
            long_started.wait(10)
        short_done.set()

    def long_stream():
        for i, _ in enumerate(encoded_batches(docs(), Records(), 4, lambda batch, encs: 0, threads=1)):
            long_started.set()
            if i == 0:
                short_done.wait(10)

    short = threading.Thread(target=short_stream)
    short.start()
    short_started.wait(10)
    long = threading.Thread(target=long_stream)
    long.start()
    short.join()
    long.join()
    assert short_done.is_set() and len(seen) == 2 + 13
    assert set(seen) == {"false"}  # the long stream's later batches too, after the short one ended
    assert os.environ.get(encoding.PARALLELISM_ENV) == "true"


def test_threads_are_each_process_share_of_the_cores_it_may_use(monkeypatch):
    monkeypatch.setattr(encoding, "available_cores", lambda: 16)
    assert [encode_threads(p) for p in (1, 2, 3, 16, 32)] == [encoding.MAX_ENCODE_THREADS, 8, 5, 1, 1]
    monkeypatch.setattr(encoding, "available_cores", lambda: 2)
    assert encode_threads() == 2
    monkeypatch.undo()


def test_available_cores_are_the_affinity_capped_by_the_container_quota(tmp_path):
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cpu_max = tmp_path / "cpu.max"
    assert encoding.available_cores(tmp_path / "absent") == affinity
    cpu_max.write_text("max 100000\n")
    assert encoding.available_cores(cpu_max) == affinity
    cpu_max.write_text("150000 100000\n")  # docker --cpus=1.5
    assert encoding.available_cores(cpu_max) == min(affinity, 2)
    cpu_max.write_text("20000 100000\n")
    assert encoding.available_cores(cpu_max) == 1
    cpu_max.write_text("garbage\n")
    assert encoding.available_cores(cpu_max) == affinity


def test_offsets_only_when_asked_and_the_same_ids_either_way(tok):
    def ids_and_offsets(batch, encs):
        return [(e.ids, e.offsets) for e in encs]

    plain = [x for b in encoded_batches(docs(), tok, 8, ids_and_offsets, threads=2) for x in b]
    offsets = [x for b in encoded_batches(docs(), tok, 8, ids_and_offsets, threads=2, with_offsets=True) for x in b]
    expected = [tok.encode(d.text, add_special_tokens=False) for d in docs()]
    assert [ids for ids, _ in plain] == [ids for ids, _ in offsets] == [e.ids for e in expected]
    assert [o for _, o in offsets] == [e.offsets for e in expected]  # what eval windows cut bytes by
