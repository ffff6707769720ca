"""The hostile-user sweep of ``vidiff generate`` / ``info`` / ``convert``, each case through the real command in
a subprocess: one line on stderr naming the bad value or file, exit code 2, no traceback, nothing the user
had destroyed or changed, and (for generate) refused before the model is even read.

That last point is checked by ordering: output, device and settings cases pass ``--model`` a path that does not
exist, so a run that got as far as loading a model would fail about the model instead.

Unwritable and full filesystems are real: a read-only and a small tmpfs mounted in a private user and mount
namespace (``unshare -Urm``), because permission bits do not stop root. Where namespaces are unavailable those
two tests skip and say so.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest

from vidiff.io.checkpoints import read_checkpoint
from vidiff.pipelines.settings import GenerationSettings

from ..conftest import SKIMAGE_DATA

REPO = Path(__file__).resolve().parents[2]
PHOTO = SKIMAGE_DATA / "coffee.png"  # 600x400, real
NO_MODEL = "/nonexistent/model"
SMALL = ["--num-frames", "2", "--steps", "1", "--height", "32", "--width", "32", "--quiet"]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def vidiff(*args: object, cwd: Path | None = None, wrap: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    cmd = [*wrap, sys.executable, "-m", "vidiff.cli.main", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, env=ENV, cwd=cwd, timeout=300)


def refused(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """Assert exit 2 and one error line, the last on stderr, containing every needle; return that line. (A
    run refused after loading a model may print the library's warnings before it.)"""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("vidiff ")]
    assert proc.returncode == 2 and errors == lines[-1:] and "Traceback" not in proc.stderr, proc.stderr
    for needle in needles:
        assert needle in lines[-1], lines[-1]
    return lines[-1]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _crafted(model: Path, tmp_path: Path, edit) -> Path:
    copy = tmp_path / "crafted"
    shutil.copytree(model, copy)
    edit(copy)
    return copy


def _edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def _has_namespaces() -> bool:
    probe = subprocess.run(["unshare", "-Urm", "true"], capture_output=True) if shutil.which("unshare") else None
    return probe is not None and probe.returncode == 0


namespaces = pytest.mark.skipif(not _has_namespaces(), reason="needs unshare -Urm (user + mount namespaces) "
                                "to mount a real read-only or full filesystem")


# -- data lost or inputs modified ----------------------------------------------------------------------------
def test_output_folder_of_user_files_is_not_replaced(tmp_path: Path) -> None:
    folder = tmp_path / "holiday"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    refused(vidiff("generate", "--image", PHOTO, "--output", f"{folder}/", "--model", NO_MODEL), "holiday")
    assert snapshot(folder) == {"notes.txt": b"keep me"}


def test_output_equal_to_the_image_is_refused(tmp_path: Path) -> None:
    from PIL import Image

    image = tmp_path / "photo.webp"  # webp is both an image and a video format
    Image.open(PHOTO).save(image)
    before = image.read_bytes()
    refused(vidiff("generate", "--image", image, "--output", image, "--model", NO_MODEL), "photo.webp",
            "input image")
    assert image.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["photo.webp"]


def test_output_equal_to_the_input_video_is_refused(tmp_path: Path) -> None:
    from vidiff.io.video import write_video

    clip = tmp_path / "clip.mp4"
    write_video(np.zeros((4, 3, 32, 32), np.float32), clip, fps=8)
    before = clip.read_bytes()
    refused(vidiff("deflicker", clip, clip), "clip.mp4", "input video")
    refused(vidiff("generate", "--video", clip, "--output", clip, "--model", NO_MODEL), "clip.mp4", "input video")
    folder = tmp_path / "frames"  # a folder output that holds the input video
    folder.mkdir()
    inside = folder / "in.mp4"
    inside.write_bytes(before)
    refused(vidiff("deflicker", inside, f"{folder}/"), "in.mp4", "input video")
    assert clip.read_bytes() == before and inside.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["clip.mp4", "frames"] and os.listdir(folder) == ["in.mp4"]


@pytest.mark.parametrize("where", ["contains", "inside"])
def test_convert_never_touches_its_source(tiny_vidiff: Path, tmp_path: Path, where: str) -> None:
    src = tmp_path / "outer" / "model"
    shutil.copytree(tiny_vidiff, src)
    before = snapshot(tmp_path / "outer")
    dst = tmp_path / "outer" if where == "contains" else src / "converted"
    refused(vidiff("convert", src, dst, "--to", "vidiff", "--overwrite"), str(dst), "source")
    assert snapshot(tmp_path / "outer") == before


# -- tracebacks turned into one line, before any work ----------------------------------------------------------
def test_output_dot_is_refused(tmp_path: Path) -> None:
    (tmp_path / "mine.txt").write_text("x")
    refused(vidiff("generate", "--image", PHOTO, "--output", ".", "--model", NO_MODEL, cwd=tmp_path), "--output")
    assert snapshot(tmp_path) == {"mine.txt": b"x"}


def test_output_under_a_file_is_refused(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    refused(vidiff("generate", "--image", PHOTO, "--output", blocker / "clip.mp4", "--model", NO_MODEL),
            str(blocker), "not a folder")
    assert blocker.read_text() == "x"


def test_output_where_no_file_can_be_created_is_refused() -> None:
    """/proc accepts no new files, not even from root."""
    refused(vidiff("generate", "--image", PHOTO, "--output", "/proc/clip.mp4", "--model", NO_MODEL), "/proc")


@namespaces
def test_output_on_a_read_only_filesystem_is_refused(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    mount = ("unshare", "-Urm", "sh", "-c", f'mount -t tmpfs -o ro,size=64k tmpfs "{ro}" && exec "$0" "$@"')
    proc = vidiff("generate", "--image", PHOTO, "--output", ro / "clip.mp4", "--model", NO_MODEL, wrap=mount)
    refused(proc, str(ro), "Read-only file system")


@namespaces
def test_full_disk_is_refused_before_work_and_encoder_enospc_is_one_line(tiny_vidiff: Path, tmp_path: Path) -> None:
    """A filesystem already full is refused up front; one with 4 KiB left lets the probe through, then the
    encoder's own ENOSPC becomes one line and leaves neither a partial video nor a temporary file."""
    disk = tmp_path / "disk"
    disk.mkdir()
    script = (f'mount -t tmpfs -o size=64k tmpfs "{disk}" && dd if=/dev/zero of="{disk}/fill" bs=4k count=$FILL '
              f'2>/dev/null; "$0" "$@"; rc=$?; ls -A "{disk}"; exit $rc')
    full = vidiff("generate", "--image", PHOTO, "--output", disk / "clip.mp4", "--model", NO_MODEL,
                  wrap=("env", "FILL=16", "unshare", "-Urm", "sh", "-c", script))
    refused(full, "clip.mp4", "No space left on device")
    nearly = vidiff("generate", "--image", PHOTO, "--output", disk / "clip.mp4", "--model", tiny_vidiff,
                    *SMALL, "--height", "96", "--width", "96",  # a 12 KB video
                    wrap=("env", "FILL=15", "unshare", "-Urm", "sh", "-c", script))
    refused(nearly, "clip.mp4", "No space left on device")
    assert nearly.stdout.split() == ["fill"]  # no video, no sidecar, no temporary file left in the mount


def test_unknown_device_is_refused() -> None:
    refused(vidiff("generate", "--image", PHOTO, "--output", "x.mp4", "--device", "foo", "--model", NO_MODEL),
            "--device", "foo")


@pytest.mark.parametrize("field, value", [("height", "tall"), ("max_guidance_scale", "high"), ("sampler", 3),
                                          ("seed", True)])
def test_settings_file_with_a_wrong_type_is_refused(tmp_path: Path, field: str, value: object) -> None:
    """A few fields through the command; test_every_setting_checks_its_type goes through all of them."""
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"settings": {field: value}}))
    refused(vidiff("generate", "--image", PHOTO, "--output", tmp_path / "x.mp4", "--settings", bad,
                   "--model", NO_MODEL), "bad.json", field)


