"""What the pipeline's inputs mean (diffusers' pipeline as the oracle), repeatability, and bad input.

- ``latents=`` is the initial noise before scaling by the initial noise sigma, as diffusers reads it;
- a float image tensor is used at full precision, not rounded to 8 bits;
- a ``vidiff generate`` sidecar repeats a stochastic sampler's run (every sampler's repeatability through
  the Python API: test_pipeline_options.test_every_sampler_runs_and_repeats);
- a 0x0 image or a string guidance scale through the Python API is a one-line error naming it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from vidiff.cli.main import main
from vidiff.io.video import read_video
from vidiff.pipelines.image_to_video import ImageToVideoPipeline

from ..conftest import SKIMAGE_DATA

pytestmark = pytest.mark.filterwarnings("ignore:.*trained at:UserWarning")
TOL = 1e-4


@pytest.fixture(scope="module")
def pipe(fast_folder: Path) -> ImageToVideoPipeline:
    pipe = ImageToVideoPipeline.from_pretrained(fast_folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _np(x: torch.Tensor) -> np.ndarray:
    return x.detach().cpu().numpy()


def test_given_latents_mean_what_they_mean_in_diffusers(pipe, fast_diffusers, fast_inputs) -> None:
    """diffusers multiplies given latents by the scheduler's init_noise_sigma (√(1+σ_max²) here)."""
    latents = torch.randn((1, 2, 4, 16, 16), generator=torch.Generator().manual_seed(5))
    ours = pipe(**fast_inputs(), latents=latents.clone()).frames
    reference = fast_diffusers(**fast_inputs(), latents=latents.clone()).frames
    assert np.abs(_np(ours) - _np(reference)).max() < TOL
    drawn = pipe(**fast_inputs()).frames  # the same seed's own latents: a different video
    assert np.abs(_np(ours) - _np(drawn)).max() > 1e-3
    with pytest.raises(ValueError, match=r"latents must have shape \(1, 2, 4, 16, 16\)"):
        pipe(**fast_inputs(), latents=torch.zeros(1, 2, 4, 8, 8))


def test_float_image_tensor_is_used_as_given(pipe, fast_diffusers, fast_inputs) -> None:
    inputs = fast_inputs()
    image = inputs["image"]
    assert not torch.equal(image, (image * 255).round() / 255)  # off the 8-bit grid
    ours = pipe(**inputs).frames
    reference = fast_diffusers(**fast_inputs()).frames
    assert np.abs(_np(ours) - _np(reference)).max() < TOL
    rounded = pipe(**{**fast_inputs(), "image": (image * 255).round() / 255}).frames
    assert np.abs(_np(rounded) - _np(ours)).max() > TOL  # rounding would be visible at this tolerance


def test_sidecar_repeats_a_stochastic_sampler(tiny_svd_folder: Path, tmp_path: Path, capsys) -> None:
    """``vidiff generate --sampler euler_ancestral`` twice, and again from its sidecar alone (settings and the
    dtype and chunking of the run): the same frames."""
    photo = SKIMAGE_DATA / "coffee.png"
    small = ["--num-frames", "2", "--steps", "2", "--height", "32", "--width", "48", "--quiet"]
    base = ["generate", "--image", str(photo), "--model", str(tiny_svd_folder)]
    runs = {name: tmp_path / name for name in ("first", "second", "replay")}
    # run options that change the result (bfloat16 here) are replayed from the sidecar too
    run = [*small, "--sampler", "euler_ancestral", "--seed", "0", "--dtype", "bfloat16", "--attention-chunk", "1"]
    assert main([*base, "--output", f"{runs['first']}/", *run]) == 0
    assert main([*base, "--output", f"{runs['second']}/", *run]) == 0
    assert main([*base, "--output", f"{runs['replay']}/", "--settings", str(runs["first"] / "settings.json"),
                 "--quiet"]) == 0
    capsys.readouterr()
    first = read_video(runs["first"])[0].numpy()
    assert np.array_equal(first, read_video(runs["second"])[0].numpy())
    assert np.array_equal(first, read_video(runs["replay"])[0].numpy())
    sidecar = json.loads((runs["first"] / "settings.json").read_text())
    assert sidecar["settings"]["sampler"] == "euler_ancestral"
    for key in ("device", "dtype", "vae_dtype", "offload", "decode_chunk_size", "attention_chunk", "vae_tiling",
                "fast_path", "torch"):
        assert key in sidecar, key
    assert "decode_overlap" in sidecar["settings"]
    replayed = json.loads((runs["replay"] / "settings.json").read_text())
    assert (replayed["dtype"], replayed["attention_chunk"]) == ("bfloat16", 1)


def test_run_record_names_what_changes_the_result(pipe, fast_inputs) -> None:
    out = pipe(**fast_inputs(), vae_tiling=True, attention_chunk=2)
    run = out.run
    assert (run["vae_tiling"], run["attention_chunk"], run["dtype"], run["vae_dtype"]) == (True, 2, "float32",
                                                                                            "float32")
    assert run["vae_tiles"] == {"tile_latent_size": pipe.vae.tile_latent_size,
                                "tile_latent_overlap": pipe.vae.tile_latent_overlap}
    assert run["fast_path"] == pipe.fast_path.describe() and run["device"] == "cpu"


@pytest.mark.parametrize("image", [PIL.Image.new("RGB", (0, 0)), torch.zeros(1, 3, 0, 0)],
                         ids=["pil", "tensor"])
def test_empty_image_is_refused(pipe, fast_inputs, image) -> None:
    with pytest.raises(ValueError, match="0x0"):
        pipe(**{**fast_inputs(), "image": image})


@pytest.mark.parametrize(("bad", "message"), [
    ({"image": torch.full((1, 3, 32, 32), 2.0)}, r"\[0, 1\], got \[2, 2\]"),
    ({"image": torch.zeros(1, 3, 32, 32, dtype=torch.uint8)}, "floating point"),
    ({"image": []}, "empty list"),
    ({"image": "photo.png"}, "got str"),
    ({"max_guidance_scale": "3"}, "max_guidance_scale must be a number, got '3'"),
    ({"min_guidance_scale": [1.0]}, r"min_guidance_scale must be a number, got \[1.0\]"),
    ({"num_videos_per_prompt": 0}, "num_videos_per_prompt must be an integer >= 1, got 0"),
    ({"generator": [torch.Generator()] * 3}, "3 generators given for 1 videos"),
    ({"sampler": "euler_a"}, "euler_a"),
], ids=["range", "uint8", "empty", "path", "string-scale", "list-scale", "videos", "generators", "sampler"])
def test_bad_api_input_names_the_argument(pipe, fast_inputs, bad: dict, message: str) -> None:
    with pytest.raises((ValueError, TypeError), match=message):
        pipe(**{**fast_inputs(), **bad})
