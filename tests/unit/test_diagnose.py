"""Planted metric histories with exact expected verdicts, and a golden training log."""

import copy
import math
from pathlib import Path

from pico.config import parse_params
from pico.diagnose import diagnose
from pico.report import render
from pico.runs import RunRecord, describe_changes
from pico.train_metrics import TrainSummary
from tests.helpers import tiny_params

GOLDEN = Path(__file__).parent / "golden"


def params(**sections):
    raw = tiny_params(Path("/run"))
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    return parse_params(raw)


def train_rows(losses, every=50, grad=1.0):
    return [
        {
            "step": (i + 1) * every,
            "loss": x,
            "loss_mean": x,
            "lr": 1e-4,
            "grad_norm": grad,
            "grad_norm_max": grad,
            "tokens": (i + 1) * every * 1000,
        }
        for i, x in enumerate(losses)
    ]


def eval_rows(losses, every=200, seq_means=None):
    rows = []
    for i, x in enumerate(losses):
        seq = seq_means[i] if seq_means else math.exp(x) * 1.05
        rows.append(
            {
                "step": i * every,
                "loss": x,
                "token_perplexity": math.exp(x),
                "bits_per_byte": x / math.log(2) / 4,
                "pico_mean_seq_perplexity": seq,
                "token_perplexity/web": math.exp(x),
                "bits_per_byte/web": x / math.log(2) / 4,
            }
        )
    return rows


def final(loss, seq_mean=None, top_share=0.2):
    ppl = math.exp(loss)
    seq = seq_mean or ppl * 1.05
    m = {
        "loss": loss,
        "token_perplexity": ppl,
        "bits_per_byte": loss / math.log(2) / 4,
        "pico_mean_seq_perplexity": seq,
        "seq_mean_over_token_ratio": seq / ppl,
        "windows": 100,
        "tokens": 204800,
        "bytes": 819200,
    }
    return {
        "step": 1000,
        "checkpoint_kind": "latest",
        "macro": m,
        "sources": {"web": m},
        "per_sequence_dominance": {
            "top_windows": [
                {
                    "window": 17,
                    "doc": 9,
                    "source": "web",
                    "subdomain": "web/a",
                    "loss": 71.0,
                    "tokens": 12,
                    "perplexity": seq * 100 * top_share,
                    "share": top_share,
                }
            ],
            "top_share": top_share,
            "source_share": {"web": 1.0},
        },
    }


def summary(**fields):
    """A train summary with plausible values for what a test does not set."""
    base = {
        "step": 1000,
        "max_steps": 1000,
        "tokens": 1000,
        "epochs": 0.5,
        "effective_batch_rows": 8,
        "effective_batch_tokens": 1024,
        "parameters": 1000,
        "fingerprint": "f",
        "code_version": "c",
    }
    return TrainSummary(**{**base, **fields})


def linspace(a, b, n):
    return [a + (b - a) * i / (n - 1) for i in range(n)]


def test_healthy():
    d = diagnose(
        train_rows(linspace(10.0, 4.0, 20)),
        eval_rows(linspace(9.8, 4.3, 6)),
        summary(status="completed", epochs=0.4),
        final(4.3),
        params(),
    )
    assert d.verdict == "healthy" and d.pathology is None and not d.spikes
    assert any("train longer" in r for r in d.recommendations)


def test_overfitting():
    d = diagnose(
        train_rows(linspace(8.0, 2.0, 20)),
        eval_rows([7.0, 5.0, 4.0, 4.3, 4.7, 5.2]),
        summary(status="completed", epochs=3.2),
        final(5.2),
        params(),
    )
    assert d.verdict == "overfitting"
    assert "rose from its best 4 (step 400) to 5.2 (step 1000) over 3 evaluations" in d.evidence[0]
    assert "3.20 epochs over the training rows by then (repeated data)" in d.evidence[2]
    assert any("stop early" in r and "step 400" in r for r in d.recommendations)
    assert any("more data" in r for r in d.recommendations)


