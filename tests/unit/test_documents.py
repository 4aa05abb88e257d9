import json

import pytest

from pico.data.documents import ReadStats, expand_paths, iter_documents
from pico.errors import BadDocumentError
from tests.helpers import write_jsonl_gz

GOOD = {"id": "a", "text": "hello world", "source": "web"}


def bad_shard(tmp_path):
    raw = [
        b"{not json\n",  # line 2: bad_json
        b'["a list"]\n',  # line 3: bad_json (not an object)
        b'{"id": "m", "source": "web"}\n',  # line 4: missing_text
        b'{"id": "n", "text": 42, "source": "web"}\n',  # line 5: missing_text (not a string)
        b'{"id": "e", "text": "   ", "source": "web"}\n',  # line 6: empty_text
        b'{"id": "u", "text": "caf\xe9", "source": "web"}\n',  # line 7: undecodable_bytes
        b"\n",  # blank: counted, not skipped
        (json.dumps({"id": "b", "text": "second good", "source": "web"}) + "\n").encode(),
    ]
    return write_jsonl_gz(tmp_path / "shard.json.gz", [GOOD], raw)


def test_every_bad_reason_is_counted(tmp_path):
    stats = ReadStats()
    docs = list(iter_documents([str(bad_shard(tmp_path))], stats))
    assert [d.id for d in docs] == ["a", "b"]
    assert stats.documents == 2
    assert dict(stats.skipped) == {"bad_json": 2, "missing_text": 2, "empty_text": 1, "undecodable_bytes": 1}
    summary = stats.to_dict()
    assert summary["skipped"]["truncated_file"] == 0 and summary["skipped_total"] == 6
    assert summary["blank_lines"] == 1 and summary["empty_files"] == []
    assert summary["skip_examples"][0].endswith(
        "shard.json.gz:2: bad_json: Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"
    )


def test_truncated_gzip_keeps_what_was_read(tmp_path):
    path = write_jsonl_gz(
        tmp_path / "t.json.gz", [{**GOOD, "id": str(i), "text": f"document {i} " * 50} for i in range(200)]
    )
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    stats = ReadStats()
    docs = list(iter_documents([str(path)], stats))
    assert 0 < len(docs) < 200
    assert stats.skipped["truncated_file"] == 1


def _zst(path, lines: list[bytes]):
    import zstandard

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(zstandard.ZstdCompressor().compress(b"".join(lines)))
    return path


def test_zst_shard_reads_like_its_gz_twin(tmp_path):
    records = [{**GOOD, "id": str(i), "text": f"document {i} é ✓ " * 30} for i in range(300)]
    gz = write_jsonl_gz(tmp_path / "gz" / "part.json.gz", records)
    zst = _zst(tmp_path / "zst" / "part.json.zst", [(json.dumps(r) + "\n").encode() for r in records])
    a, b = ReadStats(), ReadStats()
    assert [d.text for d in iter_documents([str(gz)], a)] == [d.text for d in iter_documents([str(zst)], b)]
    assert a.documents == b.documents == 300


def test_truncated_zst_keeps_what_was_read(tmp_path):
    records = [(json.dumps({**GOOD, "id": str(i), "text": f"document {i} " * 50}) + "\n").encode() for i in range(300)]
    path = _zst(tmp_path / "t.json.zst", records)
    path.write_bytes(path.read_bytes()[:-40])
    stats = ReadStats()
    docs = list(iter_documents([str(path)], stats))
    assert 0 < len(docs) < 300 and stats.skipped["truncated_file"] == 1


def test_plain_json_named_gz_is_named_not_counted_as_truncated(tmp_path):
    path = tmp_path / "plain.json.gz"
    path.write_text(json.dumps(GOOD) + "\n" + json.dumps(GOOD) + "\n")
    stats = ReadStats()
    assert list(iter_documents([str(path)], stats)) == []
    assert dict(stats.skipped) == {"unreadable_file": 1}
    assert "plain.json.gz: unreadable_file: named .gz but not gzip data" in stats.examples[0]
    with pytest.raises(BadDocumentError, match="plain.json.gz: unreadable file: named .gz but not gzip"):
        list(iter_documents([str(path)], strict=True))


