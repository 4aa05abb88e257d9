"""Tokenizing straight from S3 (SeaweedFS on 127.0.0.1) gives the same bytes as from local disk."""

import copy
from pathlib import Path

import pytest

from pico.config import parse_params
from pico.data import tokenize as tokenize_stage
from pico.data import tokenizer
from pico.data.documents import ReadStats, iter_documents


@pytest.fixture
def s3_corpus(s3_server, corpus, monkeypatch):
    for k, v in s3_server.env().items():
        monkeypatch.setenv(k, v)
    fs = s3_server.filesystem()
    if not fs.exists("pico-data"):
        fs.mkdir("pico-data")
    local = Path(corpus["train"]).parent
    for p in sorted(local.glob("*.json.gz")):
        fs.put_file(str(p), f"pico-data/dolma/{p.name}")
    return "s3://pico-data/dolma/*.json.gz"


def test_documents_stream_from_s3(s3_corpus, corpus):
    stats = ReadStats()
    remote = [(d.id, d.text) for d in iter_documents([s3_corpus], stats)]
    local = [(d.id, d.text) for d in iter_documents([corpus["train"]])]
    assert remote == local
    assert all(f.startswith("s3://pico-data/dolma/part-") for f in stats.files)


def test_tokenize_from_s3_matches_local(s3_corpus, params_dict, tmp_path):
    local = parse_params(params_dict)
    tokenizer.run(local)
    tokenize_stage.run(local, progress=False)
    raw = copy.deepcopy(params_dict)
    raw["data"]["train_paths"] = [s3_corpus]
    raw["data"]["tokens_dir"] = str(tmp_path / "tokens-s3")
    raw["tokenizer"]["out_dir"] = str(tmp_path / "tok-s3")
    remote = parse_params(raw)
    tokenizer.run(remote)
    tokenize_stage.run(remote, progress=False)
    assert (tmp_path / "tok-s3/tokenizer.json").read_bytes() == (
        tmp_path / "data/tokenizer/tokenizer.json"
    ).read_bytes()
    assert (tmp_path / "tokens-s3/train.bin").read_bytes() == (tmp_path / "data/tokens/train.bin").read_bytes()


def test_wrong_credentials_are_a_clear_error(s3_corpus, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()  # credentials are read when a filesystem is created
    with pytest.raises(PermissionError, match="access denied listing s3://pico-data/dolma/part-0000.json.gz"):
        list(iter_documents([s3_corpus.replace("*", "part-0000")]))
    with pytest.raises(PermissionError, match=r"access denied listing s3://pico-data/dolma/\*.json.gz"):
        list(iter_documents([s3_corpus]))
    s3fs.S3FileSystem.clear_instance_cache()
