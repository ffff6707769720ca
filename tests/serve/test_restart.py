"""``kill -9`` the server during a job and start it again: the history survives, the job re-runs or fails."""

from __future__ import annotations

from pathlib import Path

from .conftest import QUICK, Server

# long enough to be killed while it runs, short enough to re-run (~0.05-0.5 s a step on one loaded core)
MEDIUM = {"height": "64", "width": "64", "num_frames": "4", "num_inference_steps": "25", "seed": "3"}


def _files(data: Path, job_id: str) -> list[str]:
    return sorted(p.name for p in (data / "jobs" / job_id).iterdir())


def test_kill_9_restart_history_intact_job_failed_or_requeued(tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = Server(data, "--on-restart", "fail")
    try:
        done = server.submit(QUICK).json()["id"]
        server.wait(done)
        video = server.client.get(f"/v1/jobs/{done}/video").content
        killed = server.submit(MEDIUM).json()["id"]
        server.wait(killed, ("running",), min_step=1)
        server.kill()
        # what a kill during the video's atomic write leaves: a temporary entry beside the input
        (data / "jobs" / killed / ".video.webm.vidiff-tmp-1-host-x").write_bytes(b"half a video")

        server.start()  # --on-restart fail: the interrupted job is failed, with the reason
        job = server.job(killed)
        assert job["status"] == "failed" and "server stopped" in job["error"], job
        assert _files(data, killed) == ["input.png"]  # no partial output left behind
        assert server.job(done)["status"] == "succeeded"
        assert server.client.get(f"/v1/jobs/{done}/video").content == video
        again = server.submit(MEDIUM, headers={"Idempotency-Key": "rerun-me"}).json()["id"]
        server.wait(again, ("running",), min_step=1)
        server.kill()

        server.args = ("--on-restart", "requeue")
        server.start()  # --on-restart requeue: the interrupted job runs again, to the end
        job = server.wait(again)
        assert (job["status"], job["attempts"], job["step"]) == ("succeeded", 2, 25), job
        assert _files(data, again) == ["input.png", "video.webm", "video.webm.json"]
        ids = {j["id"]: j["status"] for j in server.client.get("/v1/jobs").json()["jobs"]}
        assert ids == {done: "succeeded", killed: "failed", again: "succeeded"}
        # the same Idempotency-Key after the restart still names the same job
        assert server.submit(MEDIUM, headers={"Idempotency-Key": "rerun-me"}).json()["id"] == again
    finally:
        server.stop()
