"""Checkpoints: a round trip restores everything a run needs; a crash leaves nothing that looks
valid; only the newest are kept; another run's checkpoints are moved aside, never deleted, and
nothing else in the folder is touched."""

import json

import torch

from pico import checkpoint, folders, runfolder
from pico.distributed import Dist
from tests.helpers import save_checkpoint as _save
from tests.helpers import tiny_model_and_optimizer as _model_opt


def test_round_trip_restores_weights_optimizer_schedule_and_rng(tmp_path):
    model, opt, sched = _model_opt()
    torch.manual_seed(123)
    path = checkpoint.save(tmp_path, 7, model, opt, sched, {"fingerprint": "f", "position": 56, "history": {}}, keep=2)
    expected_draw = torch.rand(3)
    assert path.name == "step_00000007"
    fresh, fresh_opt, _ = _model_opt(seed=1)
    state, sched_state = checkpoint.load(path, fresh, fresh_opt)
    assert state["step"] == 7 and state["position"] == 56
    assert torch.equal(torch.rand(3), expected_draw)  # the RNG continues where it was saved
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values()):
        assert torch.equal(a, b)
    assert fresh_opt.state_dict()["state"][0]["exp_avg"].equal(opt.state_dict()["state"][0]["exp_avg"])
    assert sched_state["last_epoch"] == 3


def test_keep_newest_and_best_is_never_pruned(tmp_path):
    for step in (1, 2, 3, 4):
        _save(tmp_path, step, keep=2)
    _save(tmp_path, 2, name=checkpoint.BEST, keep=2)
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path)] == ["step_00000003", "step_00000004"]
    assert (tmp_path / checkpoint.BEST / checkpoint.STATE).is_file()


def test_partial_saves_are_not_checkpoints_and_are_removed(tmp_path):
    _save(tmp_path, 1)
    (tmp_path / ".tmp-step_00000002-99").mkdir()
    (tmp_path / "step_00000003").mkdir()  # no state.json: not a complete checkpoint
    assert checkpoint.latest_checkpoint(tmp_path).name == "step_00000001"
    assert checkpoint.remove_partial(tmp_path) == [".tmp-step_00000002-99"]


def test_same_run_resumes_from_the_newest(tmp_path):
    _save(tmp_path, 4)
    _save(tmp_path, 8)
    model, opt, _ = _model_opt(seed=5)
    restored = runfolder.restore(tmp_path, "run-a", None, model, opt, Dist())
    assert restored.path.name == "step_00000008" and not restored.rebase and restored.state["position"] == 64


def test_another_run_is_moved_aside_and_nothing_else_is_touched(tmp_path, capsys):
    # a checkpoint folder that also holds the user's own files (checkpoint_dir: . in a project)
    root = tmp_path / "project"
    root.mkdir()
    (root / "params.yaml").write_text("mine\n")
    (root / ".git").mkdir()
    (root / "notes").mkdir()
    _save(root, 4)
    _save(root, 8)
    _save(root, 4, name=checkpoint.BEST)
    model, opt, _ = _model_opt()
    assert runfolder.restore(root, "run-b", None, model, opt, Dist()) is None
    moved = tmp_path / "project.superseded" / "run-a"
    assert sorted(p.name for p in moved.iterdir()) == ["best", "step_00000004", "step_00000008"]
    assert sorted(p.name for p in root.iterdir()) == [".git", "notes", "params.yaml"]
    assert (root / "params.yaml").read_text() == "mine\n"
    assert "belongs to another run" in capsys.readouterr().out
    # a second superseded run with the same fingerprint does not overwrite the first
    _save(root, 2)
    runfolder.restore(root, "run-c", None, model, opt, Dist())
    assert (tmp_path / "project.superseded" / "run-a-2" / "step_00000002").is_dir()


