"""``pico checkpoints``: what a project holds on disk for its runs — the run shown in
``checkpoint_dir``, every run in the run store (pico.runstore), the runs set aside and the damaged
checkpoints quarantined — and removing one of those on request (the only deletion a user asks
for). CLI-only: no stage imports it."""

from __future__ import annotations

import shutil
from pathlib import Path

from pico.checkpoint import BEST, LEARNING_DYNAMICS, STATE, STEP_DIR, list_checkpoints, read_state
from pico.runfolder import superseded_dir


def _folder_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _set_aside_bases(root: Path, store: Path | None) -> list[tuple[str, Path]]:
    bases = [
        ("set aside (another run, or a plan shortened below its step)", superseded_dir(root, None).parent),
        ("quarantined (damaged)", root.resolve().with_name(f"{root.resolve().name}.quarantine")),
    ]
    if store is not None and store.is_dir():
        bases += [
            (f"set aside in the run store ({p.name})", p)
            for p in sorted(store.iterdir())
            if p.is_dir() and p.name.endswith((".superseded", ".quarantine"))
        ]
    return bases


def describe_folders(root: str | Path, store: str | Path | None = None) -> str:
    """This run's checkpoints, the runs in the store, the runs moved aside and the quarantined ones."""
    root, store = Path(root), Path(store) if store else None
    lines = [f"{root}: {len(list_checkpoints(root))} checkpoint(s) of the current run"]
    for p in [*list_checkpoints(root), *([root / BEST] if (root / BEST / STATE).is_file() else [])]:
        lines.append(f"  {p.name}  step {read_state(p).get('step')}  {_folder_size(p) / 2**20:,.1f} MiB")
    ld = root / LEARNING_DYNAMICS
    if ld.is_dir():
        steps = sorted(int(m.group(1)) for p in ld.iterdir() if (m := STEP_DIR.match(p.name)))
        lines.append(
            f"  {LEARNING_DYNAMICS}  {len(steps)} capture(s) at steps {', '.join(map(str, steps)) or '-'}  "
            f"{_folder_size(ld) / 2**20:,.1f} MiB (`pico export-analysis OUT` for pico-analyze)"
        )
    if store is not None:
        shown = list_checkpoints(root)
        current = read_state(shown[-1]).get("fingerprint") if shown else None
        runs = sorted(p for p in store.iterdir() if p.is_dir() and "." not in p.name) if store.is_dir() else []
        lines.append(f"{store}: {len(runs)} run(s) in the run store")
        for run in runs:
            steps = ", ".join(p.name for p in list_checkpoints(run)) or "-"
            mark = "  (shown in " + str(root) + ")" if run.name == current else ""
            lines.append(f"  {run.name}  {_folder_size(run) / 2**20:,.1f} MiB  {steps}{mark}")
    for kind, base in _set_aside_bases(root, store):
        runs = sorted(p for p in base.iterdir() if p.is_dir()) if base.is_dir() else []
        lines.append(f"{base}: {len(runs)} {kind}")
        for run in runs:
            steps = ", ".join(p.name for p in list_checkpoints(run)) or "-"
            lines.append(f"  {run.name}  {_folder_size(run) / 2**20:,.1f} MiB  {steps}")
    return "\n".join(lines)


def remove_set_aside(root: str | Path, name: str, store: str | Path | None = None) -> Path:
    """Delete one run that was set aside or quarantined, or a run of the store that ``root`` does
    not show (nothing else): the user's call."""
    root, store = Path(root).resolve(), Path(store) if store else None
    if name in ("", ".", "..") or "/" in name:
        raise ValueError(f"no set-aside run named {name!r} next to {root} (see `pico checkpoints`)")
    shown = list_checkpoints(root)
    current = read_state(shown[-1]).get("fingerprint") if shown else None
    candidates = [base / name for _, base in _set_aside_bases(root, store)]
    if store is not None and name != current and "." not in name:
        candidates.append(store / name)
    for target in candidates:
        if target.is_dir():
            shutil.rmtree(target)
            return target
    why = " (it is the run checkpoint_dir shows)" if name == current else ""
    raise ValueError(f"no set-aside run named {name!r} next to {root}{why} (see `pico checkpoints`)")