def test_divergence_from_status_and_from_loss():
    d = diagnose(
        train_rows(linspace(8.0, 5.0, 10)),
        eval_rows([7.0, 6.0]),
        summary(status="diverged", reason="training loss is nan at step 512", last_good_checkpoint="step_00000500"),
        final(6.0),
        params(),
    )
    assert d.verdict == "divergence" and "nan at step 512" in d.evidence[0]
    assert any("lower the learning rate" in r and "step_00000500" in r for r in d.recommendations)
    d = diagnose(
        train_rows(linspace(8.0, 3.0, 10) + [6.0, 7.5, 9.0]),
        eval_rows([7.0, 5.0, 6.0]),
        summary(status="completed"),
        final(6.0),
        params(),
    )
    assert d.verdict == "divergence" and "rose from its minimum 3" in d.evidence[0]
    assert d.spikes  # the climb shows as spikes too


def test_plateau():
    d = diagnose(
        train_rows(linspace(8.0, 4.0, 12) + [4.0, 3.99, 4.01, 3.99, 3.98] + [3.98] * 3),
        eval_rows([7.0, 4.5, 4.2, 4.2, 4.19, 4.19]),
        summary(status="completed"),
        final(4.19),
        params(),
    )
    assert d.verdict == "plateau"


def test_a_flat_tail_under_a_decayed_lr_is_the_schedule_not_a_plateau():
    """The scaled v1 run of the training log: linear decay to zero, the loss flattens, eval still
    falls a little — the schedule's doing, not a plateau of the model (a constant lr would be one)."""
    losses = linspace(8.0, 4.0, 12) + [4.0, 3.99, 4.01, 3.99, 3.98] + [3.98] * 3
    decayed = train_rows(losses)
    for i, row in enumerate(decayed):
        row["lr"] = 1e-4 * (1 - i / len(decayed))  # linear to zero: ~20 % of the peak over the last quarter
    evals = eval_rows([7.0, 4.5, 4.2, 4.2, 4.19, 4.19])
    d = diagnose(decayed, evals, summary(status="completed"), final(4.19), params())
    assert d.verdict == "healthy"
    assert any("a schedule effect, not a plateau of the model" in e and "% of its peak" in e for e in d.evidence)
    assert diagnose(train_rows(losses), evals, summary(status="completed"), final(4.19), params()).verdict == "plateau"


def test_spikes_and_gradient_explosions_are_counted():
    rows = train_rows(linspace(8.0, 4.0, 20))
    rows[12]["loss"] = 12.0
    rows[12]["grad_norm_max"] = 50.0
    d = diagnose(rows, eval_rows(linspace(7.0, 4.2, 6)), summary(status="completed"), final(4.2), params())
    assert d.verdict == "healthy"
    assert d.spikes == [650] and d.grad_explosions == [650]


def test_the_training_logs_pattern_is_metric_pathology_not_overfitting():
    # train loss 10.98 -> 6.58; pico's per-sequence mean 2.55e19 -> 4.98e30; token-level perplexity sane
    train = train_rows(linspace(10.98, 6.58, 40))
    evals = eval_rows(linspace(7.4, 6.7, 5), seq_means=[2.55e19, 3.1e22, 8.8e25, 6.2e28, 4.98e30])
    d = diagnose(train, evals, summary(status="completed", epochs=0.02), final(6.7, 4.98e30, 0.997), params())
    assert d.verdict == "healthy"  # token-level eval loss fell: no overfitting
    assert d.pathology is not None
    assert "4.98e+30 vs token-level 812.4" in d.pathology[0]
    assert "window 17 (source web, document 9, 12 tokens, mean loss 71 nats) alone makes 99.7 %" in d.pathology[2]
    assert any("judge the model by token-level perplexity" in r for r in d.recommendations)


