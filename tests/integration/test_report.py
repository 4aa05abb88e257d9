"""The report stage on its own: a run still in progress (no summary yet), the batch a
multi-process run really had, and `pico compare`."""

import json

from pico import report, train_metrics
from pico.config import parse_params
from pico.train_metrics import TrainSummary
from tests.helpers import tiny_params


def _params(tmp_path, **training):
    raw = tiny_params(tmp_path)
    raw["training"].update(training)
    raw["report"]["baseline"] = None
    return parse_params(raw)


def _history():
    train = [
        {
            "step": s,
            "loss": 6.0 - s / 10,
            "loss_mean": 6.0 - s / 10,
            "lr": 1e-3,
            "grad_norm": 1.0,
            "grad_norm_max": 1.0,
            "tokens": s * 256,
        }
        for s in (2, 4, 6)
    ]
    evals = [
        {
            "step": s,
            "loss": 6.0 - s / 20,
            "token_perplexity": 2.0 ** (6 - s / 20),
            "bits_per_byte": 2.0,
            "pico_mean_seq_perplexity": 100.0,
        }
        for s in (0, 6)
    ]
    return {"train": train, "eval": evals, "perf": [], "events": []}


def test_a_run_in_progress_reports_unknown_status_not_a_crash(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no git here: the report says it has no baseline
    params = _params(tmp_path)
    train_metrics.write(params.training.metrics_dir, _history())  # no summary: training goes on
    md = report.run(params, date="2026-11-28").read_text()
    assert "**Status**: unknown (no train summary yet)" in md
    assert "- no baseline to compare with" in md


def test_batch_line_counts_every_process(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params = _params(tmp_path, micro_batch_size=4, grad_accum_steps=2)
    summary = TrainSummary(
        status="completed",
        step=6,
        max_steps=12,
        tokens=6 * 16 * 32,
        epochs=0.1,
        effective_batch_rows=16,
        effective_batch_tokens=16 * 32,
        processes=2,
        parallelism="ddp",
        parameters=1000,
        fingerprint="f",
        code_version="c",
    )
    train_metrics.write(params.training.metrics_dir, _history(), summary)
    (tmp_path / "metrics" / "eval.json").write_text(json.dumps({"macro": {}, "sources": {}}))
    md = report.run(params, date="2026-11-28").read_text()
    assert "micro 4 × accumulation 2 × 2 processes = 16 rows × 32 tokens per step" in md
    assert "completed at step 6 of 12" in md


def test_a_run_continued_across_a_pipeline_upgrade_says_so_in_report_and_reproduction():
    from pico.report import code_lineage_line
    from pico.reproduce import replay_limit

    segments = [{"step": 0, "code_version": "aaaa"}, {"step": 30, "code_version": "bbbb"}]
    assert code_lineage_line(segments, 40) == (
        "trained under 2 versions of the training code (steps 1-30 under `aaaa`; steps 31-40 under `bbbb`): a "
        "pipeline upgrade continued the run (`training.on_code_change: new_run` would have started a new one)"
    )
    assert replay_limit(segments[:1], "HEAD") is None
    assert "cannot replay steps before 31 exactly" in replay_limit(segments, "HEAD")
