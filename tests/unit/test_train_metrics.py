"""The train stage's metric files: one typed summary, CSVs that read back as written."""

import json

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


def test_perf_rows_carry_the_gpu_memory_peaks_and_a_resumed_run_keeps_older_rows(tmp_path):
    """On a GPU each interval's peak allocated/reserved MiB (rounded); off a GPU the columns are
    empty; rows written before the columns existed read back with them empty."""
    gpu = train_metrics.perf_row(4, 1000.0, 1.5, 100, None, 1, (812.3456, 1024.0))
    cpu = train_metrics.perf_row(8, 1000.0, 1.5, 100, 1.0e9, 1)
    assert (gpu["gpu_peak_allocated_mib"], gpu["gpu_peak_reserved_mib"]) == (812.3, 1024.0)
    assert (cpu["gpu_peak_allocated_mib"], cpu["gpu_peak_reserved_mib"]) == ("", "")
    (tmp_path / train_metrics.PERF_CSV).write_text(
        "step,tokens_per_s,elapsed_s,model_flops_per_s,mfu\n2,900.0,1.0,90000,\n"
    )
    history = {"train": [], "eval": [], "perf": [*train_metrics.read_perf(tmp_path, 2), gpu], "events": []}
    train_metrics.write(tmp_path, history, None)
    rows = (tmp_path / train_metrics.PERF_CSV).read_text().splitlines()
    assert rows[0].split(",") == list(train_metrics.PERF_COLUMNS)
    assert rows[1] == "2,900.0,1.0,90000,,," and rows[2] == "4,1000.0,1.5,100000,,812.3,1024.0"


def test_the_trainers_headline_keeps_the_evaluate_stages_number_of_the_same_step(tmp_path):
    """A rerun of an ended run rewrites headline.json; the evaluate stage's exact pico-train number
    (pico_train_ppl) is kept while it is of that step, and dropped once the run has moved on."""
    history = {"train": [], "eval": [], "perf": [], "events": []}
    path = tmp_path / train_metrics.HEADLINE_JSON
    path.write_text(json.dumps({"step": 10, "pico_train_ppl": 324.0}))
    train_metrics.write(tmp_path, history, summary(step=10))
    assert json.loads(path.read_text())["pico_train_ppl"] == 324.0
    train_metrics.write(tmp_path, history, summary(step=12, max_steps=12))
    assert json.loads(path.read_text())["pico_train_ppl"] is None
    path.write_text("{damaged")
    train_metrics.write(tmp_path, history, summary(step=12, max_steps=12))
    assert json.loads(path.read_text())["step"] == 12