V1 = {
    "optim": {"lr": 3.0e-4, "warmup_steps": 2500, "weight_decay": 0.0, "max_grad_norm": None},
    "model": {"dropout": 0.0, "attention_dropout": 0.0},
    "training": {
        "micro_batch_size": 1,
        "grad_accum_steps": 4,
        "log_every": 100,
        "eval_every": 1000,
        "max_steps": 20000,
    },
}
V2 = {
    "optim": {"lr": 1.0e-4, "warmup_steps": 5000, "weight_decay": 0.01, "max_grad_norm": 1.0},
    "model": {"dropout": 0.1, "attention_dropout": 0.1},
    "training": {"micro_batch_size": 8, "grad_accum_steps": 2, "log_every": 50, "eval_every": 1000, "max_steps": 20000},
}


def test_what_we_did_sentences():
    v1 = params(**copy.deepcopy(V1)).model_dump(mode="json")
    lines = describe_changes(params(**copy.deepcopy(V2)), v1)
    assert "learning rate 0.0003 → 0.0001 (−67 %) (`optim.lr`)" in lines
    assert "effective batch 4 → 16 rows per step (4×)" in lines
    assert "dropout 0 → 0.1 (from zero) (`model.dropout`)" in lines
    assert "gradient clipping (max norm) off → 1 (`optim.max_grad_norm`)" in lines
    assert "warmup steps 2500 → 5000 (2×) (`optim.warmup_steps`)" in lines


def test_golden_training_log():
    p = params(**copy.deepcopy(V2))
    train = train_rows(linspace(10.98, 6.58, 40))
    evals = eval_rows(linspace(7.4, 6.7, 5), seq_means=[2.55e19, 3.1e22, 8.8e25, 6.2e28, 4.98e30])
    summ = summary(
        status="completed",
        step=2000,
        fingerprint="0123456789abcdef",
        code_version="fedcba9876543210",
        parameters=11282784,
        tokens=2048000,
        epochs=0.02,
        final_loss_mean=6.58,
        effective_batch_rows=16,
    )
    run = RunRecord("pico-decoder-tiny v2 (planted)", p, train, evals, [], summ, final(6.7, 4.98e30, 0.997))
    changes = describe_changes(p, params(**copy.deepcopy(V1)).model_dump(mode="json"))
    text = render(run, changes, "v1", None, ["loss.png"])
    golden = GOLDEN / "training_log_v2.md"
    assert text == golden.read_text(), f"report changed; if intended, regenerate {golden}"


def _with_seen(evals, seen, epochs):
    return [{**e, "seen_loss": x, "epochs": ep} for e, x, ep in zip(evals, seen, epochs)]


def test_memorisation_with_seen_rows_is_overfitting():
    """Held-out loss rises while the eval-mode loss of already-seen rows keeps falling: memorising."""
    evals = _with_seen(
        eval_rows([7.0, 5.0, 4.0, 4.3, 4.7, 5.2]), [7.0, 4.9, 3.8, 3.0, 2.2, 1.5], [0.0, 0.8, 1.6, 2.4, 3.2, 4.0]
    )
    d = diagnose(
        train_rows(linspace(8.0, 2.0, 20)), evals, summary(status="completed", epochs=4.0), final(5.2), params()
    )
    assert d.verdict == "overfitting"
    assert "while the loss on already-seen training rows (eval mode, no dropout) fell 3.8 → 1.5" in d.evidence[0]
    assert "4.00 epochs over the training rows by then (repeated data)" in d.evidence[-1]


def test_a_dropout_only_gap_is_not_overfitting():
    """Training loss (dropout on) falls below a held-out loss that drifts up a little, but the same
    model in eval mode scores seen rows no better than held-out ones: the gap is dropout, not memory.
    Without the seen rows the old rule (train falling, gap growing) called this overfitting."""
    held_out = [7.0, 5.0, 4.0, 4.1, 4.15, 4.2]
    train = train_rows(linspace(8.0, 3.0, 20))
    without = diagnose(train, eval_rows(held_out), summary(status="completed", epochs=0.5), final(4.2), params())
    assert without.verdict == "overfitting"  # confounded
    seen = [7.0, 5.0, 4.0, 4.1, 4.16, 4.2]
    d = diagnose(
        train,
        _with_seen(eval_rows(held_out), seen, [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]),
        summary(status="completed", epochs=0.5),
        final(4.2),
        params(),
    )
    assert d.verdict != "overfitting"