def test_restart_from_another_checkpoint_rebases(tmp_path):
    source = _save(tmp_path / "old", 6)
    model, opt, _ = _model_opt(seed=3)
    restored = runfolder.restore(tmp_path / "new", "run-z", str(source), model, opt, Dist())
    assert restored.rebase and restored.state["step"] == 6
    assert json.loads((source / checkpoint.STATE).read_text())["fingerprint"] == "run-a"


def test_a_restart_point_moved_aside_is_found_there(tmp_path, capsys):
    root = tmp_path / "checkpoints"
    _save(root, 4)
    model, opt, _ = _model_opt(seed=3)
    restored = runfolder.restore(root, "run-recovered", str(root / "step_00000004"), model, opt, Dist())
    assert restored.rebase and not (root / "step_00000004").exists()  # the old run was moved aside
    _save(root, 6, fingerprint="run-recovered")
    model, opt, _ = _model_opt(seed=3)  # the recovered experiment rerun on a fresh checkout
    restored = runfolder.restore(tmp_path / "fresh", "run-recovered", str(root / "step_00000004"), model, opt, Dist())
    assert restored.path == tmp_path / "checkpoints.superseded/run-a/step_00000004"
    assert "now shows another run; using" in capsys.readouterr().out
    # the run store: the folder named shows another run, the checkpoint is in the store
    store = tmp_path / "store"
    _save(store / "run-b", 8, fingerprint="run-b")
    restored = runfolder.restore(
        tmp_path / "fresh2", "run-c", str(root / "step_00000008"), model, opt, Dist(), search=[store]
    )
    assert restored.path == store / "run-b/step_00000008"


def test_checkpoints_command_lists_and_removes_only_set_aside_runs(tmp_path, capsys):
    import pytest

    root = tmp_path / "checkpoints"
    _save(root, 4)
    runfolder.restore(root, "run-b", None, *_model_opt()[:2], Dist())
    _save(root, 2, fingerprint="run-b")
    listing = folders.describe_folders(root)
    assert "step_00000002" in listing and "run-a" in listing and "step_00000004" in listing
    with pytest.raises(ValueError, match="no set-aside run named"):
        folders.remove_set_aside(root, "step_00000002")
    removed = folders.remove_set_aside(root, "run-a")
    assert not removed.exists() and (root / "step_00000002").is_dir()


def _flip(path, n=64):
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid : mid + n] = bytes(b ^ 0xFF for b in data[mid : mid + n])
    path.write_bytes(bytes(data))


def test_verify_names_flipped_truncated_missing_and_unreadable_files(tmp_path):
    import pytest

    path = _save(tmp_path, 4)
    assert checkpoint.verify(path)["step"] == 4
    state = checkpoint.read_state(path)
    assert set(state["files"]) == {checkpoint.WEIGHTS, checkpoint.TRAINER}
    _flip(path / checkpoint.WEIGHTS)
    with pytest.raises(checkpoint.DamagedCheckpoint, match=r"model.safetensors does not match the sha256"):
        checkpoint.verify(path)
    path = _save(tmp_path, 8)
    (path / checkpoint.TRAINER).write_bytes((path / checkpoint.TRAINER).read_bytes()[:100])
    with pytest.raises(checkpoint.DamagedCheckpoint, match=r"trainer.pt has 100 bytes"):
        checkpoint.verify(path)
    path = _save(tmp_path, 12)
    (path / checkpoint.STATE).write_text("{not json")
    with pytest.raises(checkpoint.DamagedCheckpoint, match=r"state.json is unreadable"):
        checkpoint.verify(path)


