"""``vidiff generate --batch manifest.jsonl``: many generations from one manifest, resumable, sharded over ranks.

One job per line, a JSON object::

    {"image": "photos/cat.png", "output": "out/cat.mp4", "settings": {"seed": 3, "num_frames": 14}}

Relative paths are relative to the manifest's folder; ``settings`` takes ``vidiff generate``'s generation
settings by their field names (``seed``, ``num_frames``, ``motion_bucket_id``, ...) over the options given on
the command line, which apply to every job (model, device, dtype, ...). Each job runs exactly as
``vidiff generate --image IMAGE --output OUTPUT`` would (same checks, same files, same sidecar).

* Resumable: a job is done when its output exists and its sidecar — written after the video, both atomically,
  so neither is ever half-written — records the same image, model and settings; done jobs are skipped. A run
  killed mid-job leaves only temporary files, which do not count.
* A bad line (not JSON, a missing image, an unknown setting, an output another line also writes) fails that
  job with its reason; the others run.
* Under ``torchrun`` (``WORLD_SIZE`` > 1) job ``i`` runs on rank ``i mod WORLD_SIZE``; the ranks meet at the end
  (gloo) and rank 0 prints the summary and writes it beside the manifest (``<manifest>.summary.json``). The
  files are those one process writes. Exit code 0 when every job is done, 1 when some failed.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

from vidiff.cli.main import CLIError
from vidiff.io.atomic import write_json_atomic
from vidiff.pipelines.settings import GenerationSettings, SettingError

__all__ = ["BatchJob", "add_batch_arguments", "check_single_or_batch", "read_manifest", "run_batch"]

SETTING_NAMES = frozenset(f.name for f in fields(GenerationSettings))
JOB_KEYS = {"image", "output", "settings"}


def add_batch_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch", default=None, metavar="MANIFEST",
                   help="run every job of a JSON-lines manifest ({image, output, settings} per line) instead of "
                   "--image/--output; resumable, and sharded over ranks under torchrun")


def check_single_or_batch(args: argparse.Namespace) -> None:
    """Either ``--batch`` or both ``--image`` and ``--output`` (``CLIError`` otherwise)."""
    if args.batch is not None and (args.image is not None or args.output is not None):
        raise CLIError("--batch takes images and outputs from the manifest: drop --image/--output")
    if args.batch is None and (args.image is None or args.output is None):
        raise CLIError("--image and --output are required (or --batch MANIFEST)")


class BatchJob:
    """One manifest line: where it is (1-based line number), and what it asks for or why it cannot run."""

    def __init__(self, line: int, raw: str, base: Path) -> None:
        self.line = line
        self.error: str | None = None
        self.image = self.output = None
        self.settings: dict[str, Any] = {}
        try:
            job = json.loads(raw)
            if not isinstance(job, dict):
                raise ValueError("not a JSON object")
        except ValueError as e:
            self.error = f"not a JSON object ({e})"
            return
        unknown = set(job) - JOB_KEYS
        settings = job.get("settings") or {}
        if unknown or not isinstance(settings, dict) or not job.get("image") or not job.get("output"):
            self.error = (f"unknown keys {sorted(unknown)}" if unknown else
                          "needs \"image\" and \"output\" (and optionally a \"settings\" object)")
            return
        bad = sorted(set(settings) - SETTING_NAMES)
        if bad:
            self.error = f"unknown settings {bad}; known: {sorted(SETTING_NAMES)}"
            return
        try:
            GenerationSettings.from_dict(settings, source="settings")
        except (SettingError, ValueError) as e:
            self.error = str(e)
            return
        self.image, self.output, self.settings = base / job["image"], base / job["output"], settings
        self.output_text = job["output"]

    def is_done(self, model: str, given: dict[str, Any]) -> bool:
        """The output and its sidecar exist, and the sidecar records this job's image, model and settings
        (``given``: the settings given on the command line, under the job's own)."""
        from vidiff.cli.generate import sidecar_path

        if self.error or not self.output.exists():
            return False
        try:
            sidecar = json.loads(sidecar_path(self.output).read_text())
        except (OSError, ValueError):
            return False
        recorded = sidecar.get("settings") or {}
        return (sidecar.get("image") == str(self.image) and sidecar.get("model") == model
                and all(recorded.get(k) == v for k, v in {**given, **self.settings}.items()))


def read_manifest(path: Path) -> list[BatchJob]:
    """Every non-blank line as a job; a second job writing an output already claimed fails."""
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise CLIError(f"--batch {path}: cannot read the manifest ({e})") from None
    jobs = [BatchJob(i, raw, path.parent) for i, raw in enumerate(lines, 1) if raw.strip()]
    if not jobs:
        raise CLIError(f"--batch {path}: the manifest holds no jobs")
    claimed: dict[Path, int] = {}
    for job in jobs:
        if job.error is None:
            key = job.output.resolve()
            if key in claimed:
                job.error = f"output {job.output_text} is also written by line {claimed[key]}"
            claimed.setdefault(key, job.line)
    return jobs


def _rank_and_world() -> tuple[int, int]:
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def _run_job(job: BatchJob, args: argparse.Namespace) -> tuple[str, str]:
    """Run one job through ``vidiff generate``'s own ``run``; ``(status, detail)``."""
    from vidiff.cli import generate

    if job.error:
        return "failed", job.error
    job_args = argparse.Namespace(**vars(args))
    job_args.batch, job_args.image, job_args.output, job_args.quiet = None, str(job.image), str(job.output), True
    for name, value in job.settings.items():
        setattr(job_args, name, value)
    start = time.perf_counter()
    try:
        generate.run(job_args)
    except CLIError as e:
        return "failed", str(e)
    except Exception as e:  # one job's unexpected failure must not stop the others
        return "failed", f"{type(e).__name__}: {e}"
    return "done", f"{time.perf_counter() - start:.1f} s"


def _gather(results: list[dict[str, Any]], world: int) -> list[dict[str, Any]]:
    """Every rank's results on every rank (gloo), in manifest order."""
    if world == 1:
        return results
    import torch.distributed as dist

    everything: list[Any] = [None] * world
    dist.all_gather_object(everything, results)
    return sorted((r for part in everything for r in part), key=lambda r: r["line"])


def run_batch(args: argparse.Namespace) -> int:
    """Run (this rank's share of) the manifest's jobs; print and write the summary on rank 0."""
    from vidiff.pipelines.image_to_video import bundled_model_path

    manifest = Path(args.batch)
    jobs = read_manifest(manifest)
    model = str(args.model or bundled_model_path())
    given = {name: getattr(args, name) for name in SETTING_NAMES if getattr(args, name, None) is not None}
    rank, world = _rank_and_world()
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("gloo")
    results = []
    for index, job in enumerate(jobs):
        if index % world != rank:
            continue
        if job.is_done(model, given):
            status, detail = "skipped", "already done"
        else:
            status, detail = _run_job(job, args)
        results.append({"line": job.line, "output": None if job.output is None else str(job.output),
                        "status": status, "detail": detail, "rank": rank})
        if not args.quiet:
            print(f"[rank {rank}] line {job.line}: {status} ({detail})", flush=True)
    results = _gather(results, world)
    if world > 1:
        import torch.distributed as dist

        dist.destroy_process_group()
    counts = {s: sum(r["status"] == s for r in results) for s in ("done", "skipped", "failed")}
    if rank == 0:
        summary = {"manifest": str(manifest), "model": model, "ranks": world, "jobs": len(jobs), **counts,
                   "results": results}
        write_json_atomic(summary, manifest.with_name(manifest.name + ".summary.json"))
        print(f"batch {manifest}: {counts['done']} done, {counts['skipped']} skipped (already done), "
              f"{counts['failed']} failed, on {world} rank(s)")
        for r in results:
            if r["status"] == "failed":
                print(f"  line {r['line']}: {r['detail']}")
    return 1 if counts["failed"] else 0

