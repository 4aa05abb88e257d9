"""The train stage's metric files: one typed summary, CSVs that read back as written."""

import pytest

from pico import train_metrics
from pico.train_metrics import TrainSummary


def summary(**kw):
    base = dict(
        status="completed",
        step=10,
        max_steps=10,
        tokens=640,
        epochs=0.5,
        effective_batch_rows=2,
        effective_batch_tokens=64,
        parameters=100,
        fingerprint="f",
        code_version="c",
    )
    return TrainSummary(**{**base, **kw})


def test_files_round_trip(tmp_path):
    history = {
        "train": [
            {
                "step": 2,
                "loss": 5.0,
                "loss_mean": 5.5,
                "lr": 1e-3,
                "grad_norm": 1.0,
                "grad_norm_max": 2.0,
                "tokens": 128,
            }
        ],
        "eval": [{"step": 0, "loss": 6.0, "token_perplexity": 403.4}],
        "perf": [],
        "events": [],
    }
    train_metrics.write(tmp_path, history, summary(processes=2, parallelism="ddp"))
    assert train_metrics.read_summary(tmp_path) == summary(processes=2, parallelism="ddp")
    rows = train_metrics.parse_csv((tmp_path / train_metrics.TRAIN_CSV).read_text())
    assert rows == history["train"]
    assert train_metrics.parse_csv((tmp_path / train_metrics.EVAL_CSV).read_text()) == history["eval"]


def test_no_summary_yet_is_none_and_a_damaged_one_is_named(tmp_path):
    assert train_metrics.read_summary(tmp_path) is None
    train_metrics.summary_path(tmp_path).write_text('{"status": "finished"}')
    with pytest.raises(ValueError, match=r"train_summary.json is not a train summary \(status: "):
        train_metrics.read_summary(tmp_path)


def test_status_is_one_of_four():
    with pytest.raises(ValueError):
        summary(status="done")


def test_background_writer_writes_the_newest_snapshot_and_reports_errors(tmp_path):
    from pico import train_metrics

    history = {"train": [], "eval": [], "perf": [], "events": []}
    writer = train_metrics.Writer(tmp_path / "m")
    for step in range(1, 30):
        history["train"].append(
            {
                "step": step,
                "loss": 1.0 / step,
                "loss_mean": 1.0,
                "lr": 0.1,
                "grad_norm": 1.0,
                "grad_norm_max": 1.0,
                "tokens": step,
            }
        )
        writer.submit(history)
    writer.close()
    rows = train_metrics.parse_csv((tmp_path / "m" / train_metrics.TRAIN_CSV).read_text())
    assert [r["step"] for r in rows] == list(range(1, 30))  # the last snapshot, whole

    (tmp_path / "blocked").write_text("a file where the metrics folder should be")
    broken = train_metrics.Writer(tmp_path / "blocked")
    broken.submit(history)
    with pytest.raises(OSError, match="could not write the metrics in .*blocked"):
        broken.flush()