@pytest.mark.parametrize("field, value", [("dtype", "float8"), ("attention_chunk", 0), ("vae_tiling", "yes"),
                                          ("offload", 1)])
def test_settings_file_with_a_bad_run_option_is_refused(tmp_path: Path, field: str, value: object) -> None:
    """The run options a replay takes from the sidecar (dtype, offload, tiling, chunking) are checked too."""
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"settings": {}, field: value}))
    refused(vidiff("generate", "--image", PHOTO, "--output", tmp_path / "x.mp4", "--settings", bad,
                   "--model", NO_MODEL), "bad.json", field)


@pytest.mark.parametrize("field", [f.name for f in fields(GenerationSettings)])
def test_every_setting_checks_its_type(field: str) -> None:
    """Whatever JSON can hold in a wrong type (a list, a string or a bool for numbers, a number for names) is a
    ValueError naming the file and the field, never a TypeError from a comparison."""
    for value in ([1], "7" if field not in ("sampler", "behaviour") else 7, True, {"a": 1}):
        with pytest.raises(ValueError, match=rf"^clip\.json: {field} must be "):
            GenerationSettings.from_dict({field: value}, source="clip.json")


def test_png_given_as_settings_is_refused(tmp_path: Path) -> None:
    refused(vidiff("generate", "--image", PHOTO, "--output", tmp_path / "x.mp4", "--settings", PHOTO,
                   "--model", NO_MODEL), "coffee.png", "not a JSON sidecar")


def test_folder_given_as_image_says_so(tmp_path: Path) -> None:
    refused(vidiff("generate", "--image", tmp_path, "--output", tmp_path / "x.mp4", "--model", NO_MODEL),
            "--image", str(tmp_path), "is a folder")


def test_huge_seed_names_the_option(tmp_path: Path) -> None:
    refused(vidiff("generate", "--image", PHOTO, "--output", tmp_path / "x.mp4", "--seed", str(10**23),
                   "--model", NO_MODEL), "--seed", str(10**23))


