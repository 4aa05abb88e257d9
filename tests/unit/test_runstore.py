"""The run store (pico.runstore): runs train outside every DVC output, keyed by fingerprint; the
checkpoint folder DVC tracks is a published view that anything may reset without losing a step."""

import os
from pathlib import Path

from pico import checkpoint, runstore
from pico.config import parse_params
from tests.helpers import save_checkpoint as _save
from tests.helpers import tiny_params


def test_an_experiment_copy_belongs_to_the_repository_it_was_made_from(tmp_path):
    (tmp_path / "repo/.dvc/tmp/exps/tmpab12/checkpoints").mkdir(parents=True)
    assert runstore.repository_of(tmp_path / "repo/.dvc/tmp/exps/tmpab12/checkpoints") == tmp_path / "repo"
    assert runstore.repository_of(tmp_path / "repo/checkpoints") == tmp_path / "repo"  # the DVC project
    assert runstore.repository_of(tmp_path / "elsewhere/checkpoints") == tmp_path / "elsewhere"
    raw = tiny_params(tmp_path)
    assert runstore.store_root(parse_params(raw)) == tmp_path / ".pico/runs"
    raw["training"]["run_store"] = str(tmp_path / "shared")
    assert runstore.store_root(parse_params(raw)) == tmp_path / "shared"


def test_publish_links_the_run_and_adopt_keeps_what_only_the_view_holds(tmp_path):
    store, view = tmp_path / "store", tmp_path / "checkpoints"
    run = store / "run-a"
    for step in (4, 8):
        _save(run, step)
    runstore.publish(run, view)
    assert [p.name for p in checkpoint.list_checkpoints(view)] == ["step_00000004", "step_00000008"]
    weights = "model.safetensors"
    assert os.path.samefile(view / "step_00000008" / weights, run / "step_00000008" / weights)  # a link, not a copy

    # what DVC's checkout may leave: a checkpoint of another run the store lacks, an older step of
    # this run, and a copy of one the store has
    _save(view, 2, fingerprint="run-b")
    _save(view, 1)  # run-a's step 1: the store holds run-a further on (pruned): not adopted
    lines = runstore.adopt(view, store)
    assert lines == [f"kept {view / 'step_00000002'} in the run store: {store / 'run-b/step_00000002'}"]
    assert checkpoint.read_state(store / "run-b/step_00000002")["fingerprint"] == "run-b"
    runstore.publish(run, view)  # the view shows run-a again; nothing of run-b was lost
    assert [p.name for p in checkpoint.list_checkpoints(view)] == ["step_00000004", "step_00000008"]
    assert (store / "run-b/step_00000002/model.safetensors").is_file()


def test_a_damaged_checkpoint_in_the_view_is_quarantined_not_adopted(tmp_path):
    view = tmp_path / "checkpoints"
    path = _save(view, 3, fingerprint="run-c")
    (path / "trainer.pt").write_bytes(b"x")
    assert runstore.adopt(view, tmp_path / "store") == []
    assert (tmp_path / "checkpoints.quarantine/step_00000003/QUARANTINED.txt").is_file()


def test_a_fresh_start_sets_the_run_aside_once_per_request(tmp_path):
    run = tmp_path / "store/run-a"
    _save(run, 4)
    line = runstore.start_fresh(run, "flow-1")
    aside = Path(line.split("moved to ")[1].split(" ")[0])
    assert checkpoint.list_checkpoints(run) == [] and (aside / "step_00000004").is_dir()
    _save(run, 2)  # the fresh run trained, then its stage was retried: the same request continues it
    assert runstore.start_fresh(run, "flow-1") is None and checkpoint.list_checkpoints(run)
    assert runstore.start_fresh(run, "flow-2") is not None and checkpoint.list_checkpoints(run) == []


def test_pico_checkpoints_lists_the_store_and_removes_only_runs_not_shown(tmp_path):
    import pytest

    from pico import folders

    store, view = tmp_path / "store", tmp_path / "checkpoints"
    _save(store / "run-a", 4)
    _save(store / "run-b", 6, fingerprint="run-b")
    runstore.publish(store / "run-a", view)
    text = folders.describe_folders(view, store)
    assert f"{store}: 2 run(s) in the run store" in text
    assert "run-a" in text and f"(shown in {view})" in text and "run-b" in text
    with pytest.raises(ValueError, match="it is the run checkpoint_dir shows"):
        folders.remove_set_aside(view, "run-a", store)
    assert folders.remove_set_aside(view, "run-b", store) == store / "run-b" and not (store / "run-b").exists()


def test_captures_only_the_view_holds_are_kept_in_the_store_before_it_is_republished(tmp_path):
    store, view = tmp_path / "store", tmp_path / "checkpoints"
    _save(store / "run-a", 4)
    runstore.publish(store / "run-a", view)
    stray = view / "learning_dynamics/step_00000004/train_activations.pt"
    stray.parent.mkdir(parents=True)
    stray.write_bytes(b"captured by an older version")
    lines = runstore.adopt(view, store)
    assert lines == [
        f"kept 1 learning-dynamics file(s) of {view / 'learning_dynamics'} in the run store: "
        f"{store / 'run-a/learning_dynamics'}"
    ]
    runstore.publish(store / "run-a", view)
    assert (
        view / "learning_dynamics/step_00000004/train_activations.pt"
    ).read_bytes() == b"captured by an older version"
