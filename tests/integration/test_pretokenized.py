"""Training and evaluating on pico's pretokenized datasets: the same code, run on local parquet
files with the hub datasets' schema (the hub is unreachable here)."""

import copy

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pico import evaluate, train
from pico.config import parse_params
from pico.data import tokenize as tokenize_stage
from pico.data import tokenizer
from pico.data.eval_windows import EvalWindows
from pico.data.tokens_dir import TokensDir


def write_parquet(path, columns):
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)


@pytest.fixture
def pretok(tmp_path, params_dict):
    rng = np.random.default_rng(0)
    rows = rng.integers(0, 290, size=(120, 33))
    write_parquet(tmp_path / "ptd/train-0.parquet", {"input_ids": rows[:60].tolist(), "idx": list(range(60))})
    write_parquet(tmp_path / "ptd/train-1.parquet", {"input_ids": rows[60:].tolist(), "idx": list(range(60, 120))})
    write_parquet(
        tmp_path / "ptp/val.parquet",
        {
            "input_ids": [rng.integers(0, 290, size=n).tolist() for n in (33, 20, 33, 5)],
            "text": ["alpha text one", "alpha two", "beta: ünïcode", "b"],
            "source": ["alpha", "alpha", "beta", "beta"],
        },
    )
    raw = copy.deepcopy(params_dict)
    raw["data"].update(
        pretokenized_train=str(tmp_path / "ptd/*.parquet"),
        pretokenized_eval=str(tmp_path / "ptp/*.parquet"),
        pretokenized_max_rows=100,
    )
    raw["training"]["shuffle"] = False
    params = parse_params(raw)
    tokenizer.run(params)
    tokenize_stage.run(params, progress=False)
    return params, rows


def test_rows_stream_in_order_and_windows_keep_sources(pretok, tmp_path):
    params, rows = pretok
    packed, manifest = TokensDir(params.data.tokens_dir).open_rows()
    assert manifest["source"] == "pretokenized" and manifest["rows"] == 100
    assert np.array_equal(np.asarray(packed), rows[:100])  # shards in order, rows in order, max_rows kept
    ev = EvalWindows(params.data.tokens_dir)
    assert ev.sources == ["alpha", "beta"] and len(ev) == 4
    assert ev.table["n_bytes"].tolist() == [14, 9, len("beta: ünïcode".encode()), 1]


def test_train_and_evaluate_on_pretokenized_rows(pretok, tmp_path):
    params, _ = pretok
    summary = train.run(params, progress=False)
    assert summary.status == "completed" and summary.tokens == 12 * 8 * 32
    result = evaluate.run(params)
    assert set(result["sources"]) == {"alpha", "beta"} and result["overall"]["tokens"] == 32 + 19 + 32 + 4


def test_wrong_row_length_is_a_clear_error(tmp_path, params_dict):
    write_parquet(tmp_path / "bad/x.parquet", {"input_ids": [[1, 2, 3]]})
    raw = copy.deepcopy(params_dict)
    raw["data"]["pretokenized_train"] = str(tmp_path / "bad/*.parquet")
    params = parse_params(raw)
    tokenizer.run(params)
    with pytest.raises(ValueError, match="row 0 has 3 tokens; data.seq_len=32 needs rows of 33"):
        tokenize_stage.run(params, progress=False)
