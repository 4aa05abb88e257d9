import copy
import json
import math

import pytest

from pico import checkpoint, evaluate, train
from pico.config import EarlyStopConfig, parse_params
from pico.errors import TrainingDiverged
from pico.monitor import LossWatch, eval_verdict


def rows(*losses):
    return [{"step": 10 * i, "loss": x} for i, x in enumerate(losses)]


def test_patience_counts_evaluations_without_improvement():
    cfg = EarlyStopConfig(enabled=True, patience=2, explosion_factor=None)
    assert eval_verdict(rows(5.0, 4.0, 4.1), cfg).stop_reason is None
    v = eval_verdict(rows(5.0, 4.0, 4.1, 4.05), cfg)
    assert "not improved" in v.stop_reason and "for 2 evaluations" in v.stop_reason
    assert (v.best_loss, v.best_step, v.is_best) == (4.0, 10, False)
    assert eval_verdict(rows(5.0, 4.0, 4.1, 3.9), cfg).is_best
    # min_delta: tiny improvements do not count
    cfg = EarlyStopConfig(enabled=True, patience=2, min_delta=0.5, explosion_factor=None)
    assert eval_verdict(rows(5.0, 4.9, 4.8), cfg).stop_reason is not None


def test_explosion_stops_at_once():
    cfg = EarlyStopConfig(enabled=True, patience=10, explosion_factor=1.5)
    v = eval_verdict(rows(5.0, 4.0, 6.5), cfg)
    assert "exceeds 1.5 x the best 4.0000 (step 10)" in v.stop_reason
    assert eval_verdict(rows(5.0, 4.0, 5.9), cfg).stop_reason is None


def test_disabled_never_stops_but_tracks_best():
    v = eval_verdict(rows(5.0, 4.0, 90.0, 95.0, 99.0), EarlyStopConfig(enabled=False))
    assert v.stop_reason is None and v.best_loss == 4.0


def test_loss_watch_nan_and_spike():
    watch = LossWatch(EarlyStopConfig(enabled=True, loss_spike_factor=2.0, spike_warmup_steps=2))
    assert watch.check(1, 10.0) is None
    assert watch.check(2, 30.0) is None  # within warmup
    for s in range(3, 10):
        assert watch.check(s, 5.0) is None
    assert "spiked" in watch.check(10, 40.0)
    assert "nan" in LossWatch(EarlyStopConfig()).check(1, math.nan)  # NaN is divergence even when disabled


def test_early_stop_keeps_best_and_evaluate_uses_it(params_dict, tmp_path):
    raw = copy.deepcopy(params_dict)
    raw["training"].update(max_steps=40, eval_every=2)
    raw["early_stop"] = {"enabled": True, "patience": 1, "min_delta": 10.0, "explosion_factor": None}
    params = parse_params(raw)
    from pico.data import tokenize as tokenize_stage
    from pico.data import tokenizer

    tokenizer.run(params)
    tokenize_stage.run(params, progress=False)
    summary = train.run(params, progress=False)
    assert summary.status == "early_stopped" and summary.step == 2
    assert "not improved by 10.0" in summary.reason
    assert summary.best_eval_step == 2  # the lowest loss, though it missed min_delta
    assert checkpoint.read_state(tmp_path / "checkpoints/best")["step"] == 2
    result = evaluate.run(params)
    assert result["checkpoint_kind"] == "best" and result["step"] == 2 and result["train_status"] == "early_stopped"
    # rerunning an early-stopped run does not train on
    again = train.run(params, progress=False)
    assert again.status == "early_stopped" and again.step == 2


def test_nan_is_diverged_with_status_file(prepared, tmp_path, monkeypatch):
    monkeypatch.setenv("PICO_FAULT_NAN_AT_STEP", "7")
    with pytest.raises(TrainingDiverged, match="training loss is nan at step 7"):
        train.run(prepared, progress=False)
    summary = json.loads((tmp_path / "metrics/train_summary.json").read_text())
    assert summary["status"] == "diverged" and summary["step"] == 6
    assert summary["last_good_checkpoint"] == "step_00000004"


def test_restart_from_a_checkpoint_with_lower_lr(params_dict, prepared, tmp_path, capsys):
    train.run(prepared, progress=False)
    raw = copy.deepcopy(params_dict)
    raw["optim"]["lr"] = 1.0e-3
    raw["training"]["restart_from"] = str(tmp_path / "checkpoints/step_00000008")
    summary = train.run(parse_params(raw), progress=False)
    out = capsys.readouterr().out
    assert "restarting from" in out and "it stays in the run store" in out
    assert summary.step == 12 and summary.status == "completed"
    state = checkpoint.read_state(tmp_path / "checkpoints/step_00000012")
    assert state["history"]["events"][0]["step"] == 8
    lrs = [r for r in state["history"]["train"] if r["step"] > 8]
    assert all(r["lr"] <= 1.0e-3 for r in lrs)


def test_a_restarted_run_stopped_before_its_first_step_saves_where_it_restarted(params_dict, prepared, tmp_path):
    """The restart point is another run's checkpoint, not this run's newest save: a stop before the
    first step writes this run's own (interim) checkpoint at the restart step, and says so."""
    import signal

    from pico.errors import TrainingInterrupted
    from pico.preempt import StopRequest

    train.run(prepared, progress=False)
    raw = copy.deepcopy(params_dict)
    raw["optim"]["lr"] = 1.0e-3
    raw["training"]["restart_from"] = str(tmp_path / "checkpoints/step_00000008")
    stop = StopRequest(30.0)
    stop.request(signal.SIGTERM)  # as if it came while the data loaded
    with pytest.raises(TrainingInterrupted, match=r"stopped at step 8 of 12 \(SIGTERM\): checkpoint \S+step_00000008"):
        train.run(parse_params(raw), progress=False, stop=stop)
    state = checkpoint.read_state(tmp_path / "checkpoints/step_00000008")
    assert state["interim"] and state["config"]["optim"]["lr"] == 1.0e-3  # this run's, at the restart step
