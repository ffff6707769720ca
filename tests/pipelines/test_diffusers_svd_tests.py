"""diffusers' ``StableVideoDiffusionPipelineFastTests`` and the ``PipelineTesterMixin`` tests it inherits,
ported to drive vidiff's pipeline on the same tiny components (``conftest.fast_components``).

Each test keeps the name of the diffusers test it ports and checks what that one checks; where diffusers'
version compares two runs of its own pipeline, this one also compares vidiff with diffusers' pipeline on
the same weights and inputs (the oracle). Not ported, because they test what SVD's pipeline lacks
(``guidance_scale``: test_cfg, test_callback_cfg; prompts: test_encode_prompt_works_in_isolation;
``_optional_components`` is empty: test_save_load_optional_components) or diffusers-only machinery
(xformers, attention slicing, layerwise casting, group offloading, device maps, variants, dtype dicts).
"""

from __future__ import annotations

import inspect
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from vidiff.io import read_checkpoint, write_checkpoint
from vidiff.pipelines.image_to_video import ImageToVideoPipeline

pytestmark = pytest.mark.filterwarnings("ignore:.*trained at:UserWarning")
TOL = 1e-4


def _load(folder: Path, **kw) -> ImageToVideoPipeline:
    pipe = ImageToVideoPipeline.from_pretrained(folder, **kw)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def pipe(fast_folder: Path) -> ImageToVideoPipeline:
    return _load(fast_folder)


