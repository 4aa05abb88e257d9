"""Tokenizing shards on a Dask cluster through prefect-dask's DaskTaskRunner gives the same bytes."""

import copy

from pico.config import parse_params
from pico.data import tokenize as tokenize_stage
from pico.data import tokenizer


def test_dask_tokenization_is_byte_identical(prefect_server, params_dict, tmp_path):
    seq = parse_params(params_dict)
    tokenizer.run(seq)
    tokenize_stage.run(seq, progress=False)
    raw = copy.deepcopy(params_dict)
    raw["data"].update(tokenize_executor="dask", tokens_dir=str(tmp_path / "dask"))  # a temporary local cluster
    tokenize_stage.run(parse_params(raw), progress=False)
    for name in ("train.bin", "train_manifest.json"):
        assert (tmp_path / "dask" / name).read_bytes() == (tmp_path / "data/tokens" / name).read_bytes()
