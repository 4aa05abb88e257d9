"""Data budgets: per-source caps and weights, and per-source tokens and epochs in the manifest,
the train summary and the report."""

import copy
import json
import random

import numpy as np
import pytest

from pico import report, train
from pico.config import SourceBudget, parse_params
from pico.data import tokenize as tokenize_stage
from pico.data import tokenizer
from pico.data.budgets import Budgets
from pico.data.documents import Document
from pico.data.tokens_dir import TokensDir
from tests.helpers import document, write_jsonl_gz


def docs(source, n, length=10):
    return [Document(text=f"{source} doc {i}", source=source, id=f"{source}-{i}") for i in range(n)], length


def run_pass(budgets, documents, length, passes=None):
    kept = []
    for k in range(passes or budgets.passes):
        for d in documents:
            d = copy.copy(d)
            d.copy = k
            if budgets.keep(d, length):
                kept.append((k, d.id))
    return kept


def test_caps_take_the_first_documents_in_reading_order():
    b = Budgets({"wiki": SourceBudget(max_documents=3), "web": SourceBudget(max_tokens=25)}, seed=0)
    wiki, n = docs("wiki", 10)
    web, _ = docs("web", 10)
    kept = run_pass(b, wiki + web, n)
    assert [i for _, i in kept] == ["wiki-0", "wiki-1", "wiki-2", "web-0", "web-1"]  # 10 + 10 <= 25 < 30
    t = b.tally.to_dict(b.budgets)
    assert t["wiki"]["documents"] == 3 and t["web"]["unique_tokens"] == 20 and t["web"]["capped"]


def test_weights_repeat_one_corpus_apart_and_fractions_are_seeded():
    b = Budgets({"books": SourceBudget(weight=2.0), "web": SourceBudget(weight=0.5)}, seed=0)
    books, n = docs("books", 4)
    web, _ = docs("web", 400)
    kept = run_pass(b, books + web, n)
    assert b.passes == 2
    assert [i for k, i in kept if i.startswith("books")] == ["books-0", "books-1", "books-2", "books-3"] * 2
    assert {k for k, i in kept if i.startswith("books")} == {0, 1}  # the copy comes a whole pass later
    half = [i for _, i in kept if i.startswith("web")]
    assert 160 < len(half) < 240  # a seeded half
    again = Budgets({"books": SourceBudget(weight=2.0), "web": SourceBudget(weight=0.5)}, seed=0)
    assert run_pass(again, books + web, n) == kept  # same seed, same selection
    other = Budgets({"web": SourceBudget(weight=0.5)}, seed=1)
    assert [i for _, i in run_pass(other, web, n)] != half
    t = b.tally.to_dict(b.budgets)
    assert t["books"]["copies"] == 2.0 and t["web"]["copies"] == 1.0
    # 2.5: every document twice and a seeded half a third time
    c = Budgets({"books": SourceBudget(weight=2.5)}, seed=0)
    many, _ = docs("books", 400)
    counts = np.bincount([int(i.split("-")[1]) for _, i in run_pass(c, many, n)], minlength=400)
    assert set(counts) == {2, 3} and 160 < (counts == 3).sum() < 240


def write_two_source_corpus(root):
    rng = random.Random(0)
    for shard in range(2):
        records = [
            {"id": f"{s}-{shard}-{i}", "text": document(rng), "source": s} for i in range(40) for s in ("wiki", "books")
        ]
        write_jsonl_gz(root / "dolma" / f"part-{shard}.json.gz", records)
    return str(root / "dolma" / "*.json.gz")


def test_tokenize_train_and_report_show_per_source_tokens_and_epochs(params_dict, tmp_path):
    p = copy.deepcopy(params_dict)
    p["data"]["train_paths"] = [write_two_source_corpus(tmp_path / "two")]
    p["data"]["budgets"] = {"wiki": {"max_documents": 29}, "books": {"weight": 2.0}}
    p["training"]["max_steps"] = 12
    params = parse_params(p)
    tokenizer.run(params)
    tokenize_stage.run(params, progress=False)
    manifest = TokensDir(params.data.tokens_dir).train_manifest()
    src = manifest["sources"]
    assert src["wiki"]["documents"] == 29 and src["wiki"]["copies"] == 1.0 and src["wiki"]["capped"]
    assert src["books"]["documents"] == 80 and src["books"]["copies"] == 2.0
    assert manifest["documents_packed"] == 29 + 2 * 80
    assert src["wiki"]["tokens"] + src["books"]["tokens"] == manifest["tokens"]
    rows = manifest["rows"] * manifest["row_len"] + manifest["tokens_dropped_tail"]
    assert rows == manifest["tokens"]

    summary = train.run(params, progress=False)
    se = summary.source_epochs
    assert se["books"]["epochs"] == pytest.approx(2 * summary.epochs, rel=1e-5)
    assert se["wiki"]["epochs"] == pytest.approx(summary.epochs, rel=1e-5)
    from pico import evaluate

    evaluate.run(params)
    md = report.run(params).read_text()
    assert "epochs per training source" in md and "books" in md and "×2 copies" in md

    # unchanged budgets: identical bytes; a misspelt source is named
    before = (TokensDir(params.data.tokens_dir).path / "train.bin").read_bytes()
    tokenize_stage.run(params, progress=False)
    assert (TokensDir(params.data.tokens_dir).path / "train.bin").read_bytes() == before
    p["data"]["budgets"] = {"wikipedia": {"max_documents": 5}}
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        tokenize_stage.run(parse_params(p), progress=False)
    assert "data.budgets.wikipedia: no training document has source 'wikipedia'" in buf.getvalue()
    assert (
        json.loads((TokensDir(params.data.tokens_dir).path / "train_manifest.json").read_text())["documents_packed"]
        == 160
    )
