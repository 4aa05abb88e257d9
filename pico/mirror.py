"""A run's checkpoints copied off the machine while it trains, and found again on another one.

``training.mirror`` names any fsspec URL or local path (``s3://bucket/prefix``, ``gs://…``,
``hf://…``, a mounted folder). The run's copies live under ``<mirror>/<fingerprint>/``:

- ``step_NNNNNNNN/`` and ``best/``: the checkpoint's files (pico.checkpoint's format) and, written
  **last**, ``MIRROR.json`` naming each file with its size and sha256. A folder without a readable
  manifest is an upload that did not finish: it is never resumed from, never counted.
- ``learning_dynamics/…``: the captures (pico.dynamics), file by file as they appear.
- ``metrics/``: the run's metric files as of the last upload, for whoever watches from elsewhere.

Uploads run on one background thread: a checkpoint, verified on local disk first, is uploaded while
the next steps train. When the next checkpoint is due and the previous upload is still running, the
trainer waits for it, and says so. A failed upload is said in one line and retried with the next
checkpoint; it never stops training. Pruning (``keep_checkpoints``) deletes, in the mirror, only the
files a manifest lists and then the manifest: nothing else under the prefix is ever touched.

On a machine whose run store holds nothing of the run, ``fetch_newest`` downloads the newest
checkpoint whose manifest and files verify, into the run store, so the run continues from it
bit-identically. Folders are keyed by fingerprint: another run's folder is never read or changed.
Credentials come from the usual places (environment, profiles; pico.data.documents.storage_options
for self-hosted S3 endpoints); the URL is shown without any user:password part.
"""

from __future__ import annotations

import json
import re
import shutil
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import fsspec

from pico import checkpoint
from pico.data.documents import storage_options
from pico.fsutil import link_or_copy, replace_dir

MANIFEST = "MIRROR.json"
METRICS = "metrics"


def shown(url: str) -> str:
    """The URL without credentials, for logs."""
    parts = urlsplit(url)
    if parts.password or parts.username:
        return urlunsplit(parts._replace(netloc=parts.hostname + (f":{parts.port}" if parts.port else "")))
    return url


