"""The model shipped inside the package (vidiff/assets/default_model) loads and generates."""

from __future__ import annotations

import pytest
import torch

from vidiff.pipelines.image_to_video import ImageToVideoPipeline, bundled_model_path


@pytest.mark.skipif(bundled_model_path() is None,
                    reason="no bundled model in vidiff/assets/default_model (see configs/default_model.yaml)")
def test_bundled_model_generates_a_few_frames() -> None:
    pipe = ImageToVideoPipeline.from_pretrained(bundled_model_path())
    defaults = pipe._resolve(pipe.default_settings())
    assert defaults.num_frames >= 14 and defaults.height >= 128 and defaults.width >= 128
    out = pipe(torch.rand(3, defaults.height, defaults.width), num_frames=2, num_inference_steps=2,
               output_type="pt", progress=False)
    assert out.frames.shape == (1, 2, 3, defaults.height, defaults.width)
    assert torch.isfinite(out.frames).all()
