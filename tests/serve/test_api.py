"""The jobs API against a real ``vidiff serve`` process: results equal the CLI's, cancel, limits, auth."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import PIL.Image
import pytest

from vidiff.cli.main import main
from vidiff.io.video import read_video

from .conftest import ENV, LONG, PHOTO, QUICK, Server


def test_submit_events_video_equal_the_cli(server: Server, tmp_path: Path) -> None:
    r = server.submit(QUICK)
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]
    assert r.json()["status"] == "queued"
    events = server.events(job_id)
    steps = [e["step"] for e in events if e["event"] == "progress"]
    assert steps == [1, 2, 3]  # one event per sampler step, in order
    assert events[-1]["event"] == "state" and events[-1]["status"] == "succeeded"
    job = server.job(job_id)
    assert (job["step"], job["total"], job["eta_seconds"], job["error"]) == (3, 3, None, None)
    served = tmp_path / "served.webm"
    r = server.client.get(f"/v1/jobs/{job_id}/video")
    assert r.status_code == 200 and r.headers["content-type"] == "video/webm"
    served.write_bytes(r.content)

    cli = tmp_path / "cli.webm"
    subprocess.run([sys.executable, "-m", "vidiff.cli.main", "generate", "--image", str(PHOTO), "--output", str(cli),
                    "--height", "64", "--width", "64", "--num-frames", "4", "--steps", "3", "--seed", "5",
                    "--device", "cpu", "--quiet"], check=True, env=ENV)
    (a, fps_a), (b, fps_b) = read_video(served), read_video(cli)
    assert a.shape == (4, 3, 64, 64) and a.std() > 0.01 and fps_a == fps_b == 7
    assert np.array_equal(a.numpy(), b.numpy())
    cli_sidecar = json.loads((tmp_path / "cli.webm.json").read_text())
    assert job["sidecar"]["settings"] == cli_sidecar["settings"]
    assert job["sidecar"]["image_sha256"] == cli_sidecar["image_sha256"]
    assert job["sidecar"]["fast_path"] == cli_sidecar["fast_path"]


def test_idempotent_resubmission_returns_the_same_job(server: Server) -> None:
    key = {"Idempotency-Key": "retry-7f3a"}
    first = server.submit(QUICK, headers=key)
    again = server.submit(QUICK, headers=key)
    assert first.status_code == 201 and again.status_code == 200
    assert first.json()["id"] == again.json()["id"]
    ids = [j["id"] for j in server.client.get("/v1/jobs", params={"limit": 100}).json()["jobs"]]
    assert ids.count(first.json()["id"]) == 1
    other = server.submit({**QUICK, "seed": "6"}, headers=key)  # the key reused for another request
    assert other.status_code == 422 and "different request" in other.json()["detail"]
    server.wait(first.json()["id"])


def test_401_without_the_token(server: Server) -> None:
    with httpx.Client(base_url=server.url) as anonymous:
        for method, path in [("GET", "/v1/jobs"), ("POST", "/v1/jobs"), ("GET", "/v1/models"),
                             ("GET", "/v1/jobs/" + "0" * 32 + "/video")]:
            r = anonymous.request(method, path)
            assert r.status_code == 401, (method, path)
            assert r.headers["www-authenticate"] == "Bearer"
        assert anonymous.get("/v1/jobs", headers={"Authorization": "Bearer wrong-token"}).status_code == 401
        assert anonymous.get("/healthz").status_code == 200
        assert anonymous.get("/").status_code == 200  # the page asks for the token itself


def _png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    PIL.Image.new("RGB", (width, height), (90, 120, 200)).save(buf, format="PNG")
    return buf.getvalue()


def _post(server: Server, content: bytes, name: str = "x.png", **fields: str) -> httpx.Response:
    return server.client.post("/v1/jobs", data={**QUICK, **fields}, files={"image": (name, content, "image/png")})


def test_413_415_422_where_they_belong(server: Server, tmp_path: Path) -> None:
    before = server.client.get("/v1/jobs", params={"limit": 100}).json()["jobs"]
    assert _post(server, b"\0" * (2 * 2**20)).status_code == 413  # over --max-upload-mb 1
    assert _post(server, _png(1000, 1000)).status_code == 413  # 1 Mpx, over --max-image-pixels
    assert _post(server, b"not an image at all").status_code == 415
    gif = io.BytesIO()
    PIL.Image.new("RGB", (32, 32)).save(gif, format="GIF")
    assert _post(server, gif.getvalue(), name="photo.png").status_code == 415  # the content decides, not the name
    r = _post(server, _png(64, 64), name="photo.gif")  # and a png named .gif is a png
    assert r.status_code == 201, r.text
    server.wait(r.json()["id"])
    for bad, word in [({"num_frames": "many"}, "num_frames"), ({"motion_bucket_id": "5000"}, "motion_bucket_id"),
                      ({"height": "63"}, "height"), ({"sampler": "nope"}, "sampler"), ({"model": "nope"}, "model"),
                      ({"format": "avi"}, "format"), ({"colour": "red"}, "colour"),
                      ({"num_frames": "200", "height": "1024", "width": "1024"}, "video pixels")]:
        r = _post(server, _png(64, 64), **bad)
        assert r.status_code == 422, (bad, r.text)
        assert word in r.json()["detail"], r.json()
    assert server.client.post("/v1/jobs", data=QUICK).status_code == 422  # no image
    after = server.client.get("/v1/jobs", params={"limit": 100}).json()["jobs"]
    assert len(after) == len(before) + 1  # only the one good request made a job


def test_queue_cap_429_and_cancel_a_queued_job_atomically(server: Server) -> None:
    running = server.submit(LONG).json()["id"]
    server.wait(running, ("running",), min_step=1)
    queued = [server.submit(QUICK) for _ in range(2)]  # --max-queue 2
    assert [r.status_code for r in queued] == [201, 201]
    full = server.submit(QUICK)
    assert full.status_code == 429 and full.headers["retry-after"]
    first, second = (r.json()["id"] for r in queued)
    r = server.client.post(f"/v1/jobs/{first}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    assert server.submit(QUICK, headers={"Idempotency-Key": "after-cancel"}).status_code == 201  # room again
    assert server.client.post(f"/v1/jobs/{first}/cancel").status_code == 409  # already cancelled
    for job_id in (running, second):
        server.client.post(f"/v1/jobs/{job_id}/cancel")
    job = server.wait(first)
    assert (job["status"], job["started"], job["attempts"]) == ("cancelled", None, 0)  # never ran
    assert sorted(p.name for p in (server.data / "jobs" / first).iterdir()) == ["input.png"]
    server.wait(running)
    assert server.wait(second)["status"] == "cancelled"


def test_cancel_a_running_job_stops_within_one_step(server: Server) -> None:
    job_id = server.submit(LONG).json()["id"]
    server.wait(job_id, ("running",), min_step=2)
    asked = time.monotonic()
    r = server.client.post(f"/v1/jobs/{job_id}/cancel")
    assert r.status_code == 202 and r.json()["cancel_requested"]
    events = server.events(job_id)
    job = server.wait(job_id)
    assert job["status"] == "cancelled" and time.monotonic() - asked < 10
    assert job["step"] - job["cancel_requested_step"] <= 1, job  # at most the step under way when asked
    assert max(e["step"] for e in events if e["event"] == "progress") <= job["cancel_requested_step"] + 1
    assert job["step"] < 300
    folder = server.data / "jobs" / job_id
    assert sorted(p.name for p in folder.iterdir()) == ["input.png"]  # no partial video, no temporaries
    assert server.client.get(f"/v1/jobs/{job_id}/video").status_code == 409
    assert server.client.delete(f"/v1/jobs/{job_id}").status_code == 204
    assert not folder.exists() and server.client.get(f"/v1/jobs/{job_id}").status_code == 404


def test_path_traversal_in_every_field_is_refused_and_touches_nothing(server: Server, tmp_path: Path) -> None:
    def snapshot() -> dict[str, float]:
        root = server.data.parent
        return {str(p): p.stat().st_mtime_ns for p in root.rglob("*") if "-wal" not in p.name and "-shm" not in p.name
                and p.suffix != ".sqlite3"}

    before, jobs_before = snapshot(), len(server.client.get("/v1/jobs", params={"limit": 100}).json()["jobs"])
    evil = ["../../etc/passwd", "..%2F..%2Fjobs.sqlite3", "/etc/passwd", "..\\..\\x", "jobs/../../x"]
    for value in evil:
        for field in ("model", "format", "sampler", "behaviour"):
            assert _post(server, _png(64, 64), **{field: value}).status_code == 422, (field, value)
        assert _post(server, _png(64, 64), name=value).status_code == 422, value
        r = server.client.post("/v1/jobs", data=QUICK, files={"image": ("x.png", _png(64, 64), "image/png")},
                               headers={"Idempotency-Key": value})
        assert r.status_code == 422, value
        quoted = value.replace("/", "%2F")
        for path in (f"/v1/jobs/{quoted}", f"/v1/jobs/{quoted}/video", f"/v1/jobs/{quoted}/image",
                     f"/v1/jobs/{quoted}/events", f"/v1/models/{quoted}", f"/static/{quoted}"):
            assert 400 <= server.client.get(path).status_code < 500, path
        assert 400 <= server.client.delete(f"/v1/jobs/{quoted}").status_code < 500
        assert 400 <= server.client.post(f"/v1/jobs/{quoted}/cancel").status_code < 500
    for path in ("/static/../app.py", "/static/%2E%2E/app.py", "/v1/jobs/../../jobs.sqlite3"):
        assert 400 <= httpx.get(server.url + path, headers=server.client.headers).status_code < 500, path
    assert snapshot() == before
    assert len(server.client.get("/v1/jobs", params={"limit": 100}).json()["jobs"]) == jobs_before


def test_models_listed_by_name_with_defaults(server: Server) -> None:
    models = server.client.get("/v1/models").json()["models"]
    assert models == [{"name": "bundled", "bundled": True}]
    info = server.client.get("/v1/models/bundled").json()
    assert info["defaults"]["height"] == 128 and info["defaults"]["num_inference_steps"] == 25
    page = server.client.get("/v1/jobs", params={"limit": 1}).json()
    assert len(page["jobs"]) == 1 and page["next_before"] is not None
    older = server.client.get("/v1/jobs", params={"limit": 1, "before": page["next_before"]}).json()
    assert older["jobs"][0]["id"] != page["jobs"][0]["id"]


@pytest.mark.parametrize("args", [["--host", "0.0.0.0"], ["--host", "0.0.0.0", "--token", "short"],
                                  ["--host", "192.168.1.7", "--token-file", "/nonexistent/token"]])
def test_refuses_to_bind_off_loopback_without_a_token(args: list[str], tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    assert main(["serve", "--port", "0", "--data", str(tmp_path / "d"), *args]) == 2
    err = capsys.readouterr().err
    assert "token" in err and err.count("\n") == 1
    assert not (tmp_path / "d").exists()


def test_load_every_job_finishes_or_gets_429_none_lost_or_duplicated(server: Server, tmp_path: Path) -> None:
    """A light run of benchmarks/serve_load.py (12 jobs, 4 clients) against this module's server (queue cap 2)."""
    out = tmp_path / "load.json"
    bench = Path(__file__).resolve().parents[2] / "benchmarks" / "serve_load.py"
    proc = subprocess.run([sys.executable, str(bench), "--url", server.url, "--token", server.token, "--jobs", "12",
                           "--clients", "4", "--rounds", "1", "--json", str(out)],
                          capture_output=True, text=True, timeout=300, env=ENV)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (r,) = json.loads(out.read_text())["rounds"]
    assert r["accepted"] + r["refused_429"] == 12 and r["other_answers"] == [] and r["lost"] == 0
    assert r["accepted"] == r["distinct_ids"] == r["succeeded"] == r["videos_downloaded"] >= 2
    assert r["refused_429"] >= 1  # 4 clients against a queue of 2: some must be turned away


