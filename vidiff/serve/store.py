"""The job queue and the job records of ``vidiff serve``: one SQLite file in the data directory.

Every state change is one SQL statement (or one ``BEGIN IMMEDIATE`` transaction), so it is atomic across
the web handlers and the worker threads, and survives a ``kill -9``: a job that was running when the server
died is found ``running`` at the next start and re-queued or failed (:meth:`JobStore.recover`). A job's files
live in ``<data>/jobs/<id>/``; ids are generated here (32 hex digits) and are the only names ever joined to
the filesystem, never anything a client sent.
"""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
FINISHED = ("succeeded", "failed", "cancelled")
RESTART_POLICIES = ("requeue", "fail")
JOB_ID = re.compile(r"[0-9a-f]{32}")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    idempotency_key TEXT UNIQUE,
    request_hash TEXT NOT NULL,
    model TEXT NOT NULL,
    settings TEXT NOT NULL,
    input_name TEXT NOT NULL,
    video_format TEXT NOT NULL,
    status TEXT NOT NULL,
    phase TEXT,
    step INTEGER NOT NULL DEFAULT 0,
    total INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    sidecar TEXT,
    device TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    cancel_requested_step INTEGER,
    created REAL NOT NULL,
    started REAL,
    finished REAL
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status, seq);
"""


class QueueFull(Exception):
    """The queue holds as many waiting jobs as allowed (HTTP 429)."""


class IdempotencyConflict(Exception):
    """An ``Idempotency-Key`` reused with a different request (HTTP 422)."""


@dataclass(frozen=True)
class Job:
    """One row of the jobs table, as the API shows it."""

    id: str
    model: str
    settings: dict[str, Any]
    input_name: str
    video_format: str
    status: str
    phase: str | None
    step: int
    total: int
    error: str | None
    sidecar: dict[str, Any] | None
    device: str | None
    attempts: int
    cancel_requested_step: int | None
    created: float
    started: float | None
    finished: float | None
    seq: int

    def eta_seconds(self, now: float | None = None) -> float | None:
        """Seconds left, extrapolated from the time per denoising step so far (None until a step ran)."""
        if self.status != "running" or not self.started or self.step < 1 or self.total < 1:
            return None
        per_step = ((now or time.time()) - self.started) / self.step
        return round(per_step * max(self.total - self.step, 0), 2)

    def public(self) -> dict[str, Any]:
        return {"id": self.id, "status": self.status, "phase": self.phase, "step": self.step,
                "total": self.total, "eta_seconds": self.eta_seconds(), "error": self.error,
                "model": self.model, "settings": self.settings, "video_format": self.video_format,
                "sidecar": self.sidecar, "device": self.device, "attempts": self.attempts,
                "cancel_requested_step": self.cancel_requested_step, "created": self.created,
                "started": self.started, "finished": self.finished}


def _job(row: sqlite3.Row) -> Job:
    d = dict(row)
    d.pop("idempotency_key"), d.pop("request_hash")
    d["settings"] = json.loads(d["settings"])
    d["sidecar"] = json.loads(d["sidecar"]) if d["sidecar"] else None
    return Job(**d)


class JobStore:
    """SQLite-backed queue and history; safe to share between threads (one connection, one lock)."""

    def __init__(self, data_dir: str | Path, *, max_queue: int = 64) -> None:
        self.data_dir = Path(data_dir)
        self.jobs_dir = self.data_dir / "jobs"
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        self.max_queue = max_queue
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.data_dir / "jobs.sqlite3", check_same_thread=False,
                                   isolation_level=None, timeout=30)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def job_dir(self, job_id: str) -> Path:
        """The folder of a job's files; ``job_id`` must be one of ours (32 hex digits)."""
        if not JOB_ID.fullmatch(job_id):
            raise ValueError(f"not a job id: {job_id!r}")
        return self.jobs_dir / job_id

    def new_id(self) -> str:
        return uuid.uuid4().hex

    # -- writes ------------------------------------------------------------------------------------------
    def add(self, job_id: str, *, model: str, settings: dict[str, Any], input_name: str, video_format: str,
            request_hash: str, idempotency_key: str | None = None) -> tuple[Job, bool]:
        """Queue a job (its input file already in :meth:`job_dir`); returns ``(job, created)``: with a known
        ``idempotency_key``, the earlier job and False. Raises :class:`QueueFull` past ``max_queue``."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                if idempotency_key is not None:
                    row = self._db.execute("SELECT * FROM jobs WHERE idempotency_key = ?",
                                           (idempotency_key,)).fetchone()
                    if row is not None:
                        self._db.execute("COMMIT")
                        if row["request_hash"] != request_hash:
                            raise IdempotencyConflict(
                                f"Idempotency-Key {idempotency_key!r} was used for a different request")
                        return _job(row), False
                waiting = self._db.execute("SELECT COUNT(*) FROM jobs WHERE status = 'queued'").fetchone()[0]
                if waiting >= self.max_queue:
                    self._db.execute("ROLLBACK")
                    raise QueueFull(f"the queue is full ({waiting} jobs waiting): try again later")
                self._db.execute(
                    "INSERT INTO jobs (id, idempotency_key, request_hash, model, settings, input_name, video_format,"
                    " status, created) VALUES (?, ?, ?, ?, ?, ?, ?, 'queued', ?)",
                    (job_id, idempotency_key, request_hash, model, json.dumps(settings), input_name, video_format,
                     time.time()))
                self._db.execute("COMMIT")
            except sqlite3.Error:
                self._db.execute("ROLLBACK")
                raise
        return self.get(job_id), True

    def claim(self, device: str) -> Job | None:
        """Atomically take the oldest queued job for ``device`` (status becomes running), or None."""
        with self._lock:
            row = self._db.execute(
                "UPDATE jobs SET status = 'running', phase = 'load', step = 0, device = ?, started = ?, "
                "attempts = attempts + 1 WHERE seq = (SELECT seq FROM jobs WHERE status = 'queued' "
                "ORDER BY seq LIMIT 1) AND status = 'queued' RETURNING *", (device, time.time())).fetchone()
        return _job(row) if row else None

    def progress(self, job_id: str, *, phase: str, step: int | None = None, total: int | None = None) -> None:
        with self._lock:
            self._db.execute("UPDATE jobs SET phase = ?, step = COALESCE(?, step), total = COALESCE(?, total) "
                             "WHERE id = ? AND status = 'running'", (phase, step, total, job_id))

    def finish(self, job_id: str, status: str, *, error: str | None = None,
               sidecar: dict[str, Any] | None = None) -> None:
        assert status in FINISHED, status
        with self._lock:
            self._db.execute("UPDATE jobs SET status = ?, phase = NULL, error = ?, sidecar = ?, finished = ? "
                             "WHERE id = ? AND status = 'running'",
                             (status, error, json.dumps(sidecar) if sidecar else None, time.time(), job_id))

    def cancel(self, job_id: str) -> str | None:
        """Cancel a job: a queued one is cancelled here, in one statement (the worker cannot claim it any more);
        a running one is marked (the worker stops at its next step). Returns the status the job had, or None."""
        with self._lock:
            row = self._db.execute("UPDATE jobs SET status = 'cancelled', finished = ? WHERE id = ? AND "
                                   "status = 'queued' RETURNING id", (time.time(), job_id)).fetchone()
            if row:
                return "queued"
            row = self._db.execute("UPDATE jobs SET cancel_requested_step = step WHERE id = ? AND status = "
                                   "'running' AND cancel_requested_step IS NULL RETURNING id", (job_id,)).fetchone()
            if row:
                return "running"
            row = self._db.execute("SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return row["status"] if row else None

    def cancel_requested(self, job_id: str) -> bool:
        with self._lock:
            row = self._db.execute("SELECT cancel_requested_step FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return row is not None and row[0] is not None

    def delete(self, job_id: str) -> bool:
        """Remove a finished job's record and its files; False if there is no such finished job."""
        with self._lock:
            row = self._db.execute("DELETE FROM jobs WHERE id = ? AND status IN ('succeeded', 'failed', "
                                   "'cancelled') RETURNING id", (job_id,)).fetchone()
        if row:
            shutil.rmtree(self.job_dir(job_id), ignore_errors=True)
        return row is not None

    def recover(self, policy: str) -> list[str]:
        """At start-up: jobs left ``running`` by a dead server are re-queued (``requeue``, their partial files
        removed) or failed with the reason (``fail``). Returns their ids."""
        if policy not in RESTART_POLICIES:
            raise ValueError(f"restart policy must be one of {', '.join(RESTART_POLICIES)}, got {policy!r}")
        with self._lock:
            rows = self._db.execute("SELECT id, input_name FROM jobs WHERE status = 'running'").fetchall()
            if policy == "requeue":
                self._db.execute("UPDATE jobs SET status = 'queued', phase = NULL, step = 0, started = NULL, "
                                 "device = NULL WHERE status = 'running'")
            else:
                self._db.execute("UPDATE jobs SET status = 'failed', phase = NULL, finished = ?, error = "
                                 "'the server stopped while the job was running' WHERE status = 'running'",
                                 (time.time(),))
        for row in rows:
            self.remove_outputs(row["id"], keep=row["input_name"])
        return [row["id"] for row in rows]

    def remove_outputs(self, job_id: str, *, keep: str) -> None:
        """Remove every file of a job but its input (partial or temporary outputs)."""
        folder = self.job_dir(job_id)
        if not folder.is_dir():
            return
        for entry in folder.iterdir():
            if entry.name != keep:
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink(missing_ok=True)

    # -- reads -------------------------------------------------------------------------------------------
    def get(self, job_id: str) -> Job | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _job(row) if row else None

    def list(self, *, limit: int = 20, before: int | None = None, status: str | None = None) -> list[Job]:
        """Newest first; ``before``: a ``seq`` cursor from the previous page."""
        query, args = "SELECT * FROM jobs WHERE 1", []
        if before is not None:
            query, args = query + " AND seq < ?", [*args, before]
        if status is not None:
            query, args = query + " AND status = ?", [*args, status]
        with self._lock:
            rows = self._db.execute(query + " ORDER BY seq DESC LIMIT ?", (*args, limit)).fetchall()
        return [_job(r) for r in rows]

    def counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall()
        return {status: 0 for status in STATUSES} | {r[0]: r[1] for r in rows}
