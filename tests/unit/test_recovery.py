"""The flow's divergence branch as plain code (flows.recovery): no Prefect, no DVC. The stage runner
and the params writer are fakes that record what the flow asked of them."""

import logging
from types import SimpleNamespace

import pytest

from flows.recovery import PipelineFailed, restore_params, retry_unless_diverged, run_with_recovery
from pico.config import Params

STAGES = ["embedded_data", "tokenizer", "tokenize", "train", "evaluate", "report"]
LOG = logging.getLogger("test")


def diverged(checkpoint="step_00000004"):
    return SimpleNamespace(reason="training loss is nan at step 6", last_good_checkpoint=checkpoint, status="diverged")


class Fakes:
    """A stage runner that diverges ``times`` times, and a params writer that applies the changes."""

    def __init__(self, times: int, recovery: dict, checkpoint="step_00000004"):
        self.params = Params.model_validate({"recovery": recovery, "optim": {"lr": 0.004}})
        self.times, self.checkpoint, self.ran, self.written = times, checkpoint, [], []

    def run(self, stages):
        self.ran.append(list(stages))
        if self.times:
            self.times -= 1
            return diverged(self.checkpoint)
        return None

    def rewrite(self, changes):
        self.written.append(changes)
        raw = self.params.model_dump(mode="json")
        raw["optim"]["lr"] = changes["optim.lr"]
        raw["training"]["restart_from"] = changes["training.restart_from"]
        self.params = Params.model_validate(raw)
        return self.params


def test_no_divergence_runs_every_stage_once_and_changes_nothing():
    f = Fakes(0, {"enabled": True})
    ended = run_with_recovery(STAGES, f.run, f.params, "lr-test", f.rewrite, LOG)
    assert f.ran == [STAGES] and f.written == [] and ended.experiment == "lr-test" and ended.attempts == 0


def test_a_divergence_without_recovery_fails_with_the_reason():
    f = Fakes(1, {"enabled": False})
    with pytest.raises(PipelineFailed, match=r"training loss is nan at step 6 \(recovery is off\)"):
        run_with_recovery(STAGES, f.run, f.params, None, f.rewrite, LOG)
    assert f.written == []


def test_recovery_restarts_from_the_last_good_checkpoint_with_a_lower_lr_as_its_own_experiment():
    f = Fakes(2, {"enabled": True, "lr_factor": 0.5, "max_attempts": 2})
    ended = run_with_recovery(STAGES, f.run, f.params, "nan", f.rewrite, LOG)
    assert f.ran == [STAGES, STAGES[3:], STAGES[3:]]  # the data stages are not rerun
    assert [w["optim.lr"] for w in f.written] == [pytest.approx(0.002), pytest.approx(0.001)]
    assert all(w["training.restart_from"] == "checkpoints/step_00000004" for w in f.written)
    assert (
        ended.experiment == "nan-recovery-2" and ended.attempts == 2 and ended.params.optim.lr == pytest.approx(0.001)
    )


def test_recovery_gives_up_after_max_attempts():
    f = Fakes(3, {"enabled": True, "lr_factor": 0.5, "max_attempts": 2})
    with pytest.raises(PipelineFailed, match=r"\(2 recovery attempts used\)"):
        run_with_recovery(STAGES, f.run, f.params, None, f.rewrite, LOG)
    assert len(f.written) == 2


def test_a_divergence_before_the_first_checkpoint_cannot_be_recovered():
    f = Fakes(1, {"enabled": True}, checkpoint=None)
    with pytest.raises(PipelineFailed, match="before its first checkpoint"):
        run_with_recovery(STAGES, f.run, f.params, None, f.rewrite, LOG)


def test_an_unnamed_run_recovers_as_run_recovery_n():
    f = Fakes(1, {"enabled": True, "max_attempts": 1})
    assert run_with_recovery(STAGES, f.run, f.params, None, f.rewrite, LOG).experiment == "run-recovery-1"


def test_params_yaml_is_restored_unless_someone_edited_it(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_bytes(b"recovery wrote this")
    assert restore_params(path, b"what was asked", b"recovery wrote this", LOG)
    assert path.read_bytes() == b"what was asked"
    path.write_bytes(b"a person's edit")
    assert not restore_params(path, b"what was asked", b"recovery wrote this", LOG)
    assert path.read_bytes() == b"a person's edit"


def test_a_crash_is_retried_a_divergence_is_not():
    def condition(summary):
        return retry_unless_diverged(lambda: summary)(None, None, None)

    def unreadable():
        raise ValueError("not JSON")

    assert condition(None)  # killed before writing a summary: resume
    assert condition(SimpleNamespace(status="running"))
    assert not condition(SimpleNamespace(status="diverged"))
    assert retry_unless_diverged(unreadable)(None, None, None)
