"""End-to-end parity with diffusers' StableVideoDiffusionPipeline on identical random weights.

diffusers builds and saves a tiny SVD model; its own pipeline and vidiff's (reading the same folder,
and the single-file and vidiff-folder conversions of it) generate from the same real photograph with
the same seed. Frames must agree to 1e-4 on [0, 1] pixels in float32.
"""

from __future__ import annotations

from pathlib import Path

import diffusers
import numpy as np
import PIL.Image
import pytest
import torch

from vidiff.io import read_checkpoint, write_checkpoint
from vidiff.pipelines.image_to_video import ImageToVideoPipeline

from ..conftest import SKIMAGE_DATA

TOL = 1e-4

# non-square size, noise augmentation, the per-frame ramp, a chunk size that does not divide T
CASE = dict(height=64, width=96, num_frames=5, num_inference_steps=4, min_guidance_scale=1.0,
            max_guidance_scale=3.0, fps=6, motion_bucket_id=100, noise_aug_strength=0.1,
            decode_chunk_size=2)  # fmt: skip


def _photo(name: str = "chelsea.png") -> PIL.Image.Image:
    """A real photograph shipped by scikit-image (chelsea is 451x300: CLIP sees it at full size)."""

    return PIL.Image.open(SKIMAGE_DATA / name).convert("RGB")


def _diffusers_frames(folder: Path, image: PIL.Image.Image, seed: int, **kw) -> np.ndarray:
    pipe = diffusers.StableVideoDiffusionPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(image, generator=torch.Generator().manual_seed(seed), output_type="np", **kw)
    return np.asarray(out.frames)


def _vidiff_frames(path: Path, image: PIL.Image.Image, seed: int, **kw) -> np.ndarray:
    pipe = ImageToVideoPipeline.from_pretrained(path)
    out = pipe(image, generator=torch.Generator().manual_seed(seed), output_type="np", progress=False, **kw)
    return np.asarray(out.frames)


@pytest.fixture(scope="module")
def reference(tiny_svd_folder: Path) -> np.ndarray:
    return _diffusers_frames(tiny_svd_folder, _photo(), 7, **CASE)


def test_frames_match_diffusers(tiny_svd_folder: Path, reference: np.ndarray) -> None:
    ours = _vidiff_frames(tiny_svd_folder, _photo(), 7, **CASE)
    assert ours.shape == reference.shape == (1, CASE["num_frames"], CASE["height"], CASE["width"], 3)
    err = np.abs(ours - reference).max()
    assert err <= TOL, f"max abs error {err:.2e} on [0,1] pixels"
    assert reference.std() > 0.01  # the comparison is not between two constant videos


@pytest.mark.parametrize("layout", ["single-file", "vidiff"])
def test_converted_layouts_match_diffusers(tiny_svd_folder: Path, reference: np.ndarray, layout: str,
                                           tmp_path: Path) -> None:
    dst = tmp_path / ("model.safetensors" if layout == "single-file" else "model")
    write_checkpoint(read_checkpoint(tiny_svd_folder), dst, layout)
    ours = _vidiff_frames(dst, _photo(), 7, **CASE)
    assert np.abs(ours - reference).max() <= TOL


def test_seed_and_settings_change_the_output(tiny_svd_folder: Path, reference: np.ndarray) -> None:
    """Guards against a parity that holds only because the inputs are ignored."""
    other_seed = _vidiff_frames(tiny_svd_folder, _photo(), 8, **CASE)
    assert np.abs(other_seed - reference).max() > 1e-2
    other_bucket = _vidiff_frames(tiny_svd_folder, _photo(), 7, **{**CASE, "motion_bucket_id": 10})
    assert np.abs(other_bucket - reference).max() > 1e-3


def test_no_guidance_and_whole_decode_match_diffusers(tiny_svd_folder: Path) -> None:
    case = {**CASE, "max_guidance_scale": 1.0, "decode_chunk_size": None, "num_frames": 3, "height": 48,
            "width": 48}
    ref = _diffusers_frames(tiny_svd_folder, _photo("astronaut.png"), 3, **case)
    ours = _vidiff_frames(tiny_svd_folder, _photo("astronaut.png"), 3, **case)
    assert np.abs(ours - ref).max() <= TOL
