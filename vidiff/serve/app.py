"""The HTTP API and web page of ``vidiff serve`` (FastAPI).

``POST /v1/jobs`` answers at once with the job's id; the job waits in the SQLite queue (``store``) for a
device's worker (``worker``). Settings arrive as form fields named as :class:`GenerationSettings`' fields,
are parsed as ``vidiff generate`` parses its options and validated by the same dataclass and the model's
own resolution, so a request that cannot run is refused (422) before it is queued. Nothing a client sends
is joined to a filesystem path: models are chosen by name, jobs are addressed by ids the server made.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import io
import json
import re
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

import PIL.Image
from fastapi import FastAPI, HTTPException, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from vidiff import __version__
from vidiff.pipelines.long_video import LONG_MODES
from vidiff.pipelines.settings import GenerationSettings, SettingError
from vidiff.serve.store import FINISHED, JOB_ID, IdempotencyConflict, JobStore, QueueFull
from vidiff.serve.worker import BUNDLED, VIDEO_FORMATS, Events, PipelineCache, Worker

# image types accepted, told from the content (Pillow's format), never from the file name
IMAGE_TYPES = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp", "BMP": "bmp"}
MEDIA_TYPES = {"webm": "video/webm", "mp4": "video/mp4", "gif": "image/gif"}
STATIC = {"app.js": "text/javascript", "style.css": "text/css"}  # the page's files, by fixed name
PAGE_HEADERS = {"Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob:",
                "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}
_PARSERS = {"int | None": int, "float | None": float, "str | None": str}  # as vidiff generate's argparse types
IDEMPOTENCY_KEY = re.compile(r"[A-Za-z0-9_:-][A-Za-z0-9_.:-]{0,199}")
SETTING_NAMES = tuple(f.name for f in fields(GenerationSettings))
JOB_FIELDS = ("model", "format", "long_mode")  # form fields besides the settings


@dataclass
class ServeConfig:
    """How the service runs; ``models``: name -> checkpoint (the bundled model first)."""

    data_dir: Path
    models: dict[str, Path]
    devices: list[str] = field(default_factory=lambda: ["cpu"])
    token: str | None = None
    max_upload_bytes: int = 20 * 2**20
    max_image_pixels: int = 4096 * 4096
    max_video_pixels: int = 1024 * 576 * 25  # frames x height x width of one job
    max_queue: int = 64
    on_restart: str = "requeue"
    cors_origins: list[str] = field(default_factory=list)


class _TooLarge(Exception):
    pass


class BodyLimit:
    """Refuse request bodies over ``limit`` bytes with 413, by their Content-Length or while they stream."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length", b"0")
        if not length.isdigit() or int(length) > self.limit:
            return await _too_large(self.limit)(scope, receive, send)
        seen = 0

        async def limited() -> dict:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise _TooLarge
            return message

        try:
            await self.app(scope, limited, send)
        except _TooLarge:
            await _too_large(self.limit)(scope, receive, send)


def _too_large(limit: int) -> JSONResponse:
    return JSONResponse({"detail": f"the request is larger than the {limit} bytes allowed"}, status_code=413)


def parse_settings(form: dict[str, str]) -> GenerationSettings:
    """Form fields -> settings, each parsed as ``vidiff generate`` parses its option and validated by
    :class:`GenerationSettings`; a ``SettingError`` names the field."""
    kinds = {f.name: _PARSERS[str(f.type)] for f in fields(GenerationSettings)}
    values: dict[str, Any] = {}
    for name, text in form.items():
        if text == "":
            continue
        try:
            values[name] = kinds[name](text)
        except ValueError:
            raise SettingError(name, f"{name} must be {'an integer' if kinds[name] is int else 'a number'}, "
                                     f"got {text!r}") from None
    return GenerationSettings(**values)


def _sniff_image(data: bytes, max_pixels: int) -> str:
    """The extension of an uploaded image, from its content; 415 for anything else, 413 past the pixel cap."""
    try:
        image = PIL.Image.open(io.BytesIO(data))
    except (PIL.UnidentifiedImageError, OSError):
        raise HTTPException(415, "the upload is not an image (png, jpeg, webp or bmp)") from None
    if image.format not in IMAGE_TYPES:
        raise HTTPException(415, f"image type {image.format} is not accepted: use png, jpeg, webp or bmp")
    if image.width * image.height > max_pixels:
        raise HTTPException(413, f"the image has {image.width}x{image.height} pixels, more than the "
                                 f"{max_pixels} allowed")
    try:
        image.load()
    except (OSError, ValueError, PIL.Image.DecompressionBombError) as e:
        raise HTTPException(422, f"the image cannot be decoded: {e}") from None
    return IMAGE_TYPES[image.format]


