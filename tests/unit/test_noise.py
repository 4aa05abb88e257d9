"""pico.noise: the one rule every comparison uses."""

from __future__ import annotations

import json
import random

from pico import noise


def test_a_large_effect_is_called_and_a_seed_sized_one_is_not():
    a = [5.00, 5.04]  # two seeds: they differ by 0.04
    assert noise.judge("loss", a, [4.50, 4.53]).verdict == noise.HELPS
    assert noise.judge("loss", a, [5.60, 5.62]).verdict == noise.HURTS
    assert noise.judge("loss", a, [5.01, 5.05]).verdict == noise.NOISE


def test_the_rule_calls_pure_seed_noise_an_effect_about_5_percent_of_the_time():
    rng, calls = random.Random(0), 0
    for _ in range(2000):
        a = [rng.gauss(5, 0.1) for _ in range(3)]
        b = [rng.gauss(5, 0.1) for _ in range(3)]
        calls += noise.judge("loss", a, b).verdict != noise.NOISE
    assert 0.02 < calls / 2000 < 0.08


def test_one_run_each_is_never_better_without_a_noise_estimate(tmp_path):
    j = noise.judge("token_perplexity", [100.0], [50.0])
    assert j.verdict == noise.UNKNOWN and "no recorded noise estimate" in j.basis
    noise.record(tmp_path / noise.NOISE_JSON, "HEAD", "2026-12-04", 2, {"token_perplexity": [100.0, 104.0, 98.0]})
    recorded = noise.recorded("token_perplexity", tmp_path)
    assert recorded.df == 2 and "pico reproduce --noise-seeds 2" in recorded.basis
    judged = noise.judge("token_perplexity", [100.0], [50.0], recorded)
    assert judged.verdict == noise.HELPS and judged.basis == recorded.basis
    assert noise.judge("token_perplexity", [100.0], [101.0], recorded).verdict == noise.NOISE


def test_perplexity_is_judged_as_a_log_and_the_table_states_the_rule(tmp_path):
    # the same relative spread at two levels: the same margin in relative terms
    low = noise.judge("token_perplexity", [10.0, 10.5], [20.0, 21.0])
    high = noise.judge("token_perplexity", [1000.0, 1050.0], [2000.0, 2100.0])
    assert abs(low.margin - high.margin) < 1e-12 and low.verdict == high.verdict == noise.HURTS
    lines = noise.judgement_lines([("token perplexity (macro)", low)], "A", "B")
    assert "**hurts**" in lines[2] and "t-test at 95 %" in lines[-1]
    assert json.loads(json.dumps(low.__dict__))  # plain values: the CSV and JSON writers take them
