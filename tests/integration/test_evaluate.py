import math

import numpy as np
import pytest
import torch

from pico.data.eval_windows import WINDOW_DTYPE
from pico.eval_metrics import aggregate, evaluate_model, summarize
from pico.evaluate import DOMAIN_COLUMNS, json_safe, write_domain_table


def table(lengths, sources, bytes_, subdomains=None):
    t = np.zeros(len(lengths), dtype=WINDOW_DTYPE)
    t["length"], t["source"], t["n_bytes"] = lengths, sources, bytes_
    t["subdomain"] = subdomains if subdomains is not None else sources
    return t


def test_hand_computed_values():
    # two windows: 3 predicted tokens with NLL sum 3.0, 1 predicted token with NLL 3.0
    nll, n_tok, n_bytes = np.array([3.0, 3.0]), np.array([3, 1]), np.array([10, 2])
    m = summarize(nll, n_tok, n_bytes)
    assert m["loss"] == pytest.approx(6.0 / 4)
    assert m["token_perplexity"] == pytest.approx(math.exp(1.5))
    assert m["bits_per_byte"] == pytest.approx(6.0 / (math.log(2) * 12))
    assert m["pico_mean_seq_perplexity"] == pytest.approx((math.exp(1.0) + math.exp(3.0)) / 2)
    assert m["seq_mean_over_token_ratio"] == pytest.approx(((math.exp(1.0) + math.exp(3.0)) / 2) / math.exp(1.5))
    assert (m["tokens"], m["bytes"], m["windows"]) == (4, 12, 2)


def test_per_sequence_mean_explodes_while_token_perplexity_stays_sane():
    # 999 ordinary windows of 2048 tokens at loss 3.0, one short garbage window at mean NLL 44 nats
    n = 1000
    n_tok = np.full(n, 2048)
    n_tok[-1] = 16
    nll = 3.0 * n_tok.astype(float)
    nll[-1] = 44.0 * 16
    m = summarize(nll, n_tok, n_tok * 4)
    assert m["token_perplexity"] == pytest.approx(math.exp((3.0 * 2048 * 999 + 44 * 16) / (2048 * 999 + 16)))
    assert m["token_perplexity"] < 21  # ~ e^3: the model is fine
    assert m["pico_mean_seq_perplexity"] > 1e16  # exp(44)/1000 ~ 1.3e16: the log's "explosion"
    assert m["seq_mean_over_token_ratio"] > 1e14
    assert m["max_window_loss"] == pytest.approx(44.0)


def test_aggregate_per_source_subdomain_and_macro():
    t = table([3, 5, 3], [0, 0, 1], [4, 8, 2], subdomains=[0, 1, 2])
    nll = np.array([2.0, 4.0, 1.0])
    out = aggregate(nll, t, ["a", "b"], ["a/x", "a/y", "b/z"])
    assert out["sources"]["a"]["loss"] == pytest.approx(6.0 / 6)
    assert out["sources"]["b"]["loss"] == pytest.approx(1.0 / 2)
    assert out["subdomains"]["a/y"]["tokens"] == 4
    assert out["macro"]["token_perplexity"] == pytest.approx((math.exp(1.0) + math.exp(0.5)) / 2)
    assert out["overall"]["loss"] == pytest.approx(7.0 / 8)
    # Paloma's domain macro, by hand: a/x 2 nats / 2 tokens, a/y 4 / 4, b/z 1 / 2; bytes 4, 8, 2
    dom = out["macro_domains"]
    assert dom["domains"] == 3
    assert dom["token_perplexity"] == pytest.approx((math.e + math.e + math.exp(0.5)) / 3)
    assert dom["bits_per_byte"] == pytest.approx((2 / 4 + 4 / 8 + 1 / 2) / math.log(2) / 3)
    assert dom["token_perplexity"] != pytest.approx(out["macro"]["token_perplexity"])  # a has two domains


def test_domain_table_is_stable_and_complete(tmp_path):
    t = table([3, 5, 3], [0, 0, 1], [4, 8, 2], subdomains=[0, 1, 2])
    out = aggregate(np.array([2.0, 4.0, 1.0]), t, ["a", "b,c"], ["a/y", "a/x", "b,c/z"])
    text = write_domain_table(tmp_path / "d.csv", out).read_text()
    lines = text.splitlines()
    assert lines[0] == ",".join(DOMAIN_COLUMNS)
    keys = [tuple(line.split(",")[:3]) for line in lines[1:]]
    # sorted by source, each source's row before its domains, domains sorted; both macros last
    assert keys[:3] == [("source", "a", ""), ("domain", "a", "x"), ("domain", "a", "y")]
    assert lines[4].startswith('source,"b,c",') and lines[5].startswith('domain,"b,c",z,1,2,2,0.5,')
    assert [k[0] for k in keys[-2:]] == ["macro_sources", "macro_domains"]
    assert "1.64872" in lines[5]  # e^0.5 to 6 significant digits
    # the same metrics give the same bytes
    assert write_domain_table(tmp_path / "e.csv", out).read_text() == text


def test_overflow_is_reported_not_crashed():
    m = summarize(np.array([800.0]), np.array([1]), np.array([1]))
    assert m["pico_mean_seq_perplexity"] == math.inf
    assert json_safe({"a": math.inf, "b": {"c": math.nan}}) == {"a": "inf", "b": {"c": "nan"}}


def test_model_nll_matches_direct_cross_entropy(prepared):
    from pico.data.eval_windows import EvalWindows
    from pico.train import build_model

    torch.manual_seed(0)
    model = build_model(prepared)
    ev = EvalWindows(prepared.data.tokens_dir)
    metrics = evaluate_model(model, ev, batch_size=7)
    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for i in range(len(ev)):
            w = torch.from_numpy(ev.window(i)).unsqueeze(0)
            logits = model(w[:, :-1])
            total += torch.nn.functional.cross_entropy(logits[0], w[0, 1:], reduction="sum").item()
            count += w.shape[1] - 1
    assert metrics["overall"]["loss"] == pytest.approx(total / count, rel=1e-6)
    assert metrics["overall"]["tokens"] == count