def test_empty_files_and_blank_lines_are_counted(tmp_path):
    write_jsonl_gz(tmp_path / "a.json.gz", [])
    (tmp_path / "b.jsonl").write_text("")
    (tmp_path / "c.jsonl").write_text("\n  \n" + json.dumps(GOOD) + "\n\n")
    stats = ReadStats()
    docs = list(iter_documents([str(tmp_path / "*.json*")], stats))
    assert len(docs) == 1 and stats.blank_lines == 3
    assert [p.rsplit("/", 1)[-1] for p in stats.empty_files] == ["a.json.gz", "b.jsonl"]


@pytest.mark.parametrize(
    "line, reason",
    [
        (b"{not json\n", "bad json"),
        (b'{"id": "m"}\n', "missing text"),
        (b'{"text": ""}\n', "empty text"),
        (b'{"text": "\xff"}\n', "undecodable bytes"),
    ],
)
def test_strict_mode_names_file_and_line(tmp_path, line, reason):
    path = write_jsonl_gz(tmp_path / "s.json.gz", [GOOD, GOOD], [line])
    with pytest.raises(BadDocumentError, match=rf"s\.json\.gz:3: {reason}"):
        list(iter_documents([str(path)], strict=True))


def test_globs_are_sorted_and_order_is_fixed(tmp_path):
    for name in ("b", "a", "c"):
        write_jsonl_gz(tmp_path / f"{name}.json.gz", [{**GOOD, "id": name}, {**GOOD, "id": name + "2"}])
    docs = list(iter_documents([str(tmp_path / "*.json.gz")]))
    assert [d.id for d in docs] == ["a", "a2", "b", "b2", "c", "c2"]
    assert [d.id for d in iter_documents([str(tmp_path / "*.json.gz")], max_documents=3)] == ["a", "a2", "b"]


def test_plain_jsonl_and_default_source(tmp_path):
    (tmp_path / "books.jsonl").write_text(json.dumps({"text": "no source field"}) + "\n")
    (doc,) = iter_documents([str(tmp_path / "books.jsonl")])
    assert doc.source == "books" and doc.id.endswith("books.jsonl:1")


def test_no_match_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no documents match"):
        expand_paths([str(tmp_path / "missing-*.json.gz")])


def test_hf_dataset_path_streams_through_datasets(tmp_path, monkeypatch):
    # The hub is unreachable here: a local dataset folder exercises the same `datasets` code path.
    folder = tmp_path / "hfds"
    write_jsonl_gz(folder / "train.jsonl.gz", [GOOD, {**GOOD, "id": "z", "text": ""}])
    stats = ReadStats()
    docs = list(iter_documents([f"hf://datasets/{folder}@train"], stats))
    assert [d.text for d in docs] == ["hello world"]
    assert stats.skipped["empty_text"] == 1


def test_lines_the_fast_parser_refuses_read_as_the_standard_library_reads_them(tmp_path):
    # orjson parses every line first; what it refuses (NaN, a lone surrogate escape, a JSON null,
    # blank space) must be kept or skipped exactly as json.loads decides
    raw = [
        b'{"id": "nan", "text": "kept", "score": NaN}\n',
        b'{"id": "sur", "text": "a\\ud800b"}\n',
        b"null\n",
        b"   \n",
    ]
    stats = ReadStats()
    docs = list(iter_documents([str(write_jsonl_gz(tmp_path / "s.json.gz", [], raw))], stats))
    assert [d.id for d in docs] == ["nan", "sur"] and docs[1].text == "a\ud800b"
    assert dict(stats.skipped) == {"bad_json": 1} and stats.blank_lines == 1
    assert "expected a JSON object, got NoneType" in stats.to_dict()["skip_examples"][0]
