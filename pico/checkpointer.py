"""The trainer's checkpoint component: the run's folder in the run store (``pico.runstore``), what
``checkpoint_dir`` shows, where the run resumes (``pico.runfolder``) and each save. Its state is
the newest step on disk; the trainer asks it, not the folders.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import torch

from pico import checkpoint, runfolder, runstore
from pico.config import Params
from pico.distributed import Dist
from pico.mirror import Mirror
from pico.publish import HubPusher
from pico.runlock import RunLock


class Checkpointer:
    def __init__(self, params: Params, dist: Dist, fingerprint: str, resources: contextlib.ExitStack | None = None):
        self.params, self.dist, self.fingerprint = params, dist, fingerprint
        self.run_dir = runstore.run_dir(params, fingerprint)  # the run's own folder, outside every DVC output
        self.published = Path(params.training.checkpoint_dir)  # the DVC output that shows it
        self.saved_step: int | None = None  # the newest step on disk
        self.mirror: Mirror | None = None  # training.mirror: copies off the machine (pico.mirror)
        self.hub: HubPusher | None = None  # training.hub: pico-train's hub commits (pico.publish)
        if dist.is_main:  # one trainer per run, whichever workspace (or DVC experiment copy) it starts in
            resources = resources or contextlib.ExitStack()
            resources.enter_context(RunLock(self.run_dir))
            if params.training.mirror:
                self.mirror = Mirror(params.training.mirror, fingerprint)
                resources.callback(self.mirror.close)  # the last upload finishes before the process exits
            if params.training.hub.repo_id:
                self.hub = HubPusher(params, self.run_dir)
                resources.callback(self.hub.close)

    def restore(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> runfolder.Restored | None:
        """Adopt what ``checkpoint_dir`` holds that the store lacks, honour a fresh start the flow
        asked for, then resume this run (or ``training.restart_from``), or None: step 0. From here
        on ``checkpoint_dir`` shows this run. Rank 0 acts on the folders; all wait."""
        params, dist = self.params, self.dist
        shown = runstore.shown_run(self.published)
        if dist.is_main:
            for line in runstore.adopt(self.published, runstore.store_root(params)):
                print(line)
            token = os.environ.get(runstore.FRESH_ENV)
            fresh = bool(token and (line := runstore.start_fresh(self.run_dir, token)))
            if fresh:
                print(line)
            elif self.mirror and params.training.restart_from is None:
                self.mirror.fetch_newest(self.run_dir)  # another machine's newer steps, if any
        dist.barrier()
        restored = runfolder.restore(
            self.run_dir,
            self.fingerprint,
            params.training.restart_from,
            model,
            optimizer,
            dist,
            max_step=params.training.max_steps,
            search=[runstore.store_root(params)],
        )
        if dist.is_main:
            if shown and shown[0] != self.fingerprint:
                start = f"continues from step {restored.state['step']}" if restored else "starts at step 0"
                print(
                    f"{self.published} showed run {shown[0]} (step {shown[1]}); it stays in the run store "
                    f"({self.run_dir.with_name(shown[0])}) and continues from there when its params come back "
                    "(`git checkout REV -- params.yaml` or `dvc exp apply EXP`, then `dvc repro`). "
                    f"This run ({self.fingerprint}) {start}"
                )
            self.publish()
        if restored is not None and not restored.rebase:
            self.saved_step = restored.state["step"]
        if self.hub and checkpoint.list_checkpoints(self.run_dir):
            self.hub.submit()  # commits a crash left missing
        return restored

    def save(
        self,
        step: int,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        state: dict[str, Any],
        name: str | None = None,
        interim: bool = False,
        **gathered: Any,
    ) -> None:
        """Rank 0 writes into the run store and publishes; every rank records the step saved."""
        if self.dist.is_main:
            keep = self.params.training.keep_checkpoints
            folder = checkpoint.save(
                self.run_dir, step, model, optimizer, scheduler, state, keep, name=name, interim=interim, **gathered
            )
            self.publish()
            if self.mirror:  # uploaded while the next steps train
                kept = [p.name for p in checkpoint.list_checkpoints(self.run_dir)]
                self.mirror.submit(self.run_dir, folder, kept, Path(self.params.training.metrics_dir))
            if self.hub:
                self.hub.submit()
        if name is None:
            self.saved_step = step

    def publish(self) -> None:
        runstore.publish(self.run_dir, self.published)

    def newest(self) -> Path | None:
        """The newest checkpoint, as ``checkpoint_dir`` shows it."""
        found = checkpoint.latest_checkpoint(self.run_dir)
        return self.published / found.name if found else None

    def last_good(self) -> str | None:
        """The newest checkpoint's folder name inside ``checkpoint_dir`` (equal runs: equal names)."""
        found = checkpoint.latest_checkpoint(self.run_dir)
        return found.name if found else None

    def rerun_starts(self) -> str:
        """Where a rerun would start now (the stop deadline's line)."""
        newest = checkpoint.latest_checkpoint(self.run_dir)
        return f"the rerun resumes from {newest}" if newest else "the rerun starts from step 0"
