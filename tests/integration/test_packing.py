import json

import numpy as np
import pytest
from tokenizers import Tokenizer

from pico.data.documents import Document, iter_documents
from pico.data.eval_windows import EvalWindows, document_windows
from pico.data.packing import pack_documents
from pico.data.tokenizer import train_bpe
from pico.data.tokens_dir import TokensDir, token_dtype


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    texts = ["the quick brown fox jumps over the lazy dog", "héllo wörld — ünïcode ✓ text"] * 20
    return train_bpe(texts, 300, 1, ["<|endoftext|>", "<|padding|>"])


def test_dtype_choice():
    assert token_dtype(50_304) == np.uint16
    assert token_dtype(65_536) == np.uint16
    assert token_dtype(65_537) == np.uint32


def test_packing_layout_and_tail(tmp_path, tok):
    docs = [Document(text=t, source="s", id=str(i)) for i, t in enumerate(["the fox", "lazy dog jumps", "over"])]
    expected = []
    for d in docs:
        expected += tok.encode(d.text, add_special_tokens=False).ids + [0]
    counts = pack_documents(docs, tok, 0, 4, tmp_path / "t.bin", np.dtype(np.uint16), batch_size=2, progress=False)
    flat = np.fromfile(tmp_path / "t.bin", dtype=np.uint16)
    n_rows = len(expected) // 4
    assert counts["rows"] == n_rows and counts["tokens"] == len(expected)
    assert counts["tokens_dropped_tail"] == len(expected) - 4 * n_rows
    assert flat.tolist() == expected[: 4 * n_rows]


def test_tokenize_stage_outputs_and_determinism(prepared, tmp_path):
    from pico.data import tokenize as tokenize_stage

    tokens = prepared.data.tokens_dir
    rows, manifest = TokensDir(tokens).open_rows()
    assert rows.shape == (manifest["rows"], 33) and rows.dtype == np.uint16
    assert manifest["documents"] == 240 and manifest["skipped_total"] == 0
    assert manifest["tokenizer_sha256"] and manifest["sha256"]
    tokenize_stage.run(prepared, progress=False)  # here (the fixture's copy names the session's corpus)
    first = {p.name: p.read_bytes() for p in sorted(__import__("pathlib").Path(tokens).iterdir())}
    tokenize_stage.run(prepared, progress=False)
    second = {p.name: p.read_bytes() for p in sorted(__import__("pathlib").Path(tokens).iterdir())}
    assert first == second  # same inputs => byte-identical outputs


def test_eval_windows_cover_every_token_once(prepared):
    ev = EvalWindows(prepared.data.tokens_dir)
    assert ev.sources == ["alpha", "beta"]
    assert set(ev.subdomains) == {"alpha/alpha-0", "alpha/alpha-1", "beta/beta-0", "beta/beta-1"}
    tok = Tokenizer.from_file(f"{prepared.tokenizer.out_dir}/tokenizer.json")
    docs = list(iter_documents(prepared.data.eval_paths))
    for doc_no, doc in enumerate(docs):
        rows = ev.table[ev.table["doc"] == doc_no]
        assert len(rows) >= 1 and (rows["length"] <= prepared.data.seq_len + 1).all()
        predicted = np.concatenate(
            [ev.window(int(np.flatnonzero(ev.table["doc"] == doc_no)[k]))[1:] for k in range(len(rows))]
        )
        assert predicted.tolist() == tok.encode(doc.text, add_special_tokens=False).ids
        assert rows["n_bytes"].sum() == len(doc.text.encode("utf-8"))
    assert ev.manifest["bytes"] == sum(len(d.text.encode()) for d in docs)
    assert len(ev.table) > len(docs)  # long documents were split


def test_windows_split_multibyte_text_exactly(tok):
    text = "héllo wörld — ünïcode ✓ " * 7
    enc = tok.encode(text, add_special_tokens=False)
    windows = document_windows(text, enc, 0, 5)
    assert sum(b for _, b in windows) == len(text.encode("utf-8"))
    assert windows[0][0][0] == 0  # EOS as context before the first token
    assert [t for w, _ in windows for t in w[1:]] == enc.ids
    # consecutive windows overlap by exactly one context token
    for (a, _), (b, _) in zip(windows, windows[1:]):
        assert a[-1] == b[0]


def test_rows_file_size_is_checked(prepared):
    from pathlib import Path

    path = Path(prepared.data.tokens_dir) / "train.bin"
    path.write_bytes(path.read_bytes()[:-2])
    with pytest.raises(ValueError, match="manifest promises"):
        TokensDir(prepared.data.tokens_dir).open_rows()


def test_skips_show_in_manifest(params_dict, tmp_path):
    from pico.config import parse_params
    from pico.data import tokenize as tokenize_stage
    from pico.data import tokenizer
    from tests.helpers import write_jsonl_gz

    write_jsonl_gz(tmp_path / "corpus/dolma/part-0009.json.gz", [], [b"oops\n", b'{"text": ""}\n'])
    params = parse_params(params_dict)
    tokenizer.run(params)
    tokenize_stage.run(params, progress=False)
    manifest = json.loads((tmp_path / "data/tokens/train_manifest.json").read_text())
    assert manifest["skipped"]["bad_json"] == 1 and manifest["skipped"]["empty_text"] == 1
    assert "part-0009.json.gz:1: bad_json" in manifest["skip_examples"][0]


@pytest.mark.parametrize("workers", [2, 3])
def test_parallel_tokenization_is_byte_identical(params_dict, tmp_path, workers):
    import copy

    from pico.config import parse_params
    from pico.data import tokenize as tokenize_stage
    from pico.data import tokenizer
    from tests.helpers import write_jsonl_gz

    # a bad line in the middle shard, so merged skip counts and examples are checked too
    write_jsonl_gz(tmp_path / "corpus/dolma/part-0001b.json.gz", [{"text": "short one"}], [b"{oops\n"])
    seq = parse_params(params_dict)
    tokenizer.run(seq)
    tokenize_stage.run(seq, progress=False)
    raw = copy.deepcopy(params_dict)
    raw["data"].update(tokenize_workers=workers, tokens_dir=str(tmp_path / "par"))
    par = parse_params(raw)
    tokenize_stage.run(par, progress=False)
    for name in ("train.bin", "train_manifest.json"):
        assert (tmp_path / "par" / name).read_bytes() == (tmp_path / "data/tokens" / name).read_bytes()
    manifest = json.loads((tmp_path / "par/train_manifest.json").read_text())
    assert manifest["skipped"]["bad_json"] == 1 and manifest["documents"] == 241
    assert not list((tmp_path / "par").glob(".shards-*"))
