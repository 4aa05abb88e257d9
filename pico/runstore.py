"""Where a run's checkpoints live while it trains: a run store that no DVC command touches.

``training.checkpoint_dir`` is a DVC output, and ``dvc exp run`` (workspace, ``--queue`` and
``--temp`` alike) begins with a forced checkout that resets it to what ``dvc.lock`` recorded at the
last *completed* run, deleting what an interrupted run wrote since. So the trainer never keeps its
only copy there. It trains in ``<store>/<fingerprint>/`` — ``step_*``, ``best``,
``learning_dynamics``, in ``pico.checkpoint``'s format — and after every save *publishes* that folder
into ``checkpoint_dir`` as hard links (copies across filesystems). The DVC output is a view of the
run for the later stages; whatever DVC does to it, the next start finds the run in the store.

The store is shared by every workspace of a repository: ``<repository>/.pico/runs`` where the
repository is the DVC project holding the checkpoint folder, or — inside a DVC experiment's
temporary copy, ``<repository>/.dvc/tmp/exps/tmp…/`` (queued and ``--temp`` runs) — the project that
copy belongs to. So a killed queued experiment, re-queued, continues where it stopped, and a run
that changed fingerprint (other params) and changed back finds its old steps again. ``training.
run_store`` names another folder (one every workspace can reach). Keyed by fingerprint, runs never
overwrite each other, and nothing is moved aside.

Before a run starts, ``adopt`` moves into the store any checkpoint in ``checkpoint_dir`` that the
store lacks (written by an older version of this pipeline, pulled with ``dvc pull``, imported with
``pico import-pico``), so ``publish`` may then replace the folder's contents: every folder it
removes is a copy of one in the store. Nothing the trainer wrote is ever deleted except by the
``keep_checkpoints`` pruning inside the store.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from pico import checkpoint, runfolder
from pico.config import Params, dvc_root
from pico.fsutil import free_name, fsync_path, link_or_copy, replace_dir

STORE = Path(".pico") / "runs"
EXPERIMENT_COPY = (".dvc", "tmp", "exps")  # where DVC runs queued and --temp experiments


def repository_of(folder: Path) -> Path:
    """The repository whose runs ``folder`` belongs to: the project a DVC experiment copy was made
    from, else the DVC project holding it, else the folder above it."""
    folder = folder.resolve()
    parts = folder.parts
    for i in range(len(parts) - len(EXPERIMENT_COPY)):
        if parts[i : i + len(EXPERIMENT_COPY)] == EXPERIMENT_COPY:
            return Path(*parts[:i])
    return dvc_root(folder) or folder.parent


def store_root(params: Params) -> Path:
    if params.training.run_store:
        return Path(params.training.run_store).expanduser().resolve()
    return repository_of(Path(params.training.checkpoint_dir)) / STORE


def run_dir(params: Params, fingerprint: str) -> Path:
    return store_root(params) / fingerprint


def _managed(folder: Path) -> list[Path]:
    """The entries of a checkpoint folder that ``pico.checkpoint`` owns, in name order."""
    if not folder.is_dir():
        return []
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_dir()
        and (checkpoint.STEP_DIR.match(p.name) or p.name in (checkpoint.BEST, checkpoint.LEARNING_DYNAMICS))
    )


def _same_checkpoint(a: Path, b: Path) -> bool:
    sa, sb = a / checkpoint.STATE, b / checkpoint.STATE
    return sa.is_file() and sb.is_file() and sa.read_bytes() == sb.read_bytes()


def adopt(out_dir: Path, store: Path) -> list[str]:
    """Move each checkpoint of ``out_dir`` that the store lacks into ``<store>/<its fingerprint>/``
    (a damaged one is quarantined, as ``restore`` would), and captures the store lacks into the run
    ``out_dir`` showed; returns what it moved, as lines to print."""
    moved = [
        f"removed an incomplete checkpoint left by a crash: {out_dir / name}"
        for name in checkpoint.remove_partial(out_dir)
    ]
    shown = shown_run(out_dir)
    for path in _managed(out_dir):
        if path.name == checkpoint.LEARNING_DYNAMICS:
            continue  # below, once the checkpoints are placed
        home = _home(path, store)
        if home is not None and _same_checkpoint(path, home / path.name):
            continue  # a copy (what publish put there): nothing to hash, nothing to move
        try:
            state = checkpoint.verify(path)
        except checkpoint.DamagedCheckpoint as err:
            runfolder.quarantine(out_dir, path, str(err))
            continue
        home = store / str(state["fingerprint"])
        newest = checkpoint.latest_checkpoint(home)
        if newest and checkpoint.read_state(newest)["step"] > state["step"]:
            continue  # an older step of a run the store holds further on (its pruning dropped it)
        home.mkdir(parents=True, exist_ok=True)
        dest = free_name(home / path.name)  # same name, other content (a restarted run): keep both
        _move(path, dest)
        moved.append(f"kept {path} in the run store: {dest}")
    captures = out_dir / checkpoint.LEARNING_DYNAMICS
    if captures.is_dir() and shown:
        kept = _merge_files(captures, store / shown[0] / checkpoint.LEARNING_DYNAMICS)
        if kept:
            moved.append(
                f"kept {kept} learning-dynamics file(s) of {captures} in the run store: "
                f"{store / shown[0] / checkpoint.LEARNING_DYNAMICS}"
            )
    return moved


def _home(path: Path, store: Path) -> Path | None:
    """The store folder of the run a checkpoint names in its state.json, or None if it names none."""
    try:
        return store / str(checkpoint.read_state(path)["fingerprint"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _merge_files(src: Path, dest: Path) -> int:
    """Move the files under ``src`` that ``dest`` lacks (same relative path) into it; how many."""
    n = 0
    for f in sorted(p for p in src.rglob("*") if p.is_file()):
        target = dest / f.relative_to(src)
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.replace(f, target)
            except OSError:  # another filesystem
                shutil.copy2(f, target)
            n += 1
    return n


FRESH_ENV = "PICO_FRESH_RUN"  # set by a flow asked for a fresh start: a token naming that request
FRESH_MARK = "FRESH_RUN"


def start_fresh(run: Path, token: str) -> str | None:
    """A fresh start of the run, once per request ``token`` (retries of the same request continue):
    its checkpoints are moved aside, never deleted; returns the line saying where, or None."""
    mark = run / FRESH_MARK
    if mark.is_file() and mark.read_text().strip() == token:
        return None
    dest = runfolder.move_aside(run, f"{run.name}-fresh") if _managed(run) else None
    run.mkdir(parents=True, exist_ok=True)
    mark.write_text(token + "\n")
    return (
        (f"fresh start requested: this run's checkpoints were moved to {dest} (`mv {dest}/* {run}/` brings them back)")
        if dest
        else None
    )


def shown_run(out_dir: Path) -> tuple[str, int] | None:
    """(fingerprint, step) of the newest checkpoint ``out_dir`` shows, or None."""
    newest = checkpoint.latest_checkpoint(out_dir)
    try:
        state = checkpoint.read_state(newest) if newest else None
    except (OSError, ValueError):
        return None
    return (str(state.get("fingerprint")), int(state.get("step", 0))) if isinstance(state, dict) else None


def _move(src: Path, dest: Path) -> None:
    try:
        os.replace(src, dest)
    except OSError:  # another filesystem: copy whole, then remove the source
        shutil.copytree(src, dest.with_name(f".tmp-{dest.name}"), copy_function=shutil.copy2)
        os.replace(dest.with_name(f".tmp-{dest.name}"), dest)
        shutil.rmtree(src)
    fsync_path(dest.parent)


def link_tree(src: Path, dest: Path) -> None:
    """``dest`` as a tree of hard links to ``src``'s files (copies where links cannot be made)."""
    shutil.copytree(src, dest, copy_function=link_or_copy)


def _published(src: Path, dest: Path) -> bool:
    """Whether ``dest`` already shows ``src`` (same files, same inodes or same bytes of state.json)."""
    if not dest.is_dir():
        return False
    if src.name == checkpoint.LEARNING_DYNAMICS:
        files = lambda root: {p.relative_to(root) for p in root.rglob("*") if p.is_file()}  # noqa: E731
        return files(src) == files(dest)
    return _same_checkpoint(src, dest)


def publish(run: Path, out_dir: Path) -> None:
    """Make ``out_dir`` show the run's checkpoints, each replaced whole (written beside, renamed in);
    entries of ``out_dir`` the run no longer has are removed: ``adopt`` put every one in the store."""
    out_dir.mkdir(parents=True, exist_ok=True)
    wanted = {p.name: p for p in _managed(run)}
    for name, src in wanted.items():
        dest = out_dir / name
        if _published(src, dest):
            continue
        tmp = out_dir / f".tmp-publish-{name}"
        if tmp.exists():
            shutil.rmtree(tmp)
        link_tree(src, tmp)
        replace_dir(tmp, dest)
    for stale in _managed(out_dir):
        if stale.name not in wanted:
            shutil.rmtree(stale)
    fsync_path(out_dir)