def _np(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _module_dtypes(pipe: ImageToVideoPipeline) -> dict[str, set[torch.dtype]]:
    """Every floating-point parameter and buffer dtype of every module component."""
    return {name: {t.dtype for t in [*c.parameters(), *c.buffers()] if t.is_floating_point()}
            for name, c in pipe.components.items() if isinstance(c, torch.nn.Module)}


def test_pipeline_call_signature() -> None:
    params = inspect.signature(ImageToVideoPipeline.__call__).parameters
    assert "image" in params and params["image"].default is inspect.Parameter.empty
    for name in ("num_inference_steps", "generator", "latents", "return_dict", "output_type",
                 "num_videos_per_prompt", "callback_on_step_end", "callback_on_step_end_tensor_inputs"):
        assert params[name].default is not inspect.Parameter.empty, name


def test_components_function(pipe: ImageToVideoPipeline, fast_diffusers) -> None:
    assert set(pipe.components) == set(fast_diffusers.components)
    assert pipe.components["unet"] is pipe.unet and pipe.components["vae"] is pipe.vae


def test_np_output_type(pipe: ImageToVideoPipeline, fast_inputs) -> None:
    frames = pipe(**{**fast_inputs(), "output_type": "np"}).frames
    assert isinstance(frames, np.ndarray) and frames.shape == (1, 2, 32, 32, 3)


def test_dict_tuple_outputs_equivalent(pipe: ImageToVideoPipeline, fast_diffusers, fast_inputs) -> None:
    out = pipe(**fast_inputs())
    as_tuple = pipe(**fast_inputs(), return_dict=False)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == 1
    assert torch.equal(out[0], out.frames) and torch.equal(as_tuple[0], out.frames)
    reference = fast_diffusers(**fast_inputs()).frames
    assert np.abs(_np(out.frames) - _np(reference)).max() < TOL


def test_disable_cfg(pipe: ImageToVideoPipeline, fast_diffusers, fast_inputs) -> None:
    inputs = {**fast_inputs(), "max_guidance_scale": 1.0}
    frames = pipe(**inputs).frames
    assert frames.ndim == 5
    reference = fast_diffusers(**{**fast_inputs(), "max_guidance_scale": 1.0}).frames
    assert np.abs(_np(frames) - _np(reference)).max() < TOL


def _batched(fast_inputs, batch_size: int) -> dict:
    inputs = fast_inputs()
    images = [fast_inputs(seed=i)["image"] for i in range(batch_size)]  # different images
    return {**inputs, "image": torch.cat(images), "generator": [torch.Generator().manual_seed(i)
                                                                for i in range(batch_size)]}


def test_inference_batch_single_identical(pipe: ImageToVideoPipeline, fast_diffusers, fast_inputs) -> None:
    batched = pipe(**_batched(fast_inputs, 2))[0]
    assert batched.shape[0] == 2
    single = pipe(**fast_inputs())[0]  # image 0 with generator 0
    assert np.abs(_np(batched[0]) - _np(single[0])).max() < TOL
    reference = fast_diffusers(**_batched(fast_inputs, 2)).frames
    assert np.abs(_np(batched) - _np(reference)).max() < TOL
    assert np.abs(_np(batched[1]) - _np(batched[0])).max() > 1e-3  # the images and generators differ


def test_inference_batch_consistent(pipe: ImageToVideoPipeline, fast_diffusers, fast_inputs) -> None:
    inputs = fast_inputs()
    out = pipe(**{**inputs, "image": [inputs["image"]] * 2,
                  "generator": [torch.Generator().manual_seed(i) for i in range(2)]})
    assert len(out[0]) == 2
    # a batch with one generator for all of it: drawn as diffusers draws it
    batch = torch.cat([fast_inputs(seed=i)["image"] for i in range(2)])
    ours = pipe(**{**fast_inputs(), "image": batch}).frames
    reference = fast_diffusers(**{**fast_inputs(), "image": batch}).frames
    assert ours.shape[0] == 2 and np.abs(_np(ours) - _np(reference)).max() < TOL


def test_num_videos_per_prompt(pipe: ImageToVideoPipeline, fast_diffusers, fast_inputs) -> None:
    for batch_size in (1, 2):
        for per_image in (1, 2):
            inputs = fast_inputs()
            inputs["image"] = [inputs["image"]] * batch_size
            frames = pipe(**inputs, num_videos_per_prompt=per_image)[0]
            assert frames.shape[0] == batch_size * per_image
    # one image, two videos from one generator: as diffusers draws them
    ours = pipe(**fast_inputs(), num_videos_per_prompt=2).frames
    reference = fast_diffusers(**fast_inputs(), num_videos_per_prompt=2).frames
    assert np.abs(_np(ours) - _np(reference)).max() < TOL
    assert np.abs(_np(ours[0]) - _np(ours[1])).max() > 1e-3


def test_callback_inputs(pipe: ImageToVideoPipeline, fast_inputs) -> None:
    assert tuple(pipe._callback_tensor_inputs) == ("latents",)
    seen: list[tuple[int, float]] = []

    def subset(p, i, t, tensors):
        assert p is pipe and set(tensors) <= set(p._callback_tensor_inputs)
        seen.append((i, float(t)))
        return tensors

    def everything(p, i, t, tensors):
        assert set(tensors) == set(p._callback_tensor_inputs)
        return tensors

    inputs = {**fast_inputs(), "output_type": "latent"}
    plain = pipe(**inputs)[0]
    kept = pipe(**{**fast_inputs(), "output_type": "latent"}, callback_on_step_end=subset,
                callback_on_step_end_tensor_inputs=["latents"])[0]
    assert torch.equal(plain, kept)  # a callback that returns its inputs changes nothing
    assert [i for i, _ in seen] == [0, 1] and seen[0][1] > seen[1][1]  # t: the network's time input, falling
    pipe(**{**fast_inputs(), "output_type": "latent"}, callback_on_step_end=everything,
         callback_on_step_end_tensor_inputs=pipe._callback_tensor_inputs)

    def zero_last(p, i, t, tensors):
        if i == p.num_timesteps - 1:
            tensors["latents"] = torch.zeros_like(tensors["latents"])
        return tensors

    out = pipe(**{**fast_inputs(), "output_type": "latent"}, callback_on_step_end=zero_last,
               callback_on_step_end_tensor_inputs=pipe._callback_tensor_inputs)[0]
    assert out.abs().sum() == 0
    with pytest.raises(ValueError, match="prompt_embeds"):
        pipe(**fast_inputs(), callback_on_step_end=subset, callback_on_step_end_tensor_inputs=["prompt_embeds"])


def test_callback_replacing_latents_mid_way_continues_from_them(pipe: ImageToVideoPipeline, fast_diffusers,
                                                                fast_inputs) -> None:
    """diffusers' semantics beyond the mixin: a latents replaced after step 0 is where step 1 starts."""

    def halve_first(p, i, t, tensors):
        return {"latents": tensors["latents"] * 0.5} if i == 0 else tensors

    kw = {"callback_on_step_end": halve_first, "callback_on_step_end_tensor_inputs": ["latents"]}
    ours = pipe(**fast_inputs(), **kw).frames
    reference = fast_diffusers(**fast_inputs(), **kw).frames
    assert np.abs(_np(ours) - _np(reference)).max() < TOL
    assert np.abs(_np(ours) - _np(pipe(**fast_inputs()).frames)).max() > 1e-3


def test_save_load_local(pipe: ImageToVideoPipeline, fast_folder: Path, tmp_path: Path, fast_inputs) -> None:
    """The folder diffusers saved with ``safe_serialization=False`` (.bin UNet and VAE) gives the frames the
    same weights give from safetensors."""
    assert (fast_folder / "unet" / "diffusion_pytorch_model.bin").is_file()
    assert not (fast_folder / "unet" / "diffusion_pytorch_model.safetensors").exists()
    converted = tmp_path / "safetensors"
    write_checkpoint(read_checkpoint(fast_folder), converted, "diffusers")
    assert (converted / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    a = pipe(**fast_inputs()).frames
    b = _load(converted)(**fast_inputs()).frames
    assert torch.equal(a, b)


def test_bin_weights_are_read_without_running_code(fast_folder: Path, tmp_path: Path) -> None:
    """torch.load(weights_only=True): a pickle that would run code is refused with the file named."""
    import pickle

    class Payload:
        def __reduce__(self):
            return (shutil.rmtree, (str(tmp_path / "victim"),))

    (tmp_path / "victim").mkdir()
    bad = tmp_path / "bad"
    shutil.copytree(fast_folder, bad)
    with (bad / "vae" / "diffusion_pytorch_model.bin").open("wb") as f:
        pickle.dump({"decoder.conv_in.weight": Payload()}, f)
    with pytest.raises(ValueError, match=r"diffusion_pytorch_model\.bin"):
        ImageToVideoPipeline.from_pretrained(bad)
    assert (tmp_path / "victim").is_dir()


def test_to_dtype(fast_folder: Path) -> None:
    pipe = _load(fast_folder)
    assert all(d == {torch.float32} for d in _module_dtypes(pipe).values())
    assert set(_module_dtypes(pipe)) == {"unet", "vae", "image_encoder"}
    assert pipe.to(dtype=torch.float16) is pipe
    assert all(d == {torch.float16} for d in _module_dtypes(pipe).values()), _module_dtypes(pipe)
    pipe.to("cpu", torch.bfloat16)
    assert all(d == {torch.bfloat16} for d in _module_dtypes(pipe).values())
    assert pipe.device == torch.device("cpu")


def test_dtype_alias(fast_folder: Path) -> None:
    """``dtype=`` at load applies to every component, as diffusers' ``from_pretrained(dtype=...)``; keeping
    the VAE in float32 is an explicit option."""
    half = _load(fast_folder, dtype=torch.float16)
    assert all(d == {torch.float16} for d in _module_dtypes(half).values()), _module_dtypes(half)
    mixed = _load(fast_folder, dtype=torch.float16, vae_dtype=torch.float32)
    dtypes = _module_dtypes(mixed)
    assert dtypes["vae"] == {torch.float32} and dtypes["unet"] == dtypes["image_encoder"] == {torch.float16}
    mixed.to(dtype=torch.bfloat16)  # the explicit VAE dtype stays
    assert _module_dtypes(mixed)["vae"] == {torch.float32}


def test_bfloat16_inference_runs_and_stays_close(fast_folder: Path, pipe: ImageToVideoPipeline, fast_inputs) -> None:
    """test_float16_inference on the CPU (bfloat16: CPU kernels exist for it): every component in the low
    precision, frames close to float32's by cosine distance."""
    low = _load(fast_folder, dtype=torch.bfloat16)
    a = pipe(**fast_inputs()).frames.flatten().double()
    b = low(**fast_inputs()).frames.flatten().double()
    assert torch.isfinite(b).all()
    assert 1 - torch.nn.functional.cosine_similarity(a, b, dim=0) < 5e-2


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.cuda
@cuda
def test_to_device(fast_folder: Path, fast_inputs) -> None:
    pipe = _load(fast_folder)
    pipe.to("cpu")
    cpu = pipe(**fast_inputs()).frames
    pipe.to("cuda")
    devices = {t.device.type for c in pipe.components.values() if isinstance(c, torch.nn.Module)
               for t in c.parameters()}
    assert devices == {"cuda"}
    gpu = pipe(**fast_inputs()).frames
    assert torch.isfinite(gpu).all() and np.abs(_np(gpu) - _np(cpu)).max() < 1e-3


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("offload", ["model", "sequential"])
def test_cpu_offload_forward_pass(fast_folder: Path, offload: str, fast_inputs) -> None:
    pipe = _load(fast_folder, device="cuda")
    plain = pipe(**fast_inputs()).frames
    offloaded = pipe(**fast_inputs(), offload=offload).frames
    again = pipe(**fast_inputs(), offload=offload).frames  # test_*_offload_forward_pass_twice
    assert np.abs(_np(offloaded) - _np(plain)).max() < 2e-4 and torch.equal(offloaded, again)


@pytest.mark.cuda
@cuda
def test_float16_inference(fast_folder: Path, fast_inputs) -> None:
    full = _load(fast_folder, device="cuda")(**fast_inputs()).frames.flatten().double()
    half = _load(fast_folder, device="cuda", dtype=torch.float16)(**fast_inputs()).frames.flatten().double()
    assert 1 - torch.nn.functional.cosine_similarity(full, half, dim=0) < 5e-2
