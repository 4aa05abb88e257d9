"""Train ↔ evaluation contamination: evaluation documents sharing a token 13-gram with training."""

import copy
import gzip
import json

import numpy as np

from pico.config import parse_params
from pico.data import contamination, tokenizer
from pico.data import tokenize as tokenize_stage
from pico.data.tokens_dir import TokensDir


def test_ngram_hashes_match_equal_ngrams_only():
    a = ngrams = contamination.ngram_hashes(np.arange(20), 13)
    assert len(ngrams) == 8 and len(set(a.tolist())) == 8
    b = contamination.ngram_hashes(np.array([99, *range(20)]), 13)
    assert a.tolist() == b[1:].tolist() and b[0] not in a
    assert len(contamination.ngram_hashes(np.arange(12), 13)) == 0


def test_count_finds_a_document_across_chunks_and_window_joins(monkeypatch):
    monkeypatch.setattr(contamination, "CHUNK_TOKENS", 16)  # the planted 13-gram straddles a chunk edge
    doc = np.arange(1000, 1030)  # one document of 30 tokens in two windows (the second repeats one token)
    eval_tokens = np.concatenate([[0], doc[:20], doc[19:], [0], np.arange(2000, 2030)])
    table = np.array(
        [(0, 21, 0, 0, 0, 1), (21, 11, 0, 0, 0, 1), (32, 31, 1, 1, 1, 1)],
        dtype=[
            ("start", "i8"),
            ("length", "i4"),
            ("source", "i2"),
            ("subdomain", "i2"),
            ("doc", "i4"),
            ("n_bytes", "i8"),
        ],
    )
    train = np.concatenate([np.arange(5000, 5010), doc[12:27], np.arange(6000, 6007)]).reshape(4, 8)
    found = contamination.count(train, eval_tokens, table, ["a", "b"])
    assert found["contaminated_documents"] == 1 and found["documents"] == 2
    assert found["by_source"] == {"a": {"documents": 1, "contaminated": 1}, "b": {"documents": 1, "contaminated": 0}}


def test_planted_evaluation_documents_are_counted_by_the_tokenize_stage(params_dict, corpus, tmp_path):
    """Copy three of source beta's evaluation documents into the training data: the count says 3."""
    planted = []
    with gzip.open(tmp_path / "corpus/paloma/beta/val.jsonl.gz", "rt") as fh:
        for line in list(fh)[:3]:
            planted.append({"id": "leak", "text": json.loads(line)["text"], "source": "synthetic"})
    with gzip.open(tmp_path / "corpus/dolma/part-9999.json.gz", "wt") as fh:
        fh.writelines(json.dumps(d) + "\n" for d in planted)
    raw = copy.deepcopy(params_dict)
    # whole words as tokens: at the tiny default vocabulary 13 tokens are ~3 words of a 70-word
    # vocabulary, which random documents share by chance (a real 50k vocabulary makes them ~10 words)
    raw["tokenizer"]["vocab_size"] = 1000
    params = parse_params(raw)
    tokenizer.run(params)
    out = tokenize_stage.run(params, progress=False)
    c = TokensDir(params.data.tokens_dir).contamination()
    assert c == out["contamination"] and c["ngram"] == 13
    assert c["by_source"]["beta"]["contaminated"] == 3 and c["by_source"]["alpha"]["contaminated"] == 0
