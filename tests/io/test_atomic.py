"""vidiff.io.atomic: the one atomic writer, the debris a killed writer leaves and who removes it, and the
checks that refuse crafted or unusable files before anything is written."""

from __future__ import annotations

import json
import os
import re
import signal
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vidiff.io.atomic import is_temp_of, remove_stale_temps, write_json_atomic
from vidiff.io.components import check_plain_name
from vidiff.io.video import write_video
from vidiff.io.weights import CheckpointError, load_safetensors, save_safetensors_atomic

from ..conftest import SKIMAGE_DATA, package_data

REPO = Path(__file__).resolve().parents[2]
KILLED_WRITER = """
import os, signal, sys
from vidiff.io.atomic import atomic_dir, atomic_file
with (atomic_dir if sys.argv[2] == "dir" else atomic_file)(sys.argv[1]) as tmp:
    (tmp / "half" if sys.argv[2] == "dir" else tmp).write_text("half written")
    os.kill(os.getpid(), signal.SIGKILL)
"""


def _killed_writer(dest: Path, kind: str) -> None:
    proc = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(dest), kind], capture_output=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == -signal.SIGKILL, proc.stderr


def test_every_atomic_write_goes_through_one_module() -> None:
    """Renames into place and temporary entries exist once, in vidiff/io/atomic.py."""
    pattern = re.compile(r"os\.replace\(|os\.rename\(|mkstemp\(|mkdtemp\(|NamedTemporaryFile\(")
    offenders = [str(p.relative_to(REPO)) for p in sorted((REPO / "vidiff").rglob("*.py"))
                 if p.name != "atomic.py" and pattern.search(p.read_text())]
    assert offenders == []


@pytest.mark.parametrize("kind", ["file", "dir"])
def test_debris_of_a_killed_writer_is_removed_by_the_next_write(tmp_path: Path, kind: str) -> None:
    dest = tmp_path / ("clip.mp4" if kind == "file" else "frames")
    _killed_writer(dest, kind)
    debris = [p for p in tmp_path.iterdir() if is_temp_of(dest, p.name)]
    assert len(debris) == 1 and debris[0].name.startswith(f".{dest.name}.vidiff-tmp-") and not dest.exists()
    # a live writer's entry and other files stay: only dead processes' entries of this destination go
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        busy = tmp_path / f".{dest.name}.vidiff-tmp-{live.pid}-{debris[0].name.split('-')[-2]}-abcd1234"
        busy.write_text("being written")
        others = [tmp_path / f".{dest.name}.keep", tmp_path / ".other.mp4.vidiff-tmp-1-h-x"]
        for p in others:
            p.write_text("not debris of this destination")
        write_video(torch.rand(2, 3, 16, 16), f"{dest}/" if kind == "dir" else dest, fps=4)
        left = sorted(p.name for p in tmp_path.iterdir())
        assert left == sorted([dest.name, busy.name, *(p.name for p in others)])
    finally:
        live.kill()
        live.wait()
    assert remove_stale_temps(dest) == [busy]  # now that its process is gone


def test_save_and_json_writers_clean_debris_too(tmp_path: Path) -> None:
    for dest, write in ((tmp_path / "w.safetensors", lambda d: save_safetensors_atomic({"x": torch.ones(2)}, d)),
                        (tmp_path / "c.json", lambda d: write_json_atomic({"a": 1}, d))):
        _killed_writer(dest, "file")
        write(dest)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.json", "w.safetensors"]


def test_frames_output_replaces_only_an_earlier_frames_output(tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    with pytest.raises(ValueError, match="did not write"):
        write_video(torch.rand(2, 3, 8, 8), mine, fps=4)
    assert [p.name for p in mine.iterdir()] == ["thesis.tex"]
    earlier = write_video(torch.rand(3, 3, 8, 8), tmp_path / "frames", fps=4)
    write_video(torch.rand(2, 3, 8, 8), earlier, fps=4)  # an earlier output is replaced
    assert sorted(p.name for p in earlier.iterdir()) == ["frame_0000.png", "frame_0001.png", "video.json"]


@pytest.mark.parametrize("shape, offsets, needle", [([-2], [0, 8], "invalid shape"), ([2, 1.5], [0, 8], "shape"),
                                                    ([3], [0, 8], "needs 12 bytes"), ([2], [8, 0], "data_offsets")])
def test_safetensors_header_entries_are_checked(tmp_path: Path, shape: list, offsets: list, needle: str) -> None:
    header = json.dumps({"w": {"dtype": "F32", "shape": shape, "data_offsets": offsets}}).encode()
    path = tmp_path / "crafted.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + bytes(8))
    for device in ("meta", "cpu"):
        with pytest.raises(CheckpointError, match=rf"crafted\.safetensors: tensor 'w' .*{needle}"):
            load_safetensors(path, device=device)


@pytest.mark.parametrize("name", ["../x", "/etc", "a/../../b", "", ".", "a//b", "a\\..\\b", 5, None])
def test_only_plain_relative_names_are_accepted(name: object) -> None:
    with pytest.raises(CheckpointError, match=r"^model\.json: component"):
        check_plain_name(name, "model.json", "component")


def test_plain_names_are_accepted() -> None:
    assert check_plain_name("unet", "m", "component", nested=False) == "unet"
    assert check_plain_name("shards/model-00001-of-00002.safetensors", "m", "shard") == \
        "shards/model-00001-of-00002.safetensors"
    with pytest.raises(CheckpointError):
        check_plain_name("a/b", "m", "component", nested=False)


def test_package_data_is_found_through_the_package() -> None:
    import skimage

    assert package_data("skimage", "data") == SKIMAGE_DATA == Path(skimage.__file__).parent / "data"
    assert (SKIMAGE_DATA / "coffee.png").is_file()


def test_no_test_reads_a_hard_coded_environment_path() -> None:
    pattern = re.compile(r"\.venv/lib|site-packages|python3\.\d+/")
    offenders = [str(p.relative_to(REPO)) for p in sorted((REPO / "tests").rglob("*.py"))
                 if p.name != Path(__file__).name and pattern.search(p.read_text())]
    assert offenders == []