def test_restore_skips_damaged_checkpoints_into_quarantine_and_loads_nothing_from_them(tmp_path, capsys):
    root = tmp_path / "ckpt"
    _save(root, 4)
    _save(root, 8)
    (root / "step_00000008" / checkpoint.TRAINER).write_bytes(b"not a torch file")
    fresh, fresh_opt, _ = _model_opt(seed=1)
    restored = runfolder.restore(root, "run-a", None, fresh, fresh_opt, Dist())
    assert restored.path.name == "step_00000004"
    out = capsys.readouterr().out
    assert "skipped a damaged checkpoint" in out and "trainer.pt has" in out
    moved = tmp_path / "ckpt.quarantine" / "step_00000008"
    assert (moved / checkpoint.TRAINER).read_bytes() == b"not a torch file"  # kept, not deleted
    assert "trainer.pt" in (moved / "QUARANTINED.txt").read_text()


def test_a_file_that_does_not_load_leaves_the_model_untouched(tmp_path):
    import pytest

    path = _save(tmp_path, 4)
    state = checkpoint.read_state(path)
    del state["files"]  # as written before checksums: only loading can tell
    (path / checkpoint.STATE).write_text(json.dumps(state))
    (path / checkpoint.TRAINER).write_bytes(b"garbage")
    fresh, fresh_opt, _ = _model_opt(seed=1)
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    with pytest.raises(checkpoint.DamagedCheckpoint, match="trainer.pt does not load"):
        checkpoint.load(path, fresh, fresh_opt)
    assert all(torch.equal(before[k], v) for k, v in fresh.state_dict().items())


def test_a_full_disk_is_named_and_the_failed_checkpoint_removed_at_once(tmp_path, monkeypatch):
    """torch.save reports ENOSPC as RuntimeError("unexpected pos ..."); the save says what happened,
    which checkpoint the run resumes from, and leaves no temp folder holding the space."""
    import shutil

    import pytest

    _save(tmp_path, 4)
    before = {p.name: (p / checkpoint.WEIGHTS).read_bytes() for p in checkpoint.list_checkpoints(tmp_path)}

    def full_disk(*args, **kwargs):
        raise RuntimeError(
            "[enforce fail at inline_container.cc:858] . PytorchStreamWriter failed writing file "
            "data/0: file write failed\nunexpected pos 1472 vs 1360"
        )

    monkeypatch.setattr(checkpoint.torch, "save", full_disk)
    monkeypatch.setattr(
        checkpoint.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(100 << 30, 100 << 30, 1 << 20)
    )
    with pytest.raises(checkpoint.CheckpointWriteError) as err:
        _save(tmp_path, 8)
    msg = str(err.value)
    assert "\n" not in msg and "step_00000008" in msg and "no space left on the device (1 MiB free)" in msg
    assert "resumes from step_00000004" in msg
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_00000004"]  # no .tmp-* left, nothing else touched
    assert {p.name: (p / checkpoint.WEIGHTS).read_bytes() for p in checkpoint.list_checkpoints(tmp_path)} == before


def test_an_unwritable_folder_is_named_too(tmp_path, monkeypatch):
    import pytest

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(args[1]))

    monkeypatch.setattr(checkpoint, "save_file", denied)
    with pytest.raises(
        checkpoint.CheckpointWriteError,
        match=r"could not write checkpoint .*step_00000004: .*Permission denied.*starts from step 0",
    ):
        _save(tmp_path, 4)
    assert list(tmp_path.iterdir()) == []


def test_a_stray_empty_state_json_deletes_nothing(tmp_path):
    """The adversarial case that once deleted every valid checkpoint: a `step_99999999/state.json`
    holding `{}`. It is quarantined (kept), and the run resumes from its newest real checkpoint."""
    root = tmp_path / "ckpt"
    _save(root, 4)
    stray = root / "step_99999999"
    stray.mkdir()
    (stray / checkpoint.STATE).write_text("{}")
    fresh, fresh_opt, _ = _model_opt(seed=1)
    assert runfolder.restore(root, "run-a", None, fresh, fresh_opt, Dist()).path.name == "step_00000004"
    assert (tmp_path / "ckpt.quarantine/step_99999999" / checkpoint.STATE).read_text() == "{}"
    assert (root / "step_00000004" / checkpoint.WEIGHTS).is_file()
