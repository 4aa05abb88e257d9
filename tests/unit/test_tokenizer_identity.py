"""Tokenizers are compared by what they do (pico.data.tokenizer.behaviour_hash), not by file bytes."""

import json
import random

import pytest
from tokenizers import Tokenizer, normalizers

from pico.data.tokenizer import PROBE, behaviour_hash, tokenizer_hash, train_bpe
from tests.helpers import document


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    rng = random.Random(0)
    return train_bpe([document(rng) for _ in range(200)], 300, 2, ["<|endoftext|>", "<|padding|>"])


def edited(tok: Tokenizer, edit) -> Tokenizer:
    spec = json.loads(tok.to_str())
    edit(spec)
    return Tokenizer.from_str(json.dumps(spec))


def test_a_transformers_resave_is_the_same_tokenizer(tok, tmp_path):
    """What pico-train's checkpoints hold: the file re-saved through transformers (a template
    post-processor added), another content hash, the same ids."""
    transformers = pytest.importorskip("transformers")
    (tmp_path / "a").mkdir()
    tok.save(str(tmp_path / "a" / "tokenizer.json"))
    fast = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "a" / "tokenizer.json"))
    fast.save_pretrained(tmp_path / "b")
    resaved = Tokenizer.from_file(str(tmp_path / "b" / "tokenizer.json"))
    assert tokenizer_hash(resaved) != tokenizer_hash(tok)
    assert behaviour_hash(resaved) == behaviour_hash(tok)


@pytest.mark.parametrize(
    "edit",
    [
        lambda s: s.update(normalizer={"type": "Sequence", "normalizers": []}),  # a normalizer that does nothing
        lambda s: s.update(
            post_processor={"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
        ),
    ],
    ids=["empty normalizer", "another post-processor"],
)
def test_what_changes_no_id_keeps_the_identity(tok, edit):
    other = edited(tok, edit)
    assert tokenizer_hash(other) != tokenizer_hash(tok)
    assert behaviour_hash(other) == behaviour_hash(tok)


@pytest.mark.parametrize(
    "change",
    [
        lambda t: t.__setattr__("normalizer", normalizers.Lowercase()),  # "The" and "the" collide
        lambda t: t.__setattr__("normalizer", normalizers.NFKC()),  # "ﬁ" -> "fi"
        lambda t: t.__setattr__("normalizer", normalizers.NFD()),  # "é" -> "e" + accent
        lambda t: t.add_special_tokens(["<|im_start|>"]),  # a new special token
    ],
    ids=["lowercase", "nfkc", "nfd", "added special token"],
)
def test_what_changes_ids_changes_the_identity(tok, change):
    other = Tokenizer.from_str(tok.to_str())
    change(other)
    assert behaviour_hash(other) != behaviour_hash(tok)


def test_merges_and_vocabulary_are_compared_whole(tok):
    dropped = edited(tok, lambda s: s["model"]["merges"].pop())  # the last merge: rare pairs split differently
    assert behaviour_hash(dropped) != behaviour_hash(tok)
    swapped = edited(tok, lambda s: s["model"]["merges"].__setitem__(slice(0, 2), s["model"]["merges"][1::-1]))
    assert behaviour_hash(swapped) != behaviour_hash(tok)  # merge ranks are order


def test_the_probe_holds_what_normalizers_change():
    for text in (
        "Caf\u00e9",
        "Cafe\u0301",
        "\ufb01",
        "\uff21",
        "STRASSE",
        "stra\u00dfe",
        "\u00a0",
        "\t",
        "\r\n",
        "<|endoftext|>",
    ):
        assert text in PROBE
