"""A real ``vidiff serve`` process on a loopback port (the bundled model doing real work), and its client."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ..conftest import SKIMAGE_DATA

PHOTO = SKIMAGE_DATA / "coffee.png"  # 600x400, a real photograph
TOKEN = "serve-test-token-0123"
# short jobs: the bundled model at 64x64, 4 frames
QUICK = {"height": "64", "width": "64", "num_frames": "4", "num_inference_steps": "3", "seed": "5"}
# a job of many steps at the model's own size (~0.1 s a step on one core): long enough to act on while it runs
LONG = {"num_inference_steps": "300"}
# one thread per process (the budget of these tests), the same in the server and in the CLI runs it is compared with
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


class Server:
    """``vidiff serve`` in a subprocess; ``client`` carries the token when the server has one."""

    def __init__(self, data: Path, *args: str, token: str | None = TOKEN) -> None:
        self.data, self.args, self.token = data, args, token
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        cmd = [sys.executable, "-m", "vidiff.cli.main", "serve", "--port", "0", "--data", str(self.data),
               "--device", "cpu", *self.args, *(["--token", self.token] if self.token else [])]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env=ENV)
        line = self.proc.stdout.readline()
        m = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        assert m, f"vidiff serve did not start: {line}{self.proc.stdout.read() if self.proc.poll() else ''}"
        self.url = f"http://127.0.0.1:{m.group(1)}"
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        self.client = httpx.Client(base_url=self.url, headers=headers, timeout=60)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if self.client.get("/healthz").json()["workers"] == 1:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise AssertionError("vidiff serve did not become healthy within 60 s")

    def kill(self) -> None:
        """``kill -9``: no shutdown code runs."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.client.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.client.close()

    # -- helpers -----------------------------------------------------------------------------------------
    def submit(self, settings: dict[str, str], *, image: Path = PHOTO, headers: dict[str, str] | None = None,
               **extra: str) -> httpx.Response:
        with image.open("rb") as f:
            return self.client.post("/v1/jobs", data={**settings, **extra}, headers=headers or {},
                                    files={"image": (image.name, f, "application/octet-stream")})

    def job(self, job_id: str) -> dict:
        r = self.client.get(f"/v1/jobs/{job_id}")
        assert r.status_code == 200, r.text
        return r.json()

    def wait(self, job_id: str, until: tuple[str, ...] = ("succeeded", "failed", "cancelled"),
             timeout: float = 60, min_step: int = 0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.job(job_id)
            if job["status"] in until and job["step"] >= min_step:
                return job
            time.sleep(0.02)
        raise AssertionError(f"job {job_id} is {self.job(job_id)['status']} after {timeout} s, not {until}")

    def events(self, job_id: str) -> list[dict]:
        """Every server-sent event of a job until the stream ends (after the final state)."""
        out = []
        with self.client.stream("GET", f"/v1/jobs/{job_id}/events") as r:
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
            for line in r.iter_lines():
                if line.startswith("data: "):
                    out.append(json.loads(line[6:]))
        return out


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server per test module, with a token, a small queue cap and a small upload limit."""
    s = Server(tmp_path_factory.mktemp("serve") / "data", "--max-queue", "2", "--max-upload-mb", "1",
               "--max-image-pixels", "700000")
    yield s
    s.stop()