def test_non_string_component_in_vidiff_json(tiny_vidiff: Path, tmp_path: Path) -> None:
    model = _crafted(tiny_vidiff, tmp_path, lambda m: _edit_json(m / "vidiff.json",
                                                                  lambda d: d["components"].append(5)))
    refused(vidiff("info", model), "vidiff.json", "component")  # generate reads models through the same reader


def test_negative_shape_in_a_safetensors_header(tiny_vidiff: Path, tmp_path: Path) -> None:
    def negate(model: Path) -> None:
        path = model / "vae" / "model.safetensors"
        data = path.read_bytes()
        (n,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8:8 + n])
        name = next(k for k in header if k != "__metadata__")
        header[name]["shape"][0] = -header[name]["shape"][0]
        raw = json.dumps(header).encode()
        raw += b" " * (-len(raw) % 8)
        path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n:])

    model = _crafted(tiny_vidiff, tmp_path, negate)
    refused(vidiff("info", model), "vae/model.safetensors", "shape")  # info reads the header alone
    refused(vidiff("convert", model, tmp_path / "out", "--to", "diffusers"), "vae/model.safetensors", "shape")


def test_invalid_generation_defaults_name_the_model(tiny_vidiff: Path, tmp_path: Path) -> None:
    def zero_frames(d: dict) -> None:
        d["generation_defaults"] = {"num_frames": 0}

    model = _crafted(tiny_vidiff, tmp_path, lambda m: _edit_json(m / "vidiff.json", zero_frames))
    line = refused(vidiff("generate", "--image", PHOTO, "--output", tmp_path / "x.mp4", "--model", model, "--quiet"),
                   str(model / "vidiff.json"), "generation_defaults", "num_frames")
    assert "--" not in line  # not blamed on an option the user gave


def test_negative_sigma_max_names_the_scheduler_file(tiny_vidiff: Path, tmp_path: Path) -> None:
    model = _crafted(tiny_vidiff, tmp_path, lambda m: _edit_json(m / "scheduler" / "config.json",
                                                                  lambda d: d.update(sigma_max=-700.0)))
    out = tmp_path / "x.mp4"
    refused(vidiff("generate", "--image", PHOTO, "--output", out, "--model", model, *SMALL),
            "scheduler/config.json", "sigma_max")
    assert not out.exists()


# -- path traversal ---------------------------------------------------------------------------------------------
def test_component_outside_the_model_is_refused(tiny_vidiff: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    shutil.copytree(tiny_vidiff / "scheduler", outside / "evil")
    model = _crafted(tiny_vidiff, tmp_path, lambda m: _edit_json(
        m / "vidiff.json", lambda d: d["components"].append("../outside/evil")))
    before = snapshot(outside)
    refused(vidiff("info", model), "../outside/evil", "plain relative name")
    refused(vidiff("convert", model, tmp_path / "converted", "--to", "vidiff"), "../outside/evil")
    assert snapshot(outside) == before and not (tmp_path / "converted").exists()


def test_shard_outside_the_model_is_refused(tiny_svd_folder: Path, tmp_path: Path) -> None:
    model = tmp_path / "sharded"
    shutil.copytree(tiny_svd_folder, model)
    weights = model / "unet" / "diffusion_pytorch_model.safetensors"
    shutil.move(weights, tmp_path / "stolen.safetensors")  # a readable file outside the model folder
    names = [k for k in read_checkpoint(tiny_svd_folder, device="meta")["unet"].state_dict]
    index = {"metadata": {}, "weight_map": dict.fromkeys(names, "../../stolen.safetensors")}
    (model / "unet" / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))
    refused(vidiff("info", model), "../../stolen.safetensors", "plain relative name")


# -- debris of a killed run -------------------------------------------------------------------------------------
def test_killed_writer_debris_is_removed_by_the_next_write(tiny_vidiff: Path, tmp_path: Path) -> None:
    """A real writer is SIGKILLed between writing its temporary folder and renaming it; the next conversion to
    the same destination removes what it left, and nothing else."""
    dst = tmp_path / "converted"
    (tmp_path / ".converted.keep").write_text("a user's hidden file")
    killer = (
        "import os, signal, sys\n"
        "from vidiff.io.atomic import atomic_dir\n"
        "with atomic_dir(sys.argv[1]) as tmp:\n"
        "    (tmp / 'half.json').write_text('{')\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", killer, str(dst)], env=ENV, capture_output=True)
    assert proc.returncode == -signal.SIGKILL
    debris = [p.name for p in tmp_path.iterdir() if ".vidiff-tmp-" in p.name]
    assert len(debris) == 1 and debris[0].startswith(".converted.") and not dst.exists()
    done = vidiff("convert", tiny_vidiff, dst, "--to", "vidiff")
    assert done.returncode == 0, done.stderr
    assert sorted(os.listdir(tmp_path)) == [".converted.keep", "converted"]
