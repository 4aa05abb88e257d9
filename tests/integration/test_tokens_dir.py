"""The tokens folder's contract: row length in one place, manifests that must agree, clear
errors for what is missing or stale."""

import json

import pytest

from pico.data.tokens_dir import EVAL_MANIFEST, TRAIN_MANIFEST, TokenLayout, TokensDir, row_len


def test_row_len_is_the_context_plus_the_shifted_label():
    assert row_len(2048) == 2049  # pico's pretokenized rows
    layout = TokenLayout(seq_len=128, vocab_size=50_304, eos_id=0, tokenizer_sha256="x")
    assert layout.row_len == 129 and layout.dtype.name == "uint16"
    assert TokenLayout(8, 70_000, 0, "x").dtype.name == "uint32"


def test_missing_folder_names_the_file_and_the_stage(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"train_manifest.json is missing; run the tokenize stage"):
        TokensDir(tmp_path).open_rows()


def test_rows_of_another_seq_len_are_refused(prepared):
    tokens = TokensDir(prepared.data.tokens_dir)
    rows, manifest = tokens.open_rows(prepared.data.seq_len)
    assert rows.shape[1] == manifest["row_len"] == row_len(prepared.data.seq_len)
    with pytest.raises(ValueError, match="data.seq_len=64; rerun the tokenize stage"):
        tokens.open_rows(64)


def test_train_and_eval_from_different_tokenize_runs_are_refused(prepared):
    tokens = TokensDir(prepared.data.tokens_dir)
    tokens.check_consistent()
    path = tokens.file(EVAL_MANIFEST)
    ev = json.loads(path.read_text())
    path.write_text(json.dumps({**ev, "tokenizer_sha256": "another"}))
    with pytest.raises(ValueError, match=f"{TRAIN_MANIFEST} and .*{EVAL_MANIFEST} disagree on tokenizer_sha256"):
        tokens.check_consistent()


def test_damaged_manifest_is_named(prepared):
    tokens = TokensDir(prepared.data.tokens_dir)
    tokens.file(TRAIN_MANIFEST).write_text("{half")
    with pytest.raises(ValueError, match="train_manifest.json is not valid JSON"):
        tokens.train_manifest()


def test_train_data_is_verified_against_its_manifest_and_the_vocabulary(prepared):
    import hashlib

    from pico import train

    tokens = TokensDir(prepared.data.tokens_dir)
    vocab = train.model_dims(prepared).vocab_size
    tokens.verify_train(vocab)
    path = tokens.file("train.bin")
    data = bytearray(path.read_bytes())
    data[10:12] = bytes([data[10] ^ 1, data[11]])  # one flipped bit, same size
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"train.bin does not match the sha256 in .*train_manifest.json"):
        tokens.verify_train(vocab)
    with pytest.raises(ValueError, match="train.bin does not match the sha256"):
        train.run(prepared, progress=False)  # before any step
    data[10:12] = (vocab + 5).to_bytes(2, "little")  # an id outside the vocabulary, manifest made to agree
    path.write_bytes(bytes(data))
    manifest = json.loads(tokens.file(TRAIN_MANIFEST).read_text())
    manifest["sha256"] = hashlib.sha256(bytes(data)).hexdigest()
    tokens.file(TRAIN_MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=rf"token id {vocab + 5}, outside the model's vocabulary of {vocab}"):
        tokens.verify_train(vocab)
