"""training.mirror (pico.mirror): each checkpoint copied off the machine in the background, with a
manifest written last; pruning that touches only what the mirror wrote; a fresh machine resuming
from the newest verified copy, bit-identically; a failing mirror that never stops training."""

import copy
import json
import shutil
from pathlib import Path

from pico import checkpoint, train
from pico.config import parse_params
from pico.mirror import MANIFEST, Mirror, shown


def with_mirror(params_dict: dict, mirror: Path, root: Path | None = None, **training) -> dict:
    p = copy.deepcopy(params_dict)
    p["training"].update(mirror=str(mirror), **training)
    if root is not None:  # another machine: its own checkpoint folder, metrics and run store
        p["training"].update(
            checkpoint_dir=str(root / "checkpoints"), metrics_dir=str(root / "metrics"), run_store=str(root / "runs")
        )
    return p


def test_checkpoints_are_mirrored_with_manifests_and_pruning_spares_what_it_did_not_write(
    params_dict, prepared, tmp_path, capsys
):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "notes.txt").write_text("not the run's")
    first = train.run(parse_params(with_mirror(params_dict, mirror)), progress=False)  # 12 steps, keep 2
    run = mirror / first.fingerprint
    assert sorted(p.name for p in run.iterdir()) == ["metrics", "step_00000008", "step_00000012"]
    manifest = json.loads((run / "step_00000012" / MANIFEST).read_text())
    local = tmp_path / "checkpoints" / "step_00000012"
    assert manifest["fingerprint"] == first.fingerprint
    assert set(manifest["files"]) == {"model.safetensors", "trainer.pt", "state.json"}
    for name in manifest["files"]:
        assert (run / "step_00000012" / name).read_bytes() == (local / name).read_bytes()
    assert (run / "metrics" / "train.csv").read_text() == (tmp_path / "metrics" / "train.csv").read_text()

    # a file someone else put in a folder the mirror prunes stays; so does everything outside the run
    (run / "step_00000008" / "theirs.txt").write_text("keep me")
    p = with_mirror(params_dict, mirror)
    p["training"]["max_steps"] = 16
    train.run(parse_params(p), progress=False)
    assert (run / "step_00000008" / "theirs.txt").read_text() == "keep me"
    assert sorted(q.name for q in (run / "step_00000008").iterdir()) == ["theirs.txt"]
    assert (run / "step_00000016" / MANIFEST).is_file() and (mirror / "notes.txt").read_text() == "not the run's"


def test_a_fresh_machine_resumes_from_the_newest_finished_upload_bit_identically(
    params_dict, prepared, tmp_path, capsys
):
    mirror = tmp_path / "mirror"
    done = train.run(parse_params(with_mirror(params_dict, mirror, keep_checkpoints=10)), progress=False)
    run = mirror / done.fingerprint
    want = (tmp_path / "checkpoints" / "step_00000012" / checkpoint.WEIGHTS).read_bytes()
    want_csv = (tmp_path / "metrics" / "train.csv").read_text()
    # the machine died while step 12 was uploading: its files are there, its manifest is not
    (run / "step_00000012" / MANIFEST).unlink()
    (run / "step_00000008" / "trainer.pt").write_bytes(b"damaged in transit")  # and step 8 is damaged
    other = mirror / "0123456789abcdef" / "step_00000099"  # another run's folder
    other.mkdir(parents=True)
    (other / "state.json").write_text("{}")
    capsys.readouterr()

    fresh = tmp_path / "elsewhere"
    summary = train.run(parse_params(with_mirror(params_dict, mirror, fresh, keep_checkpoints=10)), progress=False)
    out = capsys.readouterr().out
    assert "mirror: " in out and "step_00000008 does not verify" in out
    assert f"mirror: downloaded step_00000004 from {mirror}/{done.fingerprint} (verified)" in out
    assert "resuming from" in out and "step_00000004" in out
    assert summary.status == "completed" and summary.fingerprint == done.fingerprint
    assert (fresh / "checkpoints" / "step_00000012" / checkpoint.WEIGHTS).read_bytes() == want
    assert (fresh / "metrics" / "train.csv").read_text() == want_csv
    assert (other / "state.json").read_text() == "{}" and sorted(p.name for p in other.iterdir()) == ["state.json"]
    # the new machine's uploads made the mirror whole again
    assert (run / "step_00000012" / MANIFEST).is_file()


def test_a_mirror_that_fails_never_stops_training(params_dict, prepared, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    summary = train.run(parse_params(with_mirror(params_dict, blocker / "mirror")), progress=False)
    out = capsys.readouterr().out
    assert summary.status == "completed" and summary.step == 12
    assert "mirror: uploading step_00000004" in out and "training goes on, the next checkpoint retries" in out
    assert "the newest checkpoint is NOT in" in out
    assert not list((tmp_path / ".pico" / "runs").glob("*/.mirror-*"))  # nothing staged is left


def test_credentials_never_reach_a_log():
    assert shown("s3://key:secret@bucket/prefix") == "s3://bucket/prefix"
    assert shown("/mnt/mirror") == "/mnt/mirror"
    m = Mirror("memory://u:pw@bucket/runs", "fp")
    assert "pw" not in m.where and m.where.endswith("/fp")


def test_a_slow_upload_makes_the_next_checkpoint_wait_and_say_so(params_dict, prepared, tmp_path, capsys, monkeypatch):
    import time

    real = Mirror._upload

    def slow(self, *args, **kwargs):
        time.sleep(1.5)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Mirror, "_upload", slow)
    summary = train.run(parse_params(with_mirror(params_dict, tmp_path / "mirror")), progress=False)
    out = capsys.readouterr().out
    assert summary.status == "completed"
    assert "mirror: waiting for step_00000004's upload" in out and "uploaded after" in out
    assert (tmp_path / "mirror" / summary.fingerprint / "step_00000012" / MANIFEST).is_file()
    shutil.rmtree(tmp_path / "mirror")