class Mirror:
    """The mirror of one run (``<url>/<fingerprint>``); rank 0 only."""

    def __init__(self, url: str, fingerprint: str):
        self.url, self.fingerprint = url.rstrip("/"), fingerprint
        self.fs, root = fsspec.core.url_to_fs(self.url, **storage_options(self.url))
        self.root = f"{root.rstrip('/')}/{fingerprint}"
        self.where = f"{shown(self.url)}/{fingerprint}"
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pico-mirror")
        self._pending: Future | None = None
        self._pending_name = ""
        self._lock = threading.Lock()
        self.uploaded: list[str] = []  # folder names whose manifest this process wrote
        self.failed: str | None = None  # the last upload's failure, if it failed

    # -- uploading -------------------------------------------------------------------------------
    def submit(self, run_dir: Path, folder: Path, keep_steps: list[str], metrics_dir: Path | None) -> None:
        """Upload ``folder`` (a checkpoint just written in ``run_dir``) in the background, then the
        captures and metric files, then prune the mirror's copies of folders pruned locally. Waits
        first, saying so, while the previous upload is still running."""
        self.wait(f"before uploading {folder.name}")
        for leftover in run_dir.glob(".mirror-*"):  # staged by an upload a killed process did not finish
            shutil.rmtree(leftover, ignore_errors=True)
        checkpoint.verify(folder)  # never upload a damaged checkpoint
        files = {p.name: checkpoint.file_digest(p) for p in sorted(folder.iterdir()) if p.is_file()}
        staged = folder.with_name(f".mirror-{folder.name}")  # hard links: a stable copy while training goes on
        if staged.exists():
            shutil.rmtree(staged)
        staged.mkdir()
        for name in files:
            link_or_copy(folder / name, staged / name)
        self._pending_name = folder.name
        self._pending = self._pool.submit(self._upload, run_dir, staged, folder.name, files, keep_steps, metrics_dir)

    def wait(self, why: str) -> None:
        if self._pending is None:
            return
        if not self._pending.done():
            started = time.perf_counter()
            print(f"mirror: waiting for {self._pending_name}'s upload to {self.where} {why}", flush=True)
            self._pending.result()
            print(f"mirror: {self._pending_name} uploaded after {time.perf_counter() - started:.1f} s more", flush=True)
        self._pending.result()
        self._pending = None

    def close(self) -> None:
        """At the end of training: the last upload finishes (and is said) before the process exits."""
        self.wait("before the run exits")
        self._pool.shutdown(wait=True)
        if self.failed:
            print(f"mirror: the newest checkpoint is NOT in {self.where}: {self.failed}", flush=True)

    def _upload(
        self,
        run_dir: Path,
        staged: Path,
        name: str,
        files: dict[str, Any],
        keep: list[str],
        metrics_dir: Path | None,
    ) -> None:
        try:
            remote = f"{self.root}/{name}"
            self._rm_manifest(remote)  # a folder being replaced is not a good copy meanwhile
            self.fs.makedirs(remote, exist_ok=True)
            for f in files:
                self.fs.put_file(str(staged / f), f"{remote}/{f}")
            sizes = {f: self.fs.size(f"{remote}/{f}") for f in files}
            wrong = [f for f, want in files.items() if sizes[f] != want["bytes"]]
            if wrong:
                raise OSError(
                    f"{remote}/{wrong[0]} has {sizes[wrong[0]]} bytes after upload, not {files[wrong[0]]['bytes']}"
                )
            manifest = {"fingerprint": self.fingerprint, "folder": name, "files": files, "written_by": "pico.mirror"}
            self.fs.pipe_file(f"{remote}/{MANIFEST}", (json.dumps(manifest, indent=1) + "\n").encode())
            self.uploaded.append(name)
            self._sync_captures(run_dir)
            if metrics_dir is not None:
                self._sync_metrics(metrics_dir)
            self._prune(keep)
            self.failed = None
        except Exception as err:  # any filesystem's error: said, and retried with the next checkpoint
            self.failed = f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"
            print(
                f"mirror: uploading {name} to {self.where} failed ({self.failed}); training goes on, the next checkpoint retries",
                flush=True,
            )
        finally:
            shutil.rmtree(staged, ignore_errors=True)

    def _sync_captures(self, run_dir: Path) -> None:
        local = run_dir / checkpoint.LEARNING_DYNAMICS
        if not local.is_dir():
            return
        for p in sorted(local.rglob("*")):
            if p.is_file():
                dest = f"{self.root}/{checkpoint.LEARNING_DYNAMICS}/{p.relative_to(local).as_posix()}"
                if not self.fs.exists(dest) or self.fs.size(dest) != p.stat().st_size:
                    self.fs.makedirs(dest.rsplit("/", 1)[0], exist_ok=True)
                    self.fs.put_file(str(p), dest)

    def _sync_metrics(self, metrics_dir: Path) -> None:
        if not metrics_dir.is_dir():
            return
        self.fs.makedirs(f"{self.root}/{METRICS}", exist_ok=True)
        for p in sorted(metrics_dir.iterdir()):
            if p.is_file() and not p.name.startswith("."):
                self.fs.put_file(str(p), f"{self.root}/{METRICS}/{p.name}")

    def _prune(self, keep: list[str]) -> None:
        """Remove the mirror's copies of step folders no longer kept locally: the files their
        manifest lists, then the manifest; anything else in the folder stays."""
        for name, manifest in self.manifests().items():
            if checkpoint.STEP_DIR.match(name) and name not in keep:
                self._rm_manifest(f"{self.root}/{name}")
                for f in manifest["files"]:
                    path = f"{self.root}/{name}/{f}"
                    if self.fs.exists(path):
                        self.fs.rm_file(path)
                try:  # an emptied folder goes too, where the filesystem has folders
                    if self.fs.isdir(f"{self.root}/{name}") and not self.fs.ls(f"{self.root}/{name}"):
                        self.fs.rmdir(f"{self.root}/{name}")
                except OSError:
                    pass

    def _rm_manifest(self, remote: str) -> None:
        if self.fs.exists(f"{remote}/{MANIFEST}"):
            self.fs.rm_file(f"{remote}/{MANIFEST}")

    # -- finding and downloading -----------------------------------------------------------------
    def manifests(self) -> dict[str, dict[str, Any]]:
        """Folder name -> manifest, for every folder of this run whose upload finished."""
        found = {}
        try:
            entries = self.fs.ls(self.root, detail=False) if self.fs.exists(self.root) else []
        except FileNotFoundError:
            entries = []
        for entry in entries:
            name = entry.rstrip("/").rsplit("/", 1)[-1]
            if not (checkpoint.STEP_DIR.match(name) or name == checkpoint.BEST):
                continue
            try:
                manifest = json.loads(self.fs.cat_file(f"{self.root}/{name}/{MANIFEST}"))
            except (OSError, ValueError):
                continue  # no manifest yet, or a half-written one: not a finished upload
            if manifest.get("fingerprint") == self.fingerprint and isinstance(manifest.get("files"), dict):
                found[name] = manifest
        return found

    def fetch_newest(self, run_dir: Path) -> Path | None:
        """Download into ``run_dir`` the newest step whose files verify (and ``best``, and the
        captures) when it is newer than any ``run_dir`` holds, else None. Said in one line each."""
        manifests = self.manifests()
        local = checkpoint.latest_checkpoint(run_dir)
        newer = (lambda n: n > local.name) if local else (lambda n: True)
        steps = sorted((n for n in manifests if checkpoint.STEP_DIR.match(n) and newer(n)), reverse=True)
        for name in steps:
            try:
                folder = self._download(run_dir, name, manifests[name])
            except (OSError, ValueError) as err:
                print(f"mirror: {self.where}/{name} does not verify ({err}); trying an older one", flush=True)
                continue
            if checkpoint.BEST in manifests:
                try:
                    self._download(run_dir, checkpoint.BEST, manifests[checkpoint.BEST])
                except (OSError, ValueError) as err:
                    print(f"mirror: {self.where}/best does not verify ({err}); left out", flush=True)
            self._fetch_captures(run_dir)
            print(f"mirror: downloaded {name} from {self.where} (verified); the run continues from it", flush=True)
            return folder
        return None

    def _download(self, run_dir: Path, name: str, manifest: dict[str, Any]) -> Path:
        tmp = run_dir / f".tmp-mirror-{name}"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        try:
            for f, want in manifest["files"].items():
                if "/" in f or f.startswith("."):
                    raise ValueError(f"{MANIFEST} names {f!r}, not a file of a checkpoint folder")
                self.fs.get_file(f"{self.root}/{name}/{f}", str(tmp / f))
                if checkpoint.file_digest(tmp / f) != want:
                    raise ValueError(f"{f} differs from its manifest (size or sha256)")
            checkpoint.verify(tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        final = run_dir / name
        replace_dir(tmp, final)
        return final

    def _fetch_captures(self, run_dir: Path) -> None:
        remote = f"{self.root}/{checkpoint.LEARNING_DYNAMICS}"
        if not self.fs.exists(remote):
            return
        for path in self.fs.find(remote):
            rel = path[len(remote.rstrip("/")) + 1 :]
            if re.search(r"(^|/)\.\.?(/|$)", rel):
                continue
            dest = run_dir / checkpoint.LEARNING_DYNAMICS / rel
            if not dest.exists():
                dest.parent.mkdir(parents=True, exist_ok=True)
                self.fs.get_file(path, str(dest))
