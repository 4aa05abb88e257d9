"""A run started from another run's checkpoint (``training.restart_from``, what ``pico fork`` sets):
the exact state, the lineage, and only the tail trained."""

from __future__ import annotations

import copy
import csv

import torch
from safetensors.torch import load_file

from pico import train
from pico.config import parse_params


def _rows(path):
    with open(path) as fh:
        return list(csv.DictReader(fh))


def _fork(params_dict, tmp_path, parent, step: int, **changes):
    raw = copy.deepcopy(params_dict)
    # relative to the repository, as `pico fork` writes it: found in the run store from any copy of it
    raw["training"].update(
        restart_from=f".pico/runs/{parent.fingerprint}/step_{step:08d}",
        checkpoint_dir=str(tmp_path / "fork_checkpoints"),  # the same run store as the parent
        metrics_dir=str(tmp_path / "fork/metrics"),
    )
    for key, value in changes.items():
        section, name = key.split("__")
        raw[section][name] = value
    return train.run(parse_params(raw), progress=False)


def test_a_fork_with_no_change_ends_with_the_parents_weights_and_log(params_dict, prepared, tmp_path):
    parent = train.run(prepared, progress=False)  # 12 steps; checkpoints 8 and 12 kept
    child = _fork(params_dict, tmp_path, parent, 8)
    assert child.fingerprint != parent.fingerprint and child.step == 12
    assert child.forked_from == {"fingerprint": parent.fingerprint, "step": 8, "changes": []}
    want = load_file(tmp_path / "checkpoints/step_00000012/model.safetensors")
    got = load_file(tmp_path / "fork_checkpoints/step_00000012/model.safetensors")
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    assert _rows(tmp_path / "fork/metrics/train.csv") == _rows(tmp_path / "metrics/train.csv")
    assert _rows(tmp_path / "fork/metrics/eval_history.csv") == _rows(tmp_path / "metrics/eval_history.csv")


def test_a_fork_with_another_lr_trains_only_the_tail_and_records_what_changed(params_dict, prepared, tmp_path, capsys):
    parent = train.run(prepared, progress=False)
    capsys.readouterr()
    child = _fork(params_dict, tmp_path, parent, 8, optim__lr=prepared.optim.lr / 10)
    out = capsys.readouterr().out
    assert f"restarting from {tmp_path}/.pico/runs/{parent.fingerprint}/step_00000008 (step 8)" in out
    assert child.forked_from["changes"] == [f"optim.lr {prepared.optim.lr} -> {prepared.optim.lr / 10}"]
    mine, theirs = _rows(tmp_path / "fork/metrics/train.csv"), _rows(tmp_path / "metrics/train.csv")
    assert mine[:4] == theirs[:4]  # steps 2..8: the parent's, not retrained
    assert [float(r["lr"]) for r in mine[4:]] != [float(r["lr"]) for r in theirs[4:]]
