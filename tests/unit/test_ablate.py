"""pico.ablate's ladder, without running it: the changes, the rungs, the names that make reruns free."""

from __future__ import annotations

from pico import ablate
from pico.config import parse_params, with_overrides


def _pair():
    a = parse_params({})
    b = with_overrides(
        a.model_dump(mode="json"),
        {
            "optim.lr": 1.0e-4,
            "model.dropout": 0.1,
            "model.attention_dropout": 0.1,
            "training.micro_batch_size": 8,
            "training.grad_accum_steps": 2,
            "report.run_name": "v2",
        },
    )[1]
    return a, b


def test_coupled_keys_are_one_change_and_the_report_is_none():
    a, b = _pair()
    names = [c.name for c in ablate.changes_between(a, b)]
    assert names == ["effective batch", "dropout", "lr"]


def test_the_ladder_and_leave_one_out():
    a, b = _pair()
    rungs = ablate.ladder(ablate.changes_between(a, b), leave_one_out=True)
    assert [r.label for r in rungs] == [
        "A", "A + effective batch", "A + dropout", "A + lr", "B",
        "B - effective batch", "B - dropout", "B - lr",
    ]  # fmt: skip
    assert rungs[-1].overrides == {k: v for c in ablate.changes_between(a, b)[:2] for k, v in c.values.items()}


def test_experiments_are_named_by_what_they_compute():
    a, b = _pair()
    assert ablate.experiment_name(a, 0) == ablate.experiment_name(a.model_copy(), 0)
    renamed = with_overrides(a.model_dump(mode="json"), {"report.run_name": "other"})[1]
    assert ablate.experiment_name(renamed, 0) == ablate.experiment_name(a, 0)  # the report is not the run
    assert ablate.experiment_name(b, 0) != ablate.experiment_name(a, 0)
