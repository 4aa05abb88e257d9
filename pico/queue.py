"""``pico queue``: the DVC experiment queue's rows that no longer tell the truth, and a way to clear them.

A queue worker killed with its experiment (a lost machine, ``kill -9``, an OOM killer) leaves the
task "Running" in ``dvc queue status`` / ``dvc exp show`` forever: DVC records it running in
``.dvc/tmp/exps/run/<task>/<task>.run`` and only notices the dead process when asked to kill it. A
failed task's row shows the numbers of the commit it was queued from, another run's. This module
finds both kinds (a running task whose executor process is gone; a failed one), says so, and with
``clean`` has DVC mark them failed and drop them from the queue (``dvc queue kill``, ``dvc queue
remove``). Nothing a trainer wrote is lost by that: runs train in the run store (pico.runstore), so
queueing the same params again continues the run from its newest checkpoint.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

RUNS = Path(".dvc") / "tmp" / "exps" / "run"
# dvc.repo.experiments.executor.base.TaskStatus
PREPARING, RUNNING, FAILED = 1, 2, 4


@dataclass
class QueueTask:
    name: str
    task: str
    status: str  # "running, process gone" | "failed"
    pid: int | None


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return text[text.rindex(")") + 2 :].split()[0] not in ("Z", "X")


def listed_tasks(repo: Path) -> set[str]:
    """Short task ids ``dvc queue status`` lists (a task it removed keeps its run folder)."""
    out = dvc_command(repo, "queue", "status").stdout
    return {line.split()[0] for line in out.splitlines()[1:] if line.strip() and not line.startswith("Worker")}


def stale_tasks(repo: Path) -> list[QueueTask]:
    """Queued experiments whose row misleads: running with no live executor, or failed."""
    found, listed = [], None
    root = repo / RUNS
    for info_file in sorted(root.glob("*/*.run")) if root.is_dir() else []:
        try:
            info = json.loads(info_file.read_text())
        except (OSError, ValueError):
            continue
        if info.get("location") != "dvc-task":
            continue  # a workspace `dvc exp run`: not in the queue
        task = info_file.stem
        pid = None
        with_pid = info_file.with_suffix(".json")
        if with_pid.is_file():
            try:
                pid = json.loads(with_pid.read_text()).get("pid")
            except ValueError:
                pid = None
        status = info.get("status")
        if status not in (PREPARING, RUNNING, FAILED) or (status != FAILED and _alive(pid)):
            continue
        listed = listed_tasks(repo) if listed is None else listed
        if task[:7] not in listed:
            continue
        if status in (PREPARING, RUNNING):
            found.append(QueueTask(info.get("name") or task[:7], task, "running, process gone", pid))
        elif status == FAILED:
            found.append(QueueTask(info.get("name") or task[:7], task, "failed", pid))
    return found


def dvc_command(repo: Path, *args: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "DVC_NO_ANALYTICS": "1",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    return subprocess.run(["dvc", *args], cwd=repo, env=env, capture_output=True, text=True)


def run(repo: Path, clean: bool) -> int:
    tasks = stale_tasks(repo)
    if not tasks:
        print("the experiment queue has no stale rows: every task DVC lists as running has a live process")
        return 0
    for t in tasks:
        why = (
            f"DVC lists it as running, but its process (PID {t.pid}) is gone"
            if t.status.startswith("running")
            else "it failed; its row in `dvc exp show` shows the numbers of the commit it was queued from"
        )
        print(f"{t.name} (task {t.task[:7]}): {why}")
    if not clean:
        print(
            "`pico queue --clean` has DVC mark these failed and drop them from the queue; their checkpoints stay "
            "in the run store, so queueing the same params again continues each run where it stopped"
        )
        return 1
    for t in tasks:
        if t.status.startswith("running"):
            dvc_command(repo, "queue", "kill", t.name)  # DVC notices the dead process and marks the task failed
        proc = dvc_command(repo, "queue", "remove", t.name)
        if proc.returncode != 0:
            print(f"could not remove {t.name}: {(proc.stderr or proc.stdout).strip().splitlines()[-1:]}")
            return 1
        print(f"removed {t.name} from the queue (its checkpoints stay in the run store)")
    return 0
