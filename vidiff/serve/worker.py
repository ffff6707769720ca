"""The workers of ``vidiff serve``: one thread per device, each running queued jobs in order.

A job runs as ``vidiff generate`` runs it (the same pipeline call with the same settings, the same
``write_video``), so its video equals the CLI's. Progress is recorded per sampler step (``callback``) and
published as events; cancellation is checked in ``callback_on_step_end``, so a running job stops at its next
step, and its partial files are removed. A job with more frames than the model's clip (or a ``long_mode``)
runs as ``vidiff generate``'s long videos run, its frames streamed to the encoder. Models are chosen by
name from a fixed registry, never by path.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vidiff import __version__
from vidiff.io.atomic import write_json_atomic
from vidiff.io.video import read_image, write_video
from vidiff.io.video_stream import VideoStreamWriter
from vidiff.pipelines.long_video_pipeline import generate_long_video, is_long, plan_long_run
from vidiff.pipelines.settings import GenerationSettings
from vidiff.serve.store import Job, JobStore

logger = logging.getLogger(__name__)

BUNDLED = "bundled"
VIDEO_FORMATS = ("webm", "mp4", "gif")  # what a job may ask for; webm (VP9) plays in every browser


class JobCancelled(Exception):
    """Raised from the step callback of a job whose cancellation was requested."""


def model_registry(dirs: list[Path], bundled: Path | None) -> dict[str, Path]:
    """The models clients may choose, by name: the bundled one, then every entry of each models folder (a
    checkpoint folder, or a single ``.safetensors`` file named by its stem). Names are listed, never paths."""
    models: dict[str, Path] = {}
    if bundled is not None:
        models[BUNDLED] = bundled
    for folder in dirs:
        if not folder.is_dir():
            raise ValueError(f"models folder {folder} is not a folder")
        for entry in sorted(folder.iterdir()):
            if entry.name.startswith("."):
                continue
            name = entry.stem if entry.suffix == ".safetensors" else entry.name
            if entry.is_dir() or entry.suffix == ".safetensors":
                models.setdefault(name, entry)
    return models


class PipelineCache:
    """Loaded pipelines by (model name, device); keeps the most recently used model per device."""

    def __init__(self, models: dict[str, Path]) -> None:
        self.models = models
        self._loaded: dict[str, tuple[str, Any]] = {}
        self._locks: dict[str, threading.Lock] = collections.defaultdict(threading.Lock)

    def get(self, name: str, device: str) -> Any:
        import torch

        from vidiff.pipelines.image_to_video import ImageToVideoPipeline

        with self._locks[device]:
            held = self._loaded.get(device)
            if held is not None and held[0] == name:
                return held[1]
            self._loaded.pop(device, None)  # release the previous model before loading the next
            dtype = torch.float16 if device.startswith("cuda") else torch.float32  # as vidiff generate
            pipe = ImageToVideoPipeline.from_pretrained(self.models[name], dtype=dtype, device=device,
                                                        vae_dtype=torch.float32)
            pipe.set_progress_bar_config(disable=True)
            self._loaded[device] = (name, pipe)
            return pipe

    def resolve(self, name: str, device: str, settings: GenerationSettings,
                image_size: tuple[int, int]) -> GenerationSettings:
        """``settings`` resolved against the model's defaults as its pipeline resolves them (so a job that
        cannot run is refused before it is queued); raises ``ValueError`` naming the bad value."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return self.get(name, device)._resolve(settings, image_size)


@dataclass
class EventLog:
    """The events of one job, in order (the SSE stream replays them from any index)."""

    events: list[dict[str, Any]]
    done: bool = False


class Events:
    """Per-job event logs shared by the workers and the SSE handlers; only recent jobs are kept."""

    def __init__(self, keep: int = 64) -> None:
        self._lock = threading.Lock()
        self._logs: collections.OrderedDict[str, EventLog] = collections.OrderedDict()
        self.keep = keep

    def publish(self, job_id: str, event: dict[str, Any], *, done: bool = False) -> None:
        with self._lock:
            log = self._logs.setdefault(job_id, EventLog([]))
            log.events.append(event)
            log.done = log.done or done
            self._logs.move_to_end(job_id)
            while len(self._logs) > self.keep:
                self._logs.popitem(last=False)

    def since(self, job_id: str, index: int) -> tuple[list[dict[str, Any]], bool]:
        with self._lock:
            log = self._logs.get(job_id)
            return ([], False) if log is None else (log.events[index:], log.done)