def test_events_of_a_finished_job_are_its_final_state_once(server: Server) -> None:
    job_id = server.submit(QUICK).json()["id"]
    server.wait(job_id)
    events = server.events(job_id)
    assert [e["event"] for e in events] == ["state"] and events[0]["status"] == "succeeded"


def test_models_folder_is_listed_by_name(tmp_path: Path) -> None:
    from vidiff.pipelines.image_to_video import bundled_model_path
    from vidiff.serve.worker import model_registry

    (tmp_path / "svd-xt").mkdir()
    (tmp_path / "sv3d_u.safetensors").write_bytes(b"")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / "notes.txt").write_text("not a model")
    models = model_registry([tmp_path], bundled_model_path())
    assert list(models) == ["bundled", "sv3d_u", "svd-xt"]
    with pytest.raises(ValueError, match="not a folder"):
        model_registry([tmp_path / "notes.txt"], None)


def test_long_video_job_equals_the_cli_and_cancels_between_frames(server: Server, tmp_path: Path) -> None:
    """More frames than the bundled model's 14: the job runs the long-video path the CLI runs."""
    settings = {**QUICK, "num_frames": "20", "num_inference_steps": "2"}
    assert server.submit({**settings, "long_mode": "sideways"}).status_code == 422  # named in the error
    job_id = server.submit({**settings, "long_mode": "chain"}).json()["id"]
    events = server.events(job_id)
    frames_done = [e["step"] for e in events if e["event"] == "progress" and e["phase"] == "frames"]
    assert frames_done and frames_done[-1] == 20 and frames_done == sorted(frames_done)
    assert len(frames_done) >= 2  # windows handed over as they became final, not one video at the end
    job = server.wait(job_id)
    assert job["status"] == "succeeded", job
    assert job["sidecar"]["long_video"]["long_mode"] == "chain" and job["sidecar"]["settings"]["num_frames"] == 20
    served = tmp_path / "served.webm"
    served.write_bytes(server.client.get(f"/v1/jobs/{job_id}/video").content)
    cli = tmp_path / "cli.webm"
    subprocess.run([sys.executable, "-m", "vidiff.cli.main", "generate", "--image", str(PHOTO), "--output", str(cli),
                    "--height", "64", "--width", "64", "--num-frames", "20", "--steps", "2", "--seed", "5",
                    "--long-mode", "chain", "--device", "cpu", "--quiet"], check=True, env=ENV)
    (a, _), (b, _) = read_video(served), read_video(cli)
    assert a.shape == (20, 3, 64, 64) and np.array_equal(a.numpy(), b.numpy())
    assert job["sidecar"]["long_video"] == json.loads((tmp_path / "cli.webm.json").read_text())["long_video"]

    fifo = server.submit({**settings, "num_frames": "200", "long_mode": "fifo"}).json()["id"]
    server.wait(fifo, ("running",), min_step=1)
    assert server.client.post(f"/v1/jobs/{fifo}/cancel").status_code == 202
    job = server.wait(fifo)
    assert job["status"] == "cancelled" and job["step"] < 200
    assert sorted(p.name for p in (server.data / "jobs" / fifo).iterdir()) == ["input.png"]