def create_app(config: ServeConfig) -> FastAPI:
    """The service: API under ``/v1``, the page at ``/``; workers start and stop with the app."""
    store = JobStore(config.data_dir, max_queue=config.max_queue)
    cache = PipelineCache(config.models)
    events = Events()
    wake = threading.Event()
    workers: list[Worker] = []

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        store.recover(config.on_restart)
        workers.extend(Worker(store, cache, events, device, wake) for device in config.devices)
        for w in workers:
            w.start()
        yield
        for w in workers:
            w.stop()

    app = FastAPI(title="vidiff", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.add_middleware(BodyLimit, limit=config.max_upload_bytes)
    if config.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=config.cors_origins, allow_methods=["*"],
                           allow_headers=["Authorization", "Idempotency-Key"])

    @app.middleware("http")
    async def authenticate(request: Request, call_next: Any) -> Response:
        if config.token and request.url.path.startswith("/v1/") and request.method != "OPTIONS":
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {config.token}".encode()):
                return JSONResponse({"detail": "a valid bearer token is required"}, status_code=401,
                                    headers={"WWW-Authenticate": "Bearer"})
        return await call_next(request)

    def job_or_404(job_id: str) -> Any:
        job = store.get(job_id) if JOB_ID.fullmatch(job_id) else None
        if job is None:
            raise HTTPException(404, "no such job")
        return job

    @app.post("/v1/jobs", status_code=201)
    async def submit(request: Request) -> JSONResponse:
        form = await request.form(max_files=1, max_fields=len(SETTING_NAMES) + len(JOB_FIELDS) + 2)
        image = form.get("image")
        if not isinstance(image, UploadFile):
            raise HTTPException(422, "the form needs an 'image' file")
        text = {k: v for k, v in form.items() if k != "image"}
        unknown = sorted(set(text) - {*SETTING_NAMES, *JOB_FIELDS})
        if unknown or any(not isinstance(v, str) for v in text.values()):
            raise HTTPException(422, f"unknown form field(s): {', '.join(unknown) or 'a second file'}; "
                                     f"settings are {', '.join(SETTING_NAMES)}, plus {', '.join(JOB_FIELDS)}")
        model = text.pop("model", "") or BUNDLED
        if model not in config.models:
            raise HTTPException(422, f"unknown model {model!r}: choose one of {', '.join(config.models)}")
        video_format = text.pop("format", "") or "webm"
        if video_format not in VIDEO_FORMATS:
            raise HTTPException(422, f"format must be one of {', '.join(VIDEO_FORMATS)}, got {video_format!r}")
        long_mode = text.pop("long_mode", "") or None
        if long_mode is not None and long_mode not in LONG_MODES:
            raise HTTPException(422, f"long_mode must be one of {', '.join(LONG_MODES)}, got {long_mode!r}")
        try:
            settings = parse_settings(text)
        except SettingError as e:
            raise HTTPException(422, f"{e.field}: {e}") from None
        name = image.filename or ""
        if "/" in name or "\\" in name or name.startswith(".") or "\0" in name:
            raise HTTPException(422, f"the image's file name must be a plain name, got {name!r}")
        data = await image.read()
        ext = _sniff_image(data, config.max_image_pixels)
        size = PIL.Image.open(io.BytesIO(data)).size
        try:
            resolved = await run_in_threadpool(cache.resolve, model, config.devices[0], settings, size)
        except ValueError as e:
            raise HTTPException(422, str(e)) from None
        if resolved.num_frames * resolved.height * resolved.width > config.max_video_pixels:
            raise HTTPException(422, f"{resolved.num_frames} frames of {resolved.width}x{resolved.height} exceed "
                                     f"the {config.max_video_pixels} video pixels a job may have")
        key = request.headers.get("idempotency-key")
        if key is not None and not IDEMPOTENCY_KEY.fullmatch(key):
            raise HTTPException(422, "Idempotency-Key must be 1-200 letters, digits, '-', '_', ':' or '.' "
                                     f"(not starting with '.'), got {key[:200]!r}")
        given = settings.to_dict() | ({"long_mode": long_mode} if long_mode else {})
        digest = hashlib.sha256(data + json.dumps([model, video_format, given], sort_keys=True).encode()).hexdigest()
        job_id = store.new_id()
        folder = store.job_dir(job_id)
        folder.mkdir(parents=True)
        (folder / f"input.{ext}").write_bytes(data)
        try:
            job, created = store.add(job_id, model=model, settings=given, input_name=f"input.{ext}",
                                     video_format=video_format, request_hash=digest, idempotency_key=key)
        except (QueueFull, IdempotencyConflict) as e:
            store.remove_outputs(job_id, keep="")
            folder.rmdir()
            code = 429 if isinstance(e, QueueFull) else 422
            raise HTTPException(code, str(e), headers={"Retry-After": "5"} if code == 429 else None) from None
        if not created:
            store.remove_outputs(job_id, keep="")
            folder.rmdir()
        wake.set()
        return JSONResponse({"id": job.id, "status": job.status}, status_code=201 if created else 200)

    @app.get("/v1/jobs")
    def list_jobs(limit: int = 20, before: int | None = None) -> dict[str, Any]:
        if not 1 <= limit <= 100:
            raise HTTPException(422, f"limit must be in 1..100, got {limit}")
        jobs = store.list(limit=limit, before=before)
        more = len(jobs) == limit and bool(store.list(limit=1, before=jobs[-1].seq))
        return {"jobs": [j.public() for j in jobs], "next_before": jobs[-1].seq if more else None}

    @app.get("/v1/jobs/{job_id}")
    def get_job(job_id: str) -> dict[str, Any]:
        return job_or_404(job_id).public()

    @app.get("/v1/jobs/{job_id}/events")
    async def job_events(job_id: str, request: Request) -> StreamingResponse:
        job_or_404(job_id)

        async def stream() -> AsyncIterator[str]:
            index, last_beat = 0, time.monotonic()
            job = store.get(job_id)
            yield _sse({"event": "state", **job.public()})
            if job.status in FINISHED:
                return
            while job is not None and job.status not in FINISHED and not await request.is_disconnected():
                new, done = events.since(job_id, index)
                index += len(new)
                for event in new:
                    yield _sse(event)
                if done:
                    return
                if time.monotonic() - last_beat > 15:
                    yield ": keep-alive\n\n"
                    last_beat = time.monotonic()
                await asyncio.sleep(0.05)
                if not new:
                    job = store.get(job_id)
            new, done = events.since(job_id, index)  # what was published while the job finished
            for event in new:
                yield _sse(event)
            if job is not None and not done:  # finished without a final event in the log (dropped or never made)
                yield _sse({"event": "state", **job.public()})

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    @app.post("/v1/jobs/{job_id}/cancel")
    def cancel(job_id: str) -> JSONResponse:
        job_or_404(job_id)
        before = store.cancel(job_id)
        if before == "queued":
            events.publish(job_id, {"event": "state", **store.get(job_id).public()}, done=True)
            return JSONResponse({"id": job_id, "status": "cancelled"})
        if before == "running":
            return JSONResponse({"id": job_id, "status": "running", "cancel_requested": True}, status_code=202)
        raise HTTPException(409, f"the job has already {before}")

    @app.get("/v1/jobs/{job_id}/video")
    def video(job_id: str) -> FileResponse:
        job = job_or_404(job_id)
        if job.status != "succeeded":
            raise HTTPException(409, f"the job is {job.status}: no video")
        path = store.job_dir(job.id) / f"video.{job.video_format}"
        return FileResponse(path, media_type=MEDIA_TYPES[job.video_format],
                            filename=f"vidiff-{job.id}.{job.video_format}")

    @app.get("/v1/jobs/{job_id}/image")
    def input_image(job_id: str) -> FileResponse:
        job = job_or_404(job_id)
        return FileResponse(store.job_dir(job.id) / job.input_name, headers={"X-Content-Type-Options": "nosniff"},
                            media_type=f"image/{job.input_name.rsplit('.', 1)[1].replace('jpg', 'jpeg')}")

    @app.delete("/v1/jobs/{job_id}", status_code=204)
    def delete(job_id: str) -> Response:
        job_or_404(job_id)
        store.cancel(job_id)  # a running job stops at its next step: wait for it, then remove everything
        deadline = time.monotonic() + 60
        while store.get(job_id).status not in FINISHED:
            if time.monotonic() > deadline:
                raise HTTPException(409, "the job did not stop within 60 s; try again")
            time.sleep(0.05)
        store.delete(job_id)
        return Response(status_code=204)

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        return {"models": [{"name": name, "bundled": name == BUNDLED} for name in config.models]}

    @app.get("/v1/models/{name}")
    def model(name: str) -> dict[str, Any]:
        if name not in config.models:
            raise HTTPException(404, f"no model named {name!r}")
        try:
            pipe = cache.get(name, config.devices[0])
        except (ValueError, OSError) as e:
            raise HTTPException(500, f"model {name!r} cannot be loaded: {e}") from None
        return {"name": name, "defaults": pipe.default_settings().to_dict(), "size_multiple": pipe.size_multiple,
                "formats": list(VIDEO_FORMATS), "long_modes": list(LONG_MODES)}

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        return {"status": "ok", "version": __version__, "workers": sum(w.is_alive() for w in workers),
                "jobs": store.counts() if not config.token else None}  # counts only where no token guards them

    static = resources.files("vidiff.serve") / "static"
    page = {name: (static / name).read_bytes() for name in (*STATIC, "index.html")}

    @app.get("/", response_class=HTMLResponse)
    def index() -> Response:
        return Response(page["index.html"], media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)

    @app.get("/static/{name}")
    def static_file(name: str) -> Response:
        if name not in STATIC:
            raise HTTPException(404, "no such file")
        return Response(page[name], media_type=STATIC[name], headers=PAGE_HEADERS)

    app.state.store = store
    return app


def _sse(event: dict[str, Any]) -> str:
    return f"event: {event['event']}\ndata: {json.dumps(event)}\n\n"