class Worker(threading.Thread):
    """Runs the queue's jobs, oldest first, on one device."""

    def __init__(self, store: JobStore, cache: PipelineCache, events: Events, device: str,
                 wake: threading.Event) -> None:
        super().__init__(name=f"vidiff-worker-{device}", daemon=True)
        self.store, self.cache, self.events, self.device, self.wake = store, cache, events, device, wake
        self._stop = threading.Event()

    def stop(self) -> None:
        self._stop.set()
        self.wake.set()

    def run(self) -> None:
        while not self._stop.is_set():
            job = self.store.claim(self.device)
            if job is None:
                self.wake.wait(0.5)
                self.wake.clear()
                continue
            self.run_job(job)

    def _state(self, job_id: str, *, done: bool = False) -> None:
        job = self.store.get(job_id)
        if job is not None:
            self.events.publish(job_id, {"event": "state", **job.public()}, done=done)

    def run_job(self, job: Job) -> None:
        folder = self.store.job_dir(job.id)
        self._state(job.id)
        try:
            sidecar = self._generate(job, folder)
        except JobCancelled:
            self.store.remove_outputs(job.id, keep=job.input_name)
            self.store.finish(job.id, "cancelled")
        except (ValueError, OSError) as e:
            self.store.remove_outputs(job.id, keep=job.input_name)
            self.store.finish(job.id, "failed", error=str(e))
        except Exception as e:  # a bug must not take the worker down with it
            logger.exception("job %s failed", job.id)
            self.store.remove_outputs(job.id, keep=job.input_name)
            self.store.finish(job.id, "failed", error=f"internal error: {type(e).__name__}: {e}")
        else:
            self.store.finish(job.id, "succeeded", sidecar=sidecar)
        self._state(job.id, done=True)

    def _generate(self, job: Job, folder: Path) -> dict[str, Any]:
        pipe = self.cache.get(job.model, self.device)
        given = dict(job.settings)
        long_mode = given.pop("long_mode", None)  # a long-video job (``vidiff generate --long-mode``)
        settings = GenerationSettings.from_dict(given)
        image_path = folder / job.input_name
        image = read_image(image_path)
        self.store.progress(job.id, phase="encode")
        self._state(job.id)
        start = time.perf_counter()
        output = folder / f"video.{job.video_format}"
        extra: dict[str, Any] = {}
        if is_long(pipe, settings, long_mode):
            resolved, num_frames, run, extra["long_video"] = self._generate_long(job, pipe, image, settings,
                                                                                 long_mode, output)
        else:
            resolved, num_frames, run = self._generate_clip(job, pipe, image, settings, output)
        sidecar = {
            "vidiff_version": __version__, "model": job.model, "image": job.input_name,
            "image_sha256": hashlib.sha256(image_path.read_bytes()).hexdigest(), "output": output.name,
            **run, "generation_seconds": round(time.perf_counter() - start, 3),
            "settings": {**resolved.to_dict(), "num_frames": num_frames}, **extra,
        }
        write_json_atomic(sidecar, folder / f"{output.name}.json")
        return sidecar

    def _progress(self, job_id: str, step: int, total: int, phase: str) -> None:
        self.store.progress(job_id, phase=phase, step=step, total=total)
        self.events.publish(job_id, {"event": "progress", "id": job_id, "step": step, "total": total,
                                     "phase": phase})

    def _generate_clip(self, job: Job, pipe: Any, image: Any, settings: GenerationSettings,
                       output: Path) -> tuple[GenerationSettings, int, dict[str, Any]]:
        """One clip of the model's length: progress per sampler step, cancel at the next step."""

        def on_step(info: dict[str, Any]) -> None:
            step, total = info["i"] + 1, pipe.num_timesteps
            self._progress(job.id, step, total, "denoise" if step < total else "decode")

        def check_cancel(_pipe: Any, _i: int, _t: Any, _tensors: dict[str, Any]) -> dict[str, Any]:
            if self.store.cancel_requested(job.id):
                raise JobCancelled(job.id)
            return {}

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # off-resolution warnings: the settings were accepted at submit
            result = pipe(image, settings=settings, output_type="pt", progress=False, callback=on_step,
                          callback_on_step_end=check_cancel, callback_on_step_end_tensor_inputs=())
        if self.store.cancel_requested(job.id):  # asked for during the decode
            raise JobCancelled(job.id)
        write_video(result.frames[0], output, fps=result.settings.fps)
        return result.settings, result.settings.num_frames, result.run

    def _generate_long(self, job: Job, pipe: Any, image: Any, settings: GenerationSettings, mode: str | None,
                       output: Path) -> tuple[GenerationSettings, int, dict[str, Any], dict[str, Any]]:
        """A long video as ``vidiff generate --num-frames N --long-mode M`` makes it: frames stream to the
        encoder as they become final; progress counts final frames; cancel stops at the next batch of them."""
        run = plan_long_run(pipe, settings, mode=mode)
        done = 0

        def on_frames(frames: Any) -> None:
            nonlocal done
            if self.store.cancel_requested(job.id):
                raise JobCancelled(job.id)
            writer.push(frames)
            done += len(frames)
            self._progress(job.id, done, run.num_frames, "frames")

        with warnings.catch_warnings(), \
                VideoStreamWriter(output, pipe._resolve(run.settings).fps, run.num_frames) as writer:
            warnings.simplefilter("ignore")
            result = generate_long_video(pipe, image, run.num_frames, on_frames, mode=run.mode,
                                         overlap=run.overlap, settings=run.settings, progress=False)
        return result.settings, run.num_frames, result.run, result.record
