"""``pico export-analysis OUT``: a run's learning dynamics (pico.dynamics' layout) linked into the
layout pico-analyze reads: ``OUT/checkpoints/step_<N>/learning_dynamics/*.pt`` and
``OUT/training_config.yaml``. A command, not part of what trains a run."""

from __future__ import annotations

import os
from pathlib import Path

from pico.dynamics import CONFIG_FILE, captured_steps, step_folder, store
from pico.fsutil import link_or_copy


def export_analysis(checkpoint_dir: str | Path, out: str | Path) -> tuple[Path, list[int]]:
    """Link (hard links; copies across filesystems) a run's captures into pico-analyze's layout:
    ``OUT/training_config.yaml`` and ``OUT/checkpoints/step_<N>/learning_dynamics/*.pt``. OUT must be
    new or an earlier export (it holds nothing else); nothing outside OUT is changed."""
    src, out = store(checkpoint_dir), Path(out)
    steps = captured_steps(checkpoint_dir)
    if not steps or not (src / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"no learning dynamics in {src} (set learning_dynamics.enabled: true and train)")
    if out.exists() and set(p.name for p in out.iterdir()) - {CONFIG_FILE, "checkpoints"}:
        raise FileExistsError(f"{out} exists and holds other files; name a new folder")
    for step in steps:
        dest = out / "checkpoints" / f"step_{step}" / "learning_dynamics"
        dest.mkdir(parents=True, exist_ok=True)
        for f in sorted(step_folder(checkpoint_dir, step).glob("*_*.pt")):
            _link(f, dest / f.name)
    _link(src / CONFIG_FILE, out / CONFIG_FILE)
    return out, steps


def _link(src: Path, dest: Path) -> None:
    if dest.exists() or dest.is_symlink():
        if dest.is_file() and os.path.samefile(src, dest):
            return
        dest.unlink()
    link_or_copy(src, dest)
