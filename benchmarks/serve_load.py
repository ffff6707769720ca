"""Load on ``vidiff serve``: N short jobs from C concurrent clients; every job finishes or is refused with 429.

Starts a server (the bundled model on the CPU, one worker) unless ``--url`` names a running one, then runs
``--rounds`` rounds of ``--jobs`` submissions from ``--clients`` threads. Each submission carries its own
``Idempotency-Key`` and is retried once with the same key after a dropped connection, so a retry can never
make a second job. After each round the queue is drained and checked:

* none lost: every accepted job reached ``succeeded`` and its video downloads;
* none duplicated: the history holds each accepted id exactly once and no job that was not accepted;
* accepted + refused (429) = submitted, and nothing else was answered;
* server memory (VmRSS of the server process, when this script started it) after each drained round: flat
  means the last rounds differ by little (no per-job leak).

    python benchmarks/serve_load.py                        # 40 jobs, 8 clients, 3 rounds
    python benchmarks/serve_load.py --json serve_load.json

Measured (2026-12-04, bundled model, one CPU worker, OMP_NUM_THREADS=1, a 2-core machine under other load):
``--max-queue 16``: 18, 19, 18 of 40 accepted and 22, 21, 22 refused with 429; all accepted succeeded, none
lost or duplicated; RSS after each drained round 376.2, 376.9, 377.6 MiB. ``--max-queue 64 --rounds 4``: all
40 accepted and succeeded each round, drained in 21.3, 15.9, 16.0, 14.0 s (1.9-2.9 jobs/s), submit latency
median 0.12-0.39 s (max 3.6 s in the first round, while the model loaded); RSS 377.4, 378.3, 378.6, 378.8 MiB.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
SETTINGS = {"height": "64", "width": "64", "num_frames": "4", "num_inference_steps": "2"}


def _image() -> bytes:
    return (REPO / "vidiff" / "assets" / "example.png").read_bytes()


def start_server(data: Path, max_queue: int) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "vidiff.cli.main", "serve", "--port", "0", "--data", str(data), "--device", "cpu",
           "--max-queue", str(max_queue)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
           "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    line = proc.stdout.readline()
    m = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
    if not m:
        raise SystemExit(f"the server did not start: {line}")
    url = f"http://127.0.0.1:{m.group(1)}"
    for _ in range(600):
        try:
            if httpx.get(url + "/healthz").status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.1)
    raise SystemExit("the server did not become healthy")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def one_round(url: str, headers: dict[str, str], jobs: int, clients: int, tag: str) -> dict[str, Any]:
    """Submit ``jobs`` jobs from ``clients`` threads, wait for the queue to drain, check the invariants."""
    image, lock = _image(), threading.Lock()
    accepted: dict[str, str] = {}  # key -> job id
    refused, other, latencies = [], [], []
    keys = iter(f"{tag}-{i}" for i in range(jobs))

    def client() -> None:
        with httpx.Client(base_url=url, headers=headers, timeout=60) as c:
            while True:
                with lock:
                    key = next(keys, None)
                if key is None:
                    return
                start, r = time.perf_counter(), None
                for _attempt in range(2):  # one retry with the same key after a dropped connection
                    try:
                        r = c.post("/v1/jobs", data=SETTINGS, files={"image": ("x.png", image, "image/png")},
                                   headers={"Idempotency-Key": key})
                        break
                    except httpx.TransportError:
                        continue
                with lock:
                    latencies.append(time.perf_counter() - start)
                    if r is None:
                        other.append((key, "no answer", ""))
                    elif r.status_code in (200, 201):
                        accepted[key] = r.json()["id"]
                    elif r.status_code == 429:
                        refused.append(key)
                    else:
                        other.append((key, r.status_code, r.text[:200]))

    began = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    submitted = time.perf_counter() - began
    with httpx.Client(base_url=url, headers=headers, timeout=60) as c:
        ids = set(accepted.values())
        while True:
            listed = _history(c)
            if all(listed.get(i) in ("succeeded", "failed", "cancelled") for i in ids):
                break
            time.sleep(0.1)
        drained = time.perf_counter() - began
        ours = {i: s for i, s in _history(c).items() if i in ids}
        videos = sum(c.get(f"/v1/jobs/{i}/video").status_code == 200 for i in ids)
    return {
        "submitted": jobs, "accepted": len(accepted), "refused_429": len(refused), "other_answers": other,
        "distinct_ids": len(ids), "succeeded": sum(s == "succeeded" for s in ours.values()),
        "videos_downloaded": videos, "lost": len(ids - set(ours)),
        "submit_latency_p50_s": round(statistics.median(latencies), 3),
        "submit_latency_max_s": round(max(latencies), 3), "submit_seconds": round(submitted, 2),
        "drain_seconds": round(drained, 2), "jobs_per_second": round(len(ids) / drained, 2),
    }


def _history(c: httpx.Client) -> dict[str, str]:
    """Every job of the history, id -> status (walking the pages); a duplicate id would be an error."""
    out: dict[str, str] = {}
    before = None
    while True:
        page = c.get("/v1/jobs", params={"limit": 100, **({"before": before} if before else {})}).json()
        for job in page["jobs"]:
            if job["id"] in out:
                raise AssertionError(f"job {job['id']} listed twice")
            out[job["id"]] = job["status"]
        before = page["next_before"]
        if before is None:
            return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default=None, help="a running server (default: start one)")
    p.add_argument("--token", default=None)
    p.add_argument("--jobs", type=int, default=40)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--max-queue", type=int, default=16, help="queue cap of the server this script starts")
    p.add_argument("--data", default=None, help="data folder of the server this script starts (default: a temp)")
    p.add_argument("--json", default=None, help="write the figures here")
    args = p.parse_args(argv)
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else {}
    proc = None
    url = args.url
    if url is None:
        import tempfile

        data = Path(args.data or tempfile.mkdtemp(prefix="vidiff-serve-load-"))
        proc, url = start_server(data / "data", args.max_queue)
    try:
        rounds = []
        for n in range(args.rounds):
            result = one_round(url, headers, args.jobs, args.clients, tag=f"r{n}-{time.time_ns()}")
            if proc is not None:
                result["server_rss_mib_after_drain"] = round(rss_mib(proc.pid), 1)
            rounds.append(result)
            print(json.dumps(result), flush=True)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(30)
    ok = all(r["accepted"] + r["refused_429"] == r["submitted"] and not r["other_answers"] and r["lost"] == 0
             and r["distinct_ids"] == r["accepted"] == r["succeeded"] == r["videos_downloaded"] for r in rounds)
    summary: dict[str, Any] = {"jobs": args.jobs, "clients": args.clients, "rounds": rounds, "invariants_hold": ok}
    if proc is not None and len(rounds) >= 2:
        summary["rss_growth_last_round_mib"] = round(rounds[-1]["server_rss_mib_after_drain"]
                                                     - rounds[-2]["server_rss_mib_after_drain"], 1)
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k != "rounds"}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
